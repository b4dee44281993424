"""VMP and non-conjugate VMP as the rule (blrlib.inference.vmp) against references with no rule code."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torch.func import grad

from blrlib.families import DiagonalGaussian, FullGaussian, Gamma, MeanField
from blrlib.inference import vmp

DTYPE = torch.float64


def bishop_normal_gamma(x, mu0, kappa0, a0, b0, e_tau, num_sweeps):
    """Bishop (2006) eqs. 10.26-10.30: q(mu) then q(tau), starting from E[tau]; no blrlib code."""
    N, xbar, out = len(x), x.mean(), []
    for _ in range(num_sweeps):
        mu_n = (kappa0 * mu0 + N * xbar) / (kappa0 + N)
        lam_n = (kappa0 + N) * e_tau
        a_n = a0 + (N + 1) / 2
        e_mu2 = mu_n**2 + 1 / lam_n
        b_n = b0 + 0.5 * (np.sum(x**2) - 2 * mu_n * x.sum() + N * e_mu2 + kappa0 * (e_mu2 - 2 * mu0 * mu_n + mu0**2))
        e_tau = a_n / b_n
        out.append((mu_n, lam_n, a_n, b_n))
    return out


@pytest.mark.parametrize("seed, mu0, kappa0, a0, b0", [(0, 0.0, 1.0, 2.0, 1.0), (1, 3.0, 0.1, 0.5, 4.0)])
def test_normal_gamma_vmp_matches_bishop(seed, mu0, kappa0, a0, b0):
    x = np.random.default_rng(seed).normal(1.0, 2.0, 15)
    q = MeanField(mean=DiagonalGaussian.from_mean_precision(torch.zeros(1, dtype=DTYPE), torch.ones(1, dtype=DTYPE)),
                  precision=Gamma.from_shape_rate(torch.tensor(2.0, dtype=DTYPE), torch.tensor(4.0, dtype=DTYPE)))
    loss = vmp.normal_expected_loss(torch.tensor(x), mu0, kappa0, a0, b0)
    reference = bishop_normal_gamma(x, mu0, kappa0, a0, b0, 0.5, 6)
    for ref in reference:
        q = vmp.vmp_sweep(q, loss)
        ours = (q["mean"].mean, q["mean"].precision, q["precision"].shape, q["precision"].rate)
        for a, b in zip(ours, ref):
            assert abs(float(a) - b) <= 1e-12 * abs(b)


def test_vmp_sweep_damped_and_ordered():
    """rho < 1 moves lambda a fraction of the way; a block left out of `order` is unchanged."""
    x = torch.tensor([0.5, 1.5, 2.0], dtype=DTYPE)
    q = MeanField(mean=DiagonalGaussian.from_mean_precision(torch.zeros(1, dtype=DTYPE), torch.ones(1, dtype=DTYPE)),
                  precision=Gamma.from_shape_rate(torch.tensor(2.0, dtype=DTYPE), torch.tensor(1.0, dtype=DTYPE)))
    loss = vmp.normal_expected_loss(x, 0.0, 1.0, 1.0, 1.0)
    full = vmp.vmp_sweep(q, loss, 1.0, ["mean"])
    half = vmp.vmp_sweep(q, loss, {"mean": 0.5}, ["mean"])
    for lam_half, lam_old, lam_full in zip(half["mean"].natural_params, q["mean"].natural_params,
                                           full["mean"].natural_params):
        torch.testing.assert_close(lam_half, 0.5 * lam_old + 0.5 * lam_full, rtol=1e-13, atol=1e-13)
    assert half["precision"] is q["precision"]


def test_message_is_gradient_of_expected_loss():
    q = MeanField(a=Gamma.from_shape_rate(torch.tensor(3.0, dtype=DTYPE), torch.tensor(2.0, dtype=DTYPE)))
    msg = vmp.message(q, lambda mu: 2.0 * mu["a"].mean_log + 5.0 * mu["a"].mean**2, "a")
    torch.testing.assert_close(msg.mean_log, torch.tensor(2.0, dtype=DTYPE))
    torch.testing.assert_close(msg.mean, 10.0 * q["a"].mean)


def iris_prior(X):
    return vmp.MixturePrior(0.1, torch.tensor(X.mean(0)), 1.0, torch.tensor(np.cov(X.T)), 2.0)


@pytest.mark.parametrize("K, seed", [(3, 0), (4, 1)])
def test_bayesian_mixture_matches_sklearn_sweep_by_sweep(K, seed):
    from sklearn.datasets import load_iris
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import BayesianGaussianMixture

    X = load_iris().data[:, 2:4]
    prior = iris_prior(X)
    bg = BayesianGaussianMixture(n_components=K, weight_concentration_prior_type="dirichlet_distribution",
                                 weight_concentration_prior=0.1, mean_prior=X.mean(0), mean_precision_prior=1.0,
                                 degrees_of_freedom_prior=2.0, covariance_prior=np.cov(X.T), reg_covar=0,
                                 init_params="random", max_iter=1, warm_start=True, tol=0, random_state=seed)
    resp0 = np.random.RandomState(seed).uniform(size=(len(X), K))
    resp0 /= resp0.sum(1, keepdims=True)
    q = vmp.mixture_candidate(torch.tensor(resp0), prior)
    loss = vmp.mixture_expected_loss(torch.tensor(X), prior)
    q = vmp.vmp_sweep(q, loss, 1.0, ["weights", "components"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for _ in range(5):
            bg.fit(X)
            q = vmp.vmp_sweep(q, loss, 1.0, ["z", "weights", "components"])
            c = q["components"]
            ours = (q["weights"].concentration, c.beta, c.loc, c.dof, c.scale_inv / c.dof[:, None, None])
            theirs = (bg.weight_concentration_, bg.mean_precision_, bg.means_, bg.degrees_of_freedom_, bg.covariances_)
            for a, b in zip(ours, theirs):
                np.testing.assert_allclose(a.numpy(), b, rtol=1e-11, atol=1e-11 * np.abs(b).max())


def test_run_vmp_elbo_never_decreases_and_matches_entropy_form():
    from sklearn.datasets import load_iris

    X = load_iris().data[:, 2:4]
    prior = iris_prior(X)
    resp0 = np.random.RandomState(3).uniform(size=(len(X), 3))
    q = vmp.mixture_candidate(torch.tensor(resp0 / resp0.sum(1, keepdims=True)), prior)
    q, elbos = vmp.run_vmp(q, torch.tensor(X), prior, 6, order=("weights", "components", "z"))
    assert np.diff(elbos).min() > -1e-9
    assert len(elbos) == 6
    # the ELBO is -E[loss] + entropy; a KL form gives the same number: E[log lik] - KL(q_global || prior)
    Xt = torch.tensor(X)
    pw, pc = prior.families(3)
    r = q["z"].probs
    log_lik = (r * (q["weights"].expectation_params.mean_log
                    + vmp._expected_log_gaussian(Xt, q["components"].expectation_params))).sum()
    kl_form = log_lik + q["z"].entropy().sum() - q["weights"].kl_divergence(pw).sum() \
        - q["components"].kl_divergence(pc).sum()
    torch.testing.assert_close(torch.tensor(elbos[-1], dtype=DTYPE), kl_form, rtol=1e-10, atol=1e-9)


# ---------------------------------------------------------------- non-conjugate VMP
def poisson_problem(seed=0, n=40, d=2):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=DTYPE)
    y = torch.poisson(torch.exp(X @ torch.linspace(1.0, -0.5, d, dtype=DTYPE)), generator=g)
    return X, y, 0.5 * torch.eye(d, dtype=DTYPE)


@pytest.mark.parametrize("seed, d", [(0, 1), (1, 2), (2, 3)])
def test_poisson_message_matches_autograd_of_closed_form(seed, d):
    X, y, P = poisson_problem(seed, d=d)
    root = torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=DTYPE)
    q = FullGaussian.from_mean_precision(0.1 * torch.ones(d, dtype=DTYPE), root @ root.T + 3 * torch.eye(d, dtype=DTYPE))
    msg = vmp.poisson_log_link_message(q, X, y, P)

    def closed_form(mean, second):  # written again here, without blrlib
        V = second - torch.outer(mean, mean)
        return (torch.exp(X @ mean + 0.5 * ((X @ V) * X).sum(1)) - y * (X @ mean)).sum() + 0.5 * (P * second).sum()

    mu = q.expectation_params
    ref = grad(closed_form, argnums=(0, 1))(mu.mean, mu.second_moment)
    for a, b in zip(msg, ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-10)


def test_ncvmp_fixed_point_maximises_the_elbo():
    from scipy.optimize import minimize

    X, y, P = poisson_problem(4, d=2)
    q = FullGaussian.from_mean_precision(torch.zeros(2, dtype=DTYPE), torch.eye(2, dtype=DTYPE))
    for _ in range(200):
        q = vmp.poisson_ncvmp_step(q, X, y, P, rho=0.5)
    Xn, yn, Pn = X.numpy(), y.numpy(), P.numpy()

    def negative_elbo(p):
        m, L = p[:2], np.array([[np.exp(p[2]), 0.0], [p[3], np.exp(p[4])]])
        V = L @ L.T
        e = np.exp(Xn @ m + 0.5 * np.einsum("ni,ij,nj->n", Xn, V, Xn))
        return (e - yn * (Xn @ m)).sum() + 0.5 * np.trace(Pn @ (V + np.outer(m, m))) - np.log(np.diag(L)).sum()

    res = minimize(negative_elbo, np.zeros(5), method="BFGS", options={"gtol": 1e-10})
    m, L = res.x[:2], np.array([[np.exp(res.x[2]), 0.0], [res.x[3], np.exp(res.x[4])]])
    np.testing.assert_allclose(q.mean.numpy(), m, atol=1e-6)
    np.testing.assert_allclose(q.covariance.numpy(), L @ L.T, atol=1e-6)


def test_undamped_ncvmp_oscillates_and_damping_converges():
    X, y, P = torch.ones(5, 1, dtype=DTYPE), torch.zeros(5, dtype=DTYPE), 0.1 * torch.eye(1, dtype=DTYPE)
    runs = {}
    for rho in (1.0, 0.5):
        q = FullGaussian.from_mean_precision(torch.zeros(1, dtype=DTYPE), torch.eye(1, dtype=DTYPE))
        variances = []
        for _ in range(150):
            q = vmp.poisson_ncvmp_step(q, X, y, P, rho)
            variances.append(float(q.covariance))
        runs[rho] = variances
    assert abs(runs[1.0][-1] - runs[1.0][-2]) > 1.0  # a two-cycle
    assert abs(runs[0.5][-1] - runs[0.5][-2]) < 1e-9


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: vmp.message(FullGaussian.from_mean_precision(torch.zeros(1), torch.eye(1)), lambda m: 0, "a"),
         "Invalid q"),
        (lambda: vmp.message(MeanField(a=Gamma.from_shape_rate(1.0, 1.0)), lambda m: 0, "b"), "Invalid block"),
        (lambda: vmp.vmp_sweep(MeanField(a=Gamma.from_shape_rate(1.0, 1.0)), lambda m: m["a"].mean, 0.0),
         "Invalid rho"),
        (lambda: vmp.normal_expected_loss(torch.ones(3), 0.0, -1.0, 1.0, 1.0), "Invalid kappa"),
        (lambda: vmp.mixture_candidate(torch.ones(3), None), "Invalid responsibilities"),
        (lambda: vmp.poisson_expected_loss(torch.ones(3, 1), -torch.ones(3), torch.eye(1)), "Invalid y"),
        (lambda: vmp.poisson_log_link_message(FullGaussian.from_mean_precision(torch.zeros(2), torch.eye(2)),
                                              torch.ones(3, 1), torch.ones(3), torch.eye(1)), "Invalid q"),
        (lambda: vmp.poisson_ncvmp_step(None, torch.ones(3, 1), torch.ones(3), -torch.eye(1)), "Invalid"),
        (lambda: vmp.run_vmp(None, torch.ones(3, 1), None, -1), "Invalid num_sweeps"),
    ],
)
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_planted_sign_error_is_caught():
    """A flipped message sign is refused at the first block: the Gaussian's precision -(kappa0 + N) E[tau] < 0."""
    x = np.random.default_rng(0).normal(1.0, 2.0, 15)
    q = MeanField(mean=DiagonalGaussian.from_mean_precision(torch.zeros(1, dtype=DTYPE), torch.ones(1, dtype=DTYPE)),
                  precision=Gamma.from_shape_rate(torch.tensor(2.0, dtype=DTYPE), torch.tensor(4.0, dtype=DTYPE)))
    loss = vmp.normal_expected_loss(torch.tensor(x), 0.0, 1.0, 2.0, 1.0)
    with pytest.raises(ValueError, match="block 'mean'"):
        vmp.vmp_sweep(q, lambda mu: -loss(mu))
    assert math.isfinite(float(vmp.vmp_sweep(q, loss)["precision"].rate))


