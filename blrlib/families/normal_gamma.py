r"""The Normal–Gamma family: a Gaussian's unknown mean :math:`x` and precision :math:`\tau`, jointly.

:math:`q(x, \tau) = \mathcal{N}(x \mid m_0, (\kappa\tau)^{-1})\,\mathrm{Gamma}(\tau \mid a, b)` (rate
:math:`b`), a batch of independent members (for example one per dimension or per mixture component).
With :math:`T(x, \tau) = (\tau x,\ \tau x^2,\ \tau,\ \log\tau)` and :math:`h = 1`,

.. math::

    \lambda = \big(\kappa m_0,\ -\tfrac{\kappa}{2},\ -b - \tfrac{\kappa m_0^2}{2},\ a - \tfrac12\big),\qquad
    A(\lambda) = \log\Gamma(a) - a\log b - \tfrac12\log\kappa + \tfrac12\log 2\pi,

.. math::

    \mu = \big(\tfrac ab m_0,\ \tfrac ab m_0^2 + \tfrac1\kappa,\ \tfrac ab,\ \psi(a) - \log b\big).

A Gaussian likelihood :math:`\bar\ell = \sum_i[\tfrac\tau2(y_i - x)^2 - \tfrac12\log\tau] + \mathrm{const}`
is linear in :math:`T`, with :math:`\nabla_\mu\mathbb{E}_q[\bar\ell] = (-\sum_i y_i,\ \tfrac n2,\
\tfrac12\sum_i y_i^2,\ -\tfrac n2)`; one :math:`\rho = 1` step from the prior is the conjugate update.

API: ``NormalGamma.from_hyperparameters(loc, kappa, shape, rate)`` (tensors of one shape, the batch
shape), properties ``loc`` (:math:`m_0`), ``kappa``, ``shape`` (:math:`a`), ``rate`` (:math:`b`),
``mean`` (a :class:`GaussianParameters` of :math:`(m_0, a/b)`, the means of :math:`x` and :math:`\tau`);
``sample`` returns a :class:`GaussianParameters` ``(mean=x, precision=tau)``, which ``log_prob`` takes.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch

from ._special import digamma, floating, lgamma, require, sample_standard_gamma, solve_log_minus_digamma
from .base import ExponentialFamily

__all__ = ["NormalGamma", "GaussianParameters"]

_LOG_2PI = math.log(2.0 * math.pi)


class GaussianParameters(NamedTuple):
    """A draw of a Gaussian's parameters: its mean and its precision (scalar or matrix)."""

    mean: torch.Tensor
    precision: torch.Tensor


