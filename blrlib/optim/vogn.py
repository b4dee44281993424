r"""OGN and VOGN: online Gauss-Newton and variational online Gauss-Newton.

Both learn a diagonal Gaussian :math:`q(\theta) = \mathcal N(m, \mathrm{diag}(s)^{-1})` over the weights
with the Bayesian learning rule (Khan & Rue, JMLR 2023, Sec. 4.4), for the objective
:math:`\bar\ell(\theta) = \sum_{i=1}^N \ell_i(\theta) + \tfrac\delta2\|\theta\|^2` (per-example losses
:math:`\ell_i`, Gaussian prior of precision :math:`\delta`). From a minibatch of :math:`M` examples with
per-example gradients :math:`g_i`,

.. math::

    \hat g = \frac1M\sum_{i} g_i, \qquad \hat h = \frac1M\sum_i g_i\odot g_i,

one step is (all operations element-wise)

.. math::

    s &\leftarrow (1-\rho)\, s + \rho\,(N\hat h + \delta) \\
    \bar g &\leftarrow \beta_1 \bar g + (1-\beta_1)\,(N\hat g + \delta\, m) \\
    m &\leftarrow m - \alpha\, \frac{\bar g/(1-\beta_1^t)}{s}.

With :math:`\beta_1 = 0` and :math:`\alpha = \rho` this is *exactly* the rule's step
:math:`\lambda \leftarrow (1-\rho)\lambda - \rho\nabla_\mu\mathbb E_q[\bar\ell]` for the diagonal Gaussian,
with Bonnet's and Price's expected gradient and Hessian replaced by :math:`N\hat g + \delta m` and the
Gauss-Newton estimate :math:`N\hat h + \delta`. The two optimizers differ only in *where* the
:math:`g_i` are taken:

* :class:`OGN` -- at the mean, :math:`\theta = m` (the delta method);
* :class:`VOGN` -- at samples :math:`\theta_k = m + \epsilon_k/\sqrt{s}`, :math:`\epsilon_k\sim\mathcal N(0, I)`,
  :math:`k = 1..K`, the statistics being averaged over the :math:`K` samples (Monte Carlo).

Since :math:`\hat h \ge 0`, the precision stays positive: :math:`s > 0` after every step.

Symbols and arguments (per param group):

=====================  ===============================================================
:math:`\alpha`          ``lr``
:math:`N`               ``ess``: the number of training examples (the data term is
                        :math:`N` times the minibatch mean)
:math:`\rho`            ``1 - beta2``
:math:`\beta_1`         ``beta1`` (momentum; 0 gives the rule's algorithm)
:math:`\delta`          ``prior_precision`` (the prior is :math:`\mathcal N(0, \delta^{-1} I)`)
:math:`s_0`             ``init_precision`` (default: :math:`\delta`, i.e. start at the prior)
:math:`K`               ``mc_samples`` (VOGN only)
=====================  ===============================================================

Osawa et al. (2019) write the same algorithm per example: their :math:`\tilde s`, :math:`\tilde\delta` are
:math:`s = N(\tilde s + \tilde\delta)`, :math:`\delta = N\tilde\delta`, their :math:`\beta` is our :math:`\rho`.

How per-example gradients reach the optimizer (``p.grad`` is not used): either

* ``optimizer.step(closure)`` where ``closure()`` returns the *per-example* losses
  :math:`(\ell_i)_{i\in\mathcal M}` (a tensor of shape ``(M,)``, data term only, no prior) computed
  with the model's current weights; the optimizer differentiates them with one batched backward pass
  (:func:`blrlib.curvature.per_example_grads_from_losses`). :class:`VOGN` calls the closure
  ``mc_samples`` times, each time with the weights replaced by a fresh sample. Or
* ``optimizer.step(per_example_grads=grads)`` with ``grads`` a list (or the dict of
  :func:`blrlib.curvature.per_example_gradients`) of tensors of shape ``(M, *p.shape)``, one per
  parameter that requires a gradient, in param-group order (``None`` skips a parameter). For VOGN
  compute them inside ``with optimizer.sampled_params():``; gradients from several samples are
  simply concatenated along the first dimension (the mean over all rows is the Monte Carlo average).

Reference: K. Osawa, S. Swaroop, A. Jain, R. Eschenhagen, R. E. Turner, R. Yokota, M. E. Khan,
"Practical Deep Learning with Bayesian Principles", NeurIPS 2019; M. E. Khan, D. Nielsen,
V. Tangkaratt, W. Lin, Y. Gal, A. Srivastava, "Fast and Scalable Bayesian Deep Learning by
Weight-Perturbation in Adam", ICML 2018.
"""

