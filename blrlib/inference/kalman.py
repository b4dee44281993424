r"""The Kalman filter and the Rauch–Tung–Striebel smoother as the Bayesian learning rule.

A linear-Gaussian state-space model,

.. math::

    x_1 \sim \mathcal{N}(m_1, P_1),\qquad x_{t+1} = F x_t + w_t,\ w_t\sim\mathcal{N}(0, Q),\qquad
    z_t = H x_t + v_t,\ v_t\sim\mathcal{N}(0, R).

Timing convention: the first observation :math:`z_1` updates the initial state :math:`\mathcal{N}(m_1, P_1)`
directly; a predict comes before every later observation.

* **Predict** is marginalisation, the push-forward of :math:`q(x_t)` through the dynamics:
  :math:`\mathcal{N}(F m, F P F^\top + Q)`. It is not a step of the rule.
* **Update** is one step of the rule with :math:`\rho = 1` on the candidate :math:`q = \mathcal{N}(m, S^{-1})`,
  the loss :math:`\ell(x) = \tfrac12 (z - Hx)^\top R^{-1} (z - Hx)` and the regulariser
  :math:`-\log\mathcal{N}(x\mid m^-, P^-)` (the predicted Gaussian as the prior). Both are linear in
  :math:`T(x) = (x, xx^\top)`, so :math:`\nabla_\mu\mathbb{E}_q[\bar\ell]` does not depend on :math:`q` and

  .. math::

      \lambda' = -\nabla_\mu \mathbb{E}_q[\bar\ell]
      = \big(\lambda^- + H^\top R^{-1} z,\ \ -\tfrac12 (S^- + H^\top R^{-1} H)\big),

  the information filter, exact from any start.

For a non-linear observation :math:`z = h(x) + v`, :func:`nonlinear_update` takes the expectations with the
delta method and a Gauss–Newton Hessian (one step: the extended Kalman filter; several steps: the iterated EKF)
or with Gauss–Hermite quadrature (a variational filter: the Gaussian minimising the Bayesian objective).
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch
from torch.func import jacrev

from .._validation import as_float_tensor, check_symmetric_positive_definite
from ..families import FullGaussian
from ..rule import blr_step, improved_blr_step
from .quadrature import gauss_hermite

__all__ = [
    "LinearGaussianModel",
    "FilterResult",
    "predict",
    "observation_gradient",
    "update",
    "log_evidence_increment",
    "kalman_filter",
    "rts_smoother",
    "nonlinear_update",
]

_LOG_2PI = math.log(2.0 * math.pi)


class LinearGaussianModel(NamedTuple):
    """The matrices of a linear-Gaussian state-space model (see the module docstring)."""

    transition: torch.Tensor  #: F, (d, d)
    transition_noise: torch.Tensor  #: Q, (d, d)
    observation: torch.Tensor  #: H, (k, d)
    observation_noise: torch.Tensor  #: R, (k, k)
    initial_mean: torch.Tensor  #: m_1, (d,)
    initial_covariance: torch.Tensor  #: P_1, (d, d)


class FilterResult(NamedTuple):
    """What :func:`kalman_filter` returns."""

    filtered: list  #: q(x_t | z_1..z_t), one FullGaussian per time step
    predicted: list  #: q(x_t | z_1..z_{t-1}) (the prior the update used; the first is N(m_1, P_1))
    log_evidence: torch.Tensor  #: log p(z_1..z_T)

    @property
    def means(self) -> torch.Tensor:
        return torch.stack([q.mean for q in self.filtered])

    @property
    def covariances(self) -> torch.Tensor:
        return torch.stack([q.covariance for q in self.filtered])


def _matrix(name: str, value, rows: int | None = None, cols: int | None = None) -> torch.Tensor:
    tensor = as_float_tensor(name, value)
    if tensor.ndim != 2 or (rows is not None and tensor.shape[0] != rows) or (cols is not None and tensor.shape[1] != cols):
        want = f"({rows if rows is not None else 'k'}, {cols if cols is not None else 'd'})"
        raise ValueError(f"Invalid {name}: shape {tuple(tensor.shape)} (must be {want})")
    return tensor


def predict(q: FullGaussian, transition, transition_noise) -> FullGaussian:
    r"""The predict step, :math:`\mathcal{N}(Fm, FPF^\top + Q)`: marginalising :math:`x_t` out of
    :math:`q(x_t)\,\mathcal{N}(x_{t+1}\mid Fx_t, Q)` (not a step of the rule)."""
    d = q.mean.numel()
    F = _matrix("transition", transition, d, d).to(q.dtype)
    Q = _matrix("transition_noise", transition_noise, d, d).to(q.dtype)
    check_symmetric_positive_definite("transition_noise", Q)
    return _predict(q, F, Q)


def _predict(q: FullGaussian, F: torch.Tensor, Q: torch.Tensor) -> FullGaussian:
    covariance = F @ q.covariance @ F.T + Q
    precision = torch.linalg.inv(0.5 * (covariance + covariance.T))
    precision = 0.5 * (precision + precision.T)
    return FullGaussian((precision @ (F @ q.mean), -0.5 * precision))


def observation_gradient(observation, observation_noise, z) -> FullGaussian.ExpectationParams:
    r""":math:`\nabla_\mu\mathbb{E}_q[\ell]` for :math:`\ell(x) = \tfrac12(z-Hx)^\top R^{-1}(z-Hx)`.

    Expanding, :math:`\ell(x) = \tfrac12 x^\top H^\top R^{-1}H x - z^\top R^{-1} H x + \text{const}` is linear in
    :math:`T(x) = (x, xx^\top)`, so :math:`\mathbb{E}_q[\ell] = \tfrac12\operatorname{tr}(H^\top R^{-1}H\mu^{(2)})
    - (H^\top R^{-1}z)^\top\mu^{(1)}` and the gradient is :math:`(-H^\top R^{-1}z,\ \tfrac12 H^\top R^{-1}H)`,
    the same for every :math:`q`.
    """
    H = _matrix("observation", observation)
    R = _matrix("observation_noise", observation_noise, H.shape[0], H.shape[0]).to(H.dtype)
    check_symmetric_positive_definite("observation_noise", R)
    z = as_float_tensor("z", z).to(H.dtype)
    if z.shape != (H.shape[0],):
        raise ValueError(f"Invalid z: shape {tuple(z.shape)} (must be ({H.shape[0]},) to match observation)")
    R_inv_H = torch.linalg.solve(R, H)
    information = H.T @ R_inv_H
    return FullGaussian.ExpectationParams(-(R_inv_H.T @ z), 0.25 * (information + information.T))


def _prior_gradient(prior: FullGaussian) -> FullGaussian.ExpectationParams:
    r""":math:`\nabla_\mu\mathbb{E}_q[-\log p(x)] = -\lambda_p` for a Gaussian prior :math:`p` (linear in :math:`T`)."""
    return FullGaussian.ExpectationParams(*(-lam for lam in prior.natural_params))


def update(prior: FullGaussian, z, observation, observation_noise, *, start: FullGaussian | None = None,
           rho: float = 1.0) -> FullGaussian:
    r"""The Kalman update as one step of the rule: :math:`\lambda' = (1-\rho)\lambda - \rho\nabla_\mu\mathbb{E}_q[\bar\ell]`.

    :math:`\bar\ell(x) = \tfrac12(z-Hx)^\top R^{-1}(z-Hx) - \log p(x)` with :math:`p` = ``prior`` (the predicted
    Gaussian). With ``rho=1`` (the default) the result is the exact posterior whatever ``start`` is (the
    prior when ``None``); with ``rho < 1`` it moves the fraction ``rho`` of the way in natural parameters.
    """
    if not isinstance(prior, FullGaussian):
        raise ValueError(f"Invalid prior: {type(prior).__name__} (must be a FullGaussian)")
    q = prior if start is None else start
    if not isinstance(q, FullGaussian) or q.mean.shape != prior.mean.shape:
        raise ValueError(f"Invalid start: {q!r} (must be a FullGaussian of the prior's dimension)")
    H = _matrix("observation", observation, cols=prior.mean.numel()).to(prior.dtype)
    grad_loss = observation_gradient(H, observation_noise, z)
    grad_prior = _prior_gradient(prior)
    grad_mu = [a + b for a, b in zip(grad_loss, grad_prior)]
    return blr_step(q, grad_mu, rho)


def log_evidence_increment(prior: FullGaussian, posterior: FullGaussian, z, observation_noise) -> torch.Tensor:
    r""":math:`\log p(z) = \log\int \mathcal{N}(z\mid Hx, R)\,p(x)\,dx` from the log-partitions.

    :math:`\mathcal{N}(z\mid Hx, R)\,p(x) = \exp\big(\langle\lambda', T(x)\rangle - A(\lambda^-)
    - \tfrac12 z^\top R^{-1}z - \tfrac12\log\det(2\pi R)\big)` with :math:`\lambda'` the exact posterior, so
    :math:`\log p(z) = A(\lambda') - A(\lambda^-) - \tfrac12 z^\top R^{-1} z - \tfrac12\log\det(2\pi R)`.
    """
    R = _matrix("observation_noise", observation_noise).to(prior.dtype)
    z = as_float_tensor("z", z).to(prior.dtype)
    quad = z @ torch.linalg.solve(R, z)
    return (posterior.log_partition() - prior.log_partition() - 0.5 * quad
            - 0.5 * torch.linalg.slogdet(2.0 * math.pi * R)[1])


def kalman_filter(model: LinearGaussianModel, observations) -> FilterResult:
    """Filter ``observations`` (shape ``(T, k)``): :func:`predict` then :func:`update` at each step.

    The first observation updates :math:`\\mathcal{N}(m_1, P_1)` directly (no predict before it).
    """
    F, Q, H, R, m1, P1 = (as_float_tensor(name, value) for name, value in zip(LinearGaussianModel._fields, model))
    zs = as_float_tensor("observations", observations).to(m1.dtype)
    if zs.ndim != 2 or zs.shape[1] != H.shape[0]:
        raise ValueError(f"Invalid observations: shape {tuple(zs.shape)} (must be (T, {H.shape[0]}))")
    d, k = m1.numel(), H.shape[0]
    for name, matrix, shape in (("transition", F, (d, d)), ("transition_noise", Q, (d, d)),
                                ("observation", H, (k, d)), ("observation_noise", R, (k, k)),
                                ("initial_covariance", P1, (d, d))):
        if tuple(matrix.shape) != shape:
            raise ValueError(f"Invalid {name}: shape {tuple(matrix.shape)} (must be {shape})")
    check_symmetric_positive_definite("transition_noise", Q)
    q = FullGaussian.from_mean_covariance(m1, P1)
    R_inv = torch.linalg.inv(R)
    log_det = torch.linalg.slogdet(2.0 * math.pi * R)[1]
    filtered, predicted = [], []
    log_evidence = torch.zeros((), dtype=m1.dtype, device=m1.device)
    for t, z in enumerate(zs):
        prior = q if t == 0 else _predict(q, F, Q)
        grad_mu = [a + b for a, b in zip(observation_gradient(H, R, z), _prior_gradient(prior))]
        q = blr_step(prior, grad_mu, 1.0)  # the update: one rho = 1 step of the rule
        log_evidence = log_evidence + (q.log_partition() - prior.log_partition() - 0.5 * z @ R_inv @ z
                                       - 0.5 * log_det)  # log_evidence_increment, constants hoisted
        predicted.append(prior)
        filtered.append(q)
    return FilterResult(filtered, predicted, log_evidence)


def rts_smoother(result: FilterResult, transition, transition_noise) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Smoothed marginals :math:`q(x_t\mid z_{1:T})` from a :class:`FilterResult`.

    The backward kernel :math:`p(x_t\mid x_{t+1}, z_{1:t})` is a rule step: the filtered :math:`q_t` is the prior
    and :math:`x_{t+1}` a pseudo-observation of :math:`F x_t` with noise :math:`Q` (:func:`update`). Its mean is
    affine in :math:`x_{t+1}`, :math:`b + J x_{t+1}`, with covariance :math:`\Lambda^{-1}`; marginalising
    :math:`x_{t+1}\sim\mathcal{N}(m^s_{t+1}, P^s_{t+1})` gives :math:`m^s_t = b + J m^s_{t+1}` and
    :math:`P^s_t = \Lambda^{-1} + J P^s_{t+1} J^\top`. Needs :math:`Q \succ 0`.

    Returns the smoothed means ``(T, d)`` and covariances ``(T, d, d)``.
    """
    filtered = result.filtered
    d = filtered[0].mean.numel()
    F = _matrix("transition", transition, d, d).to(filtered[0].dtype)
    Q = _matrix("transition_noise", transition_noise, d, d).to(filtered[0].dtype)
    means, covariances = [filtered[-1].mean], [filtered[-1].covariance]
    zero = torch.zeros(d, dtype=F.dtype, device=F.device)
    for q_t in reversed(filtered[:-1]):
        kernel = update(q_t, zero, F, Q)  # p(x_t | x_{t+1} = 0, z_1..z_t)
        cond_cov = kernel.covariance
        gain = cond_cov @ F.T @ torch.linalg.inv(Q)  # J = Λ^{-1} Fᵀ Q^{-1}
        means.append(kernel.mean + gain @ means[-1])
        covariance = cond_cov + gain @ covariances[-1] @ gain.T
        covariances.append(0.5 * (covariance + covariance.T))
    return torch.stack(means[::-1]), torch.stack(covariances[::-1])


