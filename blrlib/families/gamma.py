r"""The Gamma family, a batch of independent :math:`\mathrm{Gamma}(a, b)` members (shape :math:`a`, rate :math:`b`).

With :math:`T(\theta) = (\log\theta, \theta)` and :math:`h = 1` on :math:`(0, \infty)`,

.. math::

    q(\theta) = \exp\big((a-1)\log\theta - b\,\theta - A(\lambda)\big),\qquad
    A(\lambda) = \log\Gamma(a) - a\log b,

so :math:`\lambda = (a - 1, -b)` and :math:`\mu = (\psi(a) - \log b,\ a/b)`. The Fisher of a member
is :math:`\begin{pmatrix}\psi'(a) & 1/b\\ 1/b & a/b^2\end{pmatrix}`.

The conjugate prior of a Poisson rate and of a Gaussian's precision: a Poisson loss
:math:`\bar\ell = \sum_i(\theta - y_i\log\theta)` has :math:`\nabla_\mu\mathbb{E}_q[\bar\ell] =
(-\sum_i y_i,\ n)`.

API: ``Gamma.from_shape_rate(shape, rate)`` (tensors of one shape, the batch shape), properties
``shape``, ``rate``, ``mean`` (:math:`a/b`), and the family interface; ``from_expectation`` solves
:math:`\log a - \psi(a) = \log\mu_2 - \mu_1` by Newton's method.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from ._special import digamma, floating, lgamma, require, sample_standard_gamma, solve_log_minus_digamma, trigamma
from .base import ExponentialFamily

__all__ = ["Gamma"]


class Gamma(ExponentialFamily):
    r""":math:`\mathrm{Gamma}(a, b)` members (rate parameterisation), :math:`\lambda = (a-1, -b)`."""

    class NaturalParams(NamedTuple):
        shape_minus_one: torch.Tensor
        neg_rate: torch.Tensor

    class ExpectationParams(NamedTuple):
        mean_log: torch.Tensor
        mean: torch.Tensor

    event_ndims = (0, 0)

    @classmethod
    def from_shape_rate(cls, shape: Any, rate: Any) -> "Gamma":
        """From the shape :math:`a > 0` and the rate :math:`b > 0` (same tensor shape)."""
        shape = floating("shape", shape)
        rate = floating("rate", rate, like=shape)
        require(shape > 0, "shape", shape, "> 0")
        require(rate > 0, "rate", rate, "> 0")
        require(shape.shape == rate.shape, "rate shape", tuple(rate.shape), f"the shape parameter's {tuple(shape.shape)}")
        return cls((shape - 1.0, -rate))

    @classmethod
    def from_expectation(cls, expectation_params) -> "Gamma":
        mean_log, mean = expectation_params
        mean_log = floating("mean_log", mean_log)
        mean = floating("mean", mean, like=mean_log)
        require(mean > 0, "mean", mean, "> 0")
        shape = solve_log_minus_digamma(torch.log(mean) - mean_log)
        return cls.from_shape_rate(shape, shape / mean)

    def _validate_natural(self, natural):
        a = floating("natural_params.shape_minus_one", natural.shape_minus_one)
        b = floating("natural_params.neg_rate", natural.neg_rate, like=a)
        require(a.shape == b.shape, "natural_params.neg_rate shape", tuple(b.shape), f"{tuple(a.shape)}")
        require(a > -1, "natural_params.shape_minus_one", a, "> -1 (shape > 0)")
        require(b < 0, "natural_params.neg_rate", b, "< 0 (rate > 0)")
        return self.NaturalParams(a, b)

    @staticmethod
    def log_partition_fn(natural) -> torch.Tensor:
        a, b = natural[0] + 1.0, -natural[1]
        return lgamma(a) - a * torch.log(b)

    def _expectation_from_natural(self, natural):
        a, b = natural[0] + 1.0, -natural[1]
        return self.ExpectationParams(digamma(a) - torch.log(b), a / b)

    @property
    def shape(self) -> torch.Tensor:
        return self._natural.shape_minus_one + 1.0

    @property
    def rate(self) -> torch.Tensor:
        return -self._natural.neg_rate

    @property
    def mean(self) -> torch.Tensor:
        """:math:`\\mathbb{E}_q[\\theta] = a/b`."""
        return self.shape / self.rate

    def sufficient_statistics(self, theta):
        theta = torch.as_tensor(theta, dtype=self.dtype, device=self.device)
        return self.NaturalParams(torch.log(theta), theta)

    def log_base_measure(self, theta):
        theta = torch.as_tensor(theta, dtype=self.dtype, device=self.device)
        return torch.zeros_like(theta)

    def sample(self, num_samples=None, generator=None):
        return sample_standard_gamma(self.shape, num_samples, generator) / self.rate

    def entropy(self):
        """:math:`A(\\lambda) - \\langle\\lambda,\\mu\\rangle` (the base measure is constant)."""
        return self.log_partition() - self._inner(self._natural, self.expectation_params)

    def fisher(self):
        a, b = self.shape, self.rate
        row1 = torch.stack([trigamma(a), 1.0 / b], dim=-1)
        row2 = torch.stack([1.0 / b, a / (b * b)], dim=-1)
        return torch.stack([row1, row2], dim=-2)
