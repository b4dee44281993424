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

For latent Dirichlet allocation, :func:`lda_local_step` is the local iterations and :func:`lda_svi_step`
one SVI step, with :func:`asymptotic_digamma` to match scikit-learn's online LDA.

API: :func:`step_size`, :func:`svi_step`, :func:`full_data_elbo`, :func:`run_svi` (returns an
:class:`SVIHistory`), :func:`asymptotic_digamma`, :class:`LDALocal`, :func:`lda_local_step`,
:func:`lda_svi_step`. Scalar arguments are checked with :mod:`blrlib._validation`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from .._validation import check_int, check_real, check_rho
from ..families import Categorical, MeanField
from .vmp import MixturePrior, _check_mixture_data, _invalid, mixture_elbo, mixture_expected_loss, vmp_sweep

__all__ = [
    "step_size",
    "svi_step",
    "SVIHistory",
    "full_data_elbo",
    "run_svi",
    "asymptotic_digamma",
    "LDALocal",
    "lda_local_step",
    "lda_svi_step",
]


def step_size(t: int, tau0: float = 1.0, kappa: float = 0.7) -> float:
    r""":math:`\rho_t = (\tau_0 + t)^{-\kappa}`, with :math:`t \ge 1`, :math:`\tau_0 \ge 0` and
    :math:`\kappa\in(0.5, 1]` (the Robbins–Monro conditions)."""
    t = check_int("t", t, low=1)
    tau0 = check_real("tau0", tau0, low=0.0)
    kappa = check_real("kappa", kappa, low=0.5, high=1.0, low_open=True)
    return float((tau0 + t) ** (-kappa))


def svi_step(q_global: MeanField, X_batch: Any, num_data: int, prior: MixturePrior, rho: float) -> MeanField:
    r"""One SVI step for the Bayesian Gaussian mixture on the minibatch ``X_batch``.

    ``q_global`` holds the blocks ``"weights"`` and ``"components"``. The local step sets the minibatch's
    responsibilities (``rho = 1``); the global step is
    :math:`\lambda_g \leftarrow (1-\rho)\lambda_g - \rho\nabla_{\mu_g}\mathbb{E}_q[\bar\ell_B]` with
    :math:`\bar\ell_B` = (:math:`N/|B|`) × the minibatch's data loss + the prior's. Returns the new global
    blocks."""
    X_batch = _check_mixture_data(X_batch, "X_batch")
    if not isinstance(q_global, MeanField) or set(q_global.names) != {"weights", "components"}:
        raise _invalid("q_global", repr(q_global), 'a MeanField with blocks "weights" and "components"')
    num_data = check_int("num_data", num_data, low=X_batch.shape[0])
    rho = check_rho(rho)
    return _svi_step(q_global, X_batch, num_data, prior, rho)


def _svi_step(q_global, X_batch, num_data, prior, rho):
    # the two rule steps of svi_step, arguments already checked; the prior's families are cached in vmp
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
    X = _check_mixture_data(X)
    K = q_global["weights"].concentration.shape[-1]
    z = Categorical.from_logits(torch.zeros(X.shape[0], K, dtype=X.dtype, device=X.device))
    q = MeanField(z=z, weights=q_global["weights"], components=q_global["components"])
    q = vmp_sweep(q, mixture_expected_loss(X, prior), 1.0, ["z"])
    return mixture_elbo(q, X, prior)



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
    X = _check_mixture_data(X)
    N = X.shape[0]
    batch_size = check_int("batch_size", batch_size, low=1)
    if batch_size > N:
        raise _invalid("batch_size", batch_size, f"an integer in [1, {N}]")
    num_epochs = check_int("num_epochs", num_epochs, low=0)
    elbo_every = check_int("elbo_every", elbo_every, low=0)
    step_size(1, tau0, kappa)  # checks tau0 and kappa before the first step
    if not isinstance(q_global, MeanField) or set(q_global.names) != {"weights", "components"}:
        raise _invalid("q_global", repr(q_global), 'a MeanField with blocks "weights" and "components"')
    prior.check()
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
            q_global = _svi_step(q_global, X[order[start : start + batch_size]], N, prior, rho)
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
    doc_topic_prior = check_real("doc_topic_prior", doc_topic_prior, low=0.0, low_open=True)
    num_iterations = check_int("num_iterations", num_iterations, low=1)
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
    num_docs = check_int("num_docs", num_docs, low=counts.shape[0])
    topic_word_prior = check_real("topic_word_prior", topic_word_prior, low=0.0, low_open=True)
    rho = check_rho(rho)
    local = lda_local_step(topics, counts, doc_topic_prior, doc_topics_start, num_iterations, digamma=digamma)
    stats = torch.einsum("dw,dwk->kw", counts, local.assignments.probs)
    message = -(float(topic_word_prior) - 1.0) - (num_docs / counts.shape[0]) * stats
    return blr_step(topics, (message,), rho), local

