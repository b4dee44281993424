r"""Gauss–Hermite quadrature for the expectations of the rule under a Gaussian candidate.

For :math:`q = \mathcal{N}(m, \Sigma)` with :math:`\Sigma = LL^\top`, tensor-product Gauss–Hermite quadrature
with :math:`n` nodes :math:`\epsilon_j` and weights :math:`w_j` per dimension (probabilists' Hermite polynomials,
weight :math:`e^{-\epsilon^2/2}`) approximates

.. math::

    \mathbb{E}_q[g(\theta)] \approx \sum_{j_1..j_d} \Big(\prod_i \frac{w_{j_i}}{\sqrt{2\pi}}\Big)\,
    g(m + L\epsilon_{j_1..j_d}),

exactly when :math:`g` is a polynomial of degree at most :math:`2n-1` in each coordinate. It costs
:math:`n^d` evaluations: a tool for small :math:`d` (state-space models, a few regression weights), where
it gives the expectations of the rule without Monte Carlo noise.
"""

from __future__ import annotations

import itertools
from typing import Callable

import numpy as np
import torch
from torch.func import grad, jacrev, vmap

from ..estimators import ExpectedDerivatives
from ..families import FullGaussian

__all__ = ["gauss_hermite_nodes", "gauss_hermite", "gauss_hermite_glm"]

_MAX_NODES = 2_000_000


def gauss_hermite_nodes(q: FullGaussian, num_points: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes :math:`m + L\\epsilon` (shape ``(n**d, d)``) and normalised weights (summing to 1) for ``q``."""
    if not isinstance(q, FullGaussian):
        raise ValueError(f"Invalid q: {type(q).__name__} (must be a FullGaussian)")
    if isinstance(num_points, bool) or int(num_points) != num_points or num_points < 1:
        raise ValueError(f"Invalid num_points: {num_points} (must be a positive integer)")
    d, n = q.mean.numel(), int(num_points)
    if n**d > _MAX_NODES:
        raise ValueError(f"Invalid num_points: {n} (n**d = {n**d} nodes for d = {d}; must be at most {_MAX_NODES})")
    points, weights = np.polynomial.hermite_e.hermegauss(n)
    weights = weights / weights.sum()
    grid = np.array(list(itertools.product(points, repeat=d)))
    grid_weights = np.prod(np.array(list(itertools.product(weights, repeat=d))), axis=1)
    eps = torch.as_tensor(grid, dtype=q.dtype, device=q.device)
    chol = torch.linalg.cholesky(q.covariance)
    return q.mean + eps @ chol.T, torch.as_tensor(grid_weights, dtype=q.dtype, device=q.device)


def gauss_hermite(loss: Callable[[torch.Tensor], torch.Tensor], q: FullGaussian, num_points: int) -> ExpectedDerivatives:
    r""":math:`\mathbb{E}_q[\nabla\ell]` and :math:`\mathbb{E}_q[\nabla^2\ell]` by Gauss–Hermite quadrature.

    ``loss`` maps a 1-D tensor to a scalar and must work under ``torch.func.vmap``. The result goes to
    ``q.gradient_wrt_expectation`` (Bonnet and Price) and then to :func:`blrlib.rule.blr_step`.
    """
    nodes, weights = gauss_hermite_nodes(q, num_points)
    grads = vmap(grad(loss))(nodes)
    hessians = vmap(jacrev(grad(loss)))(nodes)
    gradient = weights @ grads
    hessian = torch.einsum("k,kij->ij", weights, hessians)
    if not (bool(torch.isfinite(gradient).all()) and bool(torch.isfinite(hessian).all())):
        raise ValueError("Invalid loss: its gradient or Hessian is not finite at a quadrature node")
    return ExpectedDerivatives(gradient, 0.5 * (hessian + hessian.T))


def gauss_hermite_glm(
    link_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    targets: torch.Tensor,
    q: FullGaussian,
    num_points: int,
    prior_precision: float = 0.0,
) -> ExpectedDerivatives:
    r"""Expectations for a generalised linear model, one 1-D quadrature per example.

    For :math:`\bar\ell(\theta) = \sum_i \phi(y_i, a_i) + \tfrac{\delta}{2}\|\theta\|^2` with
    :math:`a_i = x_i^\top\theta`, under :math:`q = \mathcal{N}(m, \Sigma)` each :math:`a_i` is
    :math:`\mathcal{N}(x_i^\top m, x_i^\top\Sigma x_i)`, so

    .. math::

        \mathbb{E}_q[\nabla\bar\ell] = \sum_i x_i\,\mathbb{E}[\phi'(y_i, a_i)] + \delta m,\qquad
        \mathbb{E}_q[\nabla^2\bar\ell] = \sum_i x_i x_i^\top\,\mathbb{E}[\phi''(y_i, a_i)] + \delta I,

    with the 1-D expectations by Gauss–Hermite quadrature (``num_points`` nodes): accurate in any dimension.
    ``link_loss(y, a)`` is :math:`\phi`, elementwise over tensors (for logistic regression with
    :math:`y\in\{-1, 1\}`: ``lambda y, a: torch.nn.functional.softplus(-y * a)``).
    """
    if not isinstance(q, FullGaussian):
        raise ValueError(f"Invalid q: {type(q).__name__} (must be a FullGaussian)")
    if isinstance(num_points, bool) or int(num_points) != num_points or num_points < 1:
        raise ValueError(f"Invalid num_points: {num_points} (must be a positive integer)")
    if inputs.ndim != 2 or inputs.shape[1] != q.mean.numel():
        raise ValueError(f"Invalid inputs: shape {tuple(inputs.shape)} (must be (n, {q.mean.numel()}))")
    if targets.shape != (inputs.shape[0],):
        raise ValueError(f"Invalid targets: shape {tuple(targets.shape)} (must be ({inputs.shape[0]},))")
    if not prior_precision >= 0:
        raise ValueError(f"Invalid prior_precision: {prior_precision} (must be non-negative)")
    points, weights = np.polynomial.hermite_e.hermegauss(int(num_points))
    points = torch.as_tensor(points, dtype=q.dtype, device=q.device)
    weights = torch.as_tensor(weights / weights.sum(), dtype=q.dtype, device=q.device)
    mean = inputs @ q.mean
    sd = torch.sqrt(((inputs @ q.covariance) * inputs).sum(1))
    nodes = mean[:, None] + sd[:, None] * points[None, :]
    ys = targets[:, None].expand_as(nodes).reshape(-1)

    def phi(y, a):
        return link_loss(y, a)

    first = vmap(grad(phi, argnums=1))(ys, nodes.reshape(-1)).reshape(nodes.shape)
    second = vmap(grad(grad(phi, argnums=1), argnums=1))(ys, nodes.reshape(-1)).reshape(nodes.shape)
    e_first, e_second = first @ weights, second @ weights
    eye = torch.eye(q.mean.numel(), dtype=q.dtype, device=q.device)
    gradient = inputs.T @ e_first + prior_precision * q.mean
    hessian = (inputs * e_second[:, None]).T @ inputs + prior_precision * eye
    return ExpectedDerivatives(gradient, 0.5 * (hessian + hessian.T))
