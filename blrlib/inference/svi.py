r"""Stochastic variational inference (SVI; Hoffman, Blei, Wang & Paisley, 2013) as the Bayesian learning rule.

The candidate is VMP's mean-field product, split into *local* blocks (one per data point, here the
responsibilities :math:`q(z_n)`) and *global* blocks (here the mixture weights and the components). One
SVI step on a minibatch :math:`B` of the :math:`N` data points is two rule steps
(:func:`blrlib.rule.blr_step` through :func:`blrlib.inference.vmp.vmp_sweep`):

1. **local**, :math:`\rho = 1`: the minibatch's responsibilities from the current global blocks (exact,
   as in VMP);
2. **global**, :math:`\rho_t = (\tau_0 + t)^{-\kappa}`: the rule's step with the minibatch estimate of
   :math:`\nabla_\mu\mathbb{E}_q[\bar\ell]`, in which the data term is scaled by :math:`N/|B|`. For a
   conditionally conjugate model that gradient is minus the natural parameter :math:`\hat\lambda` of the
   "intermediate" global posterior of Hoffman et al. (the posterior if the minibatch were replicated
   :math:`N/|B|` times), so the step is their
   :math:`\lambda \leftarrow (1-\rho_t)\lambda + \rho_t\hat\lambda`.

The step index :math:`t` starts at 1, so the first step size is :math:`(\tau_0 + 1)^{-\kappa}` (the
convention of scikit-learn's online LDA).

API: :func:`step_size`, :func:`svi_step`, :func:`run_svi` (returns an :class:`SVIHistory`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from ..families import Categorical, MeanField
from .vmp import MixturePrior, mixture_elbo, mixture_expected_loss, vmp_sweep

__all__ = ["step_size", "svi_step", "SVIHistory", "run_svi"]


def _invalid(name: str, value: Any, must: str) -> ValueError:
    return ValueError(f"Invalid {name}: {value} (must be {must})")


def step_size(t: int, tau0: float = 1.0, kappa: float = 0.7) -> float:
    r""":math:`\rho_t = (\tau_0 + t)^{-\kappa}`, with :math:`t \ge 1`, :math:`\tau_0 \ge 0` and
    :math:`\kappa\in(0.5, 1]` (the Robbins–Monro conditions)."""
    if isinstance(t, bool) or not isinstance(t, int) or t < 1:
        raise _invalid("t", t, "an integer >= 1")
    if not float(tau0) >= 0:
        raise _invalid("tau0", tau0, ">= 0")
    if not 0.5 < float(kappa) <= 1.0:
        raise _invalid("kappa", kappa, "in (0.5, 1]")
    return float((float(tau0) + t) ** (-float(kappa)))


def svi_step(q_global: MeanField, X_batch: Any, num_data: int, prior: MixturePrior, rho: float) -> MeanField:
    r"""One SVI step for the Bayesian Gaussian mixture on the minibatch ``X_batch``.

    ``q_global`` holds the blocks ``"weights"`` and ``"components"``. The local step sets the minibatch's
    responsibilities (``rho = 1``); the global step is
    :math:`\lambda_g \leftarrow (1-\rho)\lambda_g - \rho\nabla_{\mu_g}\mathbb{E}_q[\bar\ell_B]` with
    :math:`\bar\ell_B` = (:math:`N/|B|`) × the minibatch's data loss + the prior's. Returns the new global
    blocks."""
    X_batch = torch.as_tensor(X_batch)
    if not isinstance(q_global, MeanField) or set(q_global.names) != {"weights", "components"}:
        raise _invalid("q_global", repr(q_global), 'a MeanField with blocks "weights" and "components"')
    if X_batch.ndim != 2 or X_batch.shape[0] < 1:
        raise _invalid("X_batch shape", tuple(X_batch.shape), "(B, d) with B >= 1")
    if isinstance(num_data, bool) or not isinstance(num_data, int) or num_data < X_batch.shape[0]:
        raise _invalid("num_data", num_data, f"an integer >= the batch size {X_batch.shape[0]}")
    K = q_global["weights"].concentration.shape[-1]
    z = Categorical.from_logits(torch.zeros(X_batch.shape[0], K, dtype=X_batch.dtype, device=X_batch.device))
    q = MeanField(z=z, weights=q_global["weights"], components=q_global["components"])
    q = vmp_sweep(q, mixture_expected_loss(X_batch, prior), 1.0, ["z"])
    scaled = mixture_expected_loss(X_batch, prior, data_weight=num_data / X_batch.shape[0])
    q = vmp_sweep(q, scaled, rho, ["weights", "components"])
    return MeanField(weights=q["weights"], components=q["components"])


class SVIHistory(NamedTuple):
    """What :func:`run_svi` returns: the final global blocks, the step sizes used, and the full-data ELBO
    (with optimal responsibilities) recorded every ``elbo_every`` steps, with the step indices."""

    q_global: MeanField
    step_sizes: list
    elbo_steps: list
    elbos: list


def full_data_elbo(q_global: MeanField, X: Any, prior: MixturePrior) -> torch.Tensor:
    r"""The ELBO on the whole data set with the responsibilities set optimally (one :math:`\rho = 1` step)
    for the given global blocks."""
    X = torch.as_tensor(X)
    K = q_global["weights"].concentration.shape[-1]
    z = Categorical.from_logits(torch.zeros(X.shape[0], K, dtype=X.dtype, device=X.device))
    q = MeanField(z=z, weights=q_global["weights"], components=q_global["components"])
    q = vmp_sweep(q, mixture_expected_loss(X, prior), 1.0, ["z"])
    return mixture_elbo(q, X, prior)


__all__.append("full_data_elbo")


def run_svi(
    q_global: MeanField,
    X: Any,
    prior: MixturePrior,
    batch_size: int,
    num_epochs: int,
    *,
    tau0: float = 1.0,
    kappa: float = 0.7,
    generator: torch.Generator | None = None,
    elbo_every: int = 0,
) -> SVIHistory:
    """SVI over ``num_epochs`` passes, each over a random permutation of ``X`` cut into minibatches of
    ``batch_size`` (the last one may be smaller). ``elbo_every > 0`` records :func:`full_data_elbo`
    after every ``elbo_every`` steps (and at the start)."""
    X = torch.as_tensor(X)
    N = X.shape[0]
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= N:
        raise _invalid("batch_size", batch_size, f"an integer in [1, {N}]")
    if isinstance(num_epochs, bool) or not isinstance(num_epochs, int) or num_epochs < 0:
        raise _invalid("num_epochs", num_epochs, "an integer >= 0")
    if isinstance(elbo_every, bool) or not isinstance(elbo_every, int) or elbo_every < 0:
        raise _invalid("elbo_every", elbo_every, "an integer >= 0")
    step_sizes, elbo_steps, elbos = [], [], []
    if elbo_every:
        elbo_steps.append(0)
        elbos.append(float(full_data_elbo(q_global, X, prior)))
    t = 0
    for _ in range(num_epochs):
        order = torch.randperm(N, generator=generator, device="cpu").to(X.device)
        for start in range(0, N, batch_size):
            t += 1
            rho = step_size(t, tau0, kappa)
            q_global = svi_step(q_global, X[order[start : start + batch_size]], N, prior, rho)
            step_sizes.append(rho)
            if elbo_every and t % elbo_every == 0:
                elbo_steps.append(t)
                elbos.append(float(full_data_elbo(q_global, X, prior)))
    return SVIHistory(q_global, step_sizes, elbo_steps, elbos)
