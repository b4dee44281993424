r"""Teaching optimizers: SGD and the rule's own RMSprop, derived from the Bayesian learning rule.

Two candidates, the delta method and minibatch gradients give two optimizers (Khan & Rue, 2023, Sec. 4.1-4.2).
Throughout, :math:`N` is the number of training examples (``ess``), the loss of the whole data set is

.. math::

    \bar\ell(\theta) = \sum_{i=1}^N \ell_i(\theta) + \tfrac{\delta}{2}\|\theta\|^2,

:math:`\delta` is the prior precision (``prior_precision``), and :math:`\hat g` is what ``loss.backward()``
leaves in ``p.grad`` when the loss is the **mean** over a minibatch :math:`\mathcal M` of size :math:`B`,
:math:`\hat g = \frac1B\sum_{i\in\mathcal M}\nabla\ell_i(m)`. Then :math:`N\hat g + \delta m` estimates
:math:`\nabla\bar\ell(m)` without bias.

* :class:`RuleSGD` (candidate :math:`\mathcal N(m, \sigma^2 I)`):
  :math:`m \leftarrow m - \rho\sigma^2 (N\hat g + \delta m)`, which is ``torch.optim.SGD`` with
  ``lr`` :math:`= \rho\sigma^2 N` and ``weight_decay`` :math:`= \delta/N`.
* :class:`RuleRMSprop` (candidate :math:`\mathcal N(m, \mathrm{diag}(s)^{-1})`, Hessian of
  :math:`\sum_i\ell_i` replaced by :math:`N\hat g^2`):

  .. math::

      s \leftarrow (1-\rho)\, s + \rho\,(N\hat g^2 + \delta), \qquad
      m \leftarrow m - \rho\, (N\hat g + \delta m) / s .

  No square root, no :math:`\epsilon`, no momentum, no bias correction: the rule's own optimizer.
* :func:`modified_rule` is the same step with the switches that turn it into ``torch.optim.RMSprop`` and
  ``torch.optim.Adam`` (square root, :math:`\epsilon`, momentum, bias correction, squared L2 gradient).

The classes behave like ``torch.optim`` optimizers (param groups, ``state_dict`` with the step counter,
learning-rate schedulers, any device and floating dtype). The functional forms (:func:`rule_sgd`,
:func:`rule_rmsprop`, :func:`modified_rule`) are pure: they take a state and a gradient and return a new
state without modifying their inputs.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Optional

import torch
from torch import Tensor

from .. import _validation as _v
from .._validation import Range, check_hyperparameters, document_ranges
from ._base import check_real_params, state_dtype
from .kernels import DiagGaussianConfig, DiagGaussianState, diag_gaussian_step, diag_gaussian_step_foreach_, fixed_cov_gaussian_step

__all__ = [
    "RuleSGD",
    "RuleRMSprop",
    "RuleSGDState",
    "RuleRMSpropState",
    "ModifiedRuleState",
    "rule_sgd_init",
    "rule_sgd",
    "rule_rmsprop_init",
    "rule_rmsprop",
    "modified_rule_init",
    "modified_rule",
]

_HESSIANS = ("rule", "torch")

#: The hyperparameters' ranges, declared once (validator, docstrings and tests read them).
RULE_SGD_RANGES = {
    "rho": Range(low=0.0, high=1.0, low_open=True),
    "variance": Range(low=0.0, low_open=True),
    "ess": Range(low=0.0, low_open=True),
    "prior_precision": Range(low=0.0),
}
RULE_RMSPROP_RANGES = {
    "lr": Range(low=0.0, high=1.0, low_open=True),
    "rho": Range(low=0.0, high=1.0, low_open=True),
    "beta": Range(low=0.0, high=1.0, high_open=True, optional=True),
    "ess": Range(low=0.0, low_open=True),
    "prior_precision": Range(low=0.0),
    "init_precision": Range(low=0.0, low_open=True),
}
MODIFIED_RULE_RANGES = {
    "lr": Range(low=0.0),
    "rho": Range(low=0.0, high=1.0, low_open=True),
    "weight_decay": Range(low=0.0),
    "hessian": Range(kind="choice", choices=_HESSIANS),
    "sqrt": Range(kind="bool"),
    "eps": Range(low=0.0),
    "beta1": Range(low=0.0, high=1.0, high_open=True),
    "bias_correction": Range(kind="bool"),
    "init_second_moment": Range(low=0.0),
}


# ---------------------------------------------------------------- argument checks
def _closure_and_checked_grads(param_groups, closure) -> tuple:
    """Call the closure (with gradients enabled) and collect ``(group, param, grad)`` for every
    parameter with a gradient, checking all gradients before any state changes."""
    loss = None
    if closure is not None:
        with torch.enable_grad():
            loss = closure()
    work = [(group, p, _checked_grad(p)) for group in param_groups for p in group["params"] if p.grad is not None]
    return loss, work


def _checked_grad(p: Tensor) -> Tensor:
    grad = p.grad
    if grad.is_sparse:
        raise ValueError("Invalid gradient: sparse gradients are not supported by the teaching optimizers")
    if not bool(torch.isfinite(grad).all()):
        raise ValueError(
            f"Invalid gradient: a parameter of shape {tuple(p.shape)} has a NaN or infinite gradient; "
            "the step was not taken (parameters and state are unchanged)"
        )
    return grad


# ---------------------------------------------------------------- functional forms
class RuleSGDState(NamedTuple):
    """State of :func:`rule_sgd`: the mean :math:`m` and the number of steps taken."""

    mean: Tensor
    step: int


def rule_sgd_init(mean: Tensor) -> RuleSGDState:
    """The state before the first step: :math:`m_0` (a copy of ``mean``) and ``step = 0``."""
    return RuleSGDState(mean.detach().clone(), 0)


def rule_sgd(state: RuleSGDState, grad: Tensor, *, rho: float, variance: float, ess: float = 1.0, prior_precision: float = 0.0) -> RuleSGDState:
    r"""One step of the rule with :math:`q = \mathcal N(m, \sigma^2 I)`, the delta method and a minibatch gradient.

    .. math::

        m_{t+1} = m_t - \rho\,\sigma^2\,\big(N\hat g_t + \delta\, m_t\big)

    Symbols: :math:`\rho` = ``rho``, :math:`\sigma^2` = ``variance``, :math:`N` = ``ess``,
    :math:`\delta` = ``prior_precision``, :math:`\hat g_t` = ``grad`` (the minibatch-mean gradient at
    :math:`m_t`), :math:`m_t` = ``state.mean``. Pure: returns a new state.
    """
    check_hyperparameters(dict(rho=rho, variance=variance, ess=ess, prior_precision=prior_precision), RULE_SGD_RANGES)
    new_mean = fixed_cov_gaussian_step(state.mean, grad, rho=rho, variance=variance, ess=ess,
                                       prior_precision=prior_precision)
    return RuleSGDState(new_mean, state.step + 1)


class RuleRMSpropState(NamedTuple):
    """State of :func:`rule_rmsprop`: mean :math:`m`, precision :math:`s` and the number of steps taken."""

    mean: Tensor
    precision: Tensor
    step: int


def rule_rmsprop_init(mean: Tensor, init_precision: float = 1.0) -> RuleRMSpropState:
    """The state before the first step: :math:`m_0` (a copy of ``mean``), :math:`s_0` = ``init_precision`` everywhere."""
    init_precision = RULE_RMSPROP_RANGES["init_precision"].check("init_precision", init_precision)
    mean = mean.detach().clone()
    return RuleRMSpropState(mean, torch.full_like(mean, init_precision), 0)


def rule_rmsprop(
    state: RuleRMSpropState,
    grad: Tensor,
    *,
    rho: float,
    ess: float = 1.0,
    prior_precision: float = 0.0,
    beta: float | None = None,
) -> RuleRMSpropState:
    r"""One step of the rule with :math:`q = \mathcal N(m, \mathrm{diag}(s)^{-1})`, the delta method, a
    minibatch gradient and the squared minibatch gradient for the Hessian:

    .. math::

        s_{t+1} &= (1-\rho)\, s_t + \rho\,\big(N \hat g_t^2 + \delta\big), \\
        m_{t+1} &= m_t - \rho\, \big(N\hat g_t + \delta\, m_t\big) / s_{t+1}.

    Symbols: :math:`\rho` = ``rho``, :math:`N` = ``ess``, :math:`\delta` = ``prior_precision``,
    :math:`\hat g_t` = ``grad``, :math:`(m_t, s_t)` = ``(state.mean, state.precision)``. With ``beta`` given,
    the precision is averaged with its own rate, :math:`s_{t+1} = \beta s_t + (1-\beta)(N\hat g_t^2+\delta)`
    (``beta = 1 - rho`` is the rule). Pure: returns a new state.
    """
    check_hyperparameters(dict(rho=rho, ess=ess, prior_precision=prior_precision, beta=beta), RULE_RMSPROP_RANGES)
    new = diag_gaussian_step(DiagGaussianState(state.mean, state.precision, None, state.step), grad,
                             cfg=_rule_rmsprop_config(rho, ess, prior_precision, beta))
    return RuleRMSpropState(new.mean, new.precision, new.step)


def _rule_rmsprop_config(rho, ess, prior_precision, beta) -> DiagGaussianConfig:
    """RuleRMSprop as a setting of the diagonal-Gaussian kernel: curvature N g^2 + delta, no momentum."""
    return DiagGaussianConfig(lr=rho, beta2=1.0 - rho if beta is None else beta, curvature="gradsq", ess=ess,
                              grad_scale=ess, prior_precision=prior_precision, prior_in_state=True)


class ModifiedRuleState(NamedTuple):
    r"""State of :func:`modified_rule`: mean :math:`m`, averaged curvature :math:`v`, momentum :math:`u`, step count."""

    mean: Tensor
    second_moment: Tensor
    first_moment: Tensor
    step: int


def modified_rule_init(mean: Tensor, init_second_moment: float = 0.0) -> ModifiedRuleState:
    """The state before the first step: :math:`m_0` (a copy), :math:`v_0` = ``init_second_moment``, :math:`u_0 = 0`."""
    init_second_moment = MODIFIED_RULE_RANGES["init_second_moment"].check("init_second_moment", init_second_moment)
    mean = mean.detach().clone()
    return ModifiedRuleState(mean, torch.full_like(mean, init_second_moment), torch.zeros_like(mean), 0)


def modified_rule(
    state: ModifiedRuleState,
    grad: Tensor,
    *,
    lr: float,
    rho: float,
    weight_decay: float = 0.0,
    hessian: str = "rule",
    sqrt: bool = False,
    eps: float = 0.0,
    beta1: float = 0.0,
    bias_correction: bool = False,
) -> ModifiedRuleState:
    r"""The rule's diagonal-Gaussian step per example, with the switches that turn it into RMSprop and Adam.

    Divide the precision by :math:`N` (:math:`v = s/N`) and write :math:`w = \delta/N` for the weight decay.
    With :math:`g_t = \hat g_t + w\, m_t`, one step is

    .. math::

        v_{t+1} &= (1-\rho)\, v_t + \rho\, h_t, \qquad
            h_t = \begin{cases} \hat g_t^2 + w & \text{hessian="rule"} \\ g_t^2 & \text{hessian="torch"}\end{cases} \\
        u_{t+1} &= \beta_1 u_t + (1-\beta_1)\, g_t \qquad (u_{t+1} = g_t \text{ when } \beta_1 = 0) \\
        \hat u &= u_{t+1}/(1-\beta_1^{t+1}), \quad \hat v = v_{t+1}/(1-(1-\rho)^{t+1})
            \quad\text{(only with bias_correction)} \\
        m_{t+1} &= m_t - \alpha\, \hat u / \big(\sqrt{\hat v} + \epsilon\big)
            \quad\text{(or } \hat v + \epsilon \text{ without sqrt)}.

    Symbols: :math:`\alpha` = ``lr``, :math:`\rho` = ``rho``, :math:`w` = ``weight_decay``,
    :math:`\epsilon` = ``eps``, :math:`\beta_1` = ``beta1``.

    * The rule (:func:`rule_rmsprop` with :math:`s = N v`): ``lr = rho``, ``hessian="rule"``, no sqrt,
      ``eps = 0``, ``beta1 = 0``, no bias correction, :math:`v_0 = s_0/N`.
    * ``torch.optim.RMSprop(lr, alpha, eps, weight_decay)``: ``rho = 1 - alpha``, ``hessian="torch"``,
      ``sqrt=True``, :math:`v_0 = 0`.
    * ``torch.optim.Adam(lr, betas=(beta1, beta2), eps, weight_decay)``: ``rho = 1 - beta2``,
      ``hessian="torch"``, ``sqrt=True``, ``bias_correction=True``, :math:`v_0 = 0`.

    Pure: returns a new state.
    """
    check_hyperparameters(dict(lr=lr, rho=rho, weight_decay=weight_decay, hessian=hessian, sqrt=sqrt, eps=eps,
                               beta1=beta1, bias_correction=bias_correction), MODIFIED_RULE_RANGES)
    cfg = DiagGaussianConfig(
        lr=lr, beta2=1.0 - rho, curvature="gradsq" if hessian == "rule" else "gradsq_total", ess=1.0,
        grad_scale=1.0, prior_precision=weight_decay, prior_in_state=True, beta1=beta1, momentum_on="total",
        debias=bias_correction, debias_precision=bias_correction, sqrt=sqrt, eps=eps,
    )
    u = state.first_moment if beta1 != 0.0 else None
    new = diag_gaussian_step(DiagGaussianState(state.mean, state.second_moment, u, state.step), grad, cfg=cfg)
    if beta1 == 0.0:  # the "momentum" of beta1 = 0 is this step's gradient (the prior's term included)
        u = grad + weight_decay * state.mean if weight_decay != 0.0 else grad.clone()
    else:
        u = new.momentum
    return ModifiedRuleState(new.mean, new.precision, u, new.step)


# ---------------------------------------------------------------- optimizer classes
class RuleSGD(torch.optim.Optimizer):
    r"""SGD as the Bayesian learning rule with :math:`q = \mathcal N(m, \sigma^2 I)` (Khan & Rue, 2023, Sec. 4.1).

    .. math::

        m_{t+1} = m_t - \rho\,\sigma^2\,\big(N \hat g_t + \delta\, m_t\big),
        \qquad \text{lr} = \rho\,\sigma^2 N,

    where :math:`m` are the parameters, :math:`\hat g_t` is ``p.grad`` (the gradient of the minibatch
    **mean** loss), :math:`N` = ``ess`` (the number of training examples) and :math:`\delta` =
    ``prior_precision``. This is ``torch.optim.SGD(params, lr=lr, weight_decay=prior_precision / ess)``.

    Give exactly one of ``lr`` or ``rho``:

    * ``rho`` (in (0, 1]) with ``variance`` :math:`\sigma^2` (default 1): then ``lr = rho * variance * ess``;
    * ``lr`` (>= 0), optionally with ``variance``: then :math:`\rho = \text{lr}/(\sigma^2 N)` must lie in
      (0, 1]; without ``variance``, :math:`\sigma^2 = \text{lr}/N` (so :math:`\rho = 1`).

    Only :math:`\rho\sigma^2` enters the step (the entropy of a fixed-covariance Gaussian is constant), so
    a scheduler that scales ``lr`` scales :math:`\rho`. :meth:`rule_parameters` reports
    :math:`(\rho, \sigma^2, N, \delta)` per group.

    Args:
        params: parameters or param groups (a group may set its own ``lr``/``rho``, ``variance``, ``ess``,
            ``prior_precision``).
        lr: the step size :math:`\rho\sigma^2 N` (default: None).
        rho: the rule's step size :math:`\rho` (default: None).
        variance: :math:`\sigma^2 > 0` (default: 1 with ``rho``, ``lr/ess`` with ``lr``).
        ess: :math:`N > 0`, the effective sample size (default: 1, for a loss that is already the sum).
        prior_precision: :math:`\delta \ge 0` (default: 0).

    A NaN or infinite gradient raises ``ValueError`` before anything is changed.
    """

    def __init__(self, params, lr: float | None = None, *, rho: float | None = None, variance: float | None = None,
                 ess: float = 1.0, prior_precision: float = 0.0):
        defaults = self._resolve(dict(lr=lr, rho=rho, variance=variance, ess=ess, prior_precision=prior_precision))
        self._variance_given = variance is not None
        super().__init__(params, defaults)

    @staticmethod
    def _resolve(group: dict) -> dict:
        """Check a group's hyperparameters and return them as (lr, variance, ess, prior_precision)."""
        R = RULE_SGD_RANGES
        ess = R["ess"].check("ess", group.get("ess", 1.0))
        delta = R["prior_precision"].check("prior_precision", group.get("prior_precision", 0.0))
        lr, rho, variance = group.get("lr"), group.get("rho"), group.get("variance")
        if (lr is None) == (rho is None):
            raise ValueError(f"Invalid lr/rho: lr={lr!r}, rho={rho!r} (give exactly one of them)")
        if variance is not None:
            variance = R["variance"].check("variance", variance)
        if rho is not None:
            rho = R["rho"].check("rho", rho)
            variance = 1.0 if variance is None else variance
            lr = rho * variance * ess
        else:
            lr = _v.check_real("lr", lr, low=0.0)
            if variance is None:
                variance = lr / ess if lr > 0.0 else 1.0
            implied = lr / (variance * ess)
            if implied > 1.0:
                raise ValueError(
                    f"Invalid lr: {lr!r} (with variance={variance:g} and ess={ess:g} it implies "
                    f"rho = lr / (variance * ess) = {implied:g}; must be <= 1: lower lr or raise variance)"
                )
        return dict(lr=lr, variance=variance, ess=ess, prior_precision=delta)

    def add_param_group(self, param_group: dict) -> None:
        param_group = dict(param_group)
        param_group["params"] = check_real_params(param_group)
        if any(k in param_group for k in ("lr", "rho", "variance", "ess", "prior_precision")) and hasattr(self, "defaults"):
            merged = {k: v for k, v in self.defaults.items()}
            if "rho" in param_group:
                merged.pop("lr")
            if ("lr" in param_group or "rho" in param_group) and not self._variance_given:
                merged.pop("variance")  # derived from the default lr: derive it again for this group
            merged.update(param_group)
            resolved = self._resolve(merged)
            param_group.pop("rho", None)
            param_group.update(resolved)
        super().add_param_group(param_group)

    def rule_parameters(self) -> list[dict]:
        r"""Per group, the rule's :math:`\rho = \text{lr}/(\sigma^2 N)`, :math:`\sigma^2`, :math:`N` and :math:`\delta`."""
        out = []
        for g in self.param_groups:
            out.append(dict(rho=g["lr"] / (g["variance"] * g["ess"]), variance=g["variance"], ess=g["ess"],
                            prior_precision=g["prior_precision"]))
        return out

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Tensor]] = None):
        """One step for every parameter that has a gradient; returns the closure's loss if one is given."""
        loss, work = _closure_and_checked_grads(self.param_groups, closure)
        for group, p, grad in work:
            st = self.state[p]
            if "step" not in st:
                st["step"] = torch.tensor(0.0)
            rho = group["lr"] / (group["variance"] * group["ess"])
            p.copy_(fixed_cov_gaussian_step(p, grad, rho=rho, variance=group["variance"], ess=group["ess"],
                                            prior_precision=group["prior_precision"]))
            st["step"] += 1
        return loss


