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

__all__ = ["blr_step", "run_blr"]


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
