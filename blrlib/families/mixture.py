r"""The mixture-of-Gaussians candidate and the rule's natural-gradient step for it.

The candidate is the marginal of a joint exponential family over :math:`(\theta, z)`,

.. math::

    q(\theta) = \sum_{k=1}^K \pi_k\, \mathcal{N}(\theta \mid m_k, S_k^{-1}),
    \qquad q(\theta, z = k) = \pi_k\, q_k(\theta),

which is not an exponential family itself (Lin, Khan & Schmidt, ICML 2019). The rule steps in the
coordinates :math:`(v, \lambda_1, \dots, \lambda_K)`, with :math:`v_k = \log(\pi_k/\pi_K)`
(:math:`k < K`) and :math:`\lambda_k = (S_k m_k, -\tfrac12 S_k)` the natural parameters of component
:math:`k`. There the Fisher information of the joint is block diagonal,
:math:`\mathrm{blockdiag}(F_{\mathrm{cat}}(v), \pi_1 F_1(\lambda_1), \dots, \pi_K F_K(\lambda_K))`, and the
natural-gradient step on :math:`\mathcal{L}(q) = \mathbb{E}_q[\bar\ell + \log q]` reads, with
:math:`f = \bar\ell + \log q` held fixed inside each expectation,

.. math::

    S_k &\leftarrow S_k + \rho\,\mathbb{E}_{q_k}[\nabla^2 f], \qquad
    m_k \leftarrow m_k - \rho\, S_k^{-1}\,\mathbb{E}_{q_k}[\nabla f] \quad (\text{new } S_k), \\
    v_k &\leftarrow v_k - \rho\,\big(\mathbb{E}_{q_k}[f] - \mathbb{E}_{q_K}[f]\big).

Each component update is the Gaussian rule with the gradient :math:`\mathbb{E}_{q_k}[\nabla f]` and the
"Hessian" :math:`S_k + \mathbb{E}_{q_k}[\nabla^2 f]`, so :func:`mixture_blr_step` hands it to
:func:`blrlib.rule.blr_step` (or to :func:`blrlib.rule.improved_blr_step`, which keeps every
precision positive definite where :math:`\bar\ell` has an indefinite Hessian).

:func:`mixture_expectations` computes :math:`\mathbb{E}_{q_k}[f]`, :math:`\mathbb{E}_{q_k}[\nabla f]` and
:math:`\mathbb{E}_{q_k}[\nabla^2 f]` by Gauss–Hermite quadrature (no approximation beyond quadrature
error), or with the delta method on :math:`\bar\ell` (the log-density term, which the candidate knows in
closed form, is still integrated by quadrature). With ``coupling=False`` the term :math:`\log q` is
replaced by the joint's :math:`\log q(\theta, z = k) = \log\pi_k + \log q_k(\theta)`, whose expectations
are exact (:math:`-\mathcal{H}(q_k) + \log\pi_k`, :math:`0`, :math:`-S_k`): every component then runs the
Gaussian rule on :math:`\bar\ell` alone (damped Newton under the delta method).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, NamedTuple

import numpy as np
import torch
from torch.func import grad_and_value, jacrev, vmap

from .._validation import as_float_tensor, check_rho, check_symmetric_positive_definite
from .gaussian import FullGaussian

__all__ = [
    "GaussianMixture",
    "MixtureExpectations",
    "gauss_hermite",
    "mixture_expectations",
    "mixture_blr_step",
]

_LOG_2PI = math.log(2.0 * math.pi)
Loss = Callable[[torch.Tensor], torch.Tensor]


def _invalid(name: str, value: Any, must: str) -> ValueError:
    return ValueError(f"Invalid {name}: {value} (must be {must})")


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise _invalid(name, value, "a positive integer")
    return int(value)


# ====================================================================== the candidate
class GaussianMixture:
    r""":math:`q(\theta) = \sum_k \pi_k \mathcal{N}(\theta\mid m_k, S_k^{-1})`, stored in the rule's coordinates.

    The state is :class:`GaussianMixture.NaturalParams`: the log weight ratios
    :math:`v_k = \log(\pi_k/\pi_K)` (shape ``(K-1,)``), and the natural parameters
    :math:`S_k m_k` (shape ``(K, d)``) and :math:`-\tfrac12 S_k` (shape ``(K, d, d)``) of every
    component. Objects are immutable; the step returns a new mixture.
    """

    class NaturalParams(NamedTuple):
        log_weight_ratios: torch.Tensor
        precision_means: torch.Tensor
        neg_half_precisions: torch.Tensor

    def __init__(self, natural_params):
        v, pm, nhp = (as_float_tensor(f"natural_params.{f}", x) for f, x in zip(self.NaturalParams._fields, natural_params))
        if pm.ndim != 2:
            raise _invalid("natural_params.precision_means shape", tuple(pm.shape), "(K, d)")
        K, d = pm.shape
        if v.shape != (K - 1,):
            raise _invalid("natural_params.log_weight_ratios shape", tuple(v.shape), f"({K - 1},), one fewer than K = {K}")
        if nhp.shape != (K, d, d):
            raise _invalid("natural_params.neg_half_precisions shape", tuple(nhp.shape), f"{(K, d, d)}")
        dtype = torch.promote_types(torch.promote_types(v.dtype, pm.dtype), nhp.dtype)
        v, pm, nhp = v.to(dtype), pm.to(dtype), nhp.to(dtype)
        for k in range(K):
            check_symmetric_positive_definite(f"precision of component {k} (-2 * neg_half_precisions[{k}])", -2.0 * nhp[k])
        self._natural = self.NaturalParams(v, pm, nhp)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_weights_means_precisions(cls, weights: Any, means: Any, precisions: Any) -> "GaussianMixture":
        """From the weights :math:`\\pi` (``(K,)``, positive, summing to one), means ``(K, d)`` and precisions ``(K, d, d)``."""
        weights = as_float_tensor("weights", weights)
        means = as_float_tensor("means", means)
        precisions = as_float_tensor("precisions", precisions)
        dtype = torch.promote_types(torch.promote_types(weights.dtype, means.dtype), precisions.dtype)
        weights, means, precisions = weights.to(dtype), means.to(dtype), precisions.to(dtype)
        if means.ndim != 2:
            raise _invalid("means shape", tuple(means.shape), "(K, d)")
        K, d = means.shape
        if weights.shape != (K,):
            raise _invalid("weights shape", tuple(weights.shape), f"({K},) to match means")
        if not bool((weights > 0).all()) or abs(float(weights.sum()) - 1.0) > 1e-10:
            raise _invalid("weights", weights.tolist(), "positive and summing to 1")
        if precisions.shape != (K, d, d):
            raise _invalid("precisions shape", tuple(precisions.shape), f"{(K, d, d)} to match means")
        for k in range(K):
            check_symmetric_positive_definite(f"precisions[{k}]", precisions[k])
        log_w = torch.log(weights)
        return cls((log_w[:-1] - log_w[-1], (precisions @ means.unsqueeze(-1)).squeeze(-1), -0.5 * precisions))

    @classmethod
    def from_components(cls, weights: Any, components: list) -> "GaussianMixture":
        """From the weights and a list of :class:`~blrlib.families.FullGaussian` components."""
        if not components or not all(isinstance(c, FullGaussian) for c in components):
            raise _invalid("components", components, "a non-empty list of FullGaussian")
        means = torch.stack([c.mean for c in components])
        return cls.from_weights_means_precisions(weights, means, torch.stack([c.precision for c in components]))

    # ------------------------------------------------------------------ parameters
    @property
    def natural_params(self) -> "GaussianMixture.NaturalParams":
        """:math:`(v, S_k m_k, -\\tfrac12 S_k)`, the coordinates the rule steps in."""
        return self._natural

    @property
    def num_components(self) -> int:
        return self._natural.precision_means.shape[0]

    @property
    def dim(self) -> int:
        return self._natural.precision_means.shape[1]

    @property
    def dtype(self) -> torch.dtype:
        return self._natural.precision_means.dtype

    @property
    def device(self) -> torch.device:
        return self._natural.precision_means.device

    @property
    def log_weight_ratios(self) -> torch.Tensor:
        """:math:`v_k = \\log(\\pi_k/\\pi_K)`, :math:`k = 1..K-1`."""
        return self._natural.log_weight_ratios

    @property
    def log_weights(self) -> torch.Tensor:
        """:math:`\\log\\pi_k = v_k - \\log(1 + \\sum_{j<K} e^{v_j})` (with :math:`v_K = 0`)."""
        v = torch.cat([self.log_weight_ratios, self.log_weight_ratios.new_zeros(1)])
        return v - torch.logsumexp(v, 0)

    @property
    def weights(self) -> torch.Tensor:
        return self.log_weights.exp()

    @property
    def precisions(self) -> torch.Tensor:
        return -2.0 * self._natural.neg_half_precisions

    @property
    def means(self) -> torch.Tensor:
        return torch.linalg.solve(self.precisions, self._natural.precision_means.unsqueeze(-1)).squeeze(-1)

    @property
    def covariances(self) -> torch.Tensor:
        return torch.linalg.inv(self.precisions)

    def component(self, k: int) -> FullGaussian:
        """Component :math:`q_k = \\mathcal{N}(m_k, S_k^{-1})` as a :class:`FullGaussian`."""
        if not isinstance(k, (int, np.integer)) or not 0 <= k < self.num_components:
            raise _invalid("k", k, f"an integer in [0, {self.num_components - 1}]")
        return FullGaussian((self._natural.precision_means[k], self._natural.neg_half_precisions[k]))

    # ------------------------------------------------------------------ the density
    def _component_terms(self, theta: torch.Tensor):
        """log(π_k N_k(θ)) (..., K) and ∇ log N_k(θ) = -S_k (θ - m_k) (..., K, d)."""
        S, m = self.precisions, self.means
        diff = theta.unsqueeze(-2) - m  # (..., K, d)
        a = -torch.einsum("kij,...kj->...ki", S, diff)
        logdet = torch.linalg.slogdet(S)[1]
        log_comp = 0.5 * (diff * a).sum(-1) + 0.5 * logdet - 0.5 * self.dim * _LOG_2PI
        return self.log_weights + log_comp, a

    def log_prob(self, theta: torch.Tensor) -> torch.Tensor:
        """:math:`\\log q(\\theta) = \\log\\sum_k \\pi_k \\mathcal{N}(\\theta\\mid m_k, S_k^{-1})`; ``theta`` has shape ``(..., d)``."""
        log_joint, _ = self._component_terms(theta)
        return torch.logsumexp(log_joint, -1)

    def responsibilities(self, theta: torch.Tensor) -> torch.Tensor:
        """:math:`r_k(\\theta) = q(z = k\\mid\\theta)`, shape ``(..., K)``."""
        log_joint, _ = self._component_terms(theta)
        return torch.softmax(log_joint, -1)

    def log_prob_derivatives(self, theta: torch.Tensor):
        r""":math:`\log q`, :math:`\nabla\log q` and :math:`\nabla^2\log q` at ``theta`` (``(..., d)``), in closed form:

        .. math::

            \nabla\log q = \sum_k r_k a_k,\qquad
            \nabla^2\log q = \sum_k r_k (a_k a_k^\top - S_k) - \nabla\log q\,\nabla\log q^\top,

        with :math:`a_k = -S_k(\theta - m_k)` and :math:`r_k` the responsibilities.
        """
        log_joint, a = self._component_terms(theta)
        value = torch.logsumexp(log_joint, -1)
        r = torch.softmax(log_joint, -1)
        g = (r.unsqueeze(-1) * a).sum(-2)
        h = torch.einsum("...k,...ki,...kj->...ij", r, a, a) - torch.einsum("...k,kij->...ij", r, self.precisions)
        h = h - g.unsqueeze(-1) * g.unsqueeze(-2)
        return value, g, h

    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``num_samples`` points (``(num_samples, d)``): a component by its weight, then a Gaussian draw."""
        n = _positive_int("num_samples", num_samples)
        z = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        eps = torch.randn((n, self.dim), generator=generator, dtype=self.dtype, device=self.device)
        chol = torch.linalg.cholesky(self.precisions)  # S = L L^T, offset L^{-T} eps
        offsets = torch.linalg.solve_triangular(chol[z].transpose(-1, -2), eps.unsqueeze(-1), upper=True).squeeze(-1)
        return self.means[z] + offsets

    def __repr__(self) -> str:
        return f"GaussianMixture(K={self.num_components}, d={self.dim}, dtype={self.dtype})"


