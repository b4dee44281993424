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


# ====================================================================== latent Dirichlet allocation
_EULER = 0.577215664901532860606512090082402431


def asymptotic_digamma(x: torch.Tensor) -> torch.Tensor:
    r"""The digamma function as scikit-learn's compiled LDA code computes it (Bernardo, 1976, AS 103).

    For :math:`x \le 10^{-6}`, :math:`\psi(x) \approx -\gamma - 1/x`; otherwise the recurrence
    :math:`\psi(x) = \psi(x+1) - 1/x` until :math:`x \ge 6`, then
    :math:`\psi(x) \approx \log x - \tfrac1{2x} - \tfrac1{12x^2} + \tfrac1{120x^4} - \tfrac1{252x^6}`.
    It differs from :func:`torch.digamma` by up to about :math:`10^{-8}`; matching it is what lets the rule
    agree with ``sklearn.decomposition.LatentDirichletAllocation`` to round-off."""
    x = torch.as_tensor(x)
    if not x.is_floating_point():
        raise _invalid("x dtype", x.dtype, "floating")
    small = x <= 1e-6
    y = torch.where(small, torch.ones_like(x), x)
    result = torch.zeros_like(x)
    for _ in range(7):  # x > 1e-6 needs at most 6 steps to reach 6
        below = y < 6
        if not bool(below.any()):
            break
        result = torch.where(below, result - 1.0 / y, result)
        y = torch.where(below, y + 1.0, y)
    r = 1.0 / y
    result = result + torch.log(y) - 0.5 * r
    r = r * r
    result = result - r * ((1.0 / 12.0) - r * ((1.0 / 120.0) - r * (1.0 / 252.0)))
    return torch.where(small, -_EULER - 1.0 / x, result)


def _mean_log(concentration: torch.Tensor, digamma) -> torch.Tensor:
    r""":math:`\mathbb{E}\log\theta = \psi(\alpha) - \psi(\sum\alpha)` of Dirichlet members (last dimension)."""
    return digamma(concentration) - digamma(concentration.sum(-1, keepdim=True))


class LDALocal(NamedTuple):
    """The local blocks of one minibatch after :func:`lda_local_step`: the documents' topic proportions
    (a :class:`~blrlib.families.Dirichlet` with one member per document) and the topic assignments (a
    :class:`~blrlib.families.Categorical` with one member per (document, word) pair)."""

    doc_topics: Any
    assignments: Categorical


