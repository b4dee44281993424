r"""Variational message passing (VMP) as the Bayesian learning rule, block by block.

The candidate is a mean-field product :math:`q = \prod_j q_j` (:class:`~blrlib.families.MeanField`) of
exponential families. For a conditionally conjugate model the expected loss
:math:`\mathbb{E}_q[\bar\ell]`, with :math:`\bar\ell = -\log p(\text{data}, \theta)`, is a *multilinear*
function of the blocks' expectation parameters :math:`\mu_1, \dots, \mu_k`. The rule's gradient for
block :math:`j`,

.. math::

    \nabla_{\mu_j}\mathbb{E}_q[\bar\ell] = -(\text{the sum of the messages into } q_j),

therefore does not depend on :math:`\mu_j` itself, and the step with :math:`\rho_j = 1`,
:math:`\lambda_j \leftarrow -\nabla_{\mu_j}\mathbb{E}_q[\bar\ell]`, is the exact coordinate-ascent update
(Winn & Bishop, 2005). :func:`message` computes that gradient by automatic differentiation of the
expected loss *written as a function of the expectation parameters* (so no message is derived by hand);
:func:`vmp_sweep` applies :func:`blrlib.rule.blr_step` to each block in turn, each at the latest
:math:`q` (:func:`blrlib.rule.mean_field_sweep`).

The same code runs a non-conjugate factor (Knowles & Minka, 2011): there the expected loss is not linear
in the block's own :math:`\mu_j`, the gradient is evaluated at the current :math:`\mu_j`, and a step with
:math:`\rho = 1` is a fixed-point iteration rather than an exact update. For Poisson regression with a
log link, :func:`poisson_expected_loss` is the closed-form expected loss, :func:`poisson_log_link_message`
the message and :func:`poisson_ncvmp_step` the rule's step.

Two models are provided, each as a function that returns the expected loss:

* :func:`normal_expected_loss`: data :math:`x_n \sim \mathcal{N}(\mu, \tau^{-1})` with the prior
  :math:`\mu\mid\tau \sim \mathcal{N}(\mu_0, (\kappa_0\tau)^{-1})`, :math:`\tau \sim \mathrm{Gamma}(a_0, b_0)`,
  and the blocks ``"mean"`` (a one-dimensional :class:`~blrlib.families.DiagonalGaussian`) and
  ``"precision"`` (a :class:`~blrlib.families.Gamma`): Bishop (2006), section 10.1.3.
* :func:`mixture_expected_loss`: the Bayesian Gaussian mixture of Bishop (2006), section 10.2, with the
  blocks ``"z"`` (:class:`~blrlib.families.Categorical`, one member per data point), ``"weights"``
  (:class:`~blrlib.families.Dirichlet`) and ``"components"`` (:class:`~blrlib.families.NormalWishart`,
  one member per component), and the prior :class:`MixturePrior`. :func:`mixture_elbo` is its evidence
  lower bound, :func:`mixture_candidate` builds the product from initial responsibilities.

API: :func:`message`, :func:`vmp_sweep`, :func:`normal_expected_loss`, :class:`MixturePrior`,
:func:`mixture_expected_loss`, :func:`mixture_elbo`, :func:`mixture_candidate`, :func:`run_vmp`,
:func:`poisson_expected_loss`, :func:`poisson_log_link_message`, :func:`poisson_ncvmp_step`.

Arguments are checked with :mod:`blrlib._validation` (``ValueError("Invalid <name>: ...")``).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import torch

from .._validation import check_int, check_real, check_rho, check_symmetric_positive_definite
from ..families import Categorical, DiagonalGaussian, Dirichlet, FullGaussian, Gamma, MeanField, NormalWishart
from ..rule import blr_step

__all__ = [
    "message",
    "vmp_sweep",
    "normal_expected_loss",
    "MixturePrior",
    "mixture_expected_loss",
    "mixture_elbo",
    "mixture_candidate",
    "run_vmp",
    "poisson_expected_loss",
    "poisson_log_link_message",
    "poisson_ncvmp_step",
]

_LOG_2PI = math.log(2.0 * math.pi)
ExpectedLoss = Callable[[Mapping[str, Any]], torch.Tensor]


def _invalid(name: str, value: Any, must: str) -> ValueError:
    # for non-scalar arguments (shapes, types); scalars go through blrlib._validation
    return ValueError(f"Invalid {name}: {value} (must be {must})")


def _check_spd(name: str, matrix: torch.Tensor) -> None:
    # the shared check, its message in the common "Invalid <name>: ..." form
    try:
        check_symmetric_positive_definite(name, matrix)
    except ValueError as error:
        raise ValueError(f"Invalid {name}: {error} (must be symmetric positive definite)") from None


def _check_block_rho(name: str, rho: Any) -> float:
    try:
        return check_rho(rho)
    except ValueError:
        raise ValueError(f"Invalid rho[{name!r}]: {rho} (must be a finite real number > 0 and <= 1)") from None


# ====================================================================== the generic step
def message(q: MeanField, expected_loss: ExpectedLoss, block: str) -> NamedTuple:
    r""":math:`\nabla_{\mu_j}\mathbb{E}_q[\bar\ell]` for block :math:`j` = ``block``, by autograd.

    ``expected_loss(mu)`` takes a mapping block name -> expectation parameters (the named tuples of
    ``q.expectation_params``) and returns :math:`\mathbb{E}_q[\bar\ell]` as a scalar tensor. The gradient is
    taken with respect to ``mu[block]`` at the current :math:`q`; the result is structured like
    ``q[block].expectation_params`` (zeros where the loss does not depend on a field)."""
    if not isinstance(q, MeanField):
        raise _invalid("q", type(q).__name__, "a MeanField")
    if block not in q:
        raise _invalid("block", repr(block), f"one of {q.names}")
    mu = {name: params for name, params in q.expectation_params.items()}
    leaves = [t.detach().clone().requires_grad_(True) for t in mu[block]]
    mu[block] = type(mu[block])(*leaves)
    with torch.enable_grad():
        value = expected_loss(mu)
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            raise _invalid("expected_loss", type(value).__name__, "a function returning a scalar tensor")
        grads = torch.autograd.grad(value, leaves, allow_unused=True)
    fields = [g if g is not None else torch.zeros_like(leaf) for g, leaf in zip(grads, leaves)]
    return type(mu[block])(*(g.detach() for g in fields))


def vmp_sweep(
    q: MeanField,
    expected_loss: ExpectedLoss,
    rho: float | Mapping[str, float] = 1.0,
    order: Sequence[str] | None = None,
) -> MeanField:
    r"""One sweep of the rule over the blocks in ``order`` (default: all, in ``q``'s order).

    For each block :math:`j`, at the :math:`q` that already holds the earlier blocks' updates,
    :math:`\lambda_j \leftarrow (1-\rho_j)\lambda_j - \rho_j\nabla_{\mu_j}\mathbb{E}_q[\bar\ell]` with the
    gradient from :func:`message` (:func:`blrlib.rule.blr_step` on the :class:`MeanField`). With
    ``rho = 1`` and a conditionally conjugate model this is one VMP / coordinate-ascent sweep."""
    if not isinstance(q, MeanField):
        raise _invalid("q", type(q).__name__, "a MeanField")
    order = list(q.names) if order is None else list(order)
    for name in order:
        if name not in q:
            raise _invalid("order entry", repr(name), f"one of {q.names}")
        rho_j = _check_block_rho(name, rho[name] if isinstance(rho, Mapping) else rho)
        q = blr_step(q, {name: message(q, expected_loss, name)}, rho_j)
    return q


# ====================================================================== Normal, unknown mean and precision
def normal_expected_loss(x: Any, loc: float, kappa: float, shape: float, rate: float) -> ExpectedLoss:
    r"""The expected loss of the Normal model with unknown mean and precision, as a function of
    :math:`\mu` = {"mean": (E[μ], E[μ²]), "precision": (E[log τ], E[τ])}:

    .. math::

        \mathbb{E}_q[\bar\ell] = \tfrac12\mathbb{E}[\tau]\Big[\sum_n (x_n^2 - 2x_n\mathbb{E}[\mu] + \mathbb{E}[\mu^2])
        + \kappa_0(\mathbb{E}[\mu^2] - 2\mu_0\mathbb{E}[\mu] + \mu_0^2)\Big]
        - \big(\tfrac{N+1}{2} + a_0 - 1\big)\mathbb{E}[\log\tau] + b_0\mathbb{E}[\tau] + \text{const}.

    (The constant, which no message depends on, is dropped.)"""
    x = torch.as_tensor(x)
    if not x.is_floating_point() or x.ndim != 1 or x.numel() < 1:
        raise _invalid("x", tuple(x.shape), "a non-empty 1-D floating tensor")
    loc = check_real("loc", loc)
    kappa, shape, rate = (check_real(name, value, low=0.0, low_open=True)
                          for name, value in (("kappa", kappa), ("shape", shape), ("rate", rate)))
    n, s1, s2 = x.numel(), x.sum(), (x * x).sum()

    def expected_loss(mu):
        m1, m2 = (t.sum() for t in mu["mean"])
        log_tau, tau = (t.sum() for t in mu["precision"])
        quadratic = s2 - 2 * s1 * m1 + n * m2 + kappa * (m2 - 2 * loc * m1 + loc**2)
        return 0.5 * tau * quadratic - ((n + 1) / 2 + shape - 1) * log_tau + rate * tau

    return expected_loss


# ====================================================================== the Bayesian Gaussian mixture
class MixturePrior(NamedTuple):
    r"""The conjugate prior of a Bayesian Gaussian mixture: :math:`\pi\sim\mathrm{Dir}(\alpha_0)` and, per
    component, :math:`\mathcal{N}(\mu_k\mid m_0, (\beta_0\Lambda_k)^{-1})\,\mathcal{W}(\Lambda_k\mid W_0, \nu_0)`.
    scikit-learn's names: ``weight_concentration_prior`` (:math:`\alpha_0`), ``mean_prior`` (:math:`m_0`),
    ``mean_precision_prior`` (:math:`\beta_0`), ``covariance_prior`` (:math:`W_0^{-1}`),
    ``degrees_of_freedom_prior`` (:math:`\nu_0`)."""

    concentration: float
    loc: torch.Tensor
    beta: float
    scale_inv: torch.Tensor
    dof: float

    def check(self) -> "MixturePrior":
        r"""Raise ``ValueError`` unless :math:`\alpha_0 > 0`, :math:`\beta_0 > 0`, :math:`m_0` is a finite
        vector of some length :math:`d`, :math:`W_0^{-1}` is a symmetric positive-definite
        :math:`d\times d` matrix and :math:`\nu_0 > d - 1`; return the prior."""
        check_real("concentration", self.concentration, low=0.0, low_open=True)
        check_real("beta", self.beta, low=0.0, low_open=True)
        loc = torch.as_tensor(self.loc)
        if loc.ndim != 1 or loc.numel() < 1 or not loc.is_floating_point() or not bool(torch.isfinite(loc).all()):
            raise _invalid("loc", tuple(loc.shape), "a finite floating vector of length d >= 1")
        d = loc.numel()
        scale_inv = torch.as_tensor(self.scale_inv, dtype=loc.dtype)
        if scale_inv.shape != (d, d):
            raise _invalid("scale_inv shape", tuple(scale_inv.shape), f"({d}, {d})")
        _check_spd("scale_inv", scale_inv)
        check_real("dof", self.dof, low=d - 1.0, low_open=True)
        return self

    def families(self, num_components: int) -> tuple[Dirichlet, NormalWishart]:
        """The prior as a Dirichlet over the weights and a batch of Normal–Wishart members (checked
        with :meth:`check`)."""
        check_int("num_components", num_components, low=1)
        self.check()
        loc = torch.as_tensor(self.loc)
        K = num_components
        dtype, device = loc.dtype, loc.device
        concentration = torch.full((K,), float(self.concentration), dtype=dtype, device=device)
        weights = Dirichlet.from_concentration(concentration)
        scale = torch.linalg.inv(torch.as_tensor(self.scale_inv, dtype=dtype, device=device))
        components = NormalWishart.from_hyperparameters(
            loc.expand(K, -1).clone(),
            torch.full((K,), float(self.beta), dtype=dtype, device=device),
            scale.expand(K, -1, -1).clone(),
            torch.full((K,), float(self.dof), dtype=dtype, device=device),
        )
        return weights, components


def _check_mixture_data(X: Any, name: str = "X") -> torch.Tensor:
    X = torch.as_tensor(X)
    if not X.is_floating_point() or X.ndim != 2 or X.shape[0] < 1:
        raise _invalid(f"{name} shape/dtype", f"{tuple(X.shape)} {X.dtype}", "a floating (N, d) tensor")
    return X


_PRIOR_CACHE: dict = {}


def _prior_families(prior: MixturePrior, K: int, dtype, device) -> tuple[Dirichlet, NormalWishart]:
    """``prior.families(K)``, built once per (prior object, K, dtype, device): SVI calls it every step.

    The key holds the prior itself (compared by identity), so a new prior is never served a stale entry."""
    key = (id(prior), K, dtype, device)
    hit = _PRIOR_CACHE.get(key)
    if hit is not None and hit[0] is prior:
        return hit[1]
    families = prior.families(K)
    if len(_PRIOR_CACHE) >= 8:
        _PRIOR_CACHE.pop(next(iter(_PRIOR_CACHE)))
    _PRIOR_CACHE[key] = (prior, families)
    return families


def _expected_log_gaussian(X: torch.Tensor, components) -> torch.Tensor:
    r""":math:`\mathbb{E}[\log\mathcal{N}(x_n\mid\mu_k,\Lambda_k^{-1})]`, shape (N, K), from Normal–Wishart
    expectation parameters :math:`(\mathbb{E}[\Lambda\mu], \mathbb{E}[\mu^\top\Lambda\mu], \mathbb{E}[\Lambda],
    \mathbb{E}\log|\Lambda|)`."""
    precision_x, quadratic, precision, logdet = components
    d = X.shape[1]
    xlx = torch.einsum("ni,kij,nj->nk", X, precision, X)
    return 0.5 * logdet - 0.5 * d * _LOG_2PI - 0.5 * (xlx - 2 * X @ precision_x.T + quadratic)


def mixture_expected_loss(X: Any, prior: MixturePrior, *, data_weight: float = 1.0) -> ExpectedLoss:
    r"""The expected loss of the Bayesian Gaussian mixture, as a function of the blocks' expectation
    parameters {"z", "weights", "components"}:

    .. math::

        \mathbb{E}_q[\bar\ell] = -w\sum_{n,k} r_{nk}\big(\mathbb{E}\log\pi_k
        + \mathbb{E}\log\mathcal{N}(x_n\mid\mu_k,\Lambda_k^{-1})\big)
        - \mathbb{E}\log\mathrm{Dir}(\pi\mid\alpha_0) - \sum_k\mathbb{E}\log p_0(\mu_k,\Lambda_k),

    with :math:`r_{nK} = 1 - \sum_{k<K} r_{nk}` and the data weight :math:`w` = ``data_weight``
    (1 for the whole data set; :math:`N/|B|` for a minibatch :math:`B` in SVI). The prior terms include
    their log-partitions, so :func:`mixture_elbo` can use it. The prior's families are built once per
    prior object and number of components, not per call."""
    X = _check_mixture_data(X)
    data_weight = check_real("data_weight", data_weight, low=0.0, low_open=True)
    if not isinstance(prior, MixturePrior):
        raise _invalid("prior", type(prior).__name__, "a MixturePrior")
    prior.check()

    def expected_loss(mu):
        (mean_log_pi,) = mu["weights"]
        K = mean_log_pi.shape[-1]
        prior_weights, prior_components = _prior_families(prior, K, X.dtype, X.device)
        r = mu["z"][0]
        r_full = torch.cat([r, 1.0 - r.sum(-1, keepdim=True)], dim=-1)
        joint = mean_log_pi + _expected_log_gaussian(X, mu["components"])
        data = -(r_full * joint).sum()
        log_prior = prior_weights._inner(prior_weights.natural_params, mu["weights"]) - prior_weights.log_partition()
        log_prior_components = prior_components._inner(prior_components.natural_params, mu["components"])
        log_prior = log_prior + (log_prior_components - prior_components.log_partition()).sum()
        return data_weight * data - log_prior

    return expected_loss


def mixture_elbo(q: MeanField, X: Any, prior: MixturePrior) -> torch.Tensor:
    r"""The evidence lower bound :math:`\mathbb{E}_q[\log p(X, z, \pi, \mu, \Lambda)] + \mathcal{H}(q) =
    -\mathbb{E}_q[\bar\ell] + \mathcal{H}(q)` of the Bayesian Gaussian mixture (all normalising constants
    included)."""
    expected = mixture_expected_loss(X, prior)(q.expectation_params)
    return -expected + q.entropy()


def mixture_candidate(responsibilities: Any, prior: MixturePrior) -> MeanField:
    r"""The product :math:`q(z)q(\pi)\prod_k q(\mu_k,\Lambda_k)` with the given responsibilities (N, K) and the
    global blocks at the prior (the first sweep over ``"weights"`` and ``"components"`` with
    :math:`\rho = 1` replaces them)."""
    r = torch.as_tensor(responsibilities)
    if not r.is_floating_point() or r.ndim != 2 or r.shape[1] < 2:
        raise _invalid("responsibilities shape", tuple(r.shape), "(N, K) with K >= 2")
    if not isinstance(prior, MixturePrior):
        raise _invalid("prior", type(prior).__name__, "a MixturePrior")
    weights, components = prior.families(r.shape[1])
    return MeanField(z=Categorical.from_probs(r), weights=weights, components=components)


def run_vmp(
    q: MeanField,
    X: Any,
    prior: MixturePrior,
    num_sweeps: int,
    *,
    order: Sequence[str] = ("weights", "components", "z"),
) -> tuple[MeanField, list]:
    """``num_sweeps`` calls of :func:`vmp_sweep` on the mixture (default order: the global blocks from the
    current responsibilities, then the responsibilities); returns the final ``q`` and the ELBO after each
    sweep."""
    num_sweeps = check_int("num_sweeps", num_sweeps, low=0)
    loss = mixture_expected_loss(X, prior)
    elbos = []
    for _ in range(num_sweeps):
        q = vmp_sweep(q, loss, 1.0, order)
        elbos.append(float(mixture_elbo(q, X, prior)))
    return q, elbos


# ====================================================================== a non-conjugate factor: Poisson log-link
def _check_poisson(X: Any, y: Any, prior_precision: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    X = torch.as_tensor(X)
    if not X.is_floating_point() or X.ndim != 2 or X.shape[0] < 1:
        raise _invalid("X shape/dtype", f"{tuple(X.shape)} {X.dtype}", "a floating (n, d) tensor")
    y = torch.as_tensor(y, dtype=X.dtype, device=X.device)
    if y.shape != (X.shape[0],) or not bool((y >= 0).all()) or not bool((y == y.round()).all()):
        raise _invalid("y", tuple(y.shape), f"non-negative integer counts of shape ({X.shape[0]},)")
    P = torch.as_tensor(prior_precision, dtype=X.dtype, device=X.device)
    d = X.shape[1]
    if P.shape != (d, d):
        raise _invalid("prior_precision shape", tuple(P.shape), f"({d}, {d})")
    _check_spd("prior_precision", P)
    return X, y, P


def poisson_expected_loss(X: Any, y: Any, prior_precision: Any) -> Callable[[Any], torch.Tensor]:
    r"""The closed-form expected loss of Poisson regression with a log link and a zero-mean Gaussian prior,
    as a function of the Gaussian's expectation parameters :math:`(\mu^{(1)}, \mu^{(2)}) = (m, V + mm^\top)`:

    .. math::

        \mathbb{E}_q[\bar\ell] = \sum_i\Big(e^{x_i^\top m + \frac12 x_i^\top V x_i} - y_i x_i^\top m\Big)
        + \tfrac12\operatorname{tr}(P_0\,\mu^{(2)}) \quad (+\ \text{const}),

    with :math:`V = \mu^{(2)} - \mu^{(1)}\mu^{(1)\top}` and
    :math:`\mathbb{E}_q[e^{x^\top\theta}] = e^{x^\top m + x^\top Vx/2}`, the Gaussian's moment-generating
    function. It is not linear in :math:`\mu`: the factor is not conjugate."""
    X, y, P = _check_poisson(X, y, prior_precision)

    def expected_loss(expectation_params):
        mean, second = expectation_params
        V = second - torch.outer(mean, mean)
        rates = torch.exp(X @ mean + 0.5 * ((X @ V) * X).sum(1))
        return (rates - y * (X @ mean)).sum() + 0.5 * (P * second).sum()

    return expected_loss


def poisson_log_link_message(q, X: Any, y: Any, prior_precision: Any, *, check: bool = True) -> NamedTuple:
    r""":math:`\nabla_\mu\mathbb{E}_q[\bar\ell]` for Poisson regression with a log link (Knowles & Minka, 2011),
    in closed form.

    With :math:`e_i = e^{x_i^\top m + \frac12 x_i^\top Vx_i}`, the expected gradient and Hessian are
    :math:`g = \sum_i(e_i - y_i)x_i + P_0 m` and :math:`H = \sum_i e_i x_ix_i^\top + P_0` (Bonnet's and Price's
    theorems with exact Gaussian expectations), and the chain rule gives
    :math:`\nabla_\mu\mathbb{E}_q[\bar\ell] = (g - Hm,\ \tfrac12 H)`. The step with :math:`\rho = 1` sets the
    precision to :math:`H` and the precision times the mean to :math:`Hm - g`; in one dimension with
    :math:`x_i = 1` this adds :math:`\sum_i e^{m + v/2}` to the precision and
    :math:`\sum_i y_i + (m - 1)\sum_i e^{m+v/2}` to the precision times the mean.

    ``q`` is a :class:`~blrlib.families.FullGaussian` over the :math:`d` coefficients. ``check=False`` skips
    the checks of ``X``, ``y`` and ``prior_precision`` (an eigen-decomposition and host syncs), for loops
    that pass the same, already checked data every step."""
    if check:
        X, y, P = _check_poisson(X, y, prior_precision)
    else:
        X, y, P = X, y, prior_precision
    if not isinstance(q, FullGaussian) or q.mean.shape != (X.shape[1],):
        raise _invalid("q", repr(q), f"a FullGaussian over {X.shape[1]} coefficients")
    m, V = q.mean, q.covariance
    rates = torch.exp(X @ m + 0.5 * ((X @ V) * X).sum(1))
    g = X.T @ (rates - y) + P @ m
    H = X.T @ (rates[:, None] * X) + P
    return q.ExpectationParams(g - H @ m, 0.5 * H)


def poisson_ncvmp_step(q, X: Any, y: Any, prior_precision: Any, rho: float = 1.0, *, check: bool = True):
    r"""One non-conjugate VMP step for Poisson regression with a log link: :func:`blrlib.rule.blr_step` with
    :func:`poisson_log_link_message` (``check`` as there).

    With ``rho = 1`` it is the undamped fixed-point iteration of Knowles & Minka (2011), which can
    oscillate; ``rho < 1`` damps it. For this factor the new precision :math:`H = \sum_i e_i x_ix_i^\top + P_0`
    is positive definite, and a damped step is a convex combination of two positive-definite precisions,
    so the iterates never leave the cone (short of an overflow in :math:`e_i`); a factor whose expected
    Hessian can be indefinite could leave it, and :func:`blrlib.rule.blr_step` would then raise ``ValueError``."""
    rho = check_rho(rho)
    return blr_step(q, poisson_log_link_message(q, X, y, prior_precision, check=check), rho)