# ====================================================================== expectations
@functools.lru_cache(maxsize=32)
def _hermite_nodes(n: int):
    x, w = np.polynomial.hermite_e.hermegauss(n)  # probabilists' Hermite: weight exp(-x^2/2)
    return x, w / w.sum()


def gauss_hermite(num_points: int, dim: int, *, dtype: torch.dtype = torch.float64, device=None):
    r"""Nodes :math:`x_i` (``(n^d, d)``) and weights :math:`w_i` (``(n^d,)``) of the tensor-product
    Gauss–Hermite rule for :math:`\mathbb{E}_{\mathcal{N}(0, I_d)}[g] \approx \sum_i w_i g(x_i)`; exact for
    polynomials of degree :math:`\le 2n - 1` in each coordinate."""
    n = _positive_int("num_points", num_points)
    d = _positive_int("dim", dim)
    x, w = _hermite_nodes(n)
    grids = np.meshgrid(*([x] * d), indexing="ij")
    nodes = np.stack([g.reshape(-1) for g in grids], axis=-1)
    weights = np.prod(np.stack(np.meshgrid(*([w] * d), indexing="ij")).reshape(d, -1), axis=0)
    return torch.as_tensor(nodes, dtype=dtype, device=device), torch.as_tensor(weights, dtype=dtype, device=device)


