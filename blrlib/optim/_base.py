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
  all of it or nothing: any bad checkpoint gives a ``ValueError`` naming what is wrong;
* the sampling protocol, so that each optimizer supplies only its estimator and its statistics:
  :meth:`RuleOptimizer.sampled_params` (the sample is written on entry and the parameters restored in
  a ``finally`` block), the noise hook (:meth:`RuleOptimizer._draw_noise_`: a user ``noise_fn``, or one
  draw per tensor from the generator on the tensor's device), Monte Carlo folding of several
  ``sampled_params(train=True)`` blocks into running sums, the ``torch.amp.GradScaler`` protocol
  (:meth:`RuleOptimizer._begin_step`), the closure loop and the non-finite policy (raise, or skip with
  ``skip_nonfinite=True``, the skipped steps counted).

Generators: ``generator=None`` draws from the global RNG of each parameter's device. A generator
given by the user is used for the parameters on its device; for parameters on another device a
generator on that device is created lazily, seeded by one draw from the user's generator, and its
state travels in ``state_dict()`` too (so a resumed run is bit for bit the same on every device).

What a subclass supplies: ``_write_sample_(train)`` (write the sample into the parameters, return
what ``_restore_`` needs), ``_restore_``, ``_sample_terms`` and ``_accumulate_`` (its statistics of
one sample and how they are summed), ``step`` (its update).
"""

from __future__ import annotations

import math
import numbers
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional

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
    ENGINEERING_DEFAULTS: dict = {"generator": None, "skip_nonfinite": False, "skipped_steps": 0,
                                  "noise_fn": None, "_device_generators": None}
    #: the base noise of a sample, ``"normal"`` (Gaussian candidates) or ``"uniform"`` (BayesBiNN)
    NOISE: str = "normal"
    #: True: a train sample is folded into the sums when its block exits (its gradient is read there);
    #: False: lazily, when the next sample starts or ``zero_grad()`` is called, and ``step()`` reads the
    #: last sample's gradient from ``p.grad`` itself (so clipping or unscaling after the block counts)
    FOLD_ON_EXIT: bool = True

    def _init_sampling(self, generator, skip_nonfinite, noise_fn=None) -> None:
        """Check and set the engineering arguments every sampled optimizer has (call before
        ``super().__init__``)."""
        if generator is not None and not isinstance(generator, torch.Generator):
            raise ValueError(f"Invalid generator: {generator!r} (must be a torch.Generator or None)")
        if noise_fn is not None and not callable(noise_fn):
            raise ValueError(f"Invalid noise_fn: {noise_fn!r} (must be callable or None)")
        self.generator = generator
        self.noise_fn = noise_fn
        self.skip_nonfinite = self._check_flag("skip_nonfinite", skip_nonfinite)
        self.skipped_steps = 0
        self._device_generators = None
        RuleOptimizer._reset_transient(self)

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
        return ("_work", "_acc")

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        for k, v in self.ENGINEERING_DEFAULTS.items():
            self.__dict__.setdefault(k, v)
        self._reset_transient()

    def _reset_transient(self) -> None:
        """Recreate the work buffers and sample bookkeeping after a copy or a load."""
        self._work = {}
        self._acc = {}
        self._pending = False  # a train sample not yet folded into the sums
        self._folded = 0  # train samples folded into self._acc since the last step
        self._sampling = False
        self._poisoned = False  # a sample was non-finite (skip_nonfinite): the next step is skipped

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
        if getattr(self, "_device_generators", None):
            extra["device_generator_states"] = {d: g.get_state() for d, g in self._device_generators.items()}
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
        dev_states = extra.get("device_generator_states")
        if dev_states and gen is not None:
            self._device_generators = {}
            for d, st in dev_states.items():
                g = torch.Generator(device=d)
                g.set_state(st)
                self._device_generators[d] = g
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

    # ------------------------------------------------------------------ the sampling protocol
    def _sampled(self, group: dict) -> list:
        """The parameters of ``group`` that are sampled (those that require a gradient)."""
        return [p for p in group["params"] if p.requires_grad]

    def _generator_on(self, device: torch.device) -> Optional[torch.Generator]:
        """The generator for tensors on ``device``: the user's one on its own device, else a generator on
        ``device`` created on first use (seeded by one draw from the user's), ``None`` for the global RNG."""
        gen = self.generator
        if gen is None:
            return None
        gd = gen.device
        if gd.type == device.type and (gd.index is None or device.index is None or gd.index == device.index):
            return gen
        if self._device_generators is None:
            self._device_generators = {}
        key = str(device)
        dev_gen = self._device_generators.get(key)
        if dev_gen is None:
            seed = int(torch.randint(0, 2**62, (), generator=gen, device=gd))
            dev_gen = torch.Generator(device=device)
            dev_gen.manual_seed(seed)
            self._device_generators[key] = dev_gen
        return dev_gen

    def _draw_noise_(self, bufs: list, group: dict) -> None:
        """The noise hook: fill ``bufs`` (one buffer per sampled parameter of ``group``, in order) in place
        with the base noise (``NOISE``): ``noise_fn(bufs, group)`` when one was given, else one
        ``normal_``/``uniform_`` per tensor from the generator on its device."""
        if not bufs:
            return
        if self.noise_fn is not None:
            self.noise_fn(bufs, group)
            return
        gen = self._generator_on(bufs[0].device)
        normal = self.NOISE == "normal"
        for b in bufs:
            if b.device != bufs[0].device:
                gen = self._generator_on(b.device)
            if normal:
                b.normal_(generator=gen)
            else:
                b.uniform_(generator=gen)

    def _write_sample_(self, train: bool) -> Any:
        """Write a sample into the parameters (under ``no_grad``); return what :meth:`_restore_` needs."""
        raise NotImplementedError

    def _restore_(self, written: Any) -> None:
        """Put back what :meth:`_write_sample_` replaced (under ``no_grad``; called in a ``finally``)."""
        raise NotImplementedError

    @contextmanager
    def sampled_params(self, train: bool = False) -> Iterator[None]:
        """Inside the block the parameters hold a sample of the candidate (see the optimizer's docstring).

        On exit the parameters are restored exactly, also when the block raises (the failed sample is
        discarded). With ``train=True`` the gradient computed inside the block is a Monte Carlo sample
        that the next :meth:`step` averages; with ``train=False`` (prediction) nothing is recorded.
        """
        if self._sampling:
            raise RuntimeError(f"{type(self).__name__}.sampled_params() blocks cannot be nested")
        if train and self._pending:
            self._fold_pending()
        with torch.no_grad():
            written = self._write_sample_(bool(train))
        self._sampling = True
        ok = False
        try:
            yield
            ok = True
        finally:
            with torch.no_grad():
                self._restore_(written)
            self._sampling = False
        if train and ok:
            self._pending = True
            if self.FOLD_ON_EXIT:
                self._fold_pending()

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Fold a finished Monte Carlo sample (if any) into the sums, then zero the gradients."""
        if self._pending and not self._sampling:
            self._fold_pending()
        super().zero_grad(set_to_none=set_to_none)

    def _sample_terms(self, items: list):
        """This sample's terms ``[(p, term), ...]`` from ``items = [(group, p, grad), ...]``, or a string
        saying what is wrong (a non-finite gradient or estimate). Default: ``term = (grad, group)``."""
        return [(p, (g, group)) for group, p, g in items]

    def _accumulate_(self, p: Tensor, term: Any) -> None:
        """Add one sample's ``term`` of ``p`` to the running sums in ``self._acc``."""
        raise NotImplementedError

    @torch.no_grad()
    def _fold_pending(self) -> None:
        """Fold the pending sample into the Monte Carlo sums: all parameters or, when the sample is not
        finite, none (then the non-finite policy applies: raise, or skip the next step)."""
        self._pending = False
        items = []
        for group in self.param_groups:
            for p in self._sampled(group):
                g = p.grad
                if g is None:
                    continue
                if g.is_sparse:
                    raise ValueError(f"Invalid gradient: sparse ({type(self).__name__} needs dense gradients)")
                items.append((group, p, g))
        terms = self._sample_terms(items)
        if isinstance(terms, str):
            self._reset_samples()
            if self.skip_nonfinite:
                self._poisoned = True
                return
            raise ValueError(terms)
        for p, term in terms:
            self._accumulate_(p, term)
        self._folded += 1

    def _reset_samples(self) -> None:
        """Discard the samples of the current step."""
        self._acc.clear()
        self._pending = False
        self._folded = 0
        self._poisoned = False

    def _mc_samples(self) -> int:
        """How many samples ``step(closure)`` draws: the largest ``mc_samples`` of the groups (one sample
        draws noise for every parameter)."""
        return max(int(g.get("mc_samples", 1)) for g in self.param_groups)

    def _closure_losses(self, closure: Callable, train: bool = True) -> list:
        """Call ``closure`` once per Monte Carlo sample, each inside a fresh ``sampled_params`` block."""
        if self._sampling:
            raise RuntimeError(f"{type(self).__name__}.step(closure) cannot be called inside sampled_params()")
        if not callable(closure):
            raise ValueError(f"Invalid closure: {type(closure).__name__} (must be callable)")
        losses = []
        for _ in range(self._mc_samples()):
            with torch.enable_grad(), self.sampled_params(train=train):
                losses.append(closure())
        return losses

    def _begin_step(self) -> tuple:
        """The GradScaler protocol and the sample count, before a step changes anything.

        ``scaler.step(opt)`` sets ``grad_scale`` (``None`` after ``scaler.unscale_``) and ``found_inf`` on
        an optimizer with ``_step_supports_amp_scaling``. Returns ``(skip, grad_scale, inv_scale,
        under_scaler)``: ``skip`` when the scaler found an overflow or a sample was non-finite under
        ``skip_nonfinite`` (the samples are discarded and the step counted in ``skipped_steps``).
        Raises ``RuntimeError`` when there is no sample, or when ``scaler.unscale_`` was called although
        samples were already folded with scaled gradients (their scale can no longer be removed)."""
        grad_scale = getattr(self, "grad_scale", None)
        found_inf = getattr(self, "found_inf", None)
        under_scaler = found_inf is not None
        name = type(self).__name__
        if self._poisoned or (under_scaler and float(found_inf) > 0):
            self._reset_samples()
            self.skipped_steps += 1
            return True, None, 1.0, under_scaler
        if under_scaler and grad_scale is None and self._folded > 0:
            self._reset_samples()
            raise RuntimeError(
                f"{name} under a GradScaler: do not call scaler.unscale_() before scaler.step() when samples "
                f"were folded with scaled gradients; {name} unscales its Monte Carlo sums itself"
            )
        if self._folded + (1 if self._pending else 0) == 0:
            raise RuntimeError(
                f"{name}.step() needs at least one `with optimizer.sampled_params(train=True):` "
                "block (forward and backward inside it) since the last step"
            )
        inv_scale = 1.0 / float(grad_scale) if grad_scale is not None else 1.0
        return False, grad_scale, inv_scale, under_scaler

    def _skip_or_raise(self, message: str, skip: bool = False) -> None:
        """The non-finite policy of a step: discard the samples, then count a skipped step (with
        ``skip_nonfinite`` or ``skip``) or raise ``ValueError(message)``."""
        self._reset_samples()
        if self.skip_nonfinite or skip:
            self.skipped_steps += 1
            return
        raise ValueError(message)