from __future__ import annotations

from typing import Callable, Mapping, Optional, Sequence

import torch
from torch import Tensor

from .. import _validation as _v
from .._validation import Range, check_hyperparameters, document_ranges
from ..curvature import per_example_grads_from_losses
from ._base import RuleOptimizer, state_dtype
from .kernels import DiagGaussianConfig, diag_gaussian_step_foreach_

__all__ = ["OGN", "VOGN", "ogn_update_", "OGN_RANGES"]

#: The hyperparameters' ranges, declared once (validator, docstrings and tests read them).
OGN_RANGES = {
    "lr": Range(low=0.0),
    "ess": Range(low=0.0, low_open=True),
    "beta1": Range(low=0.0, high=1.0, high_open=True),
    "beta2": Range(low=0.0, high=1.0),
    "prior_precision": Range(low=0.0),
    "init_precision": Range(low=0.0, low_open=True, optional=True),
    "debias": Range(kind="bool"),
    "mc_samples": Range(kind="int", low=1),
}


def _ogn_config(group: dict) -> DiagGaussianConfig:
    """OGN/VOGN as a setting of the diagonal-Gaussian kernel: Gauss-Newton curvature N h + delta,
    momentum on the whole gradient N g + delta m."""
    return DiagGaussianConfig(
        lr=float(group["lr"]), beta2=float(group["beta2"]), curvature="gauss_newton", ess=float(group["ess"]),
        grad_scale=float(group["ess"]), prior_precision=float(group["prior_precision"]), prior_in_state=True,
        beta1=float(group["beta1"]), momentum_on="total", debias=bool(group["debias"]),
    )

_state_dtype = state_dtype


def ogn_update_(
    param: Tensor,
    precision: Tensor,
    momentum: Optional[Tensor],
    grad_mean: Tensor,
    gauss_newton: Tensor,
    *,
    step: int,
    lr: float,
    ess: float,
    beta1: float,
    beta2: float,
    prior_precision: float,
    debias: bool = True,
) -> None:
    r"""One OGN/VOGN update of one tensor, in place (the functional form of the optimizers).

    .. math::

        s \leftarrow \beta_2 s + (1-\beta_2)(N\hat h + \delta),\quad
        \bar g \leftarrow \beta_1\bar g + (1-\beta_1)(N\hat g + \delta m),\quad
        m \leftarrow m - \alpha\,\frac{\bar g/(1-\beta_1^t)}{s}

    ``param`` is :math:`m`, ``precision`` :math:`s`, ``momentum`` :math:`\bar g` (``None`` when
    :math:`\beta_1 = 0`), ``grad_mean`` :math:`\hat g`, ``gauss_newton`` :math:`\hat h`, ``step`` the
    1-based :math:`t`. No argument checks (the optimizers check).
    """
    group = dict(lr=lr, ess=ess, beta1=beta1, beta2=beta2, prior_precision=prior_precision, debias=debias)
    check_hyperparameters(group, OGN_RANGES)
    if beta1 > 0.0 and momentum is None:
        raise ValueError("Invalid momentum: None (a momentum buffer is required when beta1 > 0)")
    sd = precision.dtype
    m = param if param.dtype == sd else param.to(sd)
    diag_gaussian_step_foreach_([m], [precision], [momentum] if beta1 > 0.0 else None, [grad_mean.to(sd)],
                                [gauss_newton.to(sd)], [step], _ogn_config(group))
    if m is not param:
        param.copy_(m)


