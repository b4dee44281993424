r"""Estimators of the expectations the rule needs.

The rule asks for :math:`\nabla_\mu \mathbb{E}_q[\bar\ell(\theta)]`. For Gaussian candidates Bonnet's and
Price's theorems reduce it to the expected gradient and Hessian of the loss,

.. math::

    \nabla_m \mathbb{E}_q[\ell] = \mathbb{E}_q[\nabla\ell(\theta)], \qquad
    \nabla_{S^{-1}} \mathbb{E}_q[\ell] = \tfrac12\,\mathbb{E}_q[\nabla^2\ell(\theta)],

and the functions here estimate those two expectations:

* :func:`delta_method`: :math:`\mathbb{E}_q[g(\theta)] \approx g(m)` (the first-order delta method);
* :func:`monte_carlo`: averages over samples :math:`\theta_k = m + S^{-1/2}\epsilon_k`, with the
  Hessian taken exactly at the samples or, with gradients only, by Stein's identity
  :math:`\mathbb{E}_q[\nabla^2\ell] = \mathbb{E}_q[S(\theta - m)\nabla\ell(\theta)^\top]`;
* :func:`gauss_newton`: for a sum of per-example losses, the curvature
  :math:`\sum_i \nabla\ell_i \nabla\ell_i^\top` (or its diagonal), from per-example gradients computed
  with ``torch.func.vmap``.

:func:`expectation_gradient` chains an estimator with the family's ``gradient_wrt_expectation``.
What an estimator needs from a family is declared by the family, not looked up by type: the class
data ``hessian_kind`` (which expected Hessian its chain rule takes) and ``reparameterizable``
(whether Bonnet's and Price's theorems apply), and the method ``precision_times`` (for Stein's
estimate). The estimators take a single member (``q.batch_shape == ()``).
A loss is a function from a parameter vector (1-D tensor) to a scalar tensor.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
from torch.func import grad, jacrev, vmap

from ._validation import Range, check_finite, check_with_phrase
from .families.base import ExponentialFamily

__all__ = [
    "ExpectedDerivatives",
    "delta_method",
    "monte_carlo",
    "gauss_newton",
    "expectation_gradient",
]

Loss = Callable[[torch.Tensor], torch.Tensor]


def hessian(loss: Loss) -> Callable[[torch.Tensor], torch.Tensor]:
    """The Hessian of ``loss`` by reverse-over-reverse differentiation (``jacrev(grad)``).

    ``torch.func.hessian`` uses forward mode, whose first use makes PyTorch print a deprecation
    warning; two reverse passes give the same matrix without it."""
    return jacrev(grad(loss))
_HESSIAN_KINDS = ("full", "diagonal", "none")


class ExpectedDerivatives(NamedTuple):
    """Estimates of :math:`\\mathbb{E}_q[\\nabla\\ell]` and :math:`\\mathbb{E}_q[\\nabla^2\\ell]` (``None`` when not asked)."""

    gradient: torch.Tensor
    hessian: torch.Tensor | None


def _hessian_kind_for(q: ExponentialFamily) -> str:
    """The expected Hessian the family's chain rule takes (class data ``hessian_kind``)."""
    return getattr(q, "hessian_kind", "none")


def _check_single_member(q: ExponentialFamily) -> None:
    if len(getattr(q, "batch_shape", ())) != 0:
        raise ValueError(
            f"Invalid q: a batch of {tuple(q.batch_shape)} members (must be a single member: estimate "
            "each member's expected derivatives and call q.gradient_wrt_expectation with the stacked results)"
        )


def _check_kind(name: str, kind: str, allowed: tuple[str, ...]) -> str:
    return check_with_phrase(name, kind, Range(kind="choice", choices=tuple(allowed)), f"{name} must be one of")


def _checked_value(loss: Loss, theta: torch.Tensor) -> torch.Tensor:
    value = loss(theta)
    if not isinstance(value, torch.Tensor) or value.numel() != 1:
        raise ValueError("loss must return a scalar tensor")
    check_finite("loss", value.detach())
    return value


def delta_method(loss: Loss, mean: torch.Tensor, hessian_kind: str = "full") -> ExpectedDerivatives:
    r"""The delta method: :math:`\mathbb{E}_q[\nabla\ell] \approx \nabla\ell(m)` and
    :math:`\mathbb{E}_q[\nabla^2\ell] \approx \nabla^2\ell(m)`.

    Args:
        loss: :math:`\ell`, a function of a 1-D parameter tensor returning a scalar.
        mean: the point :math:`m` (a 1-D tensor; not modified).
        hessian_kind: ``"full"`` (a :math:`d\times d` matrix), ``"diagonal"`` (its diagonal) or ``"none"``.
    """
    _check_kind("hessian_kind", hessian_kind, _HESSIAN_KINDS)
    mean = mean.detach()
    _checked_value(loss, mean)
    gradient = grad(loss)(mean)
    check_finite("gradient of loss", gradient)
    if hessian_kind == "none":
        return ExpectedDerivatives(gradient, None)
    hess = hessian(loss)(mean)
    check_finite("Hessian of loss", hess)
    return ExpectedDerivatives(gradient, torch.diagonal(hess).clone() if hessian_kind == "diagonal" else hess)


