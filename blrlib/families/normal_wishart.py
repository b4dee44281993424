r"""The Normal–Wishart family: a Gaussian's unknown mean vector :math:`x` and precision matrix :math:`\Lambda`.

:math:`q(x, \Lambda) = \mathcal{N}(x \mid m_0, (\beta\Lambda)^{-1})\,\mathcal{W}(\Lambda \mid W, \nu)`, a batch
of independent members (one per mixture component in a Bayesian Gaussian mixture). With
:math:`T(x, \Lambda) = (\Lambda x,\ x^\top\Lambda x,\ \Lambda,\ \log\det\Lambda)` and :math:`h = 1`,

.. math::

    \lambda = \big(\beta m_0,\ -\tfrac\beta2,\ -\tfrac12(W^{-1} + \beta m_0 m_0^\top),\ \tfrac{\nu-d}{2}\big),

.. math::

    A(\lambda) = -\tfrac d2\log\beta + \tfrac d2\log 2\pi + \tfrac{\nu d}{2}\log 2
                 + \tfrac\nu2\log\det W + \log\Gamma_d(\tfrac\nu2),

.. math::

    \mu = \big(\nu W m_0,\ \nu\, m_0^\top W m_0 + \tfrac d\beta,\ \nu W,\
               \psi_d(\tfrac\nu2) + d\log 2 + \log\det W\big).

This is Bishop's parameterisation (PRML §10.2: :math:`m_k, \beta_k, W_k, \nu_k`); scikit-learn's
``BayesianGaussianMixture`` stores :math:`\beta` as ``mean_precision_``, :math:`\nu` as
``degrees_of_freedom_``, :math:`m_0` as ``means_`` and :math:`W^{-1}/\nu` as ``covariances_``.
A Gaussian likelihood with weights :math:`r_i`, :math:`\bar\ell = \sum_i r_i[\tfrac12(y_i - x)^\top\Lambda
(y_i - x) - \tfrac12\log\det\Lambda]`, is linear in :math:`T`:
:math:`\nabla_\mu\mathbb{E}_q[\bar\ell] = (-\sum_i r_i y_i,\ \tfrac12\sum_i r_i,\ \tfrac12\sum_i r_i y_i y_i^\top,\
-\tfrac12\sum_i r_i)`.

API: ``NormalWishart.from_hyperparameters(loc, beta, scale, dof)`` (``loc`` ``(*batch, d)``, ``beta``
and ``dof`` ``batch``, ``scale`` ``(*batch, d, d)``), properties ``loc``, ``beta``, ``scale``,
``scale_inv``, ``dof``, ``dim``, ``mean`` (a :class:`GaussianParameters` of :math:`(m_0, \nu W)`);
``sample`` returns a :class:`GaussianParameters` ``(mean=x, precision=Lambda)``, which ``log_prob``
takes.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch

from ._special import check_spd, floating, mvdigamma, mvlgamma, require, sample_wishart, solve_wishart_dof
from .base import ExponentialFamily
from .normal_gamma import GaussianParameters

__all__ = ["NormalWishart"]

_LOG2 = math.log(2.0)
_LOG_2PI = math.log(2.0 * math.pi)


class NormalWishart(ExponentialFamily):
    r""":math:`\mathcal{N}(x\mid m_0,(\beta\Lambda)^{-1})\,\mathcal{W}(\Lambda\mid W,\nu)` members."""

    class NaturalParams(NamedTuple):
        beta_loc: torch.Tensor
        neg_half_beta: torch.Tensor
        neg_half_scale_inv_adjusted: torch.Tensor
        half_dof_minus_dim: torch.Tensor

    class ExpectationParams(NamedTuple):
        mean_precision_x: torch.Tensor
        mean_quadratic: torch.Tensor
        mean_precision: torch.Tensor
        mean_logdet: torch.Tensor

    event_ndims = (1, 0, 2, 0)

    @classmethod
    def from_hyperparameters(cls, loc: Any, beta: Any, scale: Any, dof: Any) -> "NormalWishart":
        """From :math:`m_0` ``(*batch, d)``, :math:`\\beta > 0` ``batch``, :math:`W \\succ 0` ``(*batch, d, d)``
        and :math:`\\nu > d - 1` ``batch``."""
        loc = floating("loc", loc)
        beta, scale, dof = (floating(n, v, like=loc) for n, v in (("beta", beta), ("scale", scale), ("dof", dof)))
        require(loc.ndim >= 1, "loc shape", tuple(loc.shape), "(*batch, d)")
        batch, d = tuple(loc.shape[:-1]), loc.shape[-1]
        require(tuple(scale.shape) == batch + (d, d), "scale shape", tuple(scale.shape), f"{batch + (d, d)}")
        for name, value in (("beta", beta), ("dof", dof)):
            require(tuple(value.shape) == batch, f"{name} shape", tuple(value.shape), f"the batch shape {batch}")
        check_spd("scale", scale)
        require(beta > 0, "beta", beta, "> 0")
        require(dof > d - 1, "dof", dof, f"> d - 1 = {d - 1}")
        outer = loc.unsqueeze(-1) * loc.unsqueeze(-2)
        scale_inv = torch.linalg.inv(scale)
        scale_inv = 0.5 * (scale_inv + scale_inv.mT)
        return cls((beta.unsqueeze(-1) * loc, -0.5 * beta, -0.5 * (scale_inv + beta[..., None, None] * outer), 0.5 * (dof - d)))

    @classmethod
    def from_expectation(cls, expectation_params) -> "NormalWishart":
        """Inverse map: :math:`\\nu` by Newton from :math:`\\mu_4 - \\log\\det\\mu_3`, :math:`W = \\mu_3/\\nu`,
        :math:`m_0 = \\mu_3^{-1}\\mu_1`, :math:`\\beta = d/(\\mu_2 - m_0^\\top\\mu_1)`."""
        names = cls.ExpectationParams._fields
        m1, m2, m3, m4 = (floating(n, v) for n, v in zip(names, expectation_params))
        m2, m3, m4 = (m.to(m1.dtype) for m in (m2, m3, m4))
        check_spd("mean_precision", m3)
        d = m3.shape[-1]
        dof = solve_wishart_dof(m4 - torch.linalg.slogdet(m3)[1], d)
        loc = torch.linalg.solve(m3, m1.unsqueeze(-1)).squeeze(-1)
        spread = m2 - (loc * m1).sum(-1)
        require(spread > 0, "mean_quadratic - loc @ mean_precision_x", spread, "> 0")
        return cls.from_hyperparameters(loc, d / spread, m3 / dof[..., None, None], dof)

    def _validate_natural(self, natural):
        names = self.NaturalParams._fields
        lam1, lam2, lam3, lam4 = (floating(f"natural_params.{n}", v) for n, v in zip(names, natural))
        lam2, lam3, lam4 = (t.to(lam1.dtype) for t in (lam2, lam3, lam4))
        require(lam1.ndim >= 1, "natural_params.beta_loc shape", tuple(lam1.shape), "(*batch, d)")
        batch, d = tuple(lam1.shape[:-1]), lam1.shape[-1]
        require(tuple(lam3.shape) == batch + (d, d), "natural_params.neg_half_scale_inv_adjusted shape", tuple(lam3.shape), f"{batch + (d, d)}")
        for n, t in (("neg_half_beta", lam2), ("half_dof_minus_dim", lam4)):
            require(tuple(t.shape) == batch, f"natural_params.{n} shape", tuple(t.shape), f"{batch}")
        require(lam2 < 0, "natural_params.neg_half_beta", lam2, "< 0 (beta > 0)")
        require(lam4 > -0.5, "natural_params.half_dof_minus_dim", lam4, "> -1/2 (dof > d - 1)")
        nat = self.NaturalParams(lam1, lam2, lam3, lam4)
        check_spd("scale_inv", self._hyper(nat)[2])
        return nat

    @staticmethod
    def _hyper(natural):
        """:math:`(m_0, \\beta, W^{-1}, \\nu)` from :math:`\\lambda`."""
        lam1, lam2, lam3, lam4 = natural
        d = lam1.shape[-1]
        beta = -2.0 * lam2
        loc = lam1 / beta.unsqueeze(-1)
        scale_inv = -2.0 * lam3 - (lam1.unsqueeze(-1) * lam1.unsqueeze(-2)) / beta[..., None, None]
        return loc, beta, scale_inv, 2.0 * lam4 + d

    @staticmethod
    def log_partition_fn(natural) -> torch.Tensor:
        _, beta, scale_inv, dof = NormalWishart._hyper(natural)
        d = scale_inv.shape[-1]
        logdet_scale = -torch.linalg.slogdet(scale_inv)[1]
        return (
            -0.5 * d * torch.log(beta) + 0.5 * d * _LOG_2PI + 0.5 * dof * d * _LOG2
            + 0.5 * dof * logdet_scale + mvlgamma(0.5 * dof, d)
        )

    def _expectation_from_natural(self, natural):
        loc, beta, scale_inv, dof = self._hyper(natural)
        d = loc.shape[-1]
        scale = torch.linalg.inv(scale_inv)
        scale = 0.5 * (scale + scale.mT)
        mean_precision = dof[..., None, None] * scale
        mean_precision_x = (mean_precision @ loc.unsqueeze(-1)).squeeze(-1)
        mean_quadratic = (loc * mean_precision_x).sum(-1) + d / beta
        mean_logdet = mvdigamma(0.5 * dof, d) + d * _LOG2 + torch.linalg.slogdet(scale)[1]
        return self.ExpectationParams(mean_precision_x, mean_quadratic, mean_precision, mean_logdet)

    @property
    def dim(self) -> int:
        return self._natural.beta_loc.shape[-1]

    @property
    def loc(self) -> torch.Tensor:
        return self._hyper(self._natural)[0]

    @property
    def beta(self) -> torch.Tensor:
        return self._hyper(self._natural)[1]

    @property
    def scale_inv(self) -> torch.Tensor:
        return self._hyper(self._natural)[2]

    @property
    def scale(self) -> torch.Tensor:
        return torch.cholesky_inverse(torch.linalg.cholesky(self.scale_inv))

    @property
    def dof(self) -> torch.Tensor:
        return self._hyper(self._natural)[3]

    @property
    def mean(self) -> GaussianParameters:
        """:math:`(\\mathbb{E}[x], \\mathbb{E}[\\Lambda]) = (m_0, \\nu W)`."""
        return GaussianParameters(self.loc, self.dof[..., None, None] * self.scale)

    def sufficient_statistics(self, theta):
        x, prec = (torch.as_tensor(t, dtype=self.dtype, device=self.device) for t in theta)
        prec_x = (prec @ x.unsqueeze(-1)).squeeze(-1)
        return self.NaturalParams(prec_x, (x * prec_x).sum(-1), prec, torch.linalg.slogdet(prec)[1])

    def log_base_measure(self, theta):
        x, prec = (torch.as_tensor(t) for t in theta)
        shape = torch.broadcast_shapes(x.shape[:-1], prec.shape[:-2])
        return torch.zeros(shape, dtype=self.dtype, device=self.device)

    def sample(self, num_samples=None, generator=None):
        r""":math:`\Lambda\sim\mathcal{W}(W,\nu)` (Bartlett), then :math:`x = m_0 + C^{-\top}\epsilon` with
        :math:`\beta\Lambda = CC^\top`."""
        loc, beta, _, dof = self._hyper(self._natural)
        prec = sample_wishart(torch.linalg.cholesky(self.scale), dof, num_samples, generator)
        chol = torch.linalg.cholesky(beta[..., None, None] * prec)
        eps = torch.randn(prec.shape[:-1], generator=generator, dtype=self.dtype, device=self.device)
        offset = torch.linalg.solve_triangular(chol.mT, eps.unsqueeze(-1), upper=True).squeeze(-1)
        return GaussianParameters(loc + offset, prec)

    def entropy(self):
        """:math:`A(\\lambda) - \\langle\\lambda,\\mu\\rangle` (the base measure is constant)."""
        return self.log_partition() - self._inner(self._natural, self.expectation_params)
