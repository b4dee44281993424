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

__all__ = ["gauss_hermite_nodes", "gauss_hermite"]

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
