r"""Gaussian candidate families.

Three members, from cheapest to richest:

* :class:`FixedCovarianceGaussian`, :math:`q = \mathcal{N}(m, \sigma^2 I)` with :math:`\sigma^2` fixed:
  :math:`T(\theta) = \theta`, :math:`\lambda = m/\sigma^2`, :math:`\mu = m`. Its entropy does not depend on
  :math:`m`, so the rule is :math:`m \leftarrow m - \rho\,\sigma^2 \nabla_m \mathbb{E}_q[\bar\ell]`:
  gradient descent under the delta method.
* :class:`DiagonalGaussian`, :math:`q = \mathcal{N}(m, \mathrm{diag}(s)^{-1})` with precision vector :math:`s`:
  :math:`\lambda = (s \odot m, -s/2)`, :math:`\mu = (m, 1/s + m^2)`.
* :class:`FullGaussian`, :math:`q = \mathcal{N}(m, S^{-1})` with precision matrix :math:`S`:
  :math:`T(\theta) = (\theta, \theta\theta^\top)`, :math:`\lambda = (S m, -S/2)`,
  :math:`\mu = (m, S^{-1} + m m^\top)`.

Each offers :meth:`gradient_wrt_expectation`, which turns the expected gradient and Hessian of a
loss into :math:`\nabla_\mu \mathbb{E}_q[\ell]` by Bonnet's and Price's theorems:

.. math::

    \nabla_{\mu^{(1)}} \mathbb{E}_q[\ell] = \mathbb{E}_q[\nabla \ell] - \mathbb{E}_q[\nabla^2 \ell]\, m,
    \qquad
    \nabla_{\mu^{(2)}} \mathbb{E}_q[\ell] = \tfrac12 \mathbb{E}_q[\nabla^2 \ell].
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch

from .._validation import (
    as_float_tensor,
    check_positive,
    check_same_shape,
    check_symmetric_positive_definite,
)
from .base import ExponentialFamily

__all__ = ["FixedCovarianceGaussian", "DiagonalGaussian", "FullGaussian"]

_LOG_2PI = math.log(2.0 * math.pi)


def _vector(name: str, value: Any) -> torch.Tensor:
    tensor = as_float_tensor(name, value)
    if tensor.ndim != 1:
        raise ValueError(f"{name} must be a vector (1-D); got shape {tuple(tensor.shape)}")
    return tensor


def _batch_of_vectors(name: str, value: Any) -> torch.Tensor:
    tensor = as_float_tensor(name, value)
    if tensor.ndim < 1:
        raise ValueError(f"{name} must be a vector or a batch of vectors (*batch, d); got shape {tuple(tensor.shape)}")
    return tensor


def _check_spd(name: str, matrix: torch.Tensor) -> None:
    """The library's check for one matrix; a batch is checked at once and a failing member named."""
    if matrix.ndim <= 2:
        check_symmetric_positive_definite(name, matrix)
        return
    scale = matrix.abs().amax(dim=(-2, -1), keepdim=True).clamp_min(1.0)
    tol = 1e-6 if matrix.dtype in (torch.float16, torch.bfloat16, torch.float32) else 1e-10
    symmetric = ((matrix - matrix.mT).abs() <= tol * scale).flatten(-2).all(-1)
    _, info = torch.linalg.cholesky_ex(matrix)
    bad = (~symmetric) | (info != 0)
    if bool(bad.any()):
        index = tuple(int(i) for i in bad.nonzero()[0])
        check_symmetric_positive_definite(f"{name}[{', '.join(map(str, index))}]", matrix[index])