class MixtureExpectations(NamedTuple):
    r"""Per component :math:`k`: :math:`\mathbb{E}_{q_k}[f]` ``(K,)``, :math:`\mathbb{E}_{q_k}[\nabla f]` ``(K, d)``
    and :math:`\mathbb{E}_{q_k}[\nabla^2 f]` ``(K, d, d)``, with :math:`f = \bar\ell + \log q`."""

    value: torch.Tensor
    gradient: torch.Tensor
    hessian: torch.Tensor


def _loss_derivatives(loss: Loss, points: torch.Tensor):
    """Values, gradients and Hessians of ``loss`` at every row of ``points``, in one vmapped pass."""

    def gradient_with_aux(theta):
        g, value = grad_and_value(loss)(theta)
        return g, (g, value)

    hessians, (grads, values) = vmap(jacrev(gradient_with_aux, has_aux=True))(points)
    for name, t in (("loss", values), ("gradient of loss", grads), ("Hessian of loss", hessians)):
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name} is not finite at the evaluation points")
    return values, grads, hessians


def mixture_expectations(
    loss: Loss,
    q: GaussianMixture,
    method: str = "quadrature",
    *,
    num_points: int = 20,
    coupling: bool = True,
) -> MixtureExpectations:
    r"""The expectations the mixture rule needs, for every component of ``q``.

    Args:
        loss: :math:`\bar\ell`, a function of a 1-D tensor returning a scalar; it must work under
            ``torch.func.vmap``.
        q: the current :class:`GaussianMixture` (not modified).
        method: ``"quadrature"``: every expectation by Gauss–Hermite quadrature with ``num_points``
            nodes per dimension at :math:`\theta = m_k + L_k^{-\top}x_i` (:math:`S_k = L_k L_k^\top`);
            ``"delta"``: :math:`\bar\ell` and its derivatives at :math:`m_k` (the delta method), the
            :math:`\log q` term still by quadrature.
        num_points: Gauss–Hermite nodes per dimension (``num_points ** d`` per component).
        coupling: ``True`` uses :math:`\log q` (the marginal); ``False`` uses :math:`\log\pi_k + \log q_k`,
            which decouples the components.
    """
    if not isinstance(q, GaussianMixture):
        raise _invalid("q", type(q).__name__, "a GaussianMixture")
    if method not in ("quadrature", "delta"):
        raise _invalid("method", repr(method), "'quadrature' or 'delta'")
    if not isinstance(coupling, bool):
        raise _invalid("coupling", coupling, "True or False")
    n = _positive_int("num_points", num_points)
    K, d = q.num_components, q.dim
    means, precisions = q.means, q.precisions
    nodes, weights = gauss_hermite(n, d, dtype=q.dtype, device=q.device)
    chol = torch.linalg.cholesky(precisions)
    # offsets L_k^{-T} x_i for every component: (K, N, d)
    offsets = torch.linalg.solve_triangular(chol.transpose(-1, -2), nodes.T.expand(K, d, -1), upper=True).transpose(-1, -2)
    points = means.unsqueeze(1) + offsets

    if method == "quadrature":
        vals, grads, hessians = _loss_derivatives(loss, points.reshape(-1, d))
        value = (vals.reshape(K, -1) * weights).sum(-1)
        gradient = torch.einsum("kni,n->ki", grads.reshape(K, -1, d), weights)
        hessian = torch.einsum("knij,n->kij", hessians.reshape(K, -1, d, d), weights)
    else:
        value, gradient, hessian = _loss_derivatives(loss, means)

    if coupling:
        lq, glq, hlq = q.log_prob_derivatives(points)
        value = value + (lq * weights).sum(-1)
        gradient = gradient + torch.einsum("kni,n->ki", glq, weights)
        hessian = hessian + torch.einsum("knij,n->kij", hlq, weights)
    else:
        entropies = 0.5 * (d * (1.0 + _LOG_2PI) - torch.linalg.slogdet(precisions)[1])
        value = value + q.log_weights - entropies
        hessian = hessian - precisions
    return MixtureExpectations(value, gradient, 0.5 * (hessian + hessian.transpose(-1, -2)))


