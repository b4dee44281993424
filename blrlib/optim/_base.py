r"""What every rule optimizer shares: validated hyperparameters, copies, checkpoints, 16-bit state.

:class:`RuleOptimizer` is the base of the optimizers whose state is a candidate distribution
(:class:`~blrlib.optim.IVON`, :class:`~blrlib.optim.vogn.OGN`/``VOGN``,
:class:`~blrlib.optim.bayesbinn.STE`/``BayesBiNN``). It holds, once:

* the hyperparameters' ranges as data (``RANGES``, a table ``{name: Range}``), checked for every
  param group and for every loaded checkpoint;
* parameters: real floating tensors only (complex parameters raise a clear error);
* float32 statistics for 16-bit parameters (:func:`state_dtype`);
* ``copy.deepcopy``, ``pickle`` and ``torch.save`` of the whole optimizer: the generator, the noise
  hook and the flags travel with it (``torch.optim.Optimizer`` keeps only the state and the groups);
* ``state_dict()`` that carries what a bit-exact resume needs beyond torch's state (the generator's
  state, ``skip_nonfinite``, the skipped-step count, the optimizer's name), and a
  ``load_state_dict()`` that validates the checkpoint (the optimizer it came from, the groups'
  hyperparameters, every parameter's buffers, their shapes and the step counts) and either loads
  all of it or nothing: any bad checkpoint gives a ``ValueError`` naming what is wrong.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Optional

import torch
from torch import Tensor
from torch.optim import Optimizer

from .._validation import Range, check_hyperparameters

__all__ = ["RuleOptimizer", "state_dtype", "check_real_params", "LOW_PRECISION"]

LOW_PRECISION = (torch.float16, torch.bfloat16)


def state_dtype(p: Tensor) -> torch.dtype:
    """Dtype of the statistics of ``p``: float32 for 16-bit parameters, the parameter's own otherwise."""
    return torch.float32 if p.dtype in LOW_PRECISION else p.dtype


def check_real_params(param_group: dict) -> list:
    """The group's parameters as a list; complex or integer tensors raise ``ValueError``."""
    params = param_group["params"]
    params = [params] if isinstance(params, Tensor) else list(params)
    for p in params:
        if isinstance(p, Tensor) and (p.is_complex() or not p.is_floating_point()):
            raise ValueError(
                f"Invalid params: a tensor of dtype {p.dtype} (must be a real floating-point dtype; "
                "for complex parameters optimise the real and imaginary parts as two real tensors)"
            )
    return params


