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

For a mean-field product :math:`q = \prod_j q_j` (:class:`~blrlib.families.mean_field.MeanField`) the Fisher
is block-diagonal and the rule is one step per block, :math:`\lambda_j \leftarrow \lambda_j -
\rho_j(\nabla_{\mu_j}\mathbb{E}_q[\bar\ell] - \nabla_{\mu_j}\mathcal{H}(q_j))`: :func:`blr_step` takes a mapping
of per-block gradients (blocks left out stay as they are) and a :math:`\rho` or a mapping of them;
:func:`mean_field_sweep` updates blocks one after the other at the latest :math:`q` (VMP, EM).

API: ``blr_step(q, grad_expectation, rho)``, ``improved_blr_step(q, grad_expectation, rho)``,
``mean_field_sweep(q, grad_fns, rho, order=None)``, ``run_blr(q, grad_expectation_fn, rho, num_steps)``
(``grad_expectation_fn(q)`` or ``grad_expectation_fn(q, t)`` with the step index ``t``).
"""

from __future__ import annotations

import inspect
from typing import Callable, Mapping, NamedTuple, Sequence

import torch

from ._validation import as_float_tensor, check_rho, check_same_shape
from .families.base import ExponentialFamily
from .families.mean_field import MeanField

__all__ = ["blr_step", "improved_blr_step", "mean_field_sweep", "run_blr"]


def _mean_field_step(q: MeanField, grad_expectation, rho) -> MeanField:
    """:func:`blr_step` on a :class:`MeanField`: one step per block named in ``grad_expectation``."""
    if not isinstance(grad_expectation, Mapping):
        raise ValueError(
            f"Invalid grad_expectation: {type(grad_expectation).__name__} (must be a mapping block name -> "
            f"gradient for a MeanField with blocks {q.names})"
        )
    unknown = [n for n in grad_expectation if n not in q]
    if unknown:
        raise ValueError(f"Invalid grad_expectation blocks: {unknown} (must be among {q.names})")
    if isinstance(rho, Mapping):
        missing = [n for n in grad_expectation if n not in rho]
        if missing:
            raise ValueError(f"Invalid rho: no step size for blocks {missing} (must give one per updated block)")
    new = {}
    for name, grads in grad_expectation.items():
        rho_j = rho[name] if isinstance(rho, Mapping) else rho
        try:
            new[name] = blr_step(q[name], grads, rho_j)
        except ValueError as err:
            raise ValueError(f"block {name!r}: {err}") from err
    return q.replace(new)


def mean_field_sweep(
    q: MeanField,
    grad_fns: Mapping[str, Callable[[MeanField], Sequence[torch.Tensor]]],
    rho: float | Mapping[str, float],
    order: Sequence[str] | None = None,
) -> MeanField:
    r"""One sweep of block updates, each at the latest :math:`q` (coordinate ascent, VMP's schedule).

    For each block :math:`j` in ``order`` (default: the order of ``grad_fns``),
    :math:`\lambda_j \leftarrow \lambda_j - \rho_j(\nabla_{\mu_j}\mathbb{E}_q[\bar\ell] - \nabla_{\mu_j}\mathcal{H}(q_j))`
    with ``grad_fns[j](q)`` evaluated at the :math:`q` that already holds the earlier blocks' updates.

    Args:
        q: a :class:`~blrlib.families.mean_field.MeanField` (not modified).
        grad_fns: block name -> function of the current product returning
            :math:`\nabla_{\mu_j}\mathbb{E}_q[\bar\ell]` (the block's estimator).
        rho: one step size for every block or a mapping block -> :math:`\rho_j`.
        order: the blocks to update, in order (a block may appear more than once).
    """
    if not isinstance(q, MeanField):
        raise ValueError(f"Invalid q: {type(q).__name__} (must be a MeanField)")
    order = list(grad_fns) if order is None else list(order)
    for name in order:
        if name not in grad_fns:
            raise ValueError(f"Invalid order entry: {name!r} (must be a key of grad_fns {tuple(grad_fns)})")
        rho_j = {name: rho[name]} if isinstance(rho, Mapping) and name in rho else rho
        q = _mean_field_step(q, {name: grad_fns[name](q)}, rho_j)
    return q


def blr_step(q: ExponentialFamily, grad_expectation: Sequence[torch.Tensor], rho: float) -> ExponentialFamily:
    r"""One step of the rule, :math:`\lambda' = \lambda - \rho(\nabla_\mu\mathbb{E}_q[\bar\ell] - \nabla_\mu\mathcal{H}(q))`.

    Args:
        q: the current candidate :math:`q_\lambda` (not modified), or a
            :class:`~blrlib.families.mean_field.MeanField` product.
        grad_expectation: :math:`\nabla_\mu \mathbb{E}_q[\bar\ell(\theta)]`, structured like
            ``q.expectation_params`` (see :mod:`blrlib.estimators` and the families'
            ``gradient_wrt_expectation``); for a ``MeanField``, a mapping block name -> that block's
            gradient (blocks left out are not updated).
        rho: the step size :math:`\rho \in (0, 1]`; for a ``MeanField`` also a mapping block -> :math:`\rho_j`.

    Returns:
        A new distribution of the same family with natural parameters :math:`\lambda'`. If the step
        leaves the natural parameter space (for example a precision that is no longer positive
        definite), a :class:`ValueError` says so.
    """
    if isinstance(q, MeanField):
        return _mean_field_step(q, grad_expectation, rho)
    rho = check_rho(rho)
    if not isinstance(q, ExponentialFamily):
        raise ValueError(f"q must be an ExponentialFamily instance; got {type(q).__name__}")
    fields = q.ExpectationParams._fields
    if len(grad_expectation) != len(fields):
        raise ValueError(f"grad_expectation must have {len(fields)} blocks {fields}; got {len(grad_expectation)}")
    kernel_step = _family_kernel_step(q, grad_expectation, rho, improved=False)
    if kernel_step is not None:
        return kernel_step
    entropy_grad = q.entropy_gradient_expectation()
    new_natural = []
    for field, lam, grad, ent in zip(fields, q.natural_params, grad_expectation, entropy_grad):
        grad = as_float_tensor(f"grad_expectation.{field}", grad).to(dtype=lam.dtype, device=lam.device)
        check_same_shape(f"grad_expectation.{field}", grad, f"natural_params block for {field}", lam)
        new_natural.append(lam - rho * (grad - ent))
    return q._replace(q.NaturalParams(*new_natural))


def _family_kernel_step(q, grad_expectation, rho: float, improved: bool):
    """The rule on a family that has a step kernel (:mod:`blrlib.optim.kernels`, written once and shared
    with the optimizers): diagonal Gaussian, fixed-covariance Gaussian, Bernoulli. ``None`` otherwise."""
    from .families import Bernoulli, DiagonalGaussian, FixedCovarianceGaussian

    if not isinstance(q, (DiagonalGaussian, FixedCovarianceGaussian, Bernoulli)):
        return None
    from .optim.kernels import DiagGaussianConfig, DiagGaussianState, bernoulli_step, diag_gaussian_step
    from .optim.kernels import fixed_cov_gaussian_step

    grads = []
    for field, grad, lam in zip(q.ExpectationParams._fields, grad_expectation, q.natural_params):
        grad = as_float_tensor(f"grad_expectation.{field}", grad).to(dtype=lam.dtype, device=lam.device)
        check_same_shape(f"grad_expectation.{field}", grad, f"natural_params block for {field}", lam)
        grads.append(grad)
    if isinstance(q, FixedCovarianceGaussian):  # entropy constant: m' = m - rho sigma^2 grad
        mean = fixed_cov_gaussian_step(q.mean, grads[0], rho=rho, variance=q.variance)
        return q._replace(q.NaturalParams(mean / q.variance))
    if isinstance(q, Bernoulli):  # lambda' = (1 - rho) lambda - rho grad
        return q._replace(q.NaturalParams(bernoulli_step(q.natural_params[0], grads[0], rho=rho)[0]))
    # diagonal Gaussian: (g - H m, H/2) -> H, g; s' = (1 - rho) s + rho H [+ correction]; m' = m - rho g/s'
    mean = q.mean
    hess = 2.0 * grads[1]
    cfg = DiagGaussianConfig(lr=rho, beta2=1.0 - rho, curvature="hessian", correction=improved)
    new = diag_gaussian_step(DiagGaussianState(mean, q.precision, None, 0), grads[0] + hess * mean, hess, cfg=cfg)
    return q._replace(q.NaturalParams(new.precision * new.mean, -0.5 * new.precision))


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
    kernel_step = _family_kernel_step(q, grad_expectation, rho, improved=True)
    if kernel_step is not None:
        return kernel_step
    mean, precision = q.mean, q.precision
    blocks = []
    for field, grad, like in zip(("mean", "second_moment"), grad_expectation, q.natural_params):
        grad = as_float_tensor(f"grad_expectation.{field}", grad).to(dtype=like.dtype, device=like.device)
        check_same_shape(f"grad_expectation.{field}", grad, f"natural_params block for {field}", like)
        blocks.append(grad)
    hess = 2.0 * blocks[1]  # a FullGaussian (the diagonal one went to the kernel above)
    hess = 0.5 * (hess + hess.mT)  # .mT and _matvec: a batch of Gaussians steps member by member
    grad_mean = blocks[0] + _matvec(hess, mean)
    gap = precision - hess
    new_precision = (1.0 - rho) * precision + rho * hess + 0.5 * rho**2 * gap @ torch.linalg.solve(precision, gap)
    new_precision = 0.5 * (new_precision + new_precision.mT)
    new_precision_mean = _matvec(new_precision, mean) - rho * grad_mean
    return q._replace(q.NaturalParams(new_precision_mean, -0.5 * new_precision))


def _matvec(matrix: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
    """``matrix @ vector`` for one member or a batch (``(*batch, d, d)`` times ``(*batch, d)``)."""
    return matrix @ vector if vector.ndim == 1 else (matrix @ vector.unsqueeze(-1)).squeeze(-1)


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
    pass_step: bool | None = None,
) -> BLRHistory:
    """Iterate :func:`blr_step` ``num_steps`` times.

    ``grad_expectation_fn(q)`` returns :math:`\\nabla_\\mu\\mathbb{E}_q[\\bar\\ell]` (for instance
    ``lambda q: expectation_gradient(loss, q, method="delta")``); a function of two arguments,
    ``grad_expectation_fn(q, t)``, also gets the step index ``t = 0, 1, ...`` (a filter's or a
    minibatch's loss changes every step). ``pass_step`` forces either form (default: the second
    form when the function has two or more positional parameters without defaults, or ``*args``). ``rho`` is a number, a mapping of them
    (a ``MeanField``) or a schedule ``t -> rho_t``. The list of iterates starts with the initial ``q``.
    """
    if int(num_steps) != num_steps or num_steps < 0:
        raise ValueError(f"num_steps must be a non-negative integer; got {num_steps}")
    if pass_step is None:
        pass_step = _takes_step_index(grad_expectation_fn)
    iterates = [q]
    steps = range(int(num_steps))
    if progress:
        from tqdm import tqdm

        steps = tqdm(steps, desc="BLR", leave=False)
    for t in steps:
        rho_t = rho(t) if callable(rho) else rho
        grads = grad_expectation_fn(q, t) if pass_step else grad_expectation_fn(q)
        q = blr_step(q, grads, rho_t)
        iterates.append(q)
    return BLRHistory(q, iterates)


def _takes_step_index(fn: Callable) -> bool:
    """Whether ``fn`` accepts a second positional argument (the step index)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = 0
    for p in params:
        if p.kind is inspect.Parameter.VAR_POSITIONAL:
            return True
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD) and p.default is p.empty:
            positional += 1
    return positional >= 2
