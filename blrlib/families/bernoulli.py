r"""Factorised Bernoulli candidates on a two-point support :math:`\{a, b\}` per coordinate.

With :math:`T(\theta) = \theta` and the counting measure (:math:`h = 1`),

.. math::

    q_\lambda(\theta) = \exp\big(\lambda\theta - A(\lambda)\big), \qquad
    A(\lambda) = \log\big(e^{\lambda a} + e^{\lambda b}\big),

so :math:`p = q(\theta = b) = \sigma\big((b-a)\lambda\big)`, :math:`\mu = a + (b-a)p` and
:math:`F = (b-a)^2 p(1-p)`. The default support :math:`\{0, 1\}` gives :math:`\mu = \sigma(\lambda)`;
the binary-network support :math:`\{-1, +1\}` gives :math:`\mu = \tanh(\lambda)`.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch

from .._validation import as_float_tensor, check_same_shape
from .base import ExponentialFamily

__all__ = ["Bernoulli"]


class Bernoulli(ExponentialFamily):
    """Independent Bernoulli variables, one per coordinate, on the support ``support = (a, b)``."""

    class NaturalParams(NamedTuple):
        logit: torch.Tensor

    class ExpectationParams(NamedTuple):
        mean: torch.Tensor

    def __init__(self, natural_params, support: tuple[float, float] = (0.0, 1.0)):
        low, high = (float(v) for v in support)
        if not (math.isfinite(low) and math.isfinite(high) and high > low):
            raise ValueError(f"support must be two finite numbers (a, b) with a < b; got {support}")
        self.support = (low, high)
        super().__init__(natural_params)

    @classmethod
    def from_probs(cls, probs: Any, support: tuple[float, float] = (0.0, 1.0)) -> "Bernoulli":
        """From :math:`p = q(\\theta = b)`, each in the open interval (0, 1)."""
        p = as_float_tensor("probs", probs)
        if not bool(((p > 0) & (p < 1)).all()):
            raise ValueError("probs must lie strictly between 0 and 1")
        low, high = (float(v) for v in support)
        return cls((torch.logit(p) / (high - low),), support=support)

    @classmethod
    def from_expectation(cls, expectation_params, support: tuple[float, float] = (0.0, 1.0)) -> "Bernoulli":
        (mean,) = expectation_params
        mean = as_float_tensor("mean", mean)
        low, high = (float(v) for v in support)
        if not bool(((mean > low) & (mean < high)).all()):
            raise ValueError(f"mean must lie strictly inside the support ({low}, {high})")
        return cls.from_probs((mean - low) / (high - low), support=support)

    def _replace(self, natural_params):
        return type(self)(natural_params, support=self.support)

    def _validate_natural(self, natural):
        return self.NaturalParams(as_float_tensor("natural_params.logit", natural.logit))

    @property
    def _width(self) -> float:
        return self.support[1] - self.support[0]

    def log_partition_fn(self, natural) -> torch.Tensor:  # type: ignore[override]
        lam = natural[0]
        low, high = self.support
        return torch.logaddexp(lam * low, lam * high).sum()

    @property
    def probs(self) -> torch.Tensor:
        """:math:`p = q(\\theta = b) = \\sigma((b - a)\\lambda)`."""
        return torch.sigmoid(self._width * self._natural.logit)

    def _expectation_from_natural(self, natural):
        p = torch.sigmoid(self._width * natural[0])
        return self.ExpectationParams(self.support[0] + self._width * p)

    @property
    def mean(self) -> torch.Tensor:
        return self.expectation_params.mean

    def sufficient_statistics(self, theta):
        return self.NaturalParams(theta)

    def log_base_measure(self, theta):
        dims = tuple(range(-self._natural.logit.ndim, 0))
        return torch.zeros(theta.shape[: theta.ndim - len(dims)], dtype=theta.dtype, device=theta.device)

    def sample(self, num_samples=None, generator=None):
        p = self.probs
        shape = p.shape if num_samples is None else (int(num_samples), *p.shape)
        u = torch.rand(shape, generator=generator, dtype=self.dtype, device=self.device)
        return torch.where(u < p, self.support[1], self.support[0]).to(self.dtype)

    def entropy(self):
        lam = self._natural.logit
        return self.log_partition() - (lam * self.mean).sum()

    def fisher(self):
        p = self.probs.reshape(-1)
        return torch.diag(self._width**2 * p * (1.0 - p))

    def gradient_wrt_expectation(self, expected_gradient, expected_hessian=None):
        """The delta method for Bernoulli candidates: :math:`\\nabla_\\mu \\mathbb{E}_q[\\ell] \\approx \\nabla\\ell(\\mu)`.

        Pass the gradient of the loss evaluated at the mean (the straight-through estimator)."""
        g = as_float_tensor("expected_gradient", expected_gradient)
        check_same_shape("expected_gradient", g, "logit", self._natural.logit)
        return self.ExpectationParams(g)