class NormalGamma(ExponentialFamily):
    r""":math:`\mathcal{N}(x\mid m_0,(\kappa\tau)^{-1})\,\mathrm{Gamma}(\tau\mid a,b)` members."""

    class NaturalParams(NamedTuple):
        kappa_loc: torch.Tensor
        neg_half_kappa: torch.Tensor
        neg_rate_adjusted: torch.Tensor
        shape_minus_half: torch.Tensor

    class ExpectationParams(NamedTuple):
        mean_tau_x: torch.Tensor
        mean_tau_x2: torch.Tensor
        mean_tau: torch.Tensor
        mean_log_tau: torch.Tensor

    event_ndims = (0, 0, 0, 0)

    @classmethod
    def from_hyperparameters(cls, loc: Any, kappa: Any, shape: Any, rate: Any) -> "NormalGamma":
        """From :math:`m_0`, :math:`\\kappa > 0`, :math:`a > 0`, :math:`b > 0` (one tensor shape)."""
        loc = floating("loc", loc)
        kappa, shape, rate = (floating(n, v, like=loc) for n, v in (("kappa", kappa), ("shape", shape), ("rate", rate)))
        for name, value in (("kappa", kappa), ("shape", shape), ("rate", rate)):
            require(value.shape == loc.shape, f"{name} shape", tuple(value.shape), f"loc's shape {tuple(loc.shape)}")
            require(value > 0, name, value, "> 0")
        return cls((kappa * loc, -0.5 * kappa, -rate - 0.5 * kappa * loc * loc, shape - 0.5))

    @classmethod
    def from_expectation(cls, expectation_params) -> "NormalGamma":
        """Inverse map: :math:`a` from :math:`\\log a - \\psi(a) = \\log\\mu_3 - \\mu_4` (Newton),
        :math:`b = a/\\mu_3`, :math:`m_0 = \\mu_1/\\mu_3`, :math:`\\kappa = 1/(\\mu_2 - \\mu_1^2/\\mu_3)`."""
        names = cls.ExpectationParams._fields
        mu = [floating(n, v) for n, v in zip(names, expectation_params)]
        m1, m2, m3, m4 = (m.to(mu[0].dtype) for m in mu)
        require(m3 > 0, "mean_tau", m3, "> 0")
        spread = m2 - m1 * m1 / m3
        require(spread > 0, "mean_tau_x2 - mean_tau_x**2 / mean_tau", spread, "> 0")
        shape = solve_log_minus_digamma(torch.log(m3) - m4)
        return cls.from_hyperparameters(m1 / m3, 1.0 / spread, shape, shape / m3)

    def _validate_natural(self, natural):
        names = self.NaturalParams._fields
        blocks = [floating(f"natural_params.{n}", v) for n, v in zip(names, natural)]
        blocks = [b.to(blocks[0].dtype) for b in blocks]
        for n, b in zip(names[1:], blocks[1:]):
            require(b.shape == blocks[0].shape, f"natural_params.{n} shape", tuple(b.shape), f"{tuple(blocks[0].shape)}")
        lam1, lam2, lam3, lam4 = blocks
        require(lam2 < 0, "natural_params.neg_half_kappa", lam2, "< 0 (kappa > 0)")
        require(lam4 > -0.5, "natural_params.shape_minus_half", lam4, "> -1/2 (shape > 0)")
        rate = -lam3 + lam1 * lam1 / (4.0 * lam2)
        require(rate > 0, "rate (-neg_rate_adjusted + kappa_loc**2 / (4 * neg_half_kappa))", rate, "> 0")
        return self.NaturalParams(*blocks)

    @staticmethod
    def _hyper(natural):
        lam1, lam2, lam3, lam4 = natural
        kappa = -2.0 * lam2
        loc = lam1 / kappa
        rate = -lam3 - 0.5 * kappa * loc * loc
        return loc, kappa, lam4 + 0.5, rate

    @staticmethod
    def log_partition_fn(natural) -> torch.Tensor:
        _, kappa, shape, rate = NormalGamma._hyper(natural)
        return lgamma(shape) - shape * torch.log(rate) - 0.5 * torch.log(kappa) + 0.5 * _LOG_2PI

    def _expectation_from_natural(self, natural):
        loc, kappa, shape, rate = self._hyper(natural)
        mean_tau = shape / rate
        return self.ExpectationParams(
            mean_tau * loc, mean_tau * loc * loc + 1.0 / kappa, mean_tau, digamma(shape) - torch.log(rate)
        )

    @property
    def loc(self) -> torch.Tensor:
        return self._hyper(self._natural)[0]

    @property
    def kappa(self) -> torch.Tensor:
        return self._hyper(self._natural)[1]

    @property
    def shape(self) -> torch.Tensor:
        return self._hyper(self._natural)[2]

    @property
    def rate(self) -> torch.Tensor:
        return self._hyper(self._natural)[3]

    @property
    def mean(self) -> GaussianParameters:
        """:math:`(\\mathbb{E}[x], \\mathbb{E}[\\tau]) = (m_0, a/b)`."""
        return GaussianParameters(self.loc, self.shape / self.rate)

    def sufficient_statistics(self, theta):
        x, tau = (torch.as_tensor(t, dtype=self.dtype, device=self.device) for t in theta)
        return self.NaturalParams(tau * x, tau * x * x, tau, torch.log(tau))

    def log_base_measure(self, theta):
        x, tau = theta
        return torch.zeros(torch.broadcast_shapes(torch.as_tensor(x).shape, torch.as_tensor(tau).shape), dtype=self.dtype, device=self.device)

    def sample(self, num_samples=None, generator=None):
        r""":math:`\tau\sim\mathrm{Gamma}(a, b)`, then :math:`x\sim\mathcal{N}(m_0, (\kappa\tau)^{-1})`."""
        loc, kappa, shape, rate = self._hyper(self._natural)
        tau = sample_standard_gamma(shape, num_samples, generator) / rate
        eps = torch.randn(tau.shape, generator=generator, dtype=self.dtype, device=self.device)
        return GaussianParameters(loc + eps / torch.sqrt(kappa * tau), tau)

    def entropy(self):
        """:math:`A(\\lambda) - \\langle\\lambda,\\mu\\rangle` (the base measure is constant)."""
        return self.log_partition() - self._inner(self._natural, self.expectation_params)