# ====================================================================== the step
def _gaussian_log_partition(precision_mean: torch.Tensor, neg_half_precision: torch.Tensor) -> torch.Tensor:
    return FullGaussian.log_partition_fn((precision_mean, neg_half_precision))


def mixture_blr_step(
    q: GaussianMixture,
    expectations: MixtureExpectations,
    rho: float,
    *,
    coordinates: str = "weight_ratios",
    improved: bool = False,
) -> GaussianMixture:
    r"""One natural-gradient step of the rule for the mixture candidate.

    Components: the Gaussian rule with gradient :math:`g_k = \mathbb{E}_{q_k}[\nabla f]` and Hessian
    :math:`H_k = S_k + \mathbb{E}_{q_k}[\nabla^2 f]`, i.e. :math:`S_k' = (1-\rho)S_k + \rho H_k`,
    :math:`m_k' = m_k - \rho S_k'^{-1}g_k` (through :func:`blrlib.rule.blr_step`; with
    ``improved=True`` through :func:`blrlib.rule.improved_blr_step`, which adds
    :math:`\tfrac{\rho^2}{2}(S_k - H_k)S_k^{-1}(S_k - H_k)` to :math:`S_k'`).

    Weights, ``coordinates="weight_ratios"`` (the block-diagonal Fisher of Lin, Khan & Schmidt):
    :math:`v_k' = v_k - \rho(c_k - c_K)` with :math:`c_k = \mathbb{E}_{q_k}[f]`.

    Weights, ``coordinates="joint"`` (a step in the joint's natural parameters
    :math:`\eta_k = v_k - A(\lambda_k) + A(\lambda_K)` instead): with
    :math:`\tilde g_k = \nabla_{\mu_k}\mathbb{E}_{q_k}[f]` and :math:`\mu_k` the component's expectation
    parameters, :math:`\eta_k' = \eta_k - \rho\big[(c_k - \langle\tilde g_k,\mu_k\rangle) - (c_K - \langle\tilde
    g_K,\mu_K\rangle)\big]`, then :math:`v_k' = \eta_k' + A(\lambda_k') - A(\lambda_K')`. The components are
    the same; the weights differ from the other coordinates by :math:`O(\rho^2)`.

    Raises :class:`ValueError` if a plain step leaves a precision that is not positive definite.
    """
    from ..rule import blr_step, improved_blr_step

    if not isinstance(q, GaussianMixture):
        raise _invalid("q", type(q).__name__, "a GaussianMixture")
    rho = check_rho(rho)
    if coordinates not in ("weight_ratios", "joint"):
        raise _invalid("coordinates", repr(coordinates), "'weight_ratios' or 'joint'")
    if not isinstance(improved, bool):
        raise _invalid("improved", improved, "True or False")
    K, d = q.num_components, q.dim
    value, gradient, hessian = (as_float_tensor(f"expectations.{f}", x).to(q.dtype) for f, x in zip(MixtureExpectations._fields, expectations))
    for name, t, shape in (("value", value, (K,)), ("gradient", gradient, (K, d)), ("hessian", hessian, (K, d, d))):
        if t.shape != shape:
            raise _invalid(f"expectations.{name} shape", tuple(t.shape), f"{shape} for K = {K}, d = {d}")
    step = improved_blr_step if improved else blr_step
    new_components = []
    for k in range(K):
        comp = q.component(k)
        h_eff = comp.precision + hessian[k]
        grad_mu = comp.gradient_wrt_expectation(gradient[k], 0.5 * (h_eff + h_eff.T))
        new_components.append(step(comp, grad_mu, rho))
    new_pm = torch.stack([c.natural_params.precision_mean for c in new_components])
    new_nhp = torch.stack([c.natural_params.neg_half_precision for c in new_components])

    if coordinates == "weight_ratios":
        new_v = q.log_weight_ratios - rho * (value[:-1] - value[-1])
    else:
        means, covs = q.means, q.covariances
        # <g~_k, mu_k> with g~_k = (g - H m, H / 2) and mu_k = (m, Sigma + m m^T)
        hm = (hessian @ means.unsqueeze(-1)).squeeze(-1)
        pairing = (gradient * means).sum(-1) - 0.5 * (means * hm).sum(-1) + 0.5 * (hessian * covs).sum((-1, -2))
        a_old = torch.stack([_gaussian_log_partition(*q.component(k).natural_params) for k in range(K)])
        a_new = torch.stack([_gaussian_log_partition(*c.natural_params) for c in new_components])
        eta = q.log_weight_ratios - a_old[:-1] + a_old[-1]
        b = value - pairing
        new_eta = eta - rho * (b[:-1] - b[-1])
        new_v = new_eta + a_new[:-1] - a_new[-1]
    return GaussianMixture((new_v, new_pm, new_nhp))
