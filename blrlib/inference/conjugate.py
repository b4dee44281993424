r"""Conjugate Bayesian inference as one step of the Bayesian learning rule.

When the loss is linear in the sufficient statistics of the candidate family,

.. math::

    \bar\ell(\theta) = -\log p(\mathcal{D}\mid\theta) - \log p_0(\theta)
    = -\langle \tilde\lambda + \lambda_0,\ T(\theta)\rangle + \text{const},

with :math:`\tilde\lambda` the coefficients of :math:`T` in the log-likelihood and :math:`\lambda_0` the
prior's natural parameters, :math:`\mathbb{E}_q[\bar\ell]` is linear in :math:`\mu` and
:math:`\nabla_\mu\mathbb{E}_q[\bar\ell] = -(\tilde\lambda + \lambda_0)` whatever :math:`q` is. The rule
:math:`\lambda \leftarrow (1-\rho)\lambda - \rho\nabla_\mu\mathbb{E}_q[\bar\ell]` then gives the exact posterior
:math:`\lambda_\star = \lambda_0 + \tilde\lambda` in one step with :math:`\rho = 1` from any start, and with
:math:`\rho < 1` the distance contracts as :math:`\lambda_t - \lambda_\star = (1-\rho)^t(\lambda_0' - \lambda_\star)`.

The functions here return :math:`\tilde\lambda` for three likelihoods (Bernoulli for a
:class:`~blrlib.families.Beta` candidate, Poisson for a :class:`~blrlib.families.Gamma`, and linear regression
with known noise precision for a :class:`~blrlib.families.FullGaussian`) and take the step with
:func:`blrlib.rule.blr_step`.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch

from .._validation import as_float_tensor
from ..families import Beta, FullGaussian, Gamma
from ..families.base import ExponentialFamily
from ..rule import blr_step

__all__ = [
    "bernoulli_likelihood",
    "poisson_likelihood",
    "linear_regression_likelihood",
    "conjugate_loss_gradient",
    "conjugate_step",
    "stream",
    "bayesian_linear_regression",
    "linear_regression_predictive",
    "log_evidence",
    "linear_regression_log_base",
]


def _vector(name: str, value) -> torch.Tensor:
    tensor = as_float_tensor(name, value)
    if tensor.ndim != 1 or tensor.numel() == 0:
        raise ValueError(f"Invalid {name}: shape {tuple(tensor.shape)} (must be a non-empty vector)")
    return tensor


def _positive(name: str, value) -> float:
    number = float(value)
    if not (number > 0 and math.isfinite(number)):
        raise ValueError(f"Invalid {name}: {value} (must be a finite positive number)")
    return number


def bernoulli_likelihood(y) -> Beta.NaturalParams:
    r""":math:`\tilde\lambda` of :math:`\prod_i\theta^{y_i}(1-\theta)^{1-y_i}` in :math:`T = (\log\theta, \log(1-\theta))`:
    :math:`(\sum_i y_i,\ \sum_i (1-y_i))`. ``y`` is a vector of 0s and 1s."""
    y = _vector("y", y)
    if not bool(((y == 0) | (y == 1)).all()):
        raise ValueError(f"Invalid y: {y.tolist()[:8]}... (must hold only 0 and 1)")
    return Beta.NaturalParams(y.sum(), (1.0 - y).sum())


def poisson_likelihood(y) -> Gamma.NaturalParams:
    r""":math:`\tilde\lambda` of :math:`\prod_i \theta^{y_i}e^{-\theta}/y_i!` in :math:`T = (\log\theta, \theta)`:
    :math:`(\sum_i y_i,\ -n)`. ``y`` is a vector of non-negative integers."""
    y = _vector("y", y)
    if not bool(((y >= 0) & (y == torch.round(y))).all()):
        raise ValueError(f"Invalid y: {y.tolist()[:8]}... (must hold non-negative integers)")
    return Gamma.NaturalParams(y.sum(), -torch.tensor(float(y.numel()), dtype=y.dtype, device=y.device))


def linear_regression_likelihood(X, y, noise_precision: float) -> FullGaussian.NaturalParams:
    r""":math:`\tilde\lambda` of :math:`\prod_i\mathcal{N}(y_i\mid x_i^\top\theta, \alpha^{-1})` in
    :math:`T = (\theta, \theta\theta^\top)`: :math:`(\alpha X^\top y,\ -\tfrac{\alpha}{2}X^\top X)`."""
    X = as_float_tensor("X", X)
    y = _vector("y", y).to(X.dtype)
    if X.ndim != 2 or X.shape[0] != y.numel():
        raise ValueError(f"Invalid X: shape {tuple(X.shape)} (must be (n, d) with n = {y.numel()} rows, one per y)")
    alpha = _positive("noise_precision", noise_precision)
    gram = X.T @ X
    return FullGaussian.NaturalParams(alpha * (X.T @ y), -0.5 * alpha * 0.5 * (gram + gram.T))


def conjugate_loss_gradient(prior: ExponentialFamily, likelihood_natural) -> list:
    r""":math:`\nabla_\mu\mathbb{E}_q[\bar\ell] = -(\tilde\lambda + \lambda_0)` for the loss
    :math:`-\log p(\mathcal{D}\mid\theta) - \log p_0(\theta)` (the same for every :math:`q`)."""
    if not isinstance(prior, ExponentialFamily):
        raise ValueError(f"Invalid prior: {type(prior).__name__} (must be an ExponentialFamily)")
    fields = prior.NaturalParams._fields
    if len(likelihood_natural) != len(fields):
        raise ValueError(f"Invalid likelihood_natural: {len(likelihood_natural)} blocks (must be {len(fields)}: {fields})")
    out = []
    for field, lam0, lik in zip(fields, prior.natural_params, likelihood_natural):
        lik = as_float_tensor(f"likelihood_natural.{field}", lik).to(dtype=lam0.dtype, device=lam0.device)
        if lik.shape != lam0.shape:
            raise ValueError(f"Invalid likelihood_natural.{field}: shape {tuple(lik.shape)} (must be {tuple(lam0.shape)})")
        out.append(-(lam0 + lik))
    return out


def conjugate_step(prior: ExponentialFamily, likelihood_natural, *, start: ExponentialFamily | None = None,
                   rho: float = 1.0) -> ExponentialFamily:
    r"""One step of the rule for a conjugate model: :math:`\lambda' = (1-\rho)\lambda + \rho(\lambda_0 + \tilde\lambda)`.

    ``start`` is the current candidate (the prior when ``None``); with ``rho=1`` the result is the exact
    posterior for any ``start``.
    """
    q = prior if start is None else start
    if type(q) is not type(prior):
        raise ValueError(f"Invalid start: {type(q).__name__} (must be a {type(prior).__name__} like the prior)")
    return blr_step(q, conjugate_loss_gradient(prior, likelihood_natural), rho)


def stream(prior: ExponentialFamily, likelihoods: Iterable) -> list:
    r"""Posterior of a stream: one :math:`\rho = 1` step per item, each posterior the next prior.

    ``likelihoods`` yields :math:`\tilde\lambda` of one observation (or batch) at a time. Returns the list of
    posteriors after each item; the last equals one step with the summed :math:`\tilde\lambda`.
    """
    q, out = prior, []
    for lik in likelihoods:
        q = conjugate_step(q, lik)
        out.append(q)
    if not out:
        raise ValueError("Invalid likelihoods: empty (must yield at least one item)")
    return out


def bayesian_linear_regression(X, y, *, noise_precision: float, prior_precision: float,
                               start: FullGaussian | None = None, rho: float = 1.0) -> FullGaussian:
    r"""The posterior of :math:`y = X\theta + \epsilon`, :math:`\epsilon\sim\mathcal{N}(0, \alpha^{-1}I)`,
    :math:`\theta\sim\mathcal{N}(0, \delta^{-1}I)`, as one step of the rule:
    :math:`S = \alpha X^\top X + \delta I`, :math:`m = \alpha S^{-1}X^\top y` (ridge regression with penalty
    :math:`\delta/\alpha`). No intercept: centre ``X`` and ``y`` first for a flat prior on one."""
    X = as_float_tensor("X", X)
    delta = _positive("prior_precision", prior_precision)
    d = X.shape[-1]
    prior = FullGaussian.from_mean_precision(torch.zeros(d, dtype=X.dtype, device=X.device),
                                             delta * torch.eye(d, dtype=X.dtype, device=X.device))
    return conjugate_step(prior, linear_regression_likelihood(X, y, noise_precision), start=start, rho=rho)


def linear_regression_predictive(q: FullGaussian, X_new, noise_precision: float) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Mean :math:`x^\top m` and standard deviation :math:`\sqrt{x^\top S^{-1}x + 1/\alpha}` of :math:`y` at each
    row :math:`x` of ``X_new`` (the noise included)."""
    X_new = as_float_tensor("X_new", X_new).to(q.dtype)
    if X_new.ndim != 2 or X_new.shape[1] != q.mean.numel():
        raise ValueError(f"Invalid X_new: shape {tuple(X_new.shape)} (must be (n, {q.mean.numel()}))")
    alpha = _positive("noise_precision", noise_precision)
    chol = torch.linalg.cholesky(q.precision)
    half = torch.linalg.solve_triangular(chol, X_new.T, upper=False)
    return X_new @ q.mean, torch.sqrt((half * half).sum(0) + 1.0 / alpha)


