r"""The Beta family, a batch of independent :math:`\mathrm{Beta}(\alpha, \beta)` members.

With :math:`T(\theta) = (\log\theta, \log(1-\theta))` and :math:`h = 1` on :math:`(0, 1)`,

.. math::

    q(\theta) = \exp\big((\alpha-1)\log\theta + (\beta-1)\log(1-\theta) - A(\lambda)\big),\qquad
    A(\lambda) = \log\Gamma(\alpha) + \log\Gamma(\beta) - \log\Gamma(\alpha+\beta),

so :math:`\lambda = (\alpha - 1, \beta - 1)` and
:math:`\mu = (\psi(\alpha) - \psi(\alpha+\beta),\ \psi(\beta) - \psi(\alpha+\beta))`. The Fisher of a
member is :math:`\begin{pmatrix}\psi'(\alpha)-\psi'(\alpha+\beta) & -\psi'(\alpha+\beta)\\
-\psi'(\alpha+\beta) & \psi'(\beta)-\psi'(\alpha+\beta)\end{pmatrix}`.

The conjugate prior of a Bernoulli likelihood: the loss :math:`\bar\ell = -\sum_i[y_i\log\theta +
(1-y_i)\log(1-\theta)]` is linear in :math:`T`, so :math:`\nabla_\mu\mathbb{E}_q[\bar\ell] =
(-\sum_i y_i, -\sum_i(1-y_i))` and one :math:`\rho = 1` step of the rule from the prior's
:math:`\lambda_0` (as the regulariser) gives the posterior.

API: ``Beta.from_concentrations(alpha, beta)`` (tensors of one shape, the batch shape), properties
``alpha``, ``beta``, ``mean`` (:math:`\alpha/(\alpha+\beta)`), and the family interface of
:class:`~blrlib.families.base.ExponentialFamily`; ``sample`` returns a tensor of shape
``(*sample, *batch_shape)``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from ._special import digamma, floating, lgamma, require, sample_standard_gamma, solve_dirichlet, trigamma
from .base import ExponentialFamily

__all__ = ["Beta"]


class Beta(ExponentialFamily):
    r""":math:`\mathrm{Beta}(\alpha, \beta)` members, :math:`\lambda = (\alpha-1, \beta-1)`."""

    class NaturalParams(NamedTuple):
        alpha_minus_one: torch.Tensor
        beta_minus_one: torch.Tensor

    class ExpectationParams(NamedTuple):
        mean_log: torch.Tensor
        mean_log1m: torch.Tensor

    event_ndims = (0, 0)

    @classmethod
    def from_concentrations(cls, alpha: Any, beta: Any) -> "Beta":
        """From :math:`\\alpha > 0` and :math:`\\beta > 0` (same shape: the batch shape)."""
        alpha = floating("alpha", alpha)
        beta = floating("beta", beta, like=alpha)
        require(alpha > 0, "alpha", alpha, "> 0")
        require(beta > 0, "beta", beta, "> 0")
        require(alpha.shape == beta.shape, "beta shape", tuple(beta.shape), f"alpha's shape {tuple(alpha.shape)}")
        return cls((alpha - 1.0, beta - 1.0))

    @classmethod
    def from_expectation(cls, expectation_params) -> "Beta":
        """Inverse map: solve :math:`\\psi(\\alpha)-\\psi(\\alpha+\\beta) = \\mu_1`,
        :math:`\\psi(\\beta)-\\psi(\\alpha+\\beta) = \\mu_2` by Newton's method."""
        mean_log, mean_log1m = expectation_params
        mean_log = floating("mean_log", mean_log)
        mean_log1m = floating("mean_log1m", mean_log1m, like=mean_log)
        conc = solve_dirichlet(torch.stack([mean_log, mean_log1m], dim=-1))
        return cls.from_concentrations(conc[..., 0], conc[..., 1])

    def _validate_natural(self, natural):
        a = floating("natural_params.alpha_minus_one", natural.alpha_minus_one)
        b = floating("natural_params.beta_minus_one", natural.beta_minus_one, like=a)
        require(a.shape == b.shape, "natural_params.beta_minus_one shape", tuple(b.shape), f"{tuple(a.shape)}")
        require(a > -1, "natural_params.alpha_minus_one", a, "> -1 (alpha > 0)")
        require(b > -1, "natural_params.beta_minus_one", b, "> -1 (beta > 0)")
        return self.NaturalParams(a, b)

    @staticmethod
    def log_partition_fn(natural) -> torch.Tensor:
        a, b = natural[0] + 1.0, natural[1] + 1.0
        return lgamma(a) + lgamma(b) - lgamma(a + b)

    def _expectation_from_natural(self, natural):
        a, b = natural[0] + 1.0, natural[1] + 1.0
        total = digamma(a + b)
        return self.ExpectationParams(digamma(a) - total, digamma(b) - total)

    @property
    def alpha(self) -> torch.Tensor:
        return self._natural.alpha_minus_one + 1.0

    @property
    def beta(self) -> torch.Tensor:
        return self._natural.beta_minus_one + 1.0

    @property
    def mean(self) -> torch.Tensor:
        """:math:`\\mathbb{E}_q[\\theta] = \\alpha/(\\alpha+\\beta)`."""
        return self.alpha / (self.alpha + self.beta)

    def sufficient_statistics(self, theta):
        theta = torch.as_tensor(theta, dtype=self.dtype, device=self.device)
        return self.NaturalParams(torch.log(theta), torch.log1p(-theta))

    def log_base_measure(self, theta):
        theta = torch.as_tensor(theta, dtype=self.dtype, device=self.device)
        return torch.zeros_like(theta)

    def sample(self, num_samples=None, generator=None):
        """:math:`\\theta = G_1/(G_1+G_2)` with :math:`G_1\\sim\\mathrm{Gamma}(\\alpha,1)`, :math:`G_2\\sim\\mathrm{Gamma}(\\beta,1)`."""
        g1 = sample_standard_gamma(self.alpha, num_samples, generator)
        g2 = sample_standard_gamma(self.beta, num_samples, generator)
        return g1 / (g1 + g2)

    def entropy(self):
        """:math:`A(\\lambda) - \\langle\\lambda,\\mu\\rangle` (the base measure is constant)."""
        return self.log_partition() - self._inner(self._natural, self.expectation_params)

    def fisher(self):
        a, b = self.alpha, self.beta
        t = trigamma(a + b)
        row1 = torch.stack([trigamma(a) - t, -t], dim=-1)
        row2 = torch.stack([-t, trigamma(b) - t], dim=-1)
        return torch.stack([row1, row2], dim=-2)