class OGN(RuleOptimizer):
    r"""Online Gauss-Newton (OGN): the Bayesian learning rule with a diagonal Gaussian, the delta method
    and the Gauss-Newton Hessian; gradients are taken at the mean :math:`m` (the model's weights).

    The update, the symbol/argument table and the two ways of passing per-example gradients
    (``step(closure)`` returning per-example losses, or ``step(per_example_grads=...)``) are
    described in :mod:`blrlib.optim.vogn`:

    .. math::

        s \leftarrow (1-\rho) s + \rho(N\hat h + \delta), \qquad
        m \leftarrow m - \alpha\,(N\hat g + \delta m)/s \quad(\beta_1 = 0).

    Args:
        params: parameters or param groups, as for any ``torch.optim`` optimizer.
        lr: :math:`\alpha \ge 0` (default: 0.1).
        ess: :math:`N > 0`, the number of training examples (required).
        beta1: momentum :math:`\beta_1 \in [0, 1)` (default: 0, the rule's algorithm).
        beta2: :math:`1-\rho \in [0, 1]` (default: 0.999).
        prior_precision: :math:`\delta \ge 0` (default: 1).
        init_precision: :math:`s_0 > 0` (default: ``prior_precision``).
        debias: divide the momentum by :math:`1-\beta_1^t` (default: True).
        generator: ``torch.Generator`` for :meth:`sampled_params` (and VOGN's sampling); its state is
            part of ``state_dict()``, so a sampled run resumes bit for bit.
        skip_nonfinite: if True, a step whose per-example gradients (or their squares) are not finite
            is skipped (``skipped_steps`` counts them) instead of raising (default: False).
        noise_fn: ``noise_fn(noises, group)`` fills the list of noise buffers (one per trainable
            parameter of ``group``) with standard normal draws in place of ``generator`` (the noise
            hook of :class:`~blrlib.optim.RuleOptimizer`).

    State per parameter: ``step`` (a tensor), ``precision`` :math:`s`, and ``momentum``
    :math:`\bar g` when :math:`\beta_1 > 0`; 16-bit parameters keep float32 state. A NaN or infinite
    per-example gradient (or squared gradient) raises :class:`ValueError` before anything changes.

    Mixed precision: the gradients come from the user (or from the closure's per-example losses), not
    from ``p.grad``, so do not use ``scaler.step(opt)``. Compute the per-example losses or gradients
    under ``torch.autocast`` (e.g. ``with torch.autocast("cpu", dtype=torch.bfloat16): out = model(X)``
    inside the closure, returning float32 losses) and call ``opt.step`` directly; bfloat16 has float32's
    exponent range, so no loss scaling is needed. If you do scale a loss, pass the per-example gradients
    *unscaled* (divided by ``scaler.get_scale()``) and skip steps yourself when they are not finite
    (otherwise ``step`` raises). The same holds for :class:`VOGN`.

    Example::

        import torch, torch.nn.functional as F
        from blrlib.optim.vogn import OGN
        model = torch.nn.Linear(3, 1)
        X, y = torch.randn(64, 3), torch.randn(64, 1)
        opt = OGN(model.parameters(), lr=0.1, ess=64)
        for _ in range(5):
            loss = opt.step(lambda: 0.5 * (model(X) - y).pow(2).sum(1))  # per-example losses

    Reference: Osawa et al., "Practical Deep Learning with Bayesian Principles", NeurIPS 2019;
    Khan & Rue, "The Bayesian Learning Rule", JMLR 2023, Sec. 4.4.
    """

    def __init__(
        self,
        params,
        lr: float = 0.1,
        ess: float | None = None,
        beta1: float = 0.0,
        beta2: float = 0.999,
        prior_precision: float = 1.0,
        init_precision: float | None = None,
        debias: bool = True,
        *,
        generator: torch.Generator | None = None,
        skip_nonfinite: bool = False,
        noise_fn=None,
        _extra_defaults: dict | None = None,
    ):
        _v.require_ess(ess)
        defaults = dict(
            lr=lr,
            ess=ess,
            beta1=beta1,
            beta2=beta2,
            prior_precision=prior_precision,
            init_precision=init_precision,
            debias=debias,
            **(_extra_defaults or {}),
        )
        self._validate_group(defaults)
        self._init_sampling(generator, skip_nonfinite, noise_fn)
        super().__init__(params, defaults)

    # ------------------------------------------------------------------ arguments
    def _validate_group(self, g: dict) -> None:
        check_hyperparameters(g, self.RANGES)
        if g["init_precision"] is None and float(g["prior_precision"]) <= 0.0:
            raise ValueError(
                "Invalid init_precision: None with prior_precision 0 (give init_precision > 0, "
                "or a prior_precision > 0 to start from)"
            )

    RANGES = OGN_RANGES
    STATE_KEYS = ("precision",)
    OPTIONAL_STATE_KEYS = ("momentum",)

    def _required_state_keys(self, group: dict) -> tuple:
        return ("precision", "momentum") if float(group["beta1"]) > 0.0 else ("precision",)

    # ------------------------------------------------------------------ state
    def _trainable(self) -> list:
        return [(group, p) for group in self.param_groups for p in group["params"] if p.requires_grad]

    def _state_for(self, p: Tensor, group: dict) -> dict:
        st = self.state[p]
        if len(st) == 0:
            s0 = group["init_precision"]
            s0 = float(group["prior_precision"]) if s0 is None else float(s0)
            st["step"] = torch.zeros((), dtype=torch.float32)
            st["precision"] = torch.full_like(p, s0, dtype=_state_dtype(p), memory_format=torch.preserve_format)
        if group["beta1"] > 0.0 and "momentum" not in st:
            st["momentum"] = torch.zeros_like(p, dtype=_state_dtype(p), memory_format=torch.preserve_format)
        return st

    # ------------------------------------------------------------------ posterior
    @torch.no_grad()
    def posterior_precision(self) -> list:
        """:math:`s` for every parameter that requires a gradient (param-group order)."""
        return [self._precision(p, g).clone() for g, p in self._trainable()]

    def _precision(self, p: Tensor, group: dict) -> Tensor:
        """s of ``p``: its state, or s0 for a parameter that has had no gradient yet (no state allocated)."""
        st = self.state.get(p)
        if st and "precision" in st:
            return st["precision"]
        s0 = group["init_precision"]
        s0 = float(group["prior_precision"]) if s0 is None else float(s0)
        return torch.full_like(p, s0, dtype=_state_dtype(p))

    @torch.no_grad()
    def posterior_std(self) -> list:
        r""":math:`\sigma = 1/\sqrt{s}` for every parameter that requires a gradient (param-group order)."""
        return [s.rsqrt() for s in self.posterior_precision()]

    def rule_parameters(self) -> list:
        r"""Per group, the rule's :math:`\rho = 1-\beta_2`, :math:`N` (``ess``) and :math:`\delta`."""
        return [dict(rho=1.0 - float(g["beta2"]), ess=float(g["ess"]), prior_precision=float(g["prior_precision"]))
                for g in self.param_groups]

    # ------------------------------------------------------------------ sampling (the base's protocol)
    def sampled_params(self, train: bool = False):
        r"""Inside the block every trainable parameter holds a sample :math:`\theta = m + \epsilon/\sqrt{s}`.

        The noise :math:`\epsilon\sim\mathcal N(0, I)` is drawn per parameter, in param-group order,
        from ``generator`` (or ``noise_fn``). On exit (also on an exception) the mean :math:`m` is
        restored exactly. Use it for prediction with posterior samples, and, with VOGN's explicit API,
        to compute per-example gradients at a sample before ``step(per_example_grads=...)``.
        ``train=True`` is refused: OGN/VOGN read per-example gradients, not ``p.grad``.
        """
        if train:
            raise ValueError(
                "Invalid train: True (OGN/VOGN take per-example gradients: use step(closure) or "
                "step(per_example_grads=...), with the gradients computed inside sampled_params())"
            )
        return super().sampled_params(False)

    def _write_sample_(self, train: bool) -> list:
        # the saved means and the noise live only for the block (OGN/VOGN keep no work buffers)
        touched = []
        for group in self.param_groups:
            ps = self._sampled(group)
            noises = [torch.empty(p.shape, dtype=_state_dtype(p), device=p.device) for p in ps]
            self._draw_noise_(noises, group)
            for p, eps in zip(ps, noises):
                touched.append((p, p.detach().clone()))
                p.add_((eps * self._precision(p, group).rsqrt()).to(p.dtype))
        return touched

    def _restore_(self, touched: list) -> None:
        for p, mean in touched:
            p.copy_(mean)

    # ------------------------------------------------------------------ statistics
    def _accumulate(self, sums: list, grads: Sequence, params: list) -> None:
        """Add the per-example sums of g and g*g (and the row count) of one batch to ``sums``."""
        rows = None
        for k, ((_, p), g) in enumerate(zip(params, grads)):
            if g is None:
                continue
            if not isinstance(g, Tensor):
                raise ValueError(f"per_example_grads[{k}] must be a tensor or None; got {type(g).__name__}")
            if g.is_sparse or g.is_complex():
                raise ValueError(
                    f"Invalid per_example_grads[{k}]: a {'sparse' if g.is_sparse else 'complex'} tensor "
                    "(OGN/VOGN need dense real per-example gradients)"
                )
            if tuple(g.shape[1:]) != tuple(p.shape) or g.ndim != p.ndim + 1:
                raise ValueError(
                    f"per_example_grads[{k}] has shape {tuple(g.shape)}; expected (M, *{tuple(p.shape)})"
                )
            if rows is None:
                rows = g.shape[0]
            elif g.shape[0] != rows:
                raise ValueError(
                    f"per_example_grads[{k}] has {g.shape[0]} examples but an earlier entry has {rows}; they must match"
                )
            if rows == 0:
                raise ValueError(f"per_example_grads[{k}] holds no example (M = 0)")
            g = g.detach().to(dtype=_state_dtype(p), device=p.device)
            if sums[k] is None:
                sums[k] = [g.sum(0), (g * g).sum(0), 0]
            else:
                sums[k][0].add_(g.sum(0))
                sums[k][1].add_((g * g).sum(0))
            sums[k][2] += rows

    def _closure_statistics(self, closure: Callable, params: list, sums: list) -> Tensor:
        with torch.enable_grad():
            losses = closure()
        if not isinstance(losses, Tensor) or losses.ndim != 1:
            shape = tuple(losses.shape) if isinstance(losses, Tensor) else type(losses).__name__
            raise ValueError(
                f"closure must return the per-example losses, a 1-D tensor of shape (M,); got {shape}"
            )
        grads = per_example_grads_from_losses(losses, [p for _, p in params])
        self._accumulate(sums, grads, params)
        return losses.detach().mean()

    def _closure_pass(self, closure: Callable, params: list, sums: list) -> Tensor:
        return self._closure_statistics(closure, params, sums)

    # ------------------------------------------------------------------ step
    def step(self, closure: Optional[Callable[[], Tensor]] = None, *, per_example_grads=None):
        """One step from per-example gradients: give either ``closure`` (returning per-example losses)
        or ``per_example_grads``; see :mod:`blrlib.optim.vogn`. Returns the mean loss (closure) or None."""
        if (closure is None) == (per_example_grads is None):
            raise ValueError(
                "OGN/VOGN need per-example gradients: pass exactly one of closure (returning per-example "
                "losses of shape (M,)) or per_example_grads"
            )
        params = self._trainable()
        sums: list = [None] * len(params)
        loss = None
        if closure is not None:
            if not callable(closure):
                raise ValueError(f"closure must be callable; got {type(closure).__name__}")
            loss = self._closure_pass(closure, params, sums)
        else:
            grads = list(per_example_grads.values()) if isinstance(per_example_grads, Mapping) else per_example_grads
            if isinstance(grads, Tensor) or not isinstance(grads, Sequence):
                raise ValueError("per_example_grads must be a list (or dict) of tensors, one per trainable parameter")
            if len(grads) != len(params):
                raise ValueError(
                    f"per_example_grads has {len(grads)} entries but the optimizer has {len(params)} "
                    "parameters that require a gradient; they must match (use None to skip one)"
                )
            self._accumulate(sums, grads, params)
        # Check everything before changing anything (the non-finite policy is the base's).
        for k, acc in enumerate(sums):
            if acc is not None and not (bool(torch.isfinite(acc[0]).all()) and bool(torch.isfinite(acc[1]).all())):
                self._skip_or_raise(
                    f"the per-example gradients of parameter {k} (shape {tuple(params[k][1].shape)}) contain NaN "
                    "or infinite values (or overflow when squared); the step was not taken and m, s are unchanged"
                )
                return loss
        with torch.no_grad():
            buckets: dict = {}
            for (group, p), acc in zip(params, sums):
                if acc is None:
                    continue
                st = self._state_for(p, group)
                st["step"] += 1
                key = (id(group), p.device, p.dtype)
                buckets.setdefault(key, (group, []))[1].append((p, st, acc))
            for group, items in buckets.values():
                cfg = _ogn_config(group)
                means = [p if p.dtype == st["precision"].dtype else p.to(st["precision"].dtype) for p, st, _ in items]
                for acc in (it[2] for it in items):
                    acc[0].div_(acc[2])
                    acc[1].div_(acc[2])
                diag_gaussian_step_foreach_(
                    means, [st["precision"] for _, st, _ in items],
                    [st["momentum"] for _, st, _ in items] if cfg.beta1 > 0.0 else None,
                    [acc[0] for _, _, acc in items], [acc[1] for _, _, acc in items],
                    [float(st["step"]) for _, st, _ in items], cfg,
                )
                for (p, _, _), m in zip(items, means):
                    if m is not p:
                        p.copy_(m)
        return loss


