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

Batches. A family may hold a batch of independent members (time steps, mixture components, the
latent variable of each data point). Its class data ``event_ndims`` says how many trailing
dimensions of each natural-parameter block belong to one member; the leading dimensions are
``batch_shape``. Then :meth:`log_partition`, :meth:`entropy`, :meth:`kl_divergence` and
:meth:`log_prob` return one value per member (shape ``batch_shape``, or ``(*sample, *batch_shape)``
for ``log_prob``), :meth:`fisher` returns one matrix per member (``(*batch_shape, P, P)``), and the
rule, which is element-wise in :math:`\lambda`, updates every member at once. ``event_ndims = None``
(:class:`FixedCovarianceGaussian`, :class:`Bernoulli`) means that the whole tensor is one member and
``batch_shape == ()``.

What the estimators need is class data too: ``hessian_kind`` (``"full"``, ``"diagonal"`` or
``"none"``: which expected Hessian :meth:`gradient_wrt_expectation` takes) and ``reparameterizable``
(whether Bonnet's and Price's theorems apply, i.e. the family is a Gaussian).

Public API (every family): ``from_natural``, ``from_expectation``, ``natural_params``,
``expectation_params``, ``batch_shape``, ``log_partition(natural=None)``, ``sufficient_statistics``,
``log_base_measure``, ``log_prob``, ``sample``, ``entropy``, ``kl_divergence``, ``fisher``,
``entropy_gradient_expectation``, ``gradient_wrt_expectation``.
"""

from __future__ import annotations

import abc
from typing import Any, NamedTuple, Sequence

import torch
from torch.func import jacrev, vmap

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
    #: trailing dimensions of each natural block that make up one member (``None``: the whole tensor)
    event_ndims: tuple[int, ...] | None = None
    #: the expected Hessian that :meth:`gradient_wrt_expectation` takes: "full", "diagonal" or "none"
    hessian_kind: str = "none"
    #: whether samples are a differentiable function of Gaussian noise (Bonnet/Price apply)
    reparameterizable: bool = False

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

    @property
    def batch_shape(self) -> torch.Size:
        """The shape of the batch of independent members (``()`` for a single member)."""
        if self.event_ndims is None:
            return torch.Size(())
        lam = self._natural[0]
        return lam.shape[: lam.ndim - self.event_ndims[0]]

    def _event_dims(self, block: int, ndim: int | None = None) -> tuple[int, ...]:
        """The (negative) dimensions of natural block ``block`` that one member spans."""
        k = self._natural[block].ndim if self.event_ndims is None else self.event_ndims[block]
        return tuple(range(-k, 0))

    def _inner(self, lams: Sequence[torch.Tensor], stats: Sequence[torch.Tensor]) -> torch.Tensor:
        """:math:`\\langle\\lambda, T\\rangle` per member (summed over each block's event dimensions)."""
        inner = 0.0
        for k, (lam, t) in enumerate(zip(lams, stats)):
            dims = self._event_dims(k)
            inner = inner + ((lam * t).sum(dim=dims) if dims else lam * t)
        return inner

    # ------------------------------------------------------------------ to implement
    @abc.abstractmethod
    def _validate_natural(self, natural: NamedTuple) -> NamedTuple:
        """Check that ``natural`` lies in the natural parameter space; return (cloned) tensors."""

    @staticmethod
    @abc.abstractmethod
    def log_partition_fn(natural: NamedTuple) -> torch.Tensor:
        """:math:`A(\\lambda)` as a differentiable function of the natural parameters (per member)."""

    @abc.abstractmethod
    def _expectation_from_natural(self, natural: NamedTuple) -> NamedTuple:
        """Closed-form :math:`\\mu(\\lambda)`."""

    @abc.abstractmethod
    def sufficient_statistics(self, theta: Any) -> NamedTuple:
        """:math:`T(\\theta)`, structured like the natural parameters; leading sample dimensions allowed."""

    @abc.abstractmethod
    def log_base_measure(self, theta: Any) -> torch.Tensor:
        """:math:`\\log h(\\theta)`."""

    @abc.abstractmethod
    def sample(self, num_samples: int | None = None, generator: torch.Generator | None = None) -> Any:
        """Draw :math:`\\theta \\sim q`; with ``num_samples`` the samples stack along dimension 0."""

    @abc.abstractmethod
    def entropy(self) -> torch.Tensor:
        """:math:`\\mathcal{H}(q) = -\\mathbb{E}_q[\\log q(\\theta)]`."""

    # ------------------------------------------------------------------ generic parts
    def log_partition(self, natural: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        """:math:`A(\\lambda)`, per member, at ``natural`` (default: this distribution's :math:`\\lambda`).

        An ordinary method: ``q.log_partition(lam)`` is differentiable in ``lam`` (use it with
        autograd to get :math:`\\mu = \\nabla A` and :math:`F = \\nabla^2 A`)."""
        if natural is None:
            return self.log_partition_fn(self._natural)
        return self.log_partition_fn(self.NaturalParams(*natural))

    def log_prob(self, theta: Any) -> torch.Tensor:
        """:math:`\\log q(\\theta) = \\log h(\\theta) + \\langle\\lambda, T(\\theta)\\rangle - A(\\lambda)`."""
        stats = self.sufficient_statistics(theta)
        return self.log_base_measure(theta) + self._inner(self._natural, stats) - self.log_partition()

    def fisher(self) -> torch.Tensor:
        """:math:`F(\\lambda) = \\nabla^2 A(\\lambda)` over the flattened natural parameters of a member.

        Shape ``(P, P)`` for a single member, ``(*batch_shape, P, P)`` for a batch, where ``P`` is
        the number of natural parameters of one member (blocks flattened in order). The default
        differentiates :meth:`log_partition` twice with autograd; families with a closed form
        override it.
        """
        template = self._natural
        batch = self.batch_shape
        if len(batch) == 0:
            flat = flatten_params(template)

            def log_partition_of_flat(vector: torch.Tensor) -> torch.Tensor:
                return self.log_partition_fn(unflatten_params(vector, template)).sum()

            return torch.autograd.functional.hessian(log_partition_of_flat, flat)
        members = batch.numel()
        event_shapes = [t.shape[len(batch) :] for t in template]
        sizes = [int(torch.Size(e).numel()) for e in event_shapes]
        flat = torch.cat([t.reshape(members, n) for t, n in zip(template, sizes)], dim=1)

        def log_partition_of_member(row: torch.Tensor) -> torch.Tensor:
            blocks = torch.split(row, sizes)
            return self.log_partition_fn(self.NaturalParams(*(b.reshape(e) for b, e in zip(blocks, event_shapes))))

        # members are independent: one P x P Hessian per member, vectorised over the batch
        per_member = vmap(jacrev(jacrev(log_partition_of_member)))(flat)
        return per_member.reshape(*batch, flat.shape[1], flat.shape[1])

    def kl_divergence(self, other: "ExponentialFamily") -> torch.Tensor:
        """:math:`\\mathrm{KL}(q \\,\\|\\, p)` per member, as the Bregman divergence of :math:`A`:

        .. math::

            \\mathrm{KL}(q_{\\lambda} \\| q_{\\lambda'}) = A(\\lambda') - A(\\lambda)
            - \\langle \\lambda' - \\lambda, \\mu \\rangle .
        """
        self._check_compatible("other", other)
        mu = self.expectation_params
        diff = [lo - ls for lo, ls in zip(other._natural, self._natural)]
        return other.log_partition() - self.log_partition() - self._inner(diff, mu)

    def entropy_gradient_expectation(self) -> NamedTuple:
        """:math:`\\nabla_\\mu \\mathcal{H}(q)`, the entropy term of the rule.

        For a constant base measure :math:`\\mathcal{H} = A(\\lambda) - \\langle\\lambda,\\mu\\rangle`,
        and :math:`\\nabla_\\mu \\mathcal{H} = -\\lambda`, which is what turns the natural-gradient step
        into :math:`\\lambda \\leftarrow (1-\\rho)\\lambda - \\rho\\nabla_\\mu \\mathbb{E}_q[\\bar\\ell]`.
        Families with a non-constant base measure override this.
        """
        return self.ExpectationParams(*(-lam for lam in self._natural))

    def gradient_wrt_expectation(self, expected_gradient: Any, expected_hessian: Any = None) -> NamedTuple:
        """Map expected derivatives of a loss to :math:`\\nabla_\\mu\\mathbb{E}_q[\\ell]` (the chain rule
        the estimators use). Families without such a map compute :math:`\\nabla_\\mu\\mathbb{E}_q[\\ell]`
        directly (for example from the coefficients of :math:`T` in a conjugate loss)."""
        raise NotImplementedError(
            f"{type(self).__name__} has no map from expected derivatives to the expectation gradient; "
            "pass grad_expectation to blr_step directly"
        )

    def _check_compatible(self, name: str, other: "ExponentialFamily") -> None:
        if type(other) is not type(self):
            raise ValueError(f"{name} must be a {type(self).__name__}; got {type(other).__name__}")
        for field, a, b in zip(self.NaturalParams._fields, self._natural, other._natural):
            check_same_shape(f"{name}.{field}", b, f"self.{field}", a)

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={tuple(v.shape)}" for k, v in zip(self.NaturalParams._fields, self._natural))
        return f"{type(self).__name__}({fields}, dtype={self.dtype})"