# ====================================================================== fixed covariance
class FixedCovarianceGaussian(ExponentialFamily):
    r""":math:`\mathcal{N}(m, \sigma^2 I)` with the variance :math:`\sigma^2` held fixed.

    Natural parameter :math:`\lambda = m/\sigma^2`, sufficient statistic :math:`T(\theta)=\theta`,
    base measure :math:`h(\theta) = \exp(-\|\theta\|^2 / 2\sigma^2)`, log-partition
    :math:`A(\lambda) = \tfrac{\sigma^2}{2}\|\lambda\|^2 + \tfrac d2 \log(2\pi\sigma^2)`,
    expectation parameter :math:`\mu = \sigma^2\lambda = m`, Fisher :math:`F = \sigma^2 I`.
    """

    class NaturalParams(NamedTuple):
        mean_over_variance: torch.Tensor

    class ExpectationParams(NamedTuple):
        mean: torch.Tensor

    hessian_kind = "none"
    reparameterizable = True

    def __init__(self, natural_params, variance: float = 1.0):
        variance = float(variance)
        if not (variance > 0.0) or not math.isfinite(variance):
            raise ValueError(f"variance must be a finite positive number; got {variance}")
        self.variance = variance
        super().__init__(natural_params)

    @classmethod
    def from_mean(cls, mean: Any, variance: float = 1.0) -> "FixedCovarianceGaussian":
        """:math:`\\mathcal{N}(m, \\sigma^2 I)` from its mean."""
        mean = _vector("mean", mean)
        return cls((mean / float(variance),), variance=variance)

    @classmethod
    def from_expectation(cls, expectation_params, variance: float = 1.0) -> "FixedCovarianceGaussian":
        (mean,) = expectation_params
        return cls.from_mean(mean, variance=variance)

    def _replace(self, natural_params):
        return type(self)(natural_params, variance=self.variance)

    def _validate_natural(self, natural):
        return self.NaturalParams(_vector("natural_params.mean_over_variance", natural.mean_over_variance))

    def log_partition_fn(self, natural) -> torch.Tensor:  # type: ignore[override]
        lam = natural[0]
        return 0.5 * self.variance * (lam * lam).sum() + 0.5 * lam.numel() * (_LOG_2PI + math.log(self.variance))

    def _expectation_from_natural(self, natural):
        return self.ExpectationParams(self.variance * natural[0])

    @property
    def mean(self) -> torch.Tensor:
        return self.variance * self._natural[0]

    def sufficient_statistics(self, theta):
        return self.NaturalParams(theta)

    def log_base_measure(self, theta):
        return -0.5 * (theta * theta).sum(-1) / self.variance

    def sample(self, num_samples=None, generator=None):
        shape = (self.mean.numel(),) if num_samples is None else (int(num_samples), self.mean.numel())
        eps = torch.randn(shape, generator=generator, dtype=self.dtype, device=self.device)
        return self.mean + math.sqrt(self.variance) * eps

    def entropy(self):
        d = self.mean.numel()
        return torch.tensor(0.5 * d * (1.0 + _LOG_2PI + math.log(self.variance)), dtype=self.dtype, device=self.device)

    def fisher(self):
        d = self.mean.numel()
        return self.variance * torch.eye(d, dtype=self.dtype, device=self.device)

    def kl_divergence(self, other):
        self._check_compatible("other", other)
        if other.variance != self.variance:
            raise ValueError("other must have the same fixed variance as self")
        diff = other.mean - self.mean
        return 0.5 * (diff * diff).sum() / self.variance

    def entropy_gradient_expectation(self):
        """:math:`\\nabla_\\mu \\mathcal{H} = 0`: the entropy does not depend on :math:`m`."""
        return self.ExpectationParams(torch.zeros_like(self._natural[0]))

    def gradient_wrt_expectation(self, expected_gradient, expected_hessian=None):
        """:math:`\\nabla_\\mu \\mathbb{E}_q[\\ell] = \\mathbb{E}_q[\\nabla\\ell]` (Bonnet; :math:`\\mu = m`)."""
        g = as_float_tensor("expected_gradient", expected_gradient)
        check_same_shape("expected_gradient", g, "mean", self.mean)
        return self.ExpectationParams(g)

    def precision_times(self, centred: torch.Tensor) -> torch.Tensor:
        """:math:`(\\theta - m)/\\sigma^2` for rows of centred draws (what Stein's Hessian estimate needs)."""
        return centred / self.variance


