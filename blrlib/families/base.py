r"""The exponential-family interface every candidate distribution implements.

A minimal exponential family has densities

.. math::

    q_\lambda(\theta) = h(\theta)\,\exp\big(\langle \lambda, T(\theta)\rangle - A(\lambda)\big),

with natural parameters :math:`\lambda`, sufficient statistics :math:`T(\theta)`, base measure
:math:`h` and log-partition :math:`A`. Its expectation parameters are
:math:`\mu = \mathbb{E}_q[T(\theta)] = \nabla A(\lambda)` and its Fisher information is
:math:`F(\lambda) = \nabla^2 A(\lambda) = \partial\mu/\partial\lambda`.

Parameters are stored as a :class:`typing.NamedTuple` of tensors whose field names say what each
block is (``precision_mean`` rather than ``eta1``). The natural parameters are the canonical state;
every other parameterisation is computed from them. Objects are immutable: the rule returns a new
distribution rather than changing one in place.
"""

from __future__ import annotations

import abc
from typing import Any, NamedTuple, Sequence

import torch

from .._validation import check_same_shape

__all__ = ["ExponentialFamily", "flatten_params", "unflatten_params"]


def flatten_params(params: Sequence[torch.Tensor]) -> torch.Tensor:
    """Concatenate the blocks of a parameter tuple into one vector (row-major)."""
    return torch.cat([p.reshape(-1) for p in params])


def unflatten_params(vector: torch.Tensor, like: NamedTuple) -> NamedTuple:
    """Inverse of :func:`flatten_params`: cut ``vector`` into blocks shaped like ``like``."""
    blocks, start = [], 0
    for block in like:
        blocks.append(vector[start : start + block.numel()].reshape(block.shape))
        start += block.numel()
    if start != vector.numel():
        raise ValueError(f"vector has {vector.numel()} entries but the parameters need {start}")
    return type(like)(*blocks)


