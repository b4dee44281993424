r"""The Bayesian learning rule: one natural-gradient step on the Bayesian objective.

For a candidate :math:`q_\lambda` in an exponential family and the objective
:math:`\mathcal{L}(q) = \mathbb{E}_q[\bar\ell(\theta)] - \mathcal{H}(q)`, the rule is

.. math::

    \lambda \leftarrow \lambda - \rho\,\tilde\nabla_\lambda \mathcal{L}
            = \lambda - \rho\big(\nabla_\mu \mathbb{E}_q[\bar\ell] - \nabla_\mu \mathcal{H}(q)\big),

because the natural gradient :math:`F^{-1}\nabla_\lambda` equals :math:`\nabla_\mu`. With a constant base
measure :math:`\nabla_\mu\mathcal{H} = -\lambda`, which gives the form of Khan & Rue (2023):

.. math::

    \lambda \leftarrow (1-\rho)\,\lambda - \rho\,\nabla_\mu \mathbb{E}_q[\bar\ell(\theta)].

For a fixed-covariance Gaussian the entropy is constant and the step is
:math:`\lambda \leftarrow \lambda - \rho\nabla_\mu\mathbb{E}_q[\bar\ell]`. Both come from the one function
:func:`blr_step`, which asks the family for :math:`\nabla_\mu\mathcal{H}`.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import torch

from ._validation import as_float_tensor, check_rho, check_same_shape
from .families.base import ExponentialFamily

__all__ = ["blr_step", "improved_blr_step", "run_blr"]


def blr_step(q: ExponentialFamily, grad_expectation: Sequence[torch.Tensor], rho: float) -> ExponentialFamily:
    r"""One step of the rule, :math:`\lambda' = \lambda - \rho(\nabla_\mu\mathbb{E}_q[\bar\ell] - \nabla_\mu\mathcal{H}(q))`.

    Args:
        q: the current candidate :math:`q_\lambda` (not modified).
        grad_expectation: :math:`\nabla_\mu \mathbb{E}_q[\bar\ell(\theta)]`, structured like
            ``q.expectation_params`` (see :mod:`blrlib.estimators` and the families'
            ``gradient_wrt_expectation``).
        rho: the step size :math:`\rho \in (0, 1]`.

    Returns:
        A new distribution of the same family with natural parameters :math:`\lambda'`. If the step
        leaves the natural parameter space (for example a precision that is no longer positive
        definite), a :class:`ValueError` says so.
    """
    rho = check_rho(rho)
    if not isinstance(q, ExponentialFamily):
        raise ValueError(f"q must be an ExponentialFamily instance; got {type(q).__name__}")
    fields = q.ExpectationParams._fields
    if len(grad_expectation) != len(fields):
        raise ValueError(f"grad_expectation must have {len(fields)} blocks {fields}; got {len(grad_expectation)}")
    entropy_grad = q.entropy_gradient_expectation()
    new_natural = []
    for field, lam, grad, ent in zip(fields, q.natural_params, grad_expectation, entropy_grad):
        grad = as_float_tensor(f"grad_expectation.{field}", grad).to(dtype=lam.dtype, device=lam.device)
        check_same_shape(f"grad_expectation.{field}", grad, f"natural_params block for {field}", lam)
        new_natural.append(lam - rho * (grad - ent))
    return q._replace(q.NaturalParams(*new_natural))


def improved_blr_step(q, grad_expectation: Sequence[torch.Tensor], rho: float):
    r"""The rule for Gaussian candidates with the positivity-preserving correction of Lin, Schmidt & Khan (2020).

    With a Monte Carlo Hessian estimate :math:`\hat H` (for example Stein's), the plain step
    :math:`S' = (1-\rho)S + \rho\hat H` can leave the cone of positive-definite matrices. The improved
    rule adds a second-order term,

    .. math::

        S' = (1-\rho)\,S + \rho\,\hat H + \tfrac{\rho^2}{2}\,G\,S^{-1}G, \qquad G = S - \hat H,
        \qquad m' = m - \rho\,S'^{-1}\hat g,

    which equals :math:`\tfrac12 S + \tfrac12 (S - \rho G) S^{-1} (S - \rho G) \succeq \tfrac12 S`, so the
    precision stays positive definite whatever :math:`\hat H` is. (For a diagonal Gaussian every product
    is element-wise: :math:`s' = (1-\rho)s + \rho\hat h + \tfrac{\rho^2}{2}(s - \hat h)^2/s`, the form IVON uses.)

    Args:
        q: a :class:`~blrlib.families.FullGaussian` or :class:`~blrlib.families.DiagonalGaussian`.
        grad_expectation: :math:`\nabla_\mu\mathbb{E}_q[\bar\ell] = (\hat g - \hat H m,\ \tfrac12\hat H)`, as
            returned by ``q.gradient_wrt_expectation(g_hat, H_hat)``.
        rho: the step size :math:`\rho \in (0, 1]`.
    """
    from .families import DiagonalGaussian, FullGaussian

    rho = check_rho(rho)
    if not isinstance(q, (FullGaussian, DiagonalGaussian)):
        raise ValueError(f"q must be a FullGaussian or DiagonalGaussian; got {type(q).__name__}")
    if len(grad_expectation) != 2:
        raise ValueError(f"grad_expectation must have 2 blocks ('mean', 'second_moment'); got {len(grad_expectation)}")
    mean, precision = q.mean, q.precision
    blocks = []
    for field, grad, like in zip(("mean", "second_moment"), grad_expectation, q.natural_params):
        grad = as_float_tensor(f"grad_expectation.{field}", grad).to(dtype=like.dtype, device=like.device)
        check_same_shape(f"grad_expectation.{field}", grad, f"natural_params block for {field}", like)
        blocks.append(grad)
    hess = 2.0 * blocks[1]
    if isinstance(q, FullGaussian):
        hess = 0.5 * (hess + hess.T)
        grad_mean = blocks[0] + hess @ mean
        gap = precision - hess
        new_precision = (1.0 - rho) * precision + rho * hess + 0.5 * rho**2 * gap @ torch.linalg.solve(precision, gap)
        new_precision = 0.5 * (new_precision + new_precision.T)
        new_precision_mean = new_precision @ mean - rho * grad_mean
    else:
        grad_mean = blocks[0] + hess * mean
        gap = precision - hess
        new_precision = (1.0 - rho) * precision + rho * hess + 0.5 * rho**2 * gap * gap / precision
        new_precision_mean = new_precision * mean - rho * grad_mean
    return q._replace(q.NaturalParams(new_precision_mean, -0.5 * new_precision))


class BLRHistory(NamedTuple):
    """What :func:`run_blr` returns: the final candidate and the candidates after each step."""

    final: ExponentialFamily
    iterates: list


def run_blr(
    q: ExponentialFamily,
    grad_expectation_fn: Callable[[ExponentialFamily], Sequence[torch.Tensor]],
    rho: float | Callable[[int], float],
    num_steps: int,
    *,
    progress: bool = False,
) -> BLRHistory:
    """Iterate :func:`blr_step` ``num_steps`` times.

    ``grad_expectation_fn(q)`` returns :math:`\\nabla_\\mu\\mathbb{E}_q[\\bar\\ell]` (for instance
    ``lambda q: expectation_gradient(loss, q, method="delta")``); ``rho`` is a number or a
    schedule ``t -> rho_t``. The list of iterates starts with the initial ``q``.
    """
    if int(num_steps) != num_steps or num_steps < 0:
        raise ValueError(f"num_steps must be a non-negative integer; got {num_steps}")
    iterates = [q]
    steps = range(int(num_steps))
    if progress:
        from tqdm import tqdm

        steps = tqdm(steps, desc="BLR", leave=False)
    for t in steps:
        rho_t = rho(t) if callable(rho) else rho
        q = blr_step(q, grad_expectation_fn(q), rho_t)
        iterates.append(q)
    return BLRHistory(q, iterates)