class RuleOptimizer(Optimizer):
    """Base class (see the module docstring). Subclasses set ``RANGES`` and ``STATE_KEYS`` and call
    ``super().__init__(params, defaults)`` after setting their engineering attributes."""

    #: hyperparameter -> allowed values (checked per group and on load)
    RANGES: dict = {}
    #: buffers every parameter with state must have in a checkpoint (besides ``"step"``)
    STATE_KEYS: tuple = ()
    #: optional buffers (e.g. a momentum that exists only when beta1 > 0)
    OPTIONAL_STATE_KEYS: tuple = ()
    #: attributes that are not tensors of the state but must survive a copy, with their defaults
    ENGINEERING_DEFAULTS: dict = {"generator": None, "skip_nonfinite": False, "skipped_steps": 0}

    # ------------------------------------------------------------------ arguments
    def _validate_group(self, group: dict) -> None:
        check_hyperparameters(group, self.RANGES)

    def add_param_group(self, param_group: dict) -> None:
        if hasattr(self, "defaults"):
            for k, v in self.defaults.items():
                param_group.setdefault(k, v)
        param_group["params"] = check_real_params(param_group)
        self._validate_group(param_group)
        super().add_param_group(param_group)

    def rule_parameters(self) -> list:
        r"""Per group, the rule's step size :math:`\rho`, the effective sample size :math:`N` and the
        prior precision :math:`\delta` (as they enter the rule for the whole data set)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ copies and pickling
    def __getstate__(self) -> dict:
        # torch keeps only defaults/state/param_groups: the generator, the noise hook and the flags
        # would be lost (and IVON's next step would fail). Work buffers are transient: not copied.
        d = dict(self.__dict__)
        for k in self._transient_attributes():
            d.pop(k, None)
        return d

    def _transient_attributes(self) -> tuple:
        return ()

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        for k, v in self.ENGINEERING_DEFAULTS.items():
            self.__dict__.setdefault(k, v)
        self._reset_transient()

    def _reset_transient(self) -> None:
        """Recreate the work buffers and sample bookkeeping after a copy or a load."""

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        """torch's state dict plus ``"blrlib"``: the optimizer's name, the generator's state (when it
        has one), ``skip_nonfinite`` and the number of skipped steps."""
        sd = super().state_dict()
        extra = dict(optimizer=type(self).__name__, skip_nonfinite=bool(getattr(self, "skip_nonfinite", False)),
                     skipped_steps=int(getattr(self, "skipped_steps", 0)))
        gen = getattr(self, "generator", None)
        if gen is not None:
            extra["generator_state"] = gen.get_state()
        sd["blrlib"] = extra
        return sd

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a checkpoint of this optimizer, all or nothing (a bad one raises ``ValueError``)."""
        if not isinstance(state_dict, dict) or "state" not in state_dict or "param_groups" not in state_dict:
            keys = sorted(state_dict) if isinstance(state_dict, dict) else type(state_dict).__name__
            raise ValueError(f"Invalid state_dict: keys {keys} (must be a dict with 'state' and 'param_groups')")
        state_dict = dict(state_dict)
        extra = state_dict.pop("blrlib", None)
        if extra is None:  # an older checkpoint kept the generator state at top level
            extra = {"generator_state": state_dict.pop("generator_state")} if "generator_state" in state_dict else {}
        name = extra.get("optimizer", type(self).__name__)
        if name != type(self).__name__:
            raise ValueError(f"Invalid state_dict: it was saved by {name} (must be a {type(self).__name__} checkpoint)")
        backup_groups = [dict(g) for g in self.param_groups]
        backup_state = {p: dict(s) for p, s in self.state.items()}
        # Run the load pre-hooks here (they may rewrite the state), then keep the loaded tensors as they
        # are: torch would cast floating state to the parameter's dtype (16-bit parameters keep float32).
        for hook in list(self._optimizer_load_state_dict_pre_hooks.values()):
            out = hook(self, state_dict)
            if out is not None:
                state_dict = out
        originals = {}
        if isinstance(state_dict.get("param_groups"), list) and isinstance(state_dict.get("state"), dict):
            for g_saved, g in zip(state_dict["param_groups"], self.param_groups):
                for pid, p in zip(g_saved.get("params", []) if isinstance(g_saved, dict) else [], g["params"]):
                    saved = state_dict["state"].get(pid)
                    if isinstance(saved, dict):
                        originals[p] = {k: v for k, v in saved.items() if isinstance(v, Tensor)}
        hooks, self._optimizer_load_state_dict_pre_hooks = self._optimizer_load_state_dict_pre_hooks, {}
        try:
            super().load_state_dict(state_dict)
            for p, vals in originals.items():
                if p in self.state:
                    self.state[p].update(vals)
            self._check_loaded()
        except Exception as err:
            # nothing half-loaded: put the groups and the state back as they were
            for g, b in zip(self.param_groups, backup_groups):
                g.clear()
                g.update(b)
            self.state.clear()
            self.state.update(backup_state)
            if isinstance(err, ValueError):
                raise
            raise ValueError(f"Invalid state_dict: {type(err).__name__}: {err}") from err
        finally:
            self._optimizer_load_state_dict_pre_hooks = hooks
        gen_state = extra.get("generator_state")
        gen = getattr(self, "generator", None)
        if gen_state is not None and gen is not None:
            gen.set_state(gen_state)
        if "skip_nonfinite" in extra:
            self.skip_nonfinite = bool(extra["skip_nonfinite"])
        if "skipped_steps" in extra:
            self.skipped_steps = int(extra["skipped_steps"])
        self._reset_transient()

    def _check_loaded(self) -> None:
        """Validate the loaded groups and state and fix their dtypes/devices (raises ValueError)."""
        for i, group in enumerate(self.param_groups):
            try:
                self._validate_group(group)
            except ValueError as err:
                raise ValueError(f"Invalid state_dict: param group {i}: {err}") from None
        for i, group in enumerate(self.param_groups):
            for j, p in enumerate(group["params"]):
                st = self.state.get(p)
                if not st:
                    continue
                where = f"param group {i}, parameter {j} (shape {tuple(p.shape)})"
                missing = [k for k in ("step", *self._required_state_keys(group)) if k not in st]
                if missing:
                    raise ValueError(f"Invalid state_dict: {where} has no {missing} (a truncated or foreign checkpoint)")
                unknown = [k for k in st if k not in ("step", *self.STATE_KEYS, *self.OPTIONAL_STATE_KEYS)]
                if unknown:
                    raise ValueError(f"Invalid state_dict: {where} has unknown buffers {unknown} (a foreign checkpoint?)")
                step = st["step"]
                if isinstance(step, Tensor):
                    if step.numel() != 1:
                        raise ValueError(f"Invalid state_dict: {where} step has shape {tuple(step.shape)} (must be a scalar)")
                    step_v = float(step.item())
                elif isinstance(step, numbers.Real) and not isinstance(step, bool):
                    step_v = float(step)  # torch's own tests store the step as a Python number
                else:
                    raise ValueError(f"Invalid state_dict: {where} step is {step!r} (must be a number or a tensor)")
                if not math.isfinite(step_v) or step_v < 0 or step_v != int(step_v):
                    raise ValueError(f"Invalid state_dict: {where} step is {step_v} (must be an integer >= 0)")
                st["step"] = torch.tensor(step_v, dtype=torch.float32)
                for k in (*self.STATE_KEYS, *self.OPTIONAL_STATE_KEYS):
                    if k not in st:
                        continue
                    v = st[k]
                    if not isinstance(v, Tensor) or tuple(v.shape) != tuple(p.shape):
                        shape = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
                        raise ValueError(f"Invalid state_dict: {where} buffer {k!r} has shape {shape} (must be {tuple(p.shape)})")
                    if not bool(torch.isfinite(v).all()):
                        raise ValueError(f"Invalid state_dict: {where} buffer {k!r} holds NaN or infinite values")
                    st[k] = v.detach().to(device=p.device, dtype=self._buffer_dtype(p, k)).clone()

    def _required_state_keys(self, group: dict) -> tuple:
        """The buffers a parameter of ``group`` with state must have (besides ``"step"``)."""
        return self.STATE_KEYS

    def _buffer_dtype(self, p: Tensor, key: str) -> torch.dtype:
        return state_dtype(p)

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _generator_for(gen: Optional[torch.Generator], device: torch.device) -> Optional[torch.Generator]:
        if gen is not None and gen.device.type != device.type:
            raise ValueError(f"Invalid generator: on {gen.device}, but parameters are on {device}")
        return gen

    def _check_flag(self, name: str, value: Any) -> bool:
        return Range(kind="bool").check(name, value)