class ExponentialFamily(abc.ABC):
    """Base class of the candidate families :math:`\\mathcal{Q}` of the Bayesian learning rule.

    Subclasses define ``NaturalParams`` and ``ExpectationParams`` (named tuples), the maps between
    them, the log-partition as a differentiable function of the natural parameters, the sufficient
    statistics and the log base measure. The rest (Fisher, KL, the rule's entropy term) has generic
    defaults that subclasses override with closed forms where these are cheaper.
    """

    NaturalParams: type
    ExpectationParams: type

    def __init__(self, natural_params: Sequence[Any]):
        natural = self.NaturalParams(*natural_params)
        self._natural = self._validate_natural(natural)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_natural(cls, natural_params: Sequence[Any], **kwargs: Any) -> "ExponentialFamily":
        """Build the distribution from natural parameters :math:`\\lambda`."""
        return cls(natural_params, **kwargs)

    @classmethod
    def from_expectation(cls, expectation_params: Sequence[Any], **kwargs: Any) -> "ExponentialFamily":
        """Build the distribution from expectation parameters :math:`\\mu` (the inverse map :math:`\\lambda(\\mu)`)."""
        raise NotImplementedError

    def _replace(self, natural_params: Sequence[Any]) -> "ExponentialFamily":
        """A distribution of the same family (and fixed hyperparameters) with new natural parameters."""
        return type(self)(natural_params)

    # ------------------------------------------------------------------ parameters
    @property
    def natural_params(self) -> NamedTuple:
        """The natural parameters :math:`\\lambda` (a named tuple of tensors)."""
        return self._natural

    @property
    def expectation_params(self) -> NamedTuple:
        """The expectation parameters :math:`\\mu = \\nabla A(\\lambda) = \\mathbb{E}_q[T(\\theta)]`."""
        return self._expectation_from_natural(self._natural)

    @property
    def dtype(self) -> torch.dtype:
        return self._natural[0].dtype

    @property
    def device(self) -> torch.device:
        return self._natural[0].device

    # ------------------------------------------------------------------ to implement
    @abc.abstractmethod
    def _validate_natural(self, natural: NamedTuple) -> NamedTuple:
        """Check that ``natural`` lies in the natural parameter space; return (cloned) tensors."""

    @staticmethod
    @abc.abstractmethod
    def log_partition_fn(natural: NamedTuple) -> torch.Tensor:
        """:math:`A(\\lambda)` as a differentiable function of the natural parameters."""

    @abc.abstractmethod
    def _expectation_from_natural(self, natural: NamedTuple) -> NamedTuple:
        """Closed-form :math:`\\mu(\\lambda)`."""

    @abc.abstractmethod
    def sufficient_statistics(self, theta: torch.Tensor) -> NamedTuple:
        """:math:`T(\\theta)`, structured like the natural parameters; leading sample dimensions allowed."""

    @abc.abstractmethod
    def log_base_measure(self, theta: torch.Tensor) -> torch.Tensor:
        """:math:`\\log h(\\theta)`."""

    @abc.abstractmethod
    def sample(self, num_samples: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw :math:`\\theta \\sim q`; with ``num_samples`` the samples stack along dimension 0."""

    @abc.abstractmethod
    def entropy(self) -> torch.Tensor:
        """:math:`\\mathcal{H}(q) = -\\mathbb{E}_q[\\log q(\\theta)]`."""

    # ------------------------------------------------------------------ generic parts
    def log_partition(self) -> torch.Tensor:
        """:math:`A(\\lambda)` at this distribution's natural parameters."""
        return self.log_partition_fn(self._natural)

    def log_prob(self, theta: torch.Tensor) -> torch.Tensor:
        """:math:`\\log q(\\theta) = \\log h(\\theta) + \\langle\\lambda, T(\\theta)\\rangle - A(\\lambda)`."""
        stats = self.sufficient_statistics(theta)
        inner = 0.0
        for lam, t in zip(self._natural, stats):
            dims = tuple(range(-lam.ndim, 0)) if lam.ndim else ()
            inner = inner + ((lam * t).sum(dim=dims) if dims else lam * t)
        return self.log_base_measure(theta) + inner - self.log_partition()

    def fisher(self) -> torch.Tensor:
        """:math:`F(\\lambda) = \\nabla^2 A(\\lambda)` over the flattened natural parameters.

        The default differentiates :meth:`log_partition_fn` twice with autograd; families with a
        closed form override it.
        """
        flat = flatten_params(self._natural)
        template = self._natural

        def log_partition_of_flat(vector: torch.Tensor) -> torch.Tensor:
            return self.log_partition_fn(unflatten_params(vector, template))

        return torch.autograd.functional.hessian(log_partition_of_flat, flat)

    def kl_divergence(self, other: "ExponentialFamily") -> torch.Tensor:
        """:math:`\\mathrm{KL}(q \\,\\|\\, p)` as the Bregman divergence of :math:`A`:

        .. math::

            \\mathrm{KL}(q_{\\lambda} \\| q_{\\lambda'}) = A(\\lambda') - A(\\lambda)
            - \\langle \\lambda' - \\lambda, \\mu \\rangle .
        """
        self._check_compatible("other", other)
        mu = self.expectation_params
        inner = sum(((lo - ls) * m).sum() for lo, ls, m in zip(other._natural, self._natural, mu))
        return other.log_partition() - self.log_partition() - inner

    def entropy_gradient_expectation(self) -> NamedTuple:
        """:math:`\\nabla_\\mu \\mathcal{H}(q)`, the entropy term of the rule.

        For a constant base measure :math:`\\mathcal{H} = A(\\lambda) - \\langle\\lambda,\\mu\\rangle`,
        and :math:`\\nabla_\\mu \\mathcal{H} = -\\lambda`, which is what turns the natural-gradient step
        into :math:`\\lambda \\leftarrow (1-\\rho)\\lambda - \\rho\\nabla_\\mu \\mathbb{E}_q[\\bar\\ell]`.
        Families with a non-constant base measure override this.
        """
        return self.ExpectationParams(*(-lam for lam in self._natural))

    def _check_compatible(self, name: str, other: "ExponentialFamily") -> None:
        if type(other) is not type(self):
            raise ValueError(f"{name} must be a {type(self).__name__}; got {type(other).__name__}")
        for field, a, b in zip(self.NaturalParams._fields, self._natural, other._natural):
            check_same_shape(f"{name}.{field}", b, f"self.{field}", a)

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={tuple(v.shape)}" for k, v in zip(self.NaturalParams._fields, self._natural))
        return f"{type(self).__name__}({fields}, dtype={self.dtype})"
