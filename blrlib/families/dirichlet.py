r"""The Dirichlet family, a batch of independent :math:`\mathrm{Dir}(\alpha)` members over :math:`K` categories.

With :math:`T(\theta) = \log\theta` (element-wise) and :math:`h = 1` on the simplex,

.. math::

    q(\theta) = \exp\big(\langle\alpha - 1, \log\theta\rangle - A(\lambda)\big),\qquad
    A(\lambda) = \sum_k\log\Gamma(\alpha_k) - \log\Gamma\big(\textstyle\sum_k\alpha_k\big),

so :math:`\lambda = \alpha - 1`, :math:`\mu_k = \psi(\alpha_k) - \psi(\alpha_0)` with
:math:`\alpha_0 = \sum_k\alpha_k`, and the Fisher of a member is
:math:`\mathrm{diag}(\psi'(\alpha)) - \psi'(\alpha_0)\mathbf{1}\mathbf{1}^\top`.

The conjugate prior of categorical (mixture-weight) likelihoods: with responsibilities
:math:`r_{ik}`, :math:`\mathbb{E}_q[\bar\ell] = -\sum_{ik} r_{ik}\mathbb{E}_q[\log\theta_k]`, so
:math:`\nabla_\mu\mathbb{E}_q[\bar\ell] = -\sum_i r_{i\cdot}` (the counts).

API: ``Dirichlet.from_concentration(alpha)`` (shape ``(*batch, K)``), properties ``concentration``,
``mean`` (:math:`\alpha/\alpha_0`), and the family interface; ``sample`` returns
``(*sample, *batch, K)`` points of the simplex.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from ._special import digamma, floating, lgamma, require, sample_standard_gamma, solve_dirichlet, trigamma
from .base import ExponentialFamily

__all__ = ["Dirichlet"]


class Dirichlet(ExponentialFamily):
    r""":math:`\mathrm{Dir}(\alpha)` members, :math:`\lambda = \alpha - 1` (last dimension: the :math:`K` categories)."""

    class NaturalParams(NamedTuple):
        concentration_minus_one: torch.Tensor

    class ExpectationParams(NamedTuple):
        mean_log: torch.Tensor

    event_ndims = (1,)

    @classmethod
    def from_concentration(cls, concentration: Any) -> "Dirichlet":
        """From :math:`\\alpha` (shape ``(*batch, K)``, :math:`K \\ge 2`, every entry > 0)."""
        alpha = floating("concentration", concentration)
        require(alpha > 0, "concentration", alpha, "> 0")
        return cls((alpha - 1.0,))

    @classmethod
    def from_expectation(cls, expectation_params) -> "Dirichlet":
        """Inverse map: Newton's method for :math:`\\psi(\\alpha_k) - \\psi(\\alpha_0) = \\mu_k`."""
        (mean_log,) = expectation_params
        mean_log = floating("mean_log", mean_log)
        require(mean_log.ndim >= 1 and mean_log.shape[-1] >= 2, "mean_log shape", tuple(mean_log.shape), "(*batch, K) with K >= 2")
        return cls.from_concentration(solve_dirichlet(mean_log))

    def _validate_natural(self, natural):
        lam = floating("natural_params.concentration_minus_one", natural.concentration_minus_one)
        require(lam.ndim >= 1 and lam.shape[-1] >= 2, "natural_params.concentration_minus_one shape", tuple(lam.shape), "(*batch, K) with K >= 2")
        require(lam > -1, "natural_params.concentration_minus_one", lam, "> -1 (concentration > 0)")
        return self.NaturalParams(lam)

    @staticmethod
    def log_partition_fn(natural) -> torch.Tensor:
        alpha = natural[0] + 1.0
        return lgamma(alpha).sum(-1) - lgamma(alpha.sum(-1))

    def _expectation_from_natural(self, natural):
        alpha = natural[0] + 1.0
        return self.ExpectationParams(digamma(alpha) - digamma(alpha.sum(-1, keepdim=True)))

    @property
    def concentration(self) -> torch.Tensor:
        return self._natural.concentration_minus_one + 1.0

    @property
    def mean(self) -> torch.Tensor:
        """:math:`\\mathbb{E}_q[\\theta] = \\alpha/\\alpha_0`."""
        alpha = self.concentration
        return alpha / alpha.sum(-1, keepdim=True)

    def sufficient_statistics(self, theta):
        theta = torch.as_tensor(theta, dtype=self.dtype, device=self.device)
        return self.NaturalParams(torch.log(theta))

    def log_base_measure(self, theta):
        theta = torch.as_tensor(theta, dtype=self.dtype, device=self.device)
        return torch.zeros(theta.shape[:-1], dtype=self.dtype, device=self.device)

    def sample(self, num_samples=None, generator=None):
        """Normalised independent :math:`\\mathrm{Gamma}(\\alpha_k, 1)` draws."""
        g = sample_standard_gamma(self.concentration, num_samples, generator)
        return g / g.sum(-1, keepdim=True)

    def entropy(self):
        """:math:`A(\\lambda) - \\langle\\lambda,\\mu\\rangle` (the base measure is constant)."""
        return self.log_partition() - self._inner(self._natural, self.expectation_params)

    def fisher(self):
        alpha = self.concentration
        coupling = trigamma(alpha.sum(-1))[..., None, None]
        return torch.diag_embed(trigamma(alpha)) - coupling * torch.ones(
            alpha.shape[-1], alpha.shape[-1], dtype=alpha.dtype, device=alpha.device
        )
