"""Conjugate Bayes as one rule step, against closed forms, scipy.stats and scikit-learn."""

import warnings

import numpy as np
import pytest
import scipy.special
import scipy.stats
import torch

from blrlib.families import Beta, FullGaussian, Gamma
from blrlib.inference import conjugate as cj

DT = torch.float64


def _beta(a, b):
    return Beta.from_concentrations(torch.tensor(a, dtype=DT), torch.tensor(b, dtype=DT))


def _gamma(a, b):
    return Gamma.from_shape_rate(torch.tensor(a, dtype=DT), torch.tensor(b, dtype=DT))


@pytest.mark.parametrize("seed,a0,b0", [(0, 1.0, 1.0), (1, 2.5, 0.7), (2, 0.5, 4.0)])
def test_beta_bernoulli_matches_closed_form_and_scipy(seed, a0, b0):
    gen = torch.Generator().manual_seed(seed)
    y = (torch.rand(25, generator=gen, dtype=DT) < 0.3).to(DT)
    start = _beta(3.0 + seed, 0.2 + seed)  # any start
    post = cj.conjugate_step(_beta(a0, b0), cj.bernoulli_likelihood(y), start=start)
    k, n = float(y.sum()), len(y)
    assert abs(float(post.alpha) - (a0 + k)) < 1e-12 and abs(float(post.beta) - (b0 + n - k)) < 1e-12
    grid = torch.linspace(0.05, 0.95, 7, dtype=DT)
    np.testing.assert_allclose(post.log_prob(grid).numpy(), scipy.stats.beta(a0 + k, b0 + n - k).logpdf(grid.numpy()),
                               rtol=1e-12)
    evidence = cj.log_evidence(_beta(a0, b0), post, 0.0)
    assert abs(float(evidence) - (scipy.special.betaln(a0 + k, b0 + n - k) - scipy.special.betaln(a0, b0))) < 1e-12


@pytest.mark.parametrize("seed,a0,b0", [(0, 1.0, 1.0), (1, 3.0, 0.5)])
def test_gamma_poisson_matches_closed_form_and_scipy(seed, a0, b0):
    rng = np.random.default_rng(seed)
    y = torch.tensor(rng.poisson(3.0, size=12), dtype=DT)
    post = cj.conjugate_step(_gamma(a0, b0), cj.poisson_likelihood(y), start=_gamma(9.0, 9.0))
    a, b = a0 + float(y.sum()), b0 + len(y)
    assert abs(float(post.shape) - a) < 1e-12 and abs(float(post.rate) - b) < 1e-12
    grid = torch.linspace(0.5, 6.0, 6, dtype=DT)
    np.testing.assert_allclose(post.log_prob(grid).numpy(), scipy.stats.gamma(a, scale=1 / b).logpdf(grid.numpy()),
                               rtol=1e-12)
    # evidence: the negative binomial marginal, product over the sequential predictives
    log_base = -float(torch.lgamma(y + 1).sum())
    reference, q = 0.0, _gamma(a0, b0)
    for count in y:
        nb = scipy.stats.nbinom(float(q.shape), float(q.rate) / (float(q.rate) + 1))
        reference += nb.logpmf(int(count))
        q = cj.conjugate_step(q, cj.poisson_likelihood(count.reshape(1)))
    assert abs(float(cj.log_evidence(_gamma(a0, b0), post, log_base)) - reference) < 1e-10


@pytest.mark.parametrize("rho", [0.2, 0.6])
def test_contraction_with_rho_below_one(rho):
    prior = _beta(2.0, 2.0)
    lik = cj.bernoulli_likelihood(torch.tensor([1.0, 1.0, 0.0], dtype=DT))
    exact = cj.conjugate_step(prior, lik)
    q = start = _beta(0.5, 6.0)
    for t in range(1, 6):
        q = cj.conjugate_step(prior, lik, start=q, rho=rho)
        for lam, lam_star, lam0 in zip(q.natural_params, exact.natural_params, start.natural_params):
            torch.testing.assert_close(lam - lam_star, (1 - rho) ** t * (lam0 - lam_star), rtol=1e-12, atol=1e-12)


def diabetes():
    from sklearn.datasets import load_diabetes

    X, y = load_diabetes(return_X_y=True)
    return X, y