class VOGN(OGN):
    r"""Variational online Gauss-Newton (VOGN): OGN with the gradients taken at samples from :math:`q`.

    .. math::

        \theta_k = m + \epsilon_k/\sqrt{s},\ \epsilon_k\sim\mathcal N(0, I),\quad
        \hat g = \tfrac1{KM}\textstyle\sum_{k,i} g_i(\theta_k),\quad
        \hat h = \tfrac1{KM}\textstyle\sum_{k,i} g_i(\theta_k)^2, \\
        s \leftarrow (1-\rho) s + \rho(N\hat h + \delta), \qquad
        \bar g \leftarrow \beta_1\bar g + (1-\beta_1)(N\hat g + \delta m), \qquad
        m \leftarrow m - \alpha\,\frac{\bar g/(1-\beta_1^t)}{s}.

    Arguments as :class:`OGN`, plus ``mc_samples`` :math:`K \ge 1` (default 1): ``step(closure)``
    calls the closure :math:`K` times, each inside :meth:`sampled_params` with fresh noise (drawn
    from ``generator``, per parameter in param-group order), and restores :math:`m` before the update.
    With ``step(per_example_grads=...)`` compute the gradients yourself inside
    ``with opt.sampled_params():`` (concatenate the rows of several samples).

    Example::

        import torch
        from blrlib.optim.vogn import VOGN
        model = torch.nn.Linear(3, 1)
        X, y = torch.randn(64, 3), torch.randn(64, 1)
        opt = VOGN(model.parameters(), lr=0.1, ess=64, mc_samples=2)
        for _ in range(5):
            opt.step(lambda: 0.5 * (model(X) - y).pow(2).sum(1))
        with torch.no_grad(), opt.sampled_params():   # predict with a posterior sample
            pred = model(X)

    Reference: Osawa et al., "Practical Deep Learning with Bayesian Principles", NeurIPS 2019;
    Khan et al., "Fast and Scalable Bayesian Deep Learning by Weight-Perturbation in Adam", ICML 2018.
    """

    def __init__(
        self,
        params,
        lr: float = 0.1,
        ess: float | None = None,
        beta1: float = 0.0,
        beta2: float = 0.999,
        prior_precision: float = 1.0,
        init_precision: float | None = None,
        debias: bool = True,
        mc_samples: int = 1,
        *,
        generator: torch.Generator | None = None,
        skip_nonfinite: bool = False,
        noise_fn=None,
    ):
        super().__init__(
            params,
            lr=lr,
            ess=ess,
            beta1=beta1,
            beta2=beta2,
            prior_precision=prior_precision,
            init_precision=init_precision,
            debias=debias,
            generator=generator,
            skip_nonfinite=skip_nonfinite,
            noise_fn=noise_fn,
            _extra_defaults=dict(mc_samples=mc_samples),
        )

    def _validate_group(self, g: dict) -> None:
        super()._validate_group(g)

    def _closure_pass(self, closure: Callable, params: list, sums: list) -> Tensor:
        # One sample draws noise for every parameter, so K is global: the largest over the groups.
        # (The per-example gradients are taken inside each block, before the mean is restored.)
        samples = self._mc_samples()
        total = None
        for _ in range(samples):
            with self.sampled_params():
                loss = self._closure_statistics(closure, params, sums)
            total = loss if total is None else total + loss
        return total / samples


for _cls in (OGN, VOGN):
    _cls.__doc__ = (_cls.__doc__ or "") + (
        "\n    Hyperparameter ranges (declared once in ``OGN_RANGES``; checked on construction, for every\n"
        "    param group and on ``load_state_dict``):\n\n"
        + "\n".join("    " + line for line in document_ranges(
            {k: v for k, v in OGN_RANGES.items() if _cls is VOGN or k != "mc_samples"},
            dict(lr=0.1, beta1=0.0, beta2=0.999, prior_precision=1.0, init_precision=None, debias=True, mc_samples=1),
        ).splitlines()) + "\n"
    )