def linear_regression_log_base(y, noise_precision: float) -> torch.Tensor:
    r"""The part of :math:`\log p(y\mid\theta)` free of :math:`\theta`:
    :math:`-\tfrac{\alpha}{2}y^\top y + \tfrac n2\log\tfrac{\alpha}{2\pi}`."""
    y = _vector("y", y)
    alpha = _positive("noise_precision", noise_precision)
    return -0.5 * alpha * (y @ y) + 0.5 * y.numel() * math.log(alpha / (2.0 * math.pi))


def log_evidence(prior: ExponentialFamily, posterior: ExponentialFamily, log_base) -> torch.Tensor:
    r""":math:`\log p(\mathcal{D}) = A(\lambda_\star) - A(\lambda_0) + \log h_{\mathcal{D}}`.

    With :math:`\log p(\mathcal{D}\mid\theta) = \langle\tilde\lambda, T(\theta)\rangle + \log h_{\mathcal{D}}` and
    :math:`p_0(\theta) = h(\theta)\exp(\langle\lambda_0, T(\theta)\rangle - A(\lambda_0))`, integrating the product over
    :math:`\theta` gives :math:`\exp(A(\lambda_0 + \tilde\lambda) - A(\lambda_0) + \log h_{\mathcal{D}})`.
    ``log_base`` is :math:`\log h_{\mathcal{D}}` (for example :func:`linear_regression_log_base`, or
    :math:`-\sum_i\log y_i!` for Poisson counts, or 0 for Bernoulli observations).
    """
    if type(prior) is not type(posterior):
        raise ValueError(f"Invalid posterior: {type(posterior).__name__} (must be a {type(prior).__name__})")
    return posterior.log_partition() - prior.log_partition() + as_float_tensor("log_base", log_base)