def nonlinear_update(
    prior: FullGaussian,
    z,
    observation_fn: Callable[[torch.Tensor], torch.Tensor],
    observation_noise,
    *,
    method: str = "delta",
    num_steps: int = 1,
    rho: float = 1.0,
    num_points: int = 7,
    improved: bool = False,
    start: FullGaussian | None = None,
) -> FullGaussian:
    r"""The update for :math:`z = h(x) + v` by the rule: ``num_steps`` steps of size ``rho`` from ``start``
    (the prior when ``None``).

    :math:`\bar\ell(x) = \tfrac12(z - h(x))^\top R^{-1}(z - h(x)) - \log p(x)`.

    * ``method="delta"``: :math:`\mathbb{E}_q[\nabla\bar\ell]\approx\nabla\bar\ell(m)` and the Gauss–Newton
      :math:`\mathbb{E}_q[\nabla^2\bar\ell]\approx J^\top R^{-1} J + S^-` with :math:`J = \partial h/\partial x` at
      :math:`m`. One step with :math:`\rho = 1` is the extended Kalman filter's update; more steps give the
      iterated EKF (Gauss–Newton on the MAP problem).
    * ``method="gauss_hermite"``: both expectations by tensor-product Gauss–Hermite quadrature with
      ``num_points`` nodes per dimension (exact Hessians at the nodes). Its fixed point is the Gaussian
      minimising :math:`\mathbb{E}_q[\bar\ell] - \mathcal{H}(q)`: a variational filter.

    ``improved=True`` takes :func:`blrlib.rule.improved_blr_step` (Lin, Schmidt & Khan, 2020) instead of
    :func:`blrlib.rule.blr_step`: same fixed points, but the precision stays positive definite when the expected
    Hessian of a strongly non-linear :math:`h` is indefinite somewhere along the way.
    """
    if not isinstance(prior, FullGaussian):
        raise ValueError(f"Invalid prior: {type(prior).__name__} (must be a FullGaussian)")
    if method not in ("delta", "gauss_hermite"):
        raise ValueError(f"Invalid method: {method!r} (must be 'delta' or 'gauss_hermite')")
    if int(num_steps) != num_steps or num_steps < 1:
        raise ValueError(f"Invalid num_steps: {num_steps} (must be a positive integer)")
    z = as_float_tensor("z", z).to(prior.dtype)
    R = _matrix("observation_noise", observation_noise, z.numel(), z.numel()).to(prior.dtype)
    check_symmetric_positive_definite("observation_noise", R)
    prior_precision, prior_mean = prior.precision, prior.mean

    def residual(x):
        return z - observation_fn(x)

    def loss(x):
        r = residual(x)
        diff = x - prior_mean
        return 0.5 * r @ torch.linalg.solve(R, r) + 0.5 * diff @ prior_precision @ diff

    from torch.func import grad as func_grad

    q = prior if start is None else start
    if not isinstance(q, FullGaussian) or q.mean.shape != prior.mean.shape:
        raise ValueError(f"Invalid start: {q!r} (must be a FullGaussian of the prior's dimension)")
    for _ in range(int(num_steps)):
        if method == "delta":
            m = q.mean
            gradient = func_grad(loss)(m)
            J = jacrev(observation_fn)(m)
            if J.shape != (z.numel(), m.numel()):
                raise ValueError(f"Invalid observation_fn: Jacobian of shape {tuple(J.shape)} (must be {(z.numel(), m.numel())})")
            hess = J.T @ torch.linalg.solve(R, J) + prior_precision
            hess = 0.5 * (hess + hess.T)
        else:
            gradient, hess = gauss_hermite(loss, q, num_points)
        step = improved_blr_step if improved else blr_step
        q = step(q, q.gradient_wrt_expectation(gradient, hess), rho)
    return q