def test_linear_regression_matches_sklearn_ridge_and_bayesian_ridge():
    from sklearn.linear_model import BayesianRidge, Ridge

    X, y = diabetes()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        br = BayesianRidge(max_iter=50).fit(X, y)
    Xc, yc = torch.tensor(X - X.mean(0)), torch.tensor(y - y.mean())
    q = cj.bayesian_linear_regression(Xc, yc, noise_precision=br.alpha_, prior_precision=br.lambda_)
    np.testing.assert_allclose(q.mean.numpy(), br.coef_, rtol=1e-10, atol=1e-9)
    np.testing.assert_allclose(q.covariance.numpy(), br.sigma_, rtol=1e-10, atol=1e-9)
    ridge = Ridge(alpha=br.lambda_ / br.alpha_).fit(X, y)
    np.testing.assert_allclose(q.mean.numpy(), ridge.coef_, rtol=1e-10, atol=1e-9)
    mean, sd = cj.linear_regression_predictive(q, torch.tensor(X[:20] - X.mean(0)), br.alpha_)
    ref_mean, ref_sd = br.predict(X[:20], return_std=True)
    np.testing.assert_allclose(mean.numpy() + y.mean(), ref_mean, rtol=1e-10)
    np.testing.assert_allclose(sd.numpy(), ref_sd, rtol=1e-10)
    # at the initial hyperparameters it does not agree: BayesianRidge re-estimates them
    q_init = cj.bayesian_linear_regression(Xc, yc, noise_precision=1 / np.var(y), prior_precision=1.0)
    assert np.abs(q_init.mean.numpy() - br.coef_).max() > 1.0


def test_linear_regression_from_any_start_stream_and_evidence():
    gen = torch.Generator().manual_seed(4)
    X, y = torch.randn(15, 3, generator=gen, dtype=DT), torch.randn(15, generator=gen, dtype=DT)
    alpha, delta = 2.0, 0.5
    start = FullGaussian.from_mean_precision(torch.ones(3, dtype=DT), 7 * torch.eye(3, dtype=DT))
    q = cj.bayesian_linear_regression(X, y, noise_precision=alpha, prior_precision=delta, start=start)
    S = alpha * X.T @ X + delta * torch.eye(3, dtype=DT)
    torch.testing.assert_close(q.precision, S, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(q.mean, torch.linalg.solve(S, alpha * X.T @ y), rtol=1e-12, atol=1e-12)
    prior = FullGaussian.from_mean_precision(torch.zeros(3, dtype=DT), delta * torch.eye(3, dtype=DT))
    streamed = cj.stream(prior, (cj.linear_regression_likelihood(X[i:i + 1], y[i:i + 1], alpha) for i in range(15)))
    torch.testing.assert_close(streamed[-1].mean, q.mean, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(streamed[-1].precision, q.precision, rtol=1e-10, atol=1e-10)
    cov_y = X @ X.T / delta + torch.eye(15, dtype=DT) / alpha
    reference = torch.distributions.MultivariateNormal(torch.zeros(15, dtype=DT), cov_y).log_prob(y)
    evidence = cj.log_evidence(prior, q, cj.linear_regression_log_base(y, alpha))
    torch.testing.assert_close(evidence, reference, rtol=1e-12, atol=1e-12)


def test_bad_input():
    with pytest.raises(ValueError, match="Invalid y"):
        cj.bernoulli_likelihood(torch.tensor([0.0, 2.0]))
    with pytest.raises(ValueError, match="Invalid y"):
        cj.poisson_likelihood(torch.tensor([1.5]))
    with pytest.raises(ValueError, match="Invalid X"):
        cj.linear_regression_likelihood(torch.ones(3, 2), torch.ones(4), 1.0)
    with pytest.raises(ValueError, match="Invalid noise_precision"):
        cj.linear_regression_likelihood(torch.ones(3, 2), torch.ones(3), 0.0)
    with pytest.raises(ValueError, match="Invalid likelihood_natural"):
        cj.conjugate_step(_beta(1.0, 1.0), cj.poisson_likelihood(torch.tensor([1.0]))[:1])
    with pytest.raises(ValueError, match="Invalid start"):
        cj.conjugate_step(_beta(1.0, 1.0), cj.bernoulli_likelihood(torch.tensor([1.0])), start=_gamma(1.0, 1.0))
    with pytest.raises(ValueError, match="Invalid likelihoods"):
        cj.stream(_beta(1.0, 1.0), [])


@pytest.mark.parametrize("family", ["beta", "gamma"])
def test_conjugate_loss_gradient_is_minus_prior_plus_likelihood(family):
    if family == "beta":
        prior, lik = _beta(2.5, 0.7), cj.bernoulli_likelihood(torch.tensor([1.0, 0.0, 1.0], dtype=DT))
    else:
        prior, lik = _gamma(1.5, 2.0), cj.poisson_likelihood(torch.tensor([3.0, 0.0, 4.0, 1.0], dtype=DT))
    gradient = cj.conjugate_loss_gradient(prior, lik)
    for g, lam0, lam_lik in zip(gradient, prior.natural_params, lik):
        torch.testing.assert_close(g, -(lam0 + lam_lik), rtol=0, atol=0)
