r"""The optimizers' updates as pure functions: state and gradients in, new state out.

Nothing here mutates its inputs; every function works on one tensor (or on tensors of
one shape) and reads like the equations, so each step of the rule can be tested in
isolation and ported. :class:`blrlib.optim.IVON` computes the same thing with fused
in-place ``torch._foreach_*`` kernels; the tests check that the two agree.

IVON, per entry (see :class:`blrlib.optim.IVON` for the symbols):

.. math::

    \sigma = 1/\sqrt{N(h+\delta)},\quad \theta_k = m + \sigma\epsilon_k,\quad
    \hat g = \overline{g_k},\quad \hat h = \overline{g_k\epsilon_k}/\sigma
    \ (\text{or } N\,\overline{g_k^2}),

    \bar g' = \beta_1\bar g + (1-\beta_1)\hat g,\quad
    h' = \beta_2 h + (1-\beta_2)\hat h + \tfrac12(1-\beta_2)^2 (h-\hat h)^2/(h+\delta),

    m' = m - \alpha\,\mathrm{clip}\big((\bar g'/(1-\beta_1^{t+1}) + \delta m)/(h'+\delta), \pm r\big).
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from torch import Tensor

from .._validation import Range, check_hyperparameters
from .kernels import DiagGaussianConfig, DiagGaussianState, diag_gaussian_step

__all__ = [
    "IVONState",
    "ivon_init",
    "ivon_sigma",
    "ivon_sample",
    "ivon_hess_estimate",
    "ivon_update",
    "ivon_step",
    "IVON_RANGES",
]

#: IVON's hyperparameters' ranges, declared once (the optimizer, these functions and the tests read them).
IVON_RANGES = {
    "lr": Range(low=0.0),
    "ess": Range(low=0.0, low_open=True),
    "hess_init": Range(low=0.0, low_open=True),
    "beta1": Range(low=0.0, high=1.0, high_open=True),
    "beta2": Range(low=0.0, high=1.0),
    "weight_decay": Range(low=0.0),
    "mc_samples": Range(kind="int", low=1),
    "hess_approx": Range(kind="choice", choices=("price", "gradsq")),
    "clip_radius": Range(low=0.0, low_open=True, allow_inf=True),
    "debias": Range(kind="bool"),
    "rescale_lr": Range(kind="bool"),
}


class IVONState(NamedTuple):
    """IVON's state for one parameter tensor: step count t, momentum gbar, Hessian h."""

    step: int
    momentum: Tensor
    hess: Tensor


def ivon_init(param: Tensor, hess_init: float = 1.0) -> IVONState:
    """Initial state: t = 0, gbar = 0, h = hess_init."""
    return IVONState(0, torch.zeros_like(param), torch.full_like(param, hess_init))


def ivon_sigma(state: IVONState, ess: float, weight_decay: float) -> Tensor:
    r"""Posterior standard deviation :math:`\sigma = 1/\sqrt{N(h+\delta)}`."""
    return 1.0 / torch.sqrt(ess * (state.hess + weight_decay))


def ivon_sample(mean: Tensor, state: IVONState, noise: Tensor, ess: float, weight_decay: float) -> Tensor:
    r"""A posterior sample :math:`\theta = m + \sigma\epsilon` for a standard normal ``noise``."""
    return mean + ivon_sigma(state, ess, weight_decay) * noise


def ivon_hess_estimate(
    grads: Sequence[Tensor], noises: Sequence[Tensor], sigma: Tensor, ess: float, method: str = "price"
) -> Tensor:
    r"""Monte Carlo Hessian estimate from K (gradient, noise) pairs.

    ``"price"``: :math:`\hat h = \frac1K\sum_k g_k\epsilon_k/\sigma` (Stein/Price identity:
    :math:`\mathbb E[\nabla\ell(m+\sigma\epsilon)\,\epsilon] = \sigma\,\mathbb E[\nabla^2\ell]`);
    ``"gradsq"``: :math:`\hat h = N\frac1K\sum_k g_k^2`.
    """
    if method == "price":
        return torch.stack([g * e for g, e in zip(grads, noises)]).mean(0) / sigma
    if method == "gradsq":
        return ess * torch.stack([g * g for g in grads]).mean(0)
    raise ValueError(f"Invalid hess_approx: {method!r} (must be one of 'price', 'gradsq')")


def ivon_update(
    mean: Tensor,
    state: IVONState,
    grad: Tensor,
    hess_hat: Tensor,
    *,
    lr: float,
    hess_init: float = 1.0,
    beta1: float = 0.9,
    beta2: float = 0.99999,
    weight_decay: float = 1e-4,
    clip_radius: float = float("inf"),
    debias: bool = True,
    rescale_lr: bool = True,
) -> tuple[Tensor, IVONState]:
    """One IVON update from the averaged gradient ``grad`` and Hessian estimate ``hess_hat``
    (:func:`blrlib.optim.kernels.diag_gaussian_step` with IVON's settings; the scalars are checked)."""
    check_hyperparameters(dict(lr=lr, hess_init=hess_init, beta1=beta1, beta2=beta2, weight_decay=weight_decay,
                               clip_radius=clip_radius, debias=debias, rescale_lr=rescale_lr), IVON_RANGES)
    alpha = lr * (hess_init + weight_decay) if rescale_lr else lr
    cfg = DiagGaussianConfig(
        lr=alpha, beta2=beta2, curvature="hessian", prior_precision=weight_decay, prior_in_state=False,
        correction=True, beta1=beta1, momentum_on="data", debias=debias, clip_radius=clip_radius,
    )
    new = diag_gaussian_step(DiagGaussianState(mean, state.hess, state.momentum, state.step), grad, hess_hat, cfg=cfg)
    return new.mean, IVONState(new.step, new.momentum, new.precision)


def ivon_step(
    mean: Tensor,
    state: IVONState,
    grads: Sequence[Tensor],
    noises: Sequence[Tensor],
    *,
    lr: float,
    ess: float,
    hess_approx: str = "price",
    weight_decay: float = 1e-4,
    **kwargs,
) -> tuple[Tensor, IVONState]:
    """A whole IVON step from the gradients ``grads[k]`` taken at ``ivon_sample(mean, state, noises[k], ...)``."""
    check_hyperparameters(dict(lr=lr, ess=ess, hess_approx=hess_approx, weight_decay=weight_decay), IVON_RANGES)
    sigma = ivon_sigma(state, ess, weight_decay)
    g = torch.stack(list(grads)).mean(0)
    hhat = ivon_hess_estimate(grads, noises, sigma, ess, hess_approx)
    return ivon_update(mean, state, g, hhat, lr=lr, weight_decay=weight_decay, **kwargs)