@pytest.mark.parametrize(
    "changes, match",
    [
        (dict(concentration=0.0), "Invalid concentration"),
        (dict(beta=-1.0), "Invalid beta"),
        (dict(dof=1.0), "Invalid dof"),  # must be > d - 1 = 1
        (dict(scale_inv=-torch.eye(2, dtype=DTYPE)), "Invalid scale_inv"),
        (dict(scale_inv=torch.eye(3, dtype=DTYPE)), "Invalid scale_inv shape"),
        (dict(loc=torch.tensor([0.0, float("nan")], dtype=DTYPE)), "Invalid loc"),
    ],
)
def test_mixture_prior_is_checked(changes, match):
    good = vmp.MixturePrior(0.5, torch.zeros(2, dtype=DTYPE), 1.0, torch.eye(2, dtype=DTYPE), 1.5)
    assert good.check() is good
    bad = good._replace(**changes)
    with pytest.raises(ValueError, match=match):
        vmp.mixture_expected_loss(torch.ones(4, 2, dtype=DTYPE), bad)
    with pytest.raises(ValueError, match=match):
        vmp.mixture_candidate(torch.full((4, 3), 1 / 3, dtype=DTYPE), bad)


def test_prior_families_are_cached_per_prior_object():
    """Two priors with different values never share the cached families."""
    a = vmp.MixturePrior(0.5, torch.zeros(1, dtype=DTYPE), 1.0, torch.eye(1, dtype=DTYPE), 2.0)
    b = a._replace(concentration=3.0)
    fa = vmp._prior_families(a, 2, DTYPE, torch.device("cpu"))
    assert vmp._prior_families(a, 2, DTYPE, torch.device("cpu")) is fa
    fb = vmp._prior_families(b, 2, DTYPE, torch.device("cpu"))
    torch.testing.assert_close(fb[0].concentration, torch.full((2,), 3.0, dtype=DTYPE))
    torch.testing.assert_close(fa[0].concentration, torch.full((2,), 0.5, dtype=DTYPE))


def test_poisson_ncvmp_step_unchecked_path():
    """check=False gives the same step; the iterates stay positive definite."""
    gen = torch.Generator().manual_seed(3)
    X = torch.cat([torch.ones(8, 1, dtype=DTYPE), torch.randn(8, 1, generator=gen, dtype=DTYPE)], 1)
    y = torch.tensor([0.0, 1, 0, 0, 2, 0, 0, 1], dtype=DTYPE)
    P = 0.3 * torch.eye(2, dtype=DTYPE)
    qa = qb = FullGaussian.from_mean_precision(torch.zeros(2, dtype=DTYPE), torch.eye(2, dtype=DTYPE))
    for _ in range(20):
        qa = vmp.poisson_ncvmp_step(qa, X, y, P, 0.8)
        qb = vmp.poisson_ncvmp_step(qb, X, y, P, 0.8, check=False)
        assert float(torch.linalg.eigvalsh(qa.precision).min()) >= 0.3 - 1e-12  # H >= P0
    torch.testing.assert_close(qa.mean, qb.mean, rtol=0, atol=0)
    with pytest.raises(ValueError, match="Invalid prior_precision"):
        vmp.poisson_ncvmp_step(qa, X, y, -P)
