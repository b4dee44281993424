r"""The categorical family, a batch of independent distributions over :math:`K` categories.

In the minimal representation, with :math:`z \in \{0, \dots, K-1\}` and its one-hot vector
:math:`e_z`, :math:`T(z) = (e_z)_{0:K-1}` (the first :math:`K-1` one-hot entries) and :math:`h = 1`:

.. math::

    q(z) = \exp\big(\langle\lambda, T(z)\rangle - A(\lambda)\big),\qquad
    \lambda_k = \log\frac{\pi_k}{\pi_{K-1}},\qquad
    A(\lambda) = \log\Big(1 + \sum_{k<K-1} e^{\lambda_k}\Big),

so :math:`\mu_k = \pi_k` (:math:`k < K-1`) and :math:`F = \mathrm{diag}(\mu) - \mu\mu^\top`. The last
category is the reference; the rule steps in :math:`\lambda` (the coordinates of Lin, Khan & Schmidt,
2019). For a loss with per-category values :math:`\ell_k`, :math:`\mathbb{E}_q[\ell] = \sum_k\pi_k\ell_k`
and :math:`\nabla_\mu\mathbb{E}_q[\ell] = (\ell_k - \ell_{K-1})_{k<K-1}`, which
:meth:`Categorical.gradient_wrt_expectation` computes; a :math:`\rho = 1` step then gives
:math:`\pi \propto e^{-\ell}` (the E-step's responsibilities when :math:`\ell_k` is the negative
log joint of category :math:`k`).

API: ``Categorical.from_probs(probs)`` and ``Categorical.from_logits(logits)`` (shape
``(*batch, K)``: the full :math:`K` categories, logits unnormalised), properties ``probs``
(all :math:`K`), ``logits`` (normalised log-probabilities), ``num_categories``; ``sample`` returns
integer indices ``(*sample, *batch)``; ``one_hot(z)`` gives the one-hot (multinomial) view
``(..., K)`` and ``log_prob`` accepts indices.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from ._special import floating, require
from .base import ExponentialFamily

__all__ = ["Categorical"]


class Categorical(ExponentialFamily):
    r"""Categorical members over :math:`K` categories, :math:`\lambda_k = \log(\pi_k/\pi_{K-1})`."""

    class NaturalParams(NamedTuple):
        logit: torch.Tensor

    class ExpectationParams(NamedTuple):
        probs: torch.Tensor

    event_ndims = (1,)

    @classmethod
    def from_logits(cls, logits: Any) -> "Categorical":
        """From unnormalised log-probabilities of all :math:`K` categories (shape ``(*batch, K)``)."""
        logits = floating("logits", logits)
        require(logits.ndim >= 1 and logits.shape[-1] >= 2, "logits shape", tuple(logits.shape), "(*batch, K) with K >= 2")
        return cls((logits[..., :-1] - logits[..., -1:],))

    @classmethod
    def from_probs(cls, probs: Any) -> "Categorical":
        """From probabilities of all :math:`K` categories (each > 0, summing to 1 along the last dimension)."""
        probs = floating("probs", probs)
        require(probs.ndim >= 1 and probs.shape[-1] >= 2, "probs shape", tuple(probs.shape), "(*batch, K) with K >= 2")
        require(probs > 0, "probs", probs, "> 0")
        total = probs.sum(-1)
        tol = 1e-6 if probs.dtype in (torch.float16, torch.bfloat16, torch.float32) else 1e-10
        require((total - 1.0).abs() <= tol, "probs.sum(-1)", total, "1")
        return cls.from_logits(torch.log(probs))

    @classmethod
    def from_expectation(cls, expectation_params) -> "Categorical":
        """From :math:`\\mu = (\\pi_0, \\dots, \\pi_{K-2})` (positive, summing to less than 1)."""
        (mu,) = expectation_params
        mu = floating("probs", mu)
        last = 1.0 - mu.sum(-1, keepdim=True)
        require(mu > 0, "probs", mu, "> 0")
        require(last > 0, "1 - probs.sum(-1)", last, "> 0")
        return cls((torch.log(mu) - torch.log(last),))

    def _validate_natural(self, natural):
        lam = floating("natural_params.logit", natural.logit)
        require(lam.ndim >= 1, "natural_params.logit shape", tuple(lam.shape), "(*batch, K - 1)")
        return self.NaturalParams(lam)

    @staticmethod
    def log_partition_fn(natural) -> torch.Tensor:
        lam = natural[0]
        zero = torch.zeros(lam.shape[:-1] + (1,), dtype=lam.dtype, device=lam.device)
        return torch.logsumexp(torch.cat([lam, zero], dim=-1), dim=-1)

    def _expectation_from_natural(self, natural):
        return self.ExpectationParams(self._full_probs(natural[0])[..., :-1])

    @staticmethod
    def _full_probs(lam: torch.Tensor) -> torch.Tensor:
        zero = torch.zeros(lam.shape[:-1] + (1,), dtype=lam.dtype, device=lam.device)
        return torch.softmax(torch.cat([lam, zero], dim=-1), dim=-1)

    @property
    def num_categories(self) -> int:
        return self._natural.logit.shape[-1] + 1

    @property
    def probs(self) -> torch.Tensor:
        """:math:`\\pi`, all :math:`K` categories (shape ``(*batch, K)``)."""
        return self._full_probs(self._natural.logit)

    @property
    def logits(self) -> torch.Tensor:
        """:math:`\\log\\pi`, all :math:`K` categories (normalised)."""
        lam = self._natural.logit
        zero = torch.zeros(lam.shape[:-1] + (1,), dtype=lam.dtype, device=lam.device)
        return torch.log_softmax(torch.cat([lam, zero], dim=-1), dim=-1)

    @property
    def mean(self) -> torch.Tensor:
        """:math:`\\mathbb{E}_q[e_z] = \\pi` (the one-hot view's mean)."""
        return self.probs

    def one_hot(self, z: Any) -> torch.Tensor:
        """The one-hot (multinomial) view :math:`e_z` of integer indices ``z``, shape ``(*z.shape, K)``."""
        z = torch.as_tensor(z, device=self.device)
        if z.is_floating_point():
            require(z == z.round(), "z", z, "integer category indices")
            z = z.long()
        require((z >= 0) & (z < self.num_categories), "z", z, f"in {{0, ..., {self.num_categories - 1}}}")
        return torch.nn.functional.one_hot(z, self.num_categories).to(self.dtype)

    def sufficient_statistics(self, theta):
        return self.NaturalParams(self.one_hot(theta)[..., :-1])

    def log_base_measure(self, theta):
        z = torch.as_tensor(theta, device=self.device)
        return torch.zeros(z.shape, dtype=self.dtype, device=self.device)

    def sample(self, num_samples=None, generator=None):
        """Integer indices by inverse-CDF sampling, shape ``(*sample, *batch)``."""
        probs = self.probs
        shape = probs.shape[:-1] if num_samples is None else (int(num_samples), *probs.shape[:-1])
        u = torch.rand(shape, generator=generator, dtype=self.dtype, device=self.device)
        cdf = probs.cumsum(-1)
        index = (u.unsqueeze(-1) >= cdf[..., :-1]).sum(-1)
        return index

    def entropy(self):
        """:math:`-\\sum_k \\pi_k\\log\\pi_k`."""
        return -(self.probs * self.logits).sum(-1)

    def kl_divergence(self, other):
        """:math:`\\sum_k \\pi_k(\\log\\pi_k - \\log\\pi'_k)`."""
        self._check_compatible("other", other)
        return (self.probs * (self.logits - other.logits)).sum(-1)

    def fisher(self):
        """:math:`\\mathrm{diag}(\\mu) - \\mu\\mu^\\top` per member."""
        mu = self.expectation_params.probs
        return torch.diag_embed(mu) - mu.unsqueeze(-1) * mu.unsqueeze(-2)

    def gradient_wrt_expectation(self, expected_gradient, expected_hessian=None):
        """The estimators' chain rule; for a categorical it takes the per-category losses
        :math:`\\ell_k` as ``expected_gradient`` (see :meth:`gradient_from_category_losses`)."""
        return self.gradient_from_category_losses(expected_gradient)

    def gradient_from_category_losses(self, losses):
        """From per-category losses :math:`\\ell_k` (shape ``(*batch, K)``):
        :math:`\\nabla_\\mu\\mathbb{E}_q[\\ell] = (\\ell_k - \\ell_{K-1})_{k<K-1}`."""
        losses = floating("losses", losses, like=self._natural.logit)
        want = tuple(self.batch_shape) + (self.num_categories,)
        require(tuple(losses.shape) == want, "per-category losses shape", tuple(losses.shape), f"{want}")
        return self.ExpectationParams(losses[..., :-1] - losses[..., -1:])
