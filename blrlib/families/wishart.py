r"""The Wishart family, a batch of independent :math:`\mathcal{W}(W, \nu)` members over :math:`d\times d` precision matrices.

With :math:`T(\Lambda) = (\Lambda, \log\det\Lambda)` and :math:`h = 1` on the positive-definite cone,

.. math::

    q(\Lambda) = \exp\Big(\big\langle -\tfrac12 W^{-1}, \Lambda\big\rangle
        + \tfrac{\nu-d-1}{2}\log\det\Lambda - A(\lambda)\Big),\qquad
    A(\lambda) = \tfrac{\nu d}{2}\log 2 + \tfrac{\nu}{2}\log\det W + \log\Gamma_d(\tfrac{\nu}{2}),

so :math:`\lambda = (-\tfrac12 W^{-1},\ \tfrac{\nu-d-1}{2})` and
:math:`\mu = (\nu W,\ \psi_d(\tfrac\nu2) + d\log 2 + \log\det W)` (:math:`\langle A, B\rangle =
\mathrm{tr}(A^\top B)`). Scale :math:`W \succ 0`, degrees of freedom :math:`\nu > d - 1`;
:math:`\mathbb{E}[\Lambda] = \nu W`. The parameterisation is Bishop's (PRML, B.78) and that of
``torch.distributions.Wishart(df=nu, covariance_matrix=W)`` and ``scipy.stats.wishart(df=nu, scale=W)``.

API: ``Wishart.from_scale_dof(scale, dof)`` (``scale`` of shape ``(*batch, d, d)``, ``dof`` of shape
``batch``), properties ``scale``, ``scale_inv``, ``dof``, ``mean`` (:math:`\nu W`), ``dim``; ``sample``
returns ``(*sample, *batch, d, d)`` matrices (Bartlett's decomposition).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch

from ._special import check_spd, floating, mvdigamma, mvlgamma, require, sample_wishart, solve_wishart_dof
from .base import ExponentialFamily

__all__ = ["Wishart"]

_LOG2 = math.log(2.0)


class Wishart(ExponentialFamily):
    r""":math:`\mathcal{W}(W, \nu)` members, :math:`\lambda = (-\tfrac12 W^{-1}, \tfrac{\nu-d-1}{2})`."""

    class NaturalParams(NamedTuple):
        neg_half_scale_inv: torch.Tensor
        half_excess_dof: torch.Tensor

    class ExpectationParams(NamedTuple):
        mean_precision: torch.Tensor
        mean_logdet: torch.Tensor

    event_ndims = (2, 0)

    @classmethod
    def from_scale_dof(cls, scale: Any, dof: Any) -> "Wishart":
        """From :math:`W` (``(*batch, d, d)``, positive definite) and :math:`\\nu > d-1` (``batch``)."""
        scale = floating("scale", scale)
        dof = floating("dof", dof, like=scale)
        check_spd("scale", scale)
        d = scale.shape[-1]
        require(tuple(dof.shape) == tuple(scale.shape[:-2]), "dof shape", tuple(dof.shape), f"the batch shape {tuple(scale.shape[:-2])}")
        require(dof > d - 1, "dof", dof, f"> d - 1 = {d - 1}")
        return cls((-0.5 * torch.linalg.inv(scale), 0.5 * (dof - d - 1)))

    @classmethod
    def from_expectation(cls, expectation_params) -> "Wishart":
        """Inverse map: :math:`\\nu` from :math:`\\psi_d(\\nu/2) + d\\log 2 - d\\log\\nu = \\mu_2 - \\log\\det\\mu_1`
        (Newton), then :math:`W = \\mu_1/\\nu`."""
        mean_precision, mean_logdet = expectation_params
        mean_precision = floating("mean_precision", mean_precision)
        mean_logdet = floating("mean_logdet", mean_logdet, like=mean_precision)
        check_spd("mean_precision", mean_precision)
        d = mean_precision.shape[-1]
        dof = solve_wishart_dof(mean_logdet - torch.linalg.slogdet(mean_precision)[1], d)
        return cls.from_scale_dof(mean_precision / dof[..., None, None], dof)

    def _validate_natural(self, natural):
        lam1 = floating("natural_params.neg_half_scale_inv", natural.neg_half_scale_inv)
        lam2 = floating("natural_params.half_excess_dof", natural.half_excess_dof, like=lam1)
        check_spd("scale_inv (-2 * natural_params.neg_half_scale_inv)", -2.0 * lam1)
        require(tuple(lam2.shape) == tuple(lam1.shape[:-2]), "natural_params.half_excess_dof shape", tuple(lam2.shape), f"{tuple(lam1.shape[:-2])}")
        require(lam2 > -1.0, "natural_params.half_excess_dof", lam2, "> -1 (dof > d - 1)")
        return self.NaturalParams(lam1, lam2)

    @staticmethod
    def log_partition_fn(natural) -> torch.Tensor:
        lam1, lam2 = natural
        d = lam1.shape[-1]
        dof = 2.0 * lam2 + d + 1
        logdet_scale = -torch.linalg.slogdet(-2.0 * lam1)[1]
        return 0.5 * dof * d * _LOG2 + 0.5 * dof * logdet_scale + mvlgamma(0.5 * dof, d)

    def _expectation_from_natural(self, natural):
        lam1, lam2 = natural
        d = lam1.shape[-1]
        dof = 2.0 * lam2 + d + 1
        scale = torch.linalg.inv(-2.0 * lam1)
        logdet = mvdigamma(0.5 * dof, d) + d * _LOG2 + torch.linalg.slogdet(scale)[1]
        return self.ExpectationParams(dof[..., None, None] * scale, logdet)

    @property
    def dim(self) -> int:
        return self._natural.neg_half_scale_inv.shape[-1]

    @property
    def dof(self) -> torch.Tensor:
        return 2.0 * self._natural.half_excess_dof + self.dim + 1

    @property
    def scale_inv(self) -> torch.Tensor:
        return -2.0 * self._natural.neg_half_scale_inv

    @property
    def scale(self) -> torch.Tensor:
        return torch.cholesky_inverse(torch.linalg.cholesky(self.scale_inv))

    @property
    def mean(self) -> torch.Tensor:
        """:math:`\\mathbb{E}_q[\\Lambda] = \\nu W`."""
        return self.dof[..., None, None] * self.scale

    def sufficient_statistics(self, theta):
        theta = torch.as_tensor(theta, dtype=self.dtype, device=self.device)
        return self.NaturalParams(theta, torch.linalg.slogdet(theta)[1])

    def log_base_measure(self, theta):
        theta = torch.as_tensor(theta, dtype=self.dtype, device=self.device)
        return torch.zeros(theta.shape[:-2], dtype=self.dtype, device=self.device)

    def sample(self, num_samples=None, generator=None):
        return sample_wishart(torch.linalg.cholesky(self.scale), self.dof, num_samples, generator)

    def entropy(self):
        """:math:`A(\\lambda) - \\langle\\lambda,\\mu\\rangle` (the base measure is constant)."""
        return self.log_partition() - self._inner(self._natural, self.expectation_params)