# ====================================================================== diagonal precision
class DiagonalGaussian(ExponentialFamily):
    r""":math:`\mathcal{N}(m, \mathrm{diag}(s)^{-1})` with a vector of precisions :math:`s > 0`.

    :math:`\lambda = (s\odot m,\; -s/2)`, :math:`T(\theta) = (\theta, \theta^2)`,
    :math:`A(\lambda) = \sum_i \big[-\lambda^{(1)2}_i / (4\lambda^{(2)}_i) - \tfrac12\log(-2\lambda^{(2)}_i)\big] + \tfrac d2 \log 2\pi`,
    :math:`\mu = (m,\; 1/s + m^2)`.

    A batch of independent members: ``mean`` and ``precision`` of shape ``(*batch, d)``; the
    log-partition, entropy, KL and ``log_prob`` are then per member (the last dimension is the
    member's coordinates) and ``fisher()`` is ``(*batch, 2d, 2d)``. The rule's step is element-wise,
    so a batch and one long vector take the same step.
    """

    class NaturalParams(NamedTuple):
        precision_mean: torch.Tensor
        neg_half_precision: torch.Tensor

    class ExpectationParams(NamedTuple):
        mean: torch.Tensor
        second_moment: torch.Tensor

    event_ndims = (1, 1)
    hessian_kind = "diagonal"
    reparameterizable = True

    @classmethod
    def from_mean_precision(cls, mean: Any, precision: Any) -> "DiagonalGaussian":
        """From the mean :math:`m` and the precision vector :math:`s` (or a batch of each, ``(*batch, d)``)."""
        mean = _batch_of_vectors("mean", mean)
        precision = _batch_of_vectors("precision", precision)
        check_same_shape("precision", precision, "mean", mean)
        check_positive("precision", precision)
        return cls((precision * mean, -0.5 * precision))

    @classmethod
    def from_expectation(cls, expectation_params) -> "DiagonalGaussian":
        mean, second = (as_float_tensor(n, v) for n, v in zip(("mean", "second_moment"), expectation_params))
        check_same_shape("second_moment", second, "mean", mean)
        variance = second - mean * mean
        check_positive("second_moment - mean**2 (the variance)", variance)
        return cls.from_mean_precision(mean, 1.0 / variance)

    def _validate_natural(self, natural):
        first = _batch_of_vectors("natural_params.precision_mean", natural.precision_mean)
        second = _batch_of_vectors("natural_params.neg_half_precision", natural.neg_half_precision)
        check_same_shape("natural_params.neg_half_precision", second, "natural_params.precision_mean", first)
        check_positive("precision (-2 * natural_params.neg_half_precision)", -2.0 * second)
        return self.NaturalParams(first, second)

    @staticmethod
    def log_partition_fn(natural) -> torch.Tensor:
        l1, l2 = natural
        return (-(l1 * l1) / (4.0 * l2) - 0.5 * torch.log(-2.0 * l2)).sum(-1) + 0.5 * l1.shape[-1] * _LOG_2PI

    def _expectation_from_natural(self, natural):
        l1, l2 = natural
        mean = -l1 / (2.0 * l2)
        return self.ExpectationParams(mean, mean * mean - 0.5 / l2)

    @property
    def precision(self) -> torch.Tensor:
        return -2.0 * self._natural.neg_half_precision

    @property
    def mean(self) -> torch.Tensor:
        return self._natural.precision_mean / self.precision

    @property
    def stddev(self) -> torch.Tensor:
        return self.precision.rsqrt()

    def sufficient_statistics(self, theta):
        return self.NaturalParams(theta, theta * theta)

    def log_base_measure(self, theta):
        return torch.zeros(theta.shape[:-1], dtype=theta.dtype, device=theta.device)

    def sample(self, num_samples=None, generator=None):
        shape = self.mean.shape if num_samples is None else (int(num_samples), *self.mean.shape)
        eps = torch.randn(shape, generator=generator, dtype=self.dtype, device=self.device)
        return self.mean + eps * self.stddev

    def entropy(self):
        return 0.5 * (self.mean.shape[-1] * (1.0 + _LOG_2PI) - torch.log(self.precision).sum(-1))

    def fisher(self):
        r"""Closed form: for each coordinate the :math:`2\times 2` block
        :math:`\begin{pmatrix} 1/s & 2m/s \\ 2m/s & 4m^2/s + 2/s^2 \end{pmatrix}`, laid out over
        :math:`(\lambda^{(1)}, \lambda^{(2)})`."""
        m, s = self.mean, self.precision
        diag = torch.diag if m.ndim == 1 else torch.diag_embed  # one matrix per member of a batch
        return torch.cat(
            [
                torch.cat([diag(1.0 / s), diag(2.0 * m / s)], dim=-1),
                torch.cat([diag(2.0 * m / s), diag(4.0 * m * m / s + 2.0 / (s * s))], dim=-1),
            ],
            dim=-2,
        )

    def kl_divergence(self, other):
        """:math:`\\tfrac12\\sum_i [s'_i/s_i + s'_i (m'_i-m_i)^2 - 1 + \\log(s_i/s'_i)]`."""
        self._check_compatible("other", other)
        s, so = self.precision, other.precision
        diff = other.mean - self.mean
        return 0.5 * (so / s + so * diff * diff - 1.0 + torch.log(s / so)).sum(-1)

    def gradient_wrt_expectation(self, expected_gradient, expected_hessian):
        """Bonnet and Price: :math:`(\\mathbb{E}[\\nabla\\ell] - \\mathbb{E}[\\nabla^2\\ell]\\odot m,\\; \\tfrac12 \\mathbb{E}[\\nabla^2\\ell])`,
        with ``expected_hessian`` the diagonal of :math:`\\mathbb{E}_q[\\nabla^2\\ell]` (a vector)."""
        g = as_float_tensor("expected_gradient", expected_gradient)
        h = as_float_tensor("expected_hessian", expected_hessian)
        check_same_shape("expected_gradient", g, "mean", self.mean)
        check_same_shape("expected_hessian", h, "mean", self.mean)
        return self.ExpectationParams(g - h * self.mean, 0.5 * h)

    def precision_times(self, centred: torch.Tensor) -> torch.Tensor:
        """:math:`s \\odot (\\theta - m)` for rows of centred draws (what Stein's Hessian estimate needs)."""
        return centred * self.precision


