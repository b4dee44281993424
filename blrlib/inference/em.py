r"""Expectation–maximisation for a Gaussian mixture, as the Bayesian learning rule.

The model: :math:`p(x_n, z_n = k \mid \theta) = \pi_k\,\mathcal{N}(x_n \mid \mu_k, \Lambda_k^{-1})`, and the
loss :math:`\bar\ell(z, \theta) = -\sum_n\sum_k z_{nk}\log p(x_n, z_n = k\mid\theta)` (no prior). The candidate
is a mean-field product with two blocks,

.. math::

    q(z, \theta) = \Big[\prod_{n=1}^N q(z_n)\Big]\, q(\theta),\qquad
    q(z_n) = \mathrm{Categorical}(r_n),\qquad q(\theta) = \mathcal{N}(\theta\mid m, S^{-1}),

and each block takes the rule's step :math:`\lambda \leftarrow (1-\rho)\lambda - \rho\nabla_\mu\mathbb{E}_q[\bar\ell]`
(:func:`blrlib.rule.blr_step`), with the delta method :math:`\mathbb{E}_{q(\theta)}[g(\theta)]\approx g(m)` for
the parameters.

* **E-step** (:func:`e_step`): the latent block. :math:`\mathbb{E}_q[\bar\ell]` is linear in
  :math:`r_n`, with per-category losses :math:`\ell_{nk} = -\log p(x_n, k\mid m)`, so
  :math:`\nabla_\mu\mathbb{E}_q[\bar\ell] = (\ell_{nk} - \ell_{nK})_{k<K}` and :math:`\rho = 1` gives
  :math:`r_{nk}\propto p(x_n, k\mid m)`: the responsibilities, in one exact step. :math:`\rho < 1` averages
  the log-odds :math:`\log(r_{nk}/r_{nK})` over iterations (a *damped* E-step; neither Neal & Hinton's
  incremental EM, which is :math:`\rho = 1` on a subset of the latent block, nor Cappé & Moulines' online
  EM, which averages the expected statistics, i.e. the expectation parameters :math:`\mu`).
* **M-step** (:func:`m_step`): the parameter block. Under the delta method the step is
  :math:`S \leftarrow (1-\rho)S + \rho\nabla^2 Q(m)`, :math:`m \leftarrow m - \rho S^{-1}\nabla Q(m)`, a
  (damped) Newton step on :math:`Q(\theta) = \mathbb{E}_{q(z)}[\bar\ell(z, \theta)]`. One step is exact only
  where :math:`Q` is quadratic in the coordinates; EM's M-step is the step's **fixed point**
  :math:`\nabla Q(m) = 0`, which :func:`m_step` iterates to.

The coordinates of :math:`\theta` (:func:`pack`, :func:`unpack`): the log-odds
:math:`\alpha_k = \log(\pi_k/\pi_K)`, :math:`k < K`, then for each component its Gaussian natural
parameters :math:`(\Lambda_k\mu_k, \mathrm{vech}\,\Lambda_k)` (the lower triangle of :math:`\Lambda_k`,
row by row). In these coordinates :math:`Q` is a sum of log-partitions minus linear terms,
:math:`Q = N A_{\mathrm{cat}}(\alpha) - \langle N_{1:K-1}, \alpha\rangle + \sum_k [N_k A_{\mathcal N}(\eta_k) -
\langle\eta_k, \sum_n r_{nk}T(x_n)\rangle]`, so its Hessian is :math:`N F_{\mathrm{cat}}\oplus
\bigoplus_k N_k F_{\mathcal N}(\eta_k) \succ 0` everywhere: the delta-method precision :math:`S` is always
positive definite, and the fixed point is moment matching, :math:`\pi_k = N_k/N`,
:math:`\mathbb{E}_{\eta_k}[T(x)] = \sum_n r_{nk}T(x_n)/N_k`. For a fixed :math:`\Lambda_k`, :math:`Q` is
quadratic in :math:`\Lambda_k\mu_k`, so the means alone would be exact in one step; the weights and
precisions are not. A Newton step may overshoot out of the cone :math:`\Lambda_k\succ 0`; :func:`m_step`
then halves :math:`\rho` for that step (and says how often it did).

The product is a :class:`~blrlib.families.MeanField` with blocks ``"z"`` (a
:class:`~blrlib.families.Categorical` with one member per data point) and ``"theta"`` (a
:class:`~blrlib.families.FullGaussian`); both steps are :func:`blrlib.rule.blr_step` on it, one block at a time.

API: :class:`MixtureParameters` (weights, means, precisions), :func:`pack`, :func:`unpack`,
:func:`log_joint` (:math:`\log p(x_n, k\mid\theta)`, shape ``(N, K)``), :func:`log_likelihood`,
:func:`mixture_statistics` and :func:`expected_complete_loss` (:math:`Q`), :func:`initial_candidate`,
:func:`latent_message`, :func:`e_step`, :func:`m_step` (returns an :class:`MStepResult`), :func:`run_em`
(returns an :class:`EMHistory`). Scalar arguments are checked with :mod:`blrlib._validation`.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch

from .._validation import check_bool, check_int, check_real, check_rho
from ..estimators import expectation_gradient
from ..families import Categorical, FullGaussian, MeanField
from ..rule import blr_step

__all__ = [
    "MixtureParameters",
    "EMHistory",
    "MStepResult",
    "pack",
    "unpack",
    "log_joint",
    "log_likelihood",
    "MixtureStatistics",
    "mixture_statistics",
    "expected_complete_loss",
    "initial_candidate",
    "latent_message",
    "e_step",
    "m_step",
    "run_em",
]

_LOG_2PI = math.log(2.0 * math.pi)


def _invalid(name: str, value: Any, must: str) -> ValueError:
    # for non-scalar arguments (shapes, types); scalars go through blrlib._validation
    return ValueError(f"Invalid {name}: {value} (must be {must})")


def _check_data(X: Any) -> torch.Tensor:
    X = torch.as_tensor(X)
    if not X.is_floating_point() or X.ndim != 2 or X.shape[0] < 1 or X.shape[1] < 1:
        raise _invalid("X shape/dtype", f"{tuple(X.shape)} {X.dtype}", "a floating (N, d) tensor")
    if not bool(torch.isfinite(X).all()):
        raise _invalid("X", "non-finite entries", "finite")
    return X


class MixtureParameters(NamedTuple):
    """A Gaussian mixture: ``weights`` (K,), ``means`` (K, d), ``precisions`` (K, d, d)."""

    weights: torch.Tensor
    means: torch.Tensor
    precisions: torch.Tensor


def _tril(d: int, device=None) -> torch.Tensor:
    return torch.tril_indices(d, d, device=device)


def _num_coordinates(K: int, d: int) -> int:
    return K - 1 + K * (d + d * (d + 1) // 2)


def pack(params: MixtureParameters) -> torch.Tensor:
    r""":math:`\theta = (\alpha_{1:K-1}, [\Lambda_k\mu_k, \mathrm{vech}\,\Lambda_k]_{k=1}^K)`, a vector.

    Raises ``ValueError`` unless the weights are positive and sum to one and every precision is
    symmetric positive definite."""
    weights, means, precisions = (torch.as_tensor(p) for p in params)
    if weights.ndim != 1 or means.ndim != 2 or precisions.ndim != 3:
        raise _invalid("parameter shapes", (tuple(weights.shape), tuple(means.shape), tuple(precisions.shape)),
                       "(K,), (K, d), (K, d, d)")
    K, d = means.shape
    if weights.shape[0] != K or precisions.shape != (K, d, d) or K < 1:
        raise _invalid("parameter shapes", (tuple(weights.shape), tuple(means.shape), tuple(precisions.shape)),
                       "(K,), (K, d), (K, d, d)")
    if not bool((weights > 0).all()) or abs(float(weights.sum()) - 1.0) > 1e-10:
        raise _invalid("weights", weights.tolist(), "positive and summing to 1")
    if not torch.allclose(precisions, precisions.transpose(-1, -2)) or not bool(
        (torch.linalg.eigvalsh(precisions) > 0).all()
    ):
        raise _invalid("precisions", "not symmetric positive definite", "symmetric positive definite")
    alpha = torch.log(weights[:-1]) - torch.log(weights[-1])
    eta1 = (precisions @ means.unsqueeze(-1)).squeeze(-1)
    rows, cols = _tril(d, precisions.device)
    blocks = torch.cat([eta1, precisions[:, rows, cols]], dim=1)
    return torch.cat([alpha, blocks.reshape(-1)])


def _split(theta: torch.Tensor, K: int, d: int):
    """(alpha, eta1 (K, d), Lambda (K, d, d)) from the coordinate vector; differentiable."""
    if theta.ndim != 1 or theta.shape[0] != _num_coordinates(K, d):
        raise _invalid("theta shape", tuple(theta.shape), f"({_num_coordinates(K, d)},) for K={K}, d={d}")
    alpha = theta[: K - 1]
    blocks = theta[K - 1 :].reshape(K, d + d * (d + 1) // 2)
    eta1 = blocks[:, :d]
    rows, cols = _tril(d, theta.device)
    lower = theta.new_zeros(K, d, d).index_put((torch.arange(K, device=theta.device)[:, None], rows, cols),
                                               blocks[:, d:])
    precisions = lower + lower.transpose(1, 2) - torch.diag_embed(torch.diagonal(lower, dim1=1, dim2=2))
    return alpha, eta1, precisions


def unpack(theta: torch.Tensor, num_components: int, dim: int) -> MixtureParameters:
    """The inverse of :func:`pack`: weights, means and precisions from the coordinates."""
    alpha, eta1, precisions = _split(torch.as_tensor(theta), num_components, dim)
    logits = torch.cat([alpha, alpha.new_zeros(1)])
    means = torch.linalg.solve(precisions, eta1.unsqueeze(-1)).squeeze(-1)
    return MixtureParameters(torch.softmax(logits, 0), means, precisions)


def _precisions_positive_definite(theta: torch.Tensor, K: int, d: int) -> bool:
    _, _, precisions = _split(theta, K, d)
    return bool(torch.isfinite(precisions).all()) and bool((torch.linalg.eigvalsh(precisions) > 0).all())


def log_joint(X: torch.Tensor, theta: torch.Tensor, num_components: int) -> torch.Tensor:
    r"""The log joint, shape ``(N, K)``:
    :math:`\log p(x_n, z_n = k\mid\theta) = \log\pi_k + \langle\eta_k, T(x_n)\rangle - A_{\mathcal N}(\eta_k)`.

    With :math:`T(x) = (x, -\tfrac12 xx^\top)` paired with :math:`(\Lambda\mu, \Lambda)` and
    :math:`A_{\mathcal N}(\eta) = \tfrac12(\Lambda\mu)^\top\Lambda^{-1}(\Lambda\mu) - \tfrac12\log|\Lambda| +
    \tfrac d2\log 2\pi`. Differentiable in ``theta``."""
    K, d = num_components, X.shape[1]
    alpha, eta1, precisions = _split(theta, K, d)
    logits = torch.cat([alpha, alpha.new_zeros(1)])
    log_weights = logits - torch.logsumexp(logits, 0)
    solved = torch.linalg.solve(precisions, eta1.unsqueeze(-1)).squeeze(-1)
    log_partition = 0.5 * (eta1 * solved).sum(1) - 0.5 * torch.logdet(precisions) + 0.5 * d * _LOG_2PI
    quadratic = torch.einsum("ni,kij,nj->nk", X, precisions, X)
    return log_weights + X @ eta1.T - 0.5 * quadratic - log_partition


def log_likelihood(X: Any, params: MixtureParameters) -> torch.Tensor:
    r""":math:`\sum_n\log\sum_k\pi_k\mathcal{N}(x_n\mid\mu_k,\Lambda_k^{-1})`."""
    X = _check_data(X)
    theta = pack(params).to(X.dtype)
    return torch.logsumexp(log_joint(X, theta, params.means.shape[0]), dim=1).sum()


class MixtureStatistics(NamedTuple):
    r"""The expected sufficient statistics :math:`N_k = \sum_n r_{nk}`, :math:`\sum_n r_{nk}x_n` and
    :math:`\sum_n r_{nk}x_nx_n^\top`: all that :math:`Q` needs of the data."""

    counts: torch.Tensor
    sums: torch.Tensor
    outer_sums: torch.Tensor


def mixture_statistics(X: torch.Tensor, responsibilities: torch.Tensor) -> MixtureStatistics:
    """:class:`MixtureStatistics` of data ``X`` (N, d) under responsibilities (N, K)."""
    return MixtureStatistics(
        responsibilities.sum(0),
        responsibilities.T @ X,
        torch.einsum("nk,ni,nj->kij", responsibilities, X, X),
    )


def expected_complete_loss(stats: MixtureStatistics, theta: torch.Tensor) -> torch.Tensor:
    r"""The expected complete-data loss
    :math:`Q(\theta) = \mathbb{E}_{q(z)}[\bar\ell(z,\theta)] = -\sum_{n,k} r_{nk}\log p(x_n, k\mid\theta)`,
    from the statistics:

    .. math::

        Q = -\sum_k N_k\log\pi_k - \sum_k\Big[(\Lambda_k\mu_k)^\top\textstyle\sum_n r_{nk}x_n
        - \tfrac12\operatorname{tr}\big(\Lambda_k\sum_n r_{nk}x_nx_n^\top\big) - N_k A_{\mathcal N}(\eta_k)\Big].
    """
    K, d = stats.sums.shape
    alpha, eta1, precisions = _split(theta, K, d)
    logits = torch.cat([alpha, alpha.new_zeros(1)])
    log_weights = logits - torch.logsumexp(logits, 0)
    solved = torch.linalg.solve(precisions, eta1.unsqueeze(-1)).squeeze(-1)
    log_partition = 0.5 * (eta1 * solved).sum(1) - 0.5 * torch.logdet(precisions) + 0.5 * d * _LOG_2PI
    linear = (eta1 * stats.sums).sum() - 0.5 * (precisions * stats.outer_sums).sum()
    return -(stats.counts * log_weights).sum() - linear + (stats.counts * log_partition).sum()


def _check_blocks(q: MeanField, X: torch.Tensor) -> tuple[int, int]:
    if not isinstance(q, MeanField) or set(q.names) != {"z", "theta"}:
        raise _invalid("q", repr(q), 'a MeanField with blocks "z" (Categorical) and "theta" (FullGaussian)')
    q_z, q_theta = q["z"], q["theta"]
    if not isinstance(q_z, Categorical) or tuple(q_z.batch_shape) != (X.shape[0],):
        raise _invalid("q['z']", repr(q_z), f"a Categorical with batch shape ({X.shape[0]},)")
    K, d = q_z.num_categories, X.shape[1]
    if not isinstance(q_theta, FullGaussian) or q_theta.mean.shape != (_num_coordinates(K, d),):
        raise _invalid("q['theta']", repr(q_theta), f"a FullGaussian over {_num_coordinates(K, d)} coordinates")
    return K, d


def initial_candidate(X: Any, init: MixtureParameters) -> MeanField:
    r"""The product :math:`q(z)q(\theta)` that :func:`run_em` starts from: uniform responsibilities and
    :math:`q(\theta) = \mathcal{N}(\mathrm{pack}(\text{init}), I)` (the identity precision is discarded by
    the first M-step step with :math:`\rho = 1`)."""
    X = _check_data(X)
    theta0 = pack(MixtureParameters(*(torch.as_tensor(p, dtype=X.dtype, device=X.device) for p in init)))
    K = init[1].shape[0]
    q_theta = FullGaussian.from_mean_precision(theta0, torch.eye(theta0.numel(), dtype=X.dtype, device=X.device))
    q_z = Categorical.from_logits(torch.zeros(X.shape[0], K, dtype=X.dtype, device=X.device))
    return MeanField(z=q_z, theta=q_theta)


def latent_message(q: MeanField, X: Any) -> NamedTuple:
    r""":math:`\nabla_\mu\mathbb{E}_q[\bar\ell]` for the latent block, under the delta method for :math:`\theta`:
    :math:`(\ell_{nk} - \ell_{nK})_{k<K}` with :math:`\ell_{nk} = -\log p(x_n, k\mid m)`."""
    X = _check_data(X)
    K, _ = _check_blocks(q, X)
    with torch.no_grad():
        losses = -log_joint(X, q["theta"].mean, K)
    return q["z"].gradient_from_category_losses(losses)


def e_step(q: MeanField, X: Any, rho: float = 1.0) -> MeanField:
    r"""The rule's step on the latent block ``"z"``: ``blr_step(q, {"z": latent_message(q, X)}, rho)``.

    With ``rho = 1`` the block becomes the responsibilities
    :math:`r_{nk}\propto \pi_k\mathcal{N}(x_n\mid\mu_k,\Lambda_k^{-1})` at the mean of :math:`q(\theta)`,
    whatever it was; with ``rho < 1`` its log-odds move a fraction ``rho`` of the way there."""
    rho = check_rho(rho)
    return blr_step(q, {"z": latent_message(q, X)}, rho)


class MStepResult(NamedTuple):
    r"""What :func:`m_step` returns: the new product ``q``, the number of rule steps taken and how many
    of them had their step size halved to keep every :math:`\Lambda_k` positive definite."""

    q: MeanField
    num_steps: int
    num_halved: int


def m_step(
    q: MeanField,
    X: Any,
    rho: float = 1.0,
    *,
    tol: float = 1e-10,
    max_steps: int = 100,
    strict: bool = True,
) -> MStepResult:
    r"""The rule's steps on the parameter block ``"theta"``, iterated to the M-step's fixed point.

    Each step is ``blr_step(q, {"theta": expectation_gradient(Q, q["theta"], method="delta")}, rho)``:
    :math:`S \leftarrow (1-\rho)S + \rho\nabla^2Q(m)`, :math:`m \leftarrow m - \rho S^{-1}\nabla Q(m)`, with
    :math:`Q` built from the responsibilities of block ``"z"``. If a step would leave
    :math:`\Lambda_k\succ 0`, its :math:`\rho` is halved until it does not. Stops when
    :math:`\max|\Delta m| \le \mathrm{tol}\,(1 + \max|m|)`, or after ``max_steps``: then it raises
    ``ValueError`` if ``strict`` (the default), and otherwise returns the last ``q``. ``max_steps=1,
    strict=False`` is one safeguarded rule step per M-step, the gradient EM of Lange (1995)."""
    X = _check_data(X)
    rho = check_rho(rho)
    max_steps = check_int("max_steps", max_steps, low=1)
    tol = check_real("tol", tol, low=0.0, low_open=True)
    strict = check_bool("strict", strict)
    K, d = _check_blocks(q, X)
    stats = mixture_statistics(X, q["z"].probs.detach())

    def Q(theta):
        return expected_complete_loss(stats, theta)

    halved = 0
    for step in range(1, max_steps + 1):
        grad_mu = expectation_gradient(Q, q["theta"], method="delta")
        rho_t = rho
        new = blr_step(q, {"theta": grad_mu}, rho_t)
        while not _precisions_positive_definite(new["theta"].mean, K, d):
            rho_t /= 2
            halved += 1
            if rho_t < 1e-8:
                raise ValueError("m_step: no step size in (1e-8, rho] keeps the precisions positive definite")
            new = blr_step(q, {"theta": grad_mu}, rho_t)
        change = float((new["theta"].mean - q["theta"].mean).abs().max())
        q = new
        if change <= tol * (1.0 + float(q["theta"].mean.abs().max())):
            return MStepResult(q, step, halved)
    if not strict:
        return MStepResult(q, max_steps, halved)
    raise ValueError(f"m_step did not converge in max_steps={max_steps} steps (last change {change:.3e})")


class EMHistory(NamedTuple):
    """What :func:`run_em` returns: the parameters after each iteration (the first entry is the
    start), the log-likelihood at each, the final product ``q`` and the rule steps of each M-step."""

    parameters: list
    log_likelihoods: list
    q: MeanField
    m_steps: list


def run_em(
    X: Any,
    init: MixtureParameters,
    num_iterations: int,
    *,
    e_rho: float = 1.0,
    m_rho: float = 1.0,
    tol: float = 1e-10,
    progress: bool = False,
) -> EMHistory:
    r"""EM as alternating rule steps: :func:`e_step` (``e_rho``), then :func:`m_step` (``m_rho``) to its fixed point.

    Starts from :func:`initial_candidate`. With the defaults, iteration :math:`t` equals iteration
    :math:`t` of textbook EM from ``init``."""
    X = _check_data(X)
    num_iterations = check_int("num_iterations", num_iterations, low=0)
    e_rho, m_rho = check_rho(e_rho), check_rho(m_rho)
    q = initial_candidate(X, init)
    K, d = _check_blocks(q, X)
    parameters = [unpack(q["theta"].mean, K, d)]
    with torch.no_grad():
        log_likelihoods = [float(torch.logsumexp(log_joint(X, q["theta"].mean, K), 1).sum())]
    m_steps = []
    iterations = range(num_iterations)
    if progress:
        from tqdm import tqdm

        iterations = tqdm(iterations, desc="EM", leave=False)
    for _ in iterations:
        q = e_step(q, X, e_rho)
        q, num_steps, _ = m_step(q, X, m_rho, tol=tol)
        m_steps.append(num_steps)
        parameters.append(unpack(q["theta"].mean, K, d))
        with torch.no_grad():
            log_likelihoods.append(float(torch.logsumexp(log_joint(X, q["theta"].mean, K), 1).sum()))
    return EMHistory(parameters, log_likelihoods, q, m_steps)
