r"""The rule's step for each family, written once: the kernels every optimizer and ``blr_step`` call.

Three families, three kernels (torch's layering: optimizer class -> functional form -> kernel):

* :func:`diag_gaussian_step` -- the diagonal Gaussian :math:`q = \mathcal N(m, \mathrm{diag}(s)^{-1})`
  (RuleRMSprop and ``modified_rule`` (RMSprop/Adam), OGN, VOGN, IVON, and ``blr_step`` /
  ``improved_blr_step`` on a :class:`~blrlib.families.DiagonalGaussian`), with the switches in which
  those algorithms differ (:class:`DiagGaussianConfig`). Three implementations of the same step:
  :func:`diag_gaussian_step` (one tensor, pure, the readable one the book shows),
  :func:`diag_gaussian_step_foreach_` (lists of tensors, in place, ``torch._foreach_*``) and
  :func:`diag_gaussian_step_compiled` (opt-in, ``torch.compile`` of the first);
* :func:`fixed_cov_gaussian_step` -- :math:`q = \mathcal N(m, \sigma^2 I)` (``rule_sgd``, RuleSGD, the
  dropout step, ``blr_step`` on a :class:`~blrlib.families.FixedCovarianceGaussian`);
* :func:`bernoulli_step` -- a Bernoulli on :math:`\{-1,+1\}` or :math:`\{0, 1\}` (``binary_rule_step``,
  STE, BayesBiNN, ``blr_step`` on a :class:`~blrlib.families.Bernoulli`).

Momentum with bias correction (:func:`momentum_update`) is written once and used by the first and
the last. The diagonal-Gaussian step, per entry, with :math:`t` the step number after the step:

.. math::

    c &= \text{curvature statistic (below)} \;[+\,\delta \text{ if the prior is in } s] \\
    s' &= \beta_2 s + (1-\beta_2)\,c \;\big[+ \tfrac12(1-\beta_2)^2 (s-c)^2/(s+o)\big]
        \qquad (\text{positivity correction, Lin, Schmidt \& Khan 2020}) \\
    d &= G\hat g + \delta m \ (\text{momentum on "total"}) \quad\text{or}\quad G\hat g\ (\text{"data"}) \\
    u' &= \beta_1 u + (1-\beta_1) d, \qquad \hat d = u'/(1-\beta_1^t) \ (\text{or } u', \text{ or } d \text{ when } \beta_1 = 0) \\
    m' &= m - \alpha\,\mathrm{clip}\Big(\frac{\hat d\ [+\,\delta m \text{ for "data"}]}
        {\big(\tfrac{s'+o}{1-\beta_2^t}\big)^{1/2\text{ or }1} + \epsilon},\ \pm r\Big)

with :math:`o = 0` when the state :math:`s` holds the whole precision (the prior's :math:`\delta`
included) and :math:`o = \delta` when it holds only the data part (IVON's :math:`h`). Curvature
statistics :math:`c` (``curvature``), from the gradient :math:`\hat g` and a statistic ``stat``:

=================  =====================================================  =======================
``"hessian"``      :math:`c = \texttt{stat}` (a Hessian estimate)          ``improved_blr_step``
``"gauss_newton"`` :math:`c = N\,\texttt{stat}` (mean of squared
                   per-example or per-sample gradients)                   OGN, VOGN, IVON gradsq
``"gradsq"``       :math:`c = N\hat g^2`                                   RuleRMSprop
``"gradsq_total"`` :math:`c = (G\hat g + \delta m)^2` (no shift)           torch's RMSprop/Adam
``"price"``        :math:`c = \texttt{stat}\,\sqrt{N(s+o)}`
                   (:math:`\texttt{stat} = \overline{\hat g_k\epsilon_k}`,
                   :math:`=\overline{\hat g_k\epsilon_k}/\sigma`)            IVON
=================  =====================================================  =======================
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional, Sequence

import torch
from torch import Tensor

from .._validation import Range, check_hyperparameters

__all__ = [
    "CURVATURES",
    "DiagGaussianConfig",
    "DiagGaussianState",
    "DIAG_GAUSSIAN_RANGES",
    "check_diag_gaussian_config",
    "momentum_update",
    "diag_gaussian_step",
    "diag_gaussian_step_foreach_",
    "diag_gaussian_step_compiled",
    "fixed_cov_gaussian_step",
    "bernoulli_step",
]

CURVATURES = ("hessian", "gauss_newton", "gradsq", "gradsq_total", "price")


class DiagGaussianConfig(NamedTuple):
    r"""The switches and hyperparameters of :func:`diag_gaussian_step` (see the module docstring)."""

    lr: float  #: :math:`\alpha`, the step size of the mean
    beta2: float  #: :math:`\beta_2 = 1-\rho`, the decay of the precision
    curvature: str = "hessian"  #: which curvature statistic (``CURVATURES``)
    ess: float = 1.0  #: :math:`N`, scales the curvature statistic
    grad_scale: float = 1.0  #: :math:`G`, scales the gradient (N for a sum over the data, 1 per example)
    prior_precision: float = 0.0  #: :math:`\delta`
    prior_in_state: bool = True  #: True: :math:`s` holds :math:`\delta` (:math:`o=0`); False: :math:`o=\delta`
    correction: bool = False  #: the positivity correction term
    beta1: float = 0.0  #: momentum :math:`\beta_1` (0: none)
    momentum_on: str = "total"  #: "total" (:math:`G\hat g+\delta m`) or "data" (:math:`G\hat g`)
    debias: bool = False  #: divide the momentum by :math:`1-\beta_1^t`
    debias_precision: bool = False  #: divide :math:`s'+o` by :math:`1-\beta_2^t` (Adam)
    sqrt: bool = False  #: square root of the precision in the denominator (RMSprop/Adam)
    eps: float = 0.0  #: :math:`\epsilon` added to the denominator
    clip_radius: float = math.inf  #: :math:`r`


#: The allowed values of the configuration, as data (read by :func:`check_diag_gaussian_config`).
DIAG_GAUSSIAN_RANGES = {
    "lr": Range(low=0.0),
    "beta2": Range(low=0.0, high=1.0),
    "curvature": Range(kind="choice", choices=CURVATURES),
    "ess": Range(low=0.0, low_open=True),
    "grad_scale": Range(low=0.0, low_open=True),
    "prior_precision": Range(low=0.0),
    "prior_in_state": Range(kind="bool"),
    "correction": Range(kind="bool"),
    "beta1": Range(low=0.0, high=1.0, high_open=True),
    "momentum_on": Range(kind="choice", choices=("total", "data")),
    "debias": Range(kind="bool"),
    "debias_precision": Range(kind="bool"),
    "sqrt": Range(kind="bool"),
    "eps": Range(low=0.0),
    "clip_radius": Range(low=0.0, low_open=True, allow_inf=True),
}


def check_diag_gaussian_config(cfg: DiagGaussianConfig) -> DiagGaussianConfig:
    """Check every field of ``cfg`` against :data:`DIAG_GAUSSIAN_RANGES` (cheap: scalars only)."""
    check_hyperparameters(cfg._asdict(), DIAG_GAUSSIAN_RANGES)
    return cfg


class DiagGaussianState(NamedTuple):
    r"""The state of one tensor: mean :math:`m`, precision :math:`s` (or IVON's :math:`h`), momentum
    :math:`u` (``None`` without momentum) and the number of steps taken."""

    mean: Tensor
    precision: Tensor
    momentum: Optional[Tensor]
    step: int


def momentum_update(u: Optional[Tensor], d: Tensor, beta: float, step: int, debias: bool) -> tuple:
    r"""Momentum with bias correction, written once: :math:`u' = \beta u + (1-\beta) d`, returns
    :math:`(u', \hat d)` with :math:`\hat d = u'/(1-\beta^t)` (``debias``) or :math:`u'`; with
    :math:`\beta = 0` it returns ``(None, d)``. ``step`` is :math:`t`, the step number after the step."""
    if beta == 0.0:
        return None, d
    u = d * (1.0 - beta) if u is None else beta * u + (1.0 - beta) * d
    return u, (u / (1.0 - beta**step) if debias else u)


def _curvature(cfg: DiagGaussianConfig, mean: Tensor, s: Tensor, grad: Tensor, stat: Optional[Tensor]) -> Tensor:
    kind, off = cfg.curvature, 0.0 if cfg.prior_in_state else cfg.prior_precision
    if kind == "hessian":
        c = stat
    elif kind == "gauss_newton":
        c = cfg.ess * stat
    elif kind == "gradsq":
        c = cfg.ess * grad * grad
    elif kind == "gradsq_total":
        g = cfg.grad_scale * grad + cfg.prior_precision * mean
        return g * g
    else:  # price: stat = mean of g_k eps_k = sigma * hhat, sigma = 1/sqrt(N (s + o))
        c = stat * torch.sqrt(cfg.ess * (s + off))
    return c + cfg.prior_precision if cfg.prior_in_state else c


def diag_gaussian_step(
    state: DiagGaussianState, grad: Tensor, stat: Optional[Tensor] = None, *, cfg: DiagGaussianConfig
) -> DiagGaussianState:
    r"""One step of the rule for a diagonal Gaussian, one tensor, pure (the readable implementation).

    ``grad`` is :math:`\hat g`; ``stat`` the curvature statistic (ignored by ``"gradsq"`` and
    ``"gradsq_total"``). Returns the new :class:`DiagGaussianState`; nothing is modified. The
    configuration is not checked here (see :func:`check_diag_gaussian_config`), so that the
    compiled form stays one graph.
    """
    m, s, u = state.mean, state.precision, state.momentum
    t = state.step + 1
    delta = cfg.prior_precision
    off = 0.0 if cfg.prior_in_state else delta
    # precision: s' = beta2 s + (1 - beta2) c [+ correction]
    c = _curvature(cfg, m, s, grad, stat)
    new_s = cfg.beta2 * s + (1.0 - cfg.beta2) * c
    if cfg.correction:
        new_s = new_s + 0.5 * (1.0 - cfg.beta2) ** 2 * (s - c) ** 2 / (s + off)
    # direction: momentum on the total gradient, or on the data part with the prior added after
    g = cfg.grad_scale * grad
    total = cfg.momentum_on == "total"
    d = g + delta * m if (total and delta != 0.0) else g
    u, d_hat = momentum_update(u, d, cfg.beta1, t, cfg.debias)
    if not total and delta != 0.0:
        d_hat = d_hat + delta * m
    denom = new_s + off if off != 0.0 else new_s
    if cfg.debias_precision:
        denom = denom / (1.0 - cfg.beta2**t)
    if cfg.sqrt:
        denom = denom.sqrt()
    if cfg.eps != 0.0:
        denom = denom + cfg.eps
    direction = d_hat / denom
    if not math.isinf(cfg.clip_radius):
        direction = direction.clamp(-cfg.clip_radius, cfg.clip_radius)
    return DiagGaussianState(m - cfg.lr * direction, new_s, u, t)


_COMPILED = None


def diag_gaussian_step_compiled(
    state: DiagGaussianState, grad: Tensor, stat: Optional[Tensor] = None, *, cfg: DiagGaussianConfig
) -> DiagGaussianState:
    """:func:`diag_gaussian_step` through ``torch.compile`` (opt-in; compiled on first use, needs a
    working compiler; results agree with the other implementations to rounding)."""
    global _COMPILED
    if _COMPILED is None:
        _COMPILED = torch.compile(diag_gaussian_step, dynamic=True)
    return _COMPILED(state, grad, stat, cfg=cfg)


def diag_gaussian_step_foreach_(
    means: Sequence[Tensor],
    precisions: Sequence[Tensor],
    momentums: Optional[Sequence[Tensor]],
    grads: Sequence[Tensor],
    stats: Optional[Sequence[Tensor]],
    steps: Sequence[int],
    cfg: DiagGaussianConfig,
    *,
    scratch: Optional[Sequence[Tensor]] = None,
    scratch2: Optional[Sequence[Tensor]] = None,
    scratch2_holds_rsqrt: bool = False,
) -> None:
    r""":func:`diag_gaussian_step` on lists of tensors, in place, with ``torch._foreach_*`` kernels.

    ``means``, ``precisions`` and ``momentums`` (``None`` when :math:`\beta_1 = 0`) are updated in
    place; ``steps[i]`` is the step number :math:`t` of tensor ``i`` *after* this step. ``stats`` may
    be overwritten (it is used as work space when ``scratch`` is not given); ``scratch``/``scratch2``
    are optional work buffers shaped like ``means`` (allocated when missing). ``grads`` are read only.
    With ``scratch2_holds_rsqrt=True`` (a cache kept by the caller) ``scratch2`` already holds
    :math:`1/\sqrt{s+o}` on entry (used by the correction); on return it always holds the denominator
    :math:`s'+o` (before the square root and :math:`\epsilon`), from which the caller can refresh its cache.
    All lists must hold tensors of one dtype and device per position.
    """
    n = len(means)
    if n == 0:
        return
    b1, b2, delta = cfg.beta1, cfg.beta2, cfg.prior_precision
    off = 0.0 if cfg.prior_in_state else delta
    total = cfg.momentum_on == "total"
    G, N = cfg.grad_scale, cfg.ess
    kind = cfg.curvature
    if scratch is None:
        scratch = stats if (stats is not None and kind in ("hessian", "gauss_newton", "price")) else None
        if scratch is None:
            scratch = [torch.empty_like(s) for s in precisions]
    if scratch2 is None:
        scratch2 = [torch.empty_like(s) for s in precisions]
    w, r = list(scratch), list(scratch2)

    # momentum (reads m before it moves)
    if b1 > 0.0:
        if total:
            torch._foreach_mul_(momentums, b1)
            torch._foreach_add_(momentums, grads, alpha=(1.0 - b1) * G)
            if delta != 0.0:
                torch._foreach_add_(momentums, means, alpha=(1.0 - b1) * delta)
        elif G == 1.0:
            torch._foreach_lerp_(momentums, grads, 1.0 - b1)
        else:
            torch._foreach_mul_(momentums, b1)
            torch._foreach_add_(momentums, grads, alpha=(1.0 - b1) * G)

    # precision
    if cfg.correction:
        # r = 1/sqrt(s + o); w = (c - s) r / sqrt(N) for price, (c - s) r otherwise;
        # s' = s + (1 - b2)(c - s) + 0.5 (1 - b2)^2 (c - s)^2/(s + o)
        if not scratch2_holds_rsqrt:
            for ri, si in zip(r, precisions):
                torch.add(si, off, out=ri) if off != 0.0 else ri.copy_(si)
            torch._foreach_rsqrt_(r)
        if kind == "price":
            # stat = sigma hhat with sigma = r / sqrt(N): w = (hhat - s) sigma = stat - s r / sqrt(N)
            if not _same_tensors(w, stats):
                torch._foreach_copy_(w, stats)
            sq = math.sqrt(N)
            if cfg.prior_in_state and delta != 0.0:
                torch._foreach_add_(w, r, alpha=delta / sq)  # c includes delta: + delta sigma
            torch._foreach_addcmul_(w, precisions, r, value=-1.0 / sq)
            torch._foreach_addcdiv_(precisions, w, r, value=(1.0 - b2) * sq)
            torch._foreach_addcmul_(precisions, w, w, value=0.5 * (1.0 - b2) ** 2 * N)
        else:
            _curvature_foreach_(w, cfg, means, precisions, grads, stats)
            torch._foreach_sub_(w, precisions)
            torch._foreach_add_(precisions, w, alpha=1.0 - b2)  # s + (1 - b2) e
            torch._foreach_mul_(w, r)  # e r
            torch._foreach_addcmul_(precisions, w, w, value=0.5 * (1.0 - b2) ** 2)
    else:
        if kind == "price":
            for ri, si in zip(r, precisions):
                torch.add(si, off, out=ri) if off != 0.0 else ri.copy_(si)
            torch._foreach_mul_(r, N)
            torch._foreach_sqrt_(r)
            if not _same_tensors(w, stats):
                torch._foreach_copy_(w, stats)
            torch._foreach_mul_(w, r)
            if cfg.prior_in_state and delta != 0.0:
                torch._foreach_add_(w, delta)
        else:
            _curvature_foreach_(w, cfg, means, precisions, grads, stats)
        torch._foreach_lerp_(precisions, w, 1.0 - b2)

    # mean: numerator in w, denominator in r
    bc1 = [1.0 - b1**t if (cfg.debias and b1 > 0.0) else 1.0 for t in steps]
    if b1 > 0.0:
        if not total and delta != 0.0:
            for wi, ui, mi, bc in zip(w, momentums, means, bc1):
                torch.add(ui, mi, alpha=delta * bc, out=wi)  # bc (u / bc + delta m)
        else:
            torch._foreach_copy_(w, momentums)
    else:
        for wi, gi, mi in zip(w, grads, means):
            torch.mul(gi, G, out=wi) if G != 1.0 else wi.copy_(gi)
            if delta != 0.0:
                wi.add_(mi, alpha=delta)
    if off != 0.0:
        for ri, si in zip(r, precisions):
            torch.add(si, off, out=ri)
    else:
        torch._foreach_copy_(r, precisions)
    if cfg.debias_precision or cfg.sqrt or cfg.eps != 0.0:
        if scratch2_holds_rsqrt:
            raise ValueError("Invalid scratch2_holds_rsqrt: True (only without sqrt, eps and debias_precision)")
        if cfg.debias_precision:
            torch._foreach_mul_(r, [1.0 / (1.0 - b2**t) for t in steps])
        if cfg.sqrt:
            torch._foreach_sqrt_(r)
        if cfg.eps != 0.0:
            torch._foreach_add_(r, cfg.eps)
    if math.isinf(cfg.clip_radius):
        torch._foreach_addcdiv_(means, w, r, [-cfg.lr / bc for bc in bc1])
    else:
        torch._foreach_div_(w, r)
        torch._foreach_mul_(w, [1.0 / bc for bc in bc1])
        torch._foreach_clamp_min_(w, -cfg.clip_radius)
        torch._foreach_clamp_max_(w, cfg.clip_radius)
        torch._foreach_add_(means, w, alpha=-cfg.lr)


def _same_tensors(a, b) -> bool:
    """True if the two lists hold the very same tensors (then no copy is needed)."""
    return b is not None and len(a) == len(b) and all(x is y for x, y in zip(a, b))


def _curvature_foreach_(w, cfg, means, precisions, grads, stats) -> None:
    """w <- the curvature statistic c (with the prior's shift where the state holds it)."""
    kind, delta = cfg.curvature, cfg.prior_precision
    if kind in ("hessian", "gauss_newton"):
        if not _same_tensors(w, stats):
            torch._foreach_copy_(w, stats)
        if kind == "gauss_newton" and cfg.ess != 1.0:
            torch._foreach_mul_(w, cfg.ess)
    elif kind == "gradsq":
        for wi, gi in zip(w, grads):
            torch.mul(gi, gi, out=wi)
        if cfg.ess != 1.0:
            torch._foreach_mul_(w, cfg.ess)
    elif kind == "gradsq_total":
        for wi, gi, mi in zip(w, grads, means):
            torch.mul(gi, cfg.grad_scale, out=wi)
            if delta != 0.0:
                wi.add_(mi, alpha=delta)
        torch._foreach_mul_(w, w)
        return
    if cfg.prior_in_state and delta != 0.0:
        torch._foreach_add_(w, delta)


def fixed_cov_gaussian_step(
    mean: Tensor, grad: Tensor, *, rho: float, variance: float, ess: float = 1.0, prior_precision: float = 0.0
) -> Tensor:
    r"""The rule for :math:`q = \mathcal N(m, \sigma^2 I)` with the delta method: pure, one tensor.

    .. math::

        m' = m - \rho\,\sigma^2\,\big(N\hat g + \delta\, m\big)

    (the entropy of a fixed-covariance Gaussian is constant, so :math:`\lambda = m/\sigma^2` moves by
    :math:`-\rho` times the gradient). ``grad`` = :math:`\hat g`, ``ess`` = :math:`N`.
    """
    direction = ess * grad + prior_precision * mean if prior_precision != 0.0 else ess * grad
    return mean - (rho * variance) * direction


def bernoulli_step(
    lam: Tensor,
    grad_mu: Tensor,
    *,
    rho: float,
    prior_lambda: float | Tensor = 0.0,
    momentum: Optional[Tensor] = None,
    beta: float = 0.0,
    step: int = 1,
) -> tuple:
    r"""The rule for a Bernoulli candidate (natural parameter :math:`\lambda`), pure.

    .. math::

        d = \hat\gv_\mu + \lambda - \lambda_0, \quad u' = \beta u + (1-\beta) d, \quad
        \lambda' = \lambda - \rho\, u'/(1-\beta^t)

    (:math:`\beta = 0`: :math:`\lambda' = (1-\rho)\lambda - \rho(\hat\gv_\mu - \lambda_0)`, the rule).
    Returns ``(new_lambda, new_momentum)`` (``None`` when :math:`\beta = 0`); ``step`` is :math:`t`,
    the step number after the step.
    """
    d = grad_mu + lam - prior_lambda if not (isinstance(prior_lambda, float) and prior_lambda == 0.0) else grad_mu + lam
    u, d_hat = momentum_update(momentum, d, beta, step, True)
    return lam - rho * d_hat, u
