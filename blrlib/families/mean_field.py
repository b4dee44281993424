r"""The mean-field product family :math:`q(\theta) = \prod_{j} q_j(\theta_j)`.

Each factor :math:`q_j` is an exponential family with natural parameters :math:`\lambda_j`; the product is
an exponential family whose natural parameters are the concatenation :math:`(\lambda_1, \dots, \lambda_k)`,
whose expectation parameters are :math:`(\mu_1, \dots, \mu_k)` and whose Fisher is block-diagonal,
:math:`F = \mathrm{blockdiag}(F_1, \dots, F_k)`. The natural gradient therefore splits into blocks, and
the rule is one rule per factor,

.. math::

    \lambda_j \leftarrow (1-\rho_j)\,\lambda_j - \rho_j\,\nabla_{\mu_j}\mathbb{E}_q[\bar\ell(\theta)],
    \qquad j = 1, \dots, k,

where the expectation is over *all* factors (the other blocks enter through their current
:math:`\mu`). The entropy is the sum of the factors' entropies, so each block gets its own entropy
term. With :math:`\rho_j = 1` on a conditionally conjugate model this is variational message passing
(coordinate ascent VI); :math:`\rho = 1` on a latent block and the delta method on a parameter block
is EM; a stochastic :math:`\nabla_{\mu_j}` with a decaying :math:`\rho_j` on the global block is SVI.
:func:`blrlib.rule.blr_step` on a :class:`MeanField` takes one gradient per updated block (a mapping)
and one :math:`\rho` or a mapping of them; blocks without a gradient are left as they are.
:func:`blrlib.rule.mean_field_sweep` updates the blocks one after the other, each at the latest
:math:`q` (VMP's schedule).

API: ``MeanField({"z": q_z, "theta": q_theta})`` (or keyword arguments ``MeanField(z=q_z, theta=q_theta)``),
``q["z"]``, ``q.names``, ``q.factors`` (a copy of the mapping), ``q.replace(z=new_q_z)``,
``natural_params`` / ``expectation_params`` / ``entropy_gradient_expectation()`` (mappings by name),
``entropy()``, ``kl_divergence(other)`` (sums over factors and their batch members), ``sample`` (a
mapping of draws), ``log_prob(theta)`` for a mapping of draws (summed over factors and batch members).
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping

import torch

from .base import ExponentialFamily

__all__ = ["MeanField"]


class MeanField:
    r""":math:`q(\theta) = \prod_j q_j(\theta_j)`, factors named by strings (insertion order is kept)."""

    def __init__(self, factors: Mapping[str, ExponentialFamily] | None = None, **named: ExponentialFamily):
        merged: dict[str, ExponentialFamily] = {}
        if factors is not None:
            if not isinstance(factors, Mapping):
                raise ValueError(f"Invalid factors: {type(factors).__name__} (must be a mapping name -> family)")
            merged.update(factors)
        for name, factor in named.items():
            if name in merged:
                raise ValueError(f"Invalid factors: {name!r} given twice (must be unique names)")
            merged[name] = factor
        if not merged:
            raise ValueError("Invalid factors: none (must be at least one factor)")
        for name, factor in merged.items():
            if not isinstance(name, str):
                raise ValueError(f"Invalid factor name: {name!r} (must be a string)")
            if not isinstance(factor, ExponentialFamily):
                raise ValueError(f"Invalid factor {name!r}: {type(factor).__name__} (must be an ExponentialFamily)")
        self._factors = merged

    # ------------------------------------------------------------------ access
    @property
    def factors(self) -> dict[str, ExponentialFamily]:
        """The factors by name (a new dict; the factors themselves are immutable)."""
        return dict(self._factors)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._factors)

    def __getitem__(self, name: str) -> ExponentialFamily:
        try:
            return self._factors[name]
        except KeyError:
            raise KeyError(f"no factor named {name!r}; factors are {self.names}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._factors)

    def __len__(self) -> int:
        return len(self._factors)

    def __contains__(self, name: object) -> bool:
        return name in self._factors

    def replace(self, factors: Mapping[str, ExponentialFamily] | None = None, **named: ExponentialFamily) -> "MeanField":
        """A new product with some factors replaced (by name); the others are shared."""
        new = dict(self._factors)
        for name, factor in {**(factors or {}), **named}.items():
            if name not in new:
                raise ValueError(f"Invalid factor name: {name!r} (must be one of {self.names})")
            new[name] = factor
        return MeanField(new)

    # ------------------------------------------------------------------ parameters
    @property
    def natural_params(self) -> dict[str, Any]:
        """:math:`(\\lambda_1, \\dots, \\lambda_k)` by name."""
        return {n: f.natural_params for n, f in self._factors.items()}

    @property
    def expectation_params(self) -> dict[str, Any]:
        """:math:`(\\mu_1, \\dots, \\mu_k)` by name."""
        return {n: f.expectation_params for n, f in self._factors.items()}

    def entropy_gradient_expectation(self) -> dict[str, Any]:
        """:math:`\\nabla_{\\mu_j}\\mathcal{H}(q) = \\nabla_{\\mu_j}\\mathcal{H}(q_j)`, by name."""
        return {n: f.entropy_gradient_expectation() for n, f in self._factors.items()}

    # ------------------------------------------------------------------ functionals
    def entropy(self) -> torch.Tensor:
        """:math:`\\mathcal{H}(q) = \\sum_j \\mathcal{H}(q_j)` (summed over each factor's batch members)."""
        return sum(f.entropy().sum() for f in self._factors.values())

    def kl_divergence(self, other: "MeanField") -> torch.Tensor:
        """:math:`\\mathrm{KL}(q\\|p) = \\sum_j \\mathrm{KL}(q_j\\|p_j)` (factors matched by name)."""
        if not isinstance(other, MeanField) or other.names != self.names:
            got = other.names if isinstance(other, MeanField) else type(other).__name__
            raise ValueError(f"Invalid other: {got} (must be a MeanField with factors {self.names})")
        return sum(f.kl_divergence(other[n]).sum() for n, f in self._factors.items())

    def sample(self, num_samples: int | None = None, generator: torch.Generator | None = None) -> dict[str, Any]:
        """Independent draws from each factor, by name (factors drawn in order from one generator)."""
        return {n: f.sample(num_samples, generator=generator) for n, f in self._factors.items()}

    def log_prob(self, theta: Mapping[str, Any]) -> torch.Tensor:
        """:math:`\\log q(\\theta) = \\sum_j \\log q_j(\\theta_j)`, summed over each factor's batch members;
        leading sample dimensions are kept."""
        missing = [n for n in self._factors if n not in theta]
        if missing:
            raise ValueError(f"Invalid theta: missing {missing} (must have a draw for every factor)")
        total = 0.0
        for name, factor in self._factors.items():
            value = factor.log_prob(theta[name])
            k = len(factor.batch_shape)
            total = total + (value.sum(dim=tuple(range(-k, 0))) if k else value)
        return total

    def __repr__(self) -> str:
        inner = ", ".join(f"{n}={f!r}" for n, f in self._factors.items())
        return f"MeanField({inner})"