class RuleRMSprop(torch.optim.Optimizer):
    r"""The rule's own RMSprop: :math:`q = \mathcal N(m, \mathrm{diag}(s)^{-1})`, delta method, minibatch
    gradient, Hessian :math:`\approx N\hat g^2` (Khan & Rue, 2023, Sec. 4.2). No square root.

    .. math::

        s_{t+1} &= (1-\rho)\, s_t + \rho\,\big(N\hat g_t^2 + \delta\big), \\
        m_{t+1} &= m_t - \rho\,\big(N\hat g_t + \delta\, m_t\big) / s_{t+1},

    with :math:`m` the parameters, :math:`\hat g_t` = ``p.grad`` (gradient of the minibatch **mean** loss),
    :math:`\rho` = ``lr``, :math:`N` = ``ess``, :math:`\delta` = ``prior_precision`` and
    :math:`s_0` = ``init_precision``. The posterior standard deviation :math:`s^{-1/2}` is available from
    :meth:`posterior_std`.

    Args:
        params: parameters or param groups (each group may set its own hyperparameters).
        lr: :math:`\rho \in (0, 1]`, the rule's step size (default: 1e-3).
        beta: if given, the precision is averaged with its own rate,
            :math:`s_{t+1} = \beta s_t + (1-\beta)(N\hat g_t^2+\delta)`, :math:`\beta\in[0, 1)`; the default
            None means :math:`\beta = 1-\rho` (the rule; a scheduler on ``lr`` then moves both).
        ess: :math:`N > 0`, the number of training examples (default: 1).
        prior_precision: :math:`\delta \ge 0` (default: 0).
        init_precision: :math:`s_0 > 0` (default: 1).

    A NaN or infinite gradient raises ``ValueError`` before anything is changed.
    """

    def __init__(self, params, lr: float = 1e-3, *, beta: float | None = None, ess: float = 1.0,
                 prior_precision: float = 0.0, init_precision: float = 1.0):
        defaults = dict(lr=lr, beta=beta, ess=ess, prior_precision=prior_precision, init_precision=init_precision)
        self._check(defaults)
        super().__init__(params, defaults)

    @staticmethod
    def _check(group: dict) -> None:
        check_hyperparameters(group, RULE_RMSPROP_RANGES)

    def add_param_group(self, param_group: dict) -> None:
        param_group["params"] = check_real_params(param_group)
        super().add_param_group(param_group)
        self._check(self.param_groups[-1])

    def _precision(self, p: Tensor, group: dict) -> Tensor:
        st = self.state.get(p, {})
        if "precision" in st:
            return st["precision"]
        return torch.full_like(p, float(group["init_precision"]), dtype=state_dtype(p))

    @torch.no_grad()
    def posterior_std(self) -> list[Tensor]:
        r"""The posterior standard deviation :math:`s^{-1/2}` per parameter.

        A list aligned with ``[p for g in opt.param_groups for p in g["params"]]``; parameters not yet
        updated report :math:`s_0^{-1/2}`.
        """
        return [self._precision(p, g).rsqrt() for g in self.param_groups for p in g["params"]]

    def rule_parameters(self) -> list[dict]:
        r"""Per group, the rule's :math:`\rho` (``lr``), :math:`N` (``ess``) and :math:`\delta`."""
        return [dict(rho=float(g["lr"]), ess=float(g["ess"]), prior_precision=float(g["prior_precision"]))
                for g in self.param_groups]

    @torch.no_grad()
    def posterior_precision(self) -> list[Tensor]:
        """The precision :math:`s` per parameter (copies), aligned as in :meth:`posterior_std`."""
        return [self._precision(p, g).clone() for g in self.param_groups for p in g["params"]]

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Tensor]] = None):
        """One step for every parameter that has a gradient; returns the closure's loss if one is given."""
        loss, work = _closure_and_checked_grads(self.param_groups, closure)
        by_group: dict = {}
        for group, p, grad in work:
            st = self.state[p]
            if "step" not in st:
                st["step"] = torch.tensor(0.0)
                st["precision"] = torch.full_like(p, float(group["init_precision"]), dtype=state_dtype(p),
                                                  memory_format=torch.preserve_format)
            by_group.setdefault(id(group), (group, []))[1].append((p, grad, st))
        for group, items in by_group.values():
            cfg = _rule_rmsprop_config(group["lr"], group["ess"], group["prior_precision"], group["beta"])
            for st in (it[2] for it in items):
                st["step"] += 1
            # one foreach call per (device, dtype)
            buckets: dict = {}
            for p, grad, st in items:
                buckets.setdefault((p.device, p.dtype), []).append((p, grad, st))
            for bucket in buckets.values():
                sd = bucket[0][2]["precision"].dtype  # float32 for 16-bit parameters
                means = [b[0] if b[0].dtype == sd else b[0].to(sd) for b in bucket]
                diag_gaussian_step_foreach_(
                    means, [b[2]["precision"] for b in bucket], None,
                    [b[1].to(sd) for b in bucket], None, [float(b[2]["step"]) for b in bucket], cfg,
                )
                for b, m in zip(bucket, means):
                    if m is not b[0]:
                        b[0].copy_(m)
        return loss


for _cls, _ranges, _defaults in (
    (RuleSGD, RULE_SGD_RANGES, dict(ess=1.0, prior_precision=0.0)),
    (RuleRMSprop, {k: v for k, v in RULE_RMSPROP_RANGES.items() if k != "rho"},
     dict(lr=1e-3, beta=None, ess=1.0, prior_precision=0.0, init_precision=1.0)),
):
    _cls.__doc__ = (_cls.__doc__ or "") + (
        "\n    Hyperparameter ranges (declared once; checked on construction and for every param group):\n\n"
        + "\n".join("    " + line for line in document_ranges(_ranges, _defaults).splitlines()) + "\n"
    )