def lda_local_step(
    topics,
    counts: Any,
    doc_topic_prior: float,
    doc_topics_start: Any,
    num_iterations: int = 100,
    *,
    digamma=torch.digamma,
) -> LDALocal:
    r"""The local VMP iterations of LDA for a minibatch, each block with the rule's :math:`\rho = 1` step.

    ``topics`` is a :class:`~blrlib.families.Dirichlet` with :math:`K` members over the :math:`V` words
    (concentration :math:`\lambda_{kw}`), ``counts`` the (B, V) word counts :math:`n_{dw}`. Starting from
    :math:`q(\theta_d) = \mathrm{Dir}(\gamma^{(0)}_d)` (``doc_topics_start``, (B, K)), each iteration is

    1. assignments: per-category losses :math:`\ell_{dwk} = -(\mathbb{E}\log\theta_{dk} + \mathbb{E}\log\beta_{kw})`,
       so the step gives :math:`\phi_{dwk}\propto \exp(\mathbb{E}\log\theta_{dk} + \mathbb{E}\log\beta_{kw})`;
    2. proportions: :math:`\nabla_\mu\mathbb{E}_q[\bar\ell] = -(\alpha - 1) - \sum_w n_{dw}\phi_{dw}`, so the step gives
       :math:`\gamma_d = \alpha + \sum_w n_{dw}\phi_{dw}`;

    and a last assignment step follows the last iteration (the :math:`\phi` the global step uses).
    ``digamma`` computes :math:`\mathbb{E}\log` of the Dirichlets (:func:`asymptotic_digamma` to match
    scikit-learn)."""
    from ..families import Dirichlet
    from ..rule import blr_step

    counts = torch.as_tensor(counts)
    gamma0 = torch.as_tensor(doc_topics_start, dtype=counts.dtype, device=counts.device)
    if counts.ndim != 2 or not bool((counts >= 0).all()):
        raise _invalid("counts", tuple(counts.shape), "non-negative (B, V) word counts")
    if not isinstance(topics, Dirichlet) or tuple(topics.concentration.shape) != (gamma0.shape[-1], counts.shape[1]):
        raise _invalid("topics", repr(topics), f"a Dirichlet with K members over {counts.shape[1]} words")
    if gamma0.shape != (counts.shape[0], topics.concentration.shape[0]):
        raise _invalid("doc_topics_start shape", tuple(gamma0.shape), f"({counts.shape[0]}, K)")
    if not float(doc_topic_prior) > 0:
        raise _invalid("doc_topic_prior", doc_topic_prior, "> 0")
    if isinstance(num_iterations, bool) or not isinstance(num_iterations, int) or num_iterations < 1:
        raise _invalid("num_iterations", num_iterations, "an integer >= 1")
    mean_log_beta = _mean_log(topics.concentration, digamma)  # (K, V)
    doc = Dirichlet.from_concentration(gamma0)
    B, V = counts.shape
    K = gamma0.shape[1]
    z = Categorical.from_logits(torch.zeros(B, V, K, dtype=counts.dtype, device=counts.device))

    def assignment_step(z, doc):
        losses = -(_mean_log(doc.concentration, digamma)[:, None, :] + mean_log_beta.T[None, :, :])
        return blr_step(z, z.gradient_from_category_losses(losses), 1.0)

    for _ in range(num_iterations):
        z = assignment_step(z, doc)
        message = -(float(doc_topic_prior) - 1.0) - torch.einsum("dw,dwk->dk", counts, z.probs)
        doc = blr_step(doc, (message,), 1.0)
    z = assignment_step(z, doc)
    return LDALocal(doc, z)


def lda_svi_step(
    topics,
    counts: Any,
    num_docs: int,
    doc_topic_prior: float,
    topic_word_prior: float,
    rho: float,
    doc_topics_start: Any,
    num_iterations: int = 100,
    *,
    digamma=torch.digamma,
):
    r"""One SVI step of LDA (Hoffman et al., 2013): :func:`lda_local_step`, then the global rule step

    .. math::

        \lambda \leftarrow (1-\rho)\lambda - \rho\nabla_\mu\mathbb{E}_q[\bar\ell_B],\qquad
        -\nabla_\mu\mathbb{E}_q[\bar\ell_B] = (\eta - 1) + \tfrac{D}{|B|}\sum_{d\in B} n_{dw}\phi_{dwk},

    on the topics' Dirichlet (:func:`blrlib.rule.blr_step`). Returns the new topics and the local blocks."""
    from ..rule import blr_step

    counts = torch.as_tensor(counts)
    if isinstance(num_docs, bool) or not isinstance(num_docs, int) or num_docs < counts.shape[0]:
        raise _invalid("num_docs", num_docs, f"an integer >= the batch size {counts.shape[0]}")
    if not float(topic_word_prior) > 0:
        raise _invalid("topic_word_prior", topic_word_prior, "> 0")
    local = lda_local_step(topics, counts, doc_topic_prior, doc_topics_start, num_iterations, digamma=digamma)
    stats = torch.einsum("dw,dwk->kw", counts, local.assignments.probs)
    message = -(float(topic_word_prior) - 1.0) - (num_docs / counts.shape[0]) * stats
    return blr_step(topics, (message,), rho), local


__all__ += ["asymptotic_digamma", "LDALocal", "lda_local_step", "lda_svi_step"]