def _gaussian_offsets(q: ExponentialFamily, num_samples: int, generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Samples :math:`\\theta_k` and the whitened directions :math:`S(\\theta_k - m)` that Stein's identity needs."""
    samples = q.sample(num_samples, generator=generator)
    return samples, q.precision_times(samples - q.mean)


def monte_carlo(
    loss: Loss,
    q: ExponentialFamily,
    num_samples: int,
    *,
    generator: torch.Generator | None = None,
    hessian_kind: str = "auto",
    hessian_method: str = "exact",
) -> ExpectedDerivatives:
    r"""Monte Carlo estimates of :math:`\mathbb{E}_q[\nabla\ell]` (Bonnet) and :math:`\mathbb{E}_q[\nabla^2\ell]` (Price).

    Draws :math:`\theta_k \sim q`, :math:`k = 1..K`, and returns
    :math:`\frac1K\sum_k\nabla\ell(\theta_k)` and either :math:`\frac1K\sum_k\nabla^2\ell(\theta_k)`
    (``hessian_method="exact"``) or the gradient-only Stein estimate
    :math:`\frac1K\sum_k \mathrm{sym}\big(S(\theta_k-m)\nabla\ell(\theta_k)^\top\big)` (``"stein"``; its
    diagonal form is :math:`s\odot(\theta_k - m)\odot\nabla\ell(\theta_k)`, the estimate IVON uses).

    Args:
        loss: :math:`\ell`; must work under ``torch.func.vmap`` (no data-dependent Python control flow).
        q: a Gaussian candidate.
        num_samples: :math:`K \ge 1`.
        generator: optional ``torch.Generator`` for reproducible draws.
        hessian_kind: ``"auto"`` (the family's class data ``q.hessian_kind``: full for
            :class:`FullGaussian`, diagonal for :class:`DiagonalGaussian`, none for
            :class:`FixedCovarianceGaussian`), ``"full"``, ``"diagonal"`` or ``"none"``.
        hessian_method: ``"exact"`` or ``"stein"``.
    """
    if not getattr(q, "reparameterizable", False):
        raise ValueError(f"q must be a Gaussian candidate for Monte Carlo with Bonnet/Price; got {type(q).__name__}")
    _check_single_member(q)
    if int(num_samples) != num_samples or num_samples < 1:
        raise ValueError(f"Invalid num_samples: {num_samples} (num_samples must be a positive integer)")
    kind = _hessian_kind_for(q) if hessian_kind == "auto" else _check_kind("hessian_kind", hessian_kind, _HESSIAN_KINDS)
    _check_kind("hessian_method", hessian_method, ("exact", "stein"))
    samples, whitened = _gaussian_offsets(q, int(num_samples), generator)
    values = vmap(loss)(samples)
    check_finite("loss", values.detach())
    grads = vmap(grad(loss))(samples)
    check_finite("gradient of loss", grads)
    gradient = grads.mean(0)
    if kind == "none":
        return ExpectedDerivatives(gradient, None)
    if hessian_method == "exact":
        hessians = vmap(hessian(loss))(samples)
        hess = hessians.mean(0)
        return ExpectedDerivatives(gradient, torch.diagonal(hess).clone() if kind == "diagonal" else hess)
    if kind == "diagonal":
        return ExpectedDerivatives(gradient, (whitened * grads).mean(0))
    outer = torch.einsum("ki,kj->ij", whitened, grads) / samples.shape[0]
    return ExpectedDerivatives(gradient, 0.5 * (outer + outer.T))


def gauss_newton(
    per_example_loss: Callable[..., torch.Tensor],
    theta: torch.Tensor,
    *data: torch.Tensor,
    diagonal: bool = True,
) -> ExpectedDerivatives:
    r"""Gradient and Gauss-Newton curvature of :math:`\bar\ell(\theta) = \sum_i \ell_i(\theta)`.

    With per-example gradients :math:`g_i = \nabla\ell_i(\theta)` (computed with ``vmap(grad)``, no loop
    over examples), returns :math:`\sum_i g_i` and :math:`\sum_i g_i g_i^\top` (``diagonal=False``) or
    :math:`\sum_i g_i^2` (``diagonal=True``), the curvature used by OGN and VOGN.

    Args:
        per_example_loss: ``per_example_loss(theta, *example) -> scalar`` for one example.
        theta: the point where the derivatives are taken (a 1-D tensor; not modified).
        data: tensors whose leading dimension indexes the examples.
    """
    if not data:
        raise ValueError("data must hold at least one tensor of examples")
    n = data[0].shape[0]
    for k, tensor in enumerate(data):
        if tensor.shape[0] != n:
            raise ValueError(f"data[{k}] has {tensor.shape[0]} examples but data[0] has {n}; they must match")
    theta = theta.detach()
    in_dims = (None,) + (0,) * len(data)
    per_example = vmap(grad(per_example_loss), in_dims=in_dims)(theta, *data)
    check_finite("per-example gradients", per_example)
    gradient = per_example.sum(0)
    curvature = (per_example * per_example).sum(0) if diagonal else per_example.T @ per_example
    return ExpectedDerivatives(gradient, curvature)


def expectation_gradient(
    loss: Loss,
    q: ExponentialFamily,
    method: str = "delta",
    *,
    num_samples: int = 1,
    generator: torch.Generator | None = None,
    hessian_method: str = "exact",
):
    r""":math:`\nabla_\mu\mathbb{E}_q[\ell(\theta)]`, ready for :func:`blrlib.rule.blr_step`.

    ``method="delta"`` evaluates derivatives at the mean; ``method="monte_carlo"`` averages over
    ``num_samples`` draws (Gaussian candidates only). The family then maps the expected gradient and
    Hessian to the expectation-parameter gradient (Bonnet and Price for Gaussians; the
    straight-through form :math:`\nabla\ell(\mu)` for :class:`~blrlib.families.Bernoulli`).
    """
    _check_kind("method", method, ("delta", "monte_carlo"))
    _check_single_member(q)
    if method == "delta":
        derivs = delta_method(loss, q.mean, hessian_kind=_hessian_kind_for(q))
    else:
        derivs = monte_carlo(loss, q, num_samples, generator=generator, hessian_method=hessian_method)
    return q.gradient_wrt_expectation(derivs.gradient, derivs.hessian)