# ====================================================================== full precision
class FullGaussian(ExponentialFamily):
    r""":math:`\mathcal{N}(m, S^{-1})` with a full precision matrix :math:`S \succ 0`, or a batch of them.

    :math:`\lambda = (S m,\; -S/2)`, :math:`T(\theta) = (\theta, \theta\theta^\top)`,
    :math:`A(\lambda) = -\tfrac14 \lambda^{(1)\top} (\lambda^{(2)})^{-1}\lambda^{(1)} - \tfrac12 \log\det(-2\lambda^{(2)}) + \tfrac d2\log 2\pi`,
    :math:`\mu = (m,\; S^{-1} + m m^\top)`.

    The Fisher returned by :meth:`fisher` is the Hessian of :math:`A` over :math:`\lambda^{(1)}` and all
    :math:`d^2` entries of :math:`\lambda^{(2)}`; on symmetric directions it is the Fisher information.

    A batch of independent members (the information form of every time step of a filter, every
    mixture component): ``from_mean_precision(mean, precision)`` with ``mean`` of shape ``(*batch, d)``
    and ``precision`` of shape ``(*batch, d, d)``. ``batch_shape`` is then ``batch``; the log-partition,
    entropy, KL and ``log_prob`` are per member, ``fisher()`` is ``(*batch, P, P)``, ``sample`` gives
    ``(*sample, *batch, d)``, and :func:`~blrlib.rule.blr_step` updates every member at once.
    """

    class NaturalParams(NamedTuple):
        precision_mean: torch.Tensor
        neg_half_precision: torch.Tensor

    class ExpectationParams(NamedTuple):
        mean: torch.Tensor
        second_moment: torch.Tensor

    event_ndims = (1, 2)
    hessian_kind = "full"
    reparameterizable = True

    @classmethod
    def from_mean_precision(cls, mean: Any, precision: Any) -> "FullGaussian":
        """From the mean :math:`m` and the precision matrix :math:`S` (or a batch of each)."""
        mean = _batch_of_vectors("mean", mean)
        precision = as_float_tensor("precision", precision)
        want = (*mean.shape, mean.shape[-1])
        if precision.shape != want:
            raise ValueError(f"precision must have shape {want} to match mean; got {tuple(precision.shape)}")
        _check_spd("precision", precision)
        if mean.ndim == 1:
            return cls((precision @ mean, -0.5 * precision))
        return cls(((precision @ mean.unsqueeze(-1)).squeeze(-1), -0.5 * precision))

    @classmethod
    def from_mean_covariance(cls, mean: Any, covariance: Any) -> "FullGaussian":
        """From the mean :math:`m` and the covariance :math:`\\Sigma = S^{-1}` (or a batch of each)."""
        covariance = as_float_tensor("covariance", covariance)
        _check_spd("covariance", covariance)
        return cls.from_mean_precision(mean, torch.linalg.inv(covariance))

    @classmethod
    def from_expectation(cls, expectation_params) -> "FullGaussian":
        mean, second = (as_float_tensor(n, v) for n, v in zip(("mean", "second_moment"), expectation_params))
        covariance = second - mean.unsqueeze(-1) * mean.unsqueeze(-2)
        _check_spd("second_moment - outer(mean, mean) (the covariance)", covariance)
        return cls.from_mean_covariance(mean, 0.5 * (covariance + covariance.mT))

    def _validate_natural(self, natural):
        first = _batch_of_vectors("natural_params.precision_mean", natural.precision_mean)
        second = as_float_tensor("natural_params.neg_half_precision", natural.neg_half_precision)
        want = (*first.shape, first.shape[-1])
        if second.shape != want:
            raise ValueError(f"natural_params.neg_half_precision must have shape {want}; got {tuple(second.shape)}")
        _check_spd("precision (-2 * natural_params.neg_half_precision)", -2.0 * second)
        return self.NaturalParams(first, second)

    @staticmethod
    def log_partition_fn(natural) -> torch.Tensor:
        l1, l2 = natural
        if l1.ndim == 1:
            quad = -0.25 * l1 @ torch.linalg.solve(l2, l1)
        else:
            quad = -0.25 * (l1 * torch.linalg.solve(l2, l1.unsqueeze(-1)).squeeze(-1)).sum(-1)
        return quad - 0.5 * torch.linalg.slogdet(-2.0 * l2)[1] + 0.5 * l1.shape[-1] * _LOG_2PI

    def _expectation_from_natural(self, natural):
        l1, l2 = natural
        covariance = torch.linalg.inv(-2.0 * l2)
        if l1.ndim == 1:
            mean = covariance @ l1
            return self.ExpectationParams(mean, covariance + torch.outer(mean, mean))
        mean = (covariance @ l1.unsqueeze(-1)).squeeze(-1)
        return self.ExpectationParams(mean, covariance + mean.unsqueeze(-1) * mean.unsqueeze(-2))

    @property
    def precision(self) -> torch.Tensor:
        return -2.0 * self._natural.neg_half_precision

    @property
    def covariance(self) -> torch.Tensor:
        return torch.cholesky_inverse(torch.linalg.cholesky(self.precision))

    @property
    def mean(self) -> torch.Tensor:
        return torch.cholesky_solve(self._natural.precision_mean.unsqueeze(-1), torch.linalg.cholesky(self.precision)).squeeze(-1)

    def sufficient_statistics(self, theta):
        return self.NaturalParams(theta, theta.unsqueeze(-1) * theta.unsqueeze(-2))

    def log_base_measure(self, theta):
        return torch.zeros(theta.shape[:-1], dtype=theta.dtype, device=theta.device)

    def sample(self, num_samples=None, generator=None):
        """:math:`\\theta = m + L^{-\\top}\\epsilon` with :math:`S = L L^\\top` and :math:`\\epsilon\\sim\\mathcal{N}(0, I)`."""
        mean = self.mean
        n = 1 if num_samples is None else int(num_samples)
        eps = torch.randn((n, *mean.shape), generator=generator, dtype=self.dtype, device=self.device)
        chol = torch.linalg.cholesky(self.precision)
        if mean.ndim == 1:
            offsets = torch.linalg.solve_triangular(chol.T, eps.T, upper=True).T
        else:
            offsets = torch.linalg.solve_triangular(chol.mT, eps.unsqueeze(-1), upper=True).squeeze(-1)
        samples = mean + offsets
        return samples[0] if num_samples is None else samples

    def entropy(self):
        d = self._natural.precision_mean.shape[-1]
        return 0.5 * (d * (1.0 + _LOG_2PI) - torch.linalg.slogdet(self.precision)[1])

    def kl_divergence(self, other):
        """:math:`\\tfrac12[\\mathrm{tr}(S' S^{-1}) + (m'-m)^\\top S'(m'-m) - d + \\log\\det S - \\log\\det S']`, per member."""
        self._check_compatible("other", other)
        s, so = self.precision, other.precision
        diff = other.mean - self.mean
        d = diff.shape[-1]
        trace = torch.diagonal(torch.linalg.solve(s, so), dim1=-2, dim2=-1).sum(-1)
        if diff.ndim == 1:
            quad = diff @ so @ diff
        else:
            quad = (diff * (so @ diff.unsqueeze(-1)).squeeze(-1)).sum(-1)
        return 0.5 * (trace + quad - d + torch.linalg.slogdet(s)[1] - torch.linalg.slogdet(so)[1])

    def gradient_wrt_expectation(self, expected_gradient, expected_hessian):
        """Bonnet and Price: :math:`(\\mathbb{E}[\\nabla\\ell] - \\mathbb{E}[\\nabla^2\\ell]\\, m,\\; \\tfrac12\\mathbb{E}[\\nabla^2\\ell])`, per member."""
        g = as_float_tensor("expected_gradient", expected_gradient)
        h = as_float_tensor("expected_hessian", expected_hessian)
        check_same_shape("expected_gradient", g, "mean", self.mean)
        want = (*g.shape, g.shape[-1])
        if h.shape != want:
            raise ValueError(f"expected_hessian must have shape {want}; got {tuple(h.shape)}")
        if g.ndim == 1:
            return self.ExpectationParams(g - h @ self.mean, 0.5 * h)
        return self.ExpectationParams(g - (h @ self.mean.unsqueeze(-1)).squeeze(-1), 0.5 * h)

    def precision_times(self, centred: torch.Tensor) -> torch.Tensor:
        """:math:`S(\\theta - m)` for rows of centred draws (what Stein's Hessian estimate needs)."""
        return centred @ self.precision  # S symmetric: rows are (S (θ - m))ᵀ
