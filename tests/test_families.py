"""Properties every candidate family must have, checked on random parameters."""

import math

import pytest
import torch
from torch.testing import assert_close

import blrlib
from blrlib.families import flatten_params, unflatten_params

from conftest import FAMILIES, random_family, random_spd

SEEDS = range(5)


def _family(name, seed, d=3):
    return random_family(name, torch.Generator().manual_seed(seed), d)


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("seed", SEEDS)
def test_natural_expectation_round_trip(name, seed):
    q = _family(name, seed)
    kwargs = {"variance": q.variance} if name == "fixed" else {"support": q.support} if name in ("bernoulli", "spin") else {}
    back = type(q).from_expectation(q.expectation_params, **kwargs)
    for a, b in zip(back.natural_params, q.natural_params):
        assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("seed", SEEDS)
def test_expectation_is_gradient_of_log_partition(name, seed):
    """μ = ∇A(λ): closed form against torch.autograd of the log-partition."""
    q = _family(name, seed)
    natural = [t.clone().requires_grad_(True) for t in q.natural_params]
    value = q.log_partition_fn(q.NaturalParams(*natural))
    grads = torch.autograd.grad(value, natural)
    for g, mu in zip(grads, q.expectation_params):
        assert_close(g, mu, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", ["fixed", "diagonal", "bernoulli", "spin"])
@pytest.mark.parametrize("seed", SEEDS)
def test_closed_form_fisher_matches_autograd_hessian(name, seed):
    q = _family(name, seed)
    generic = blrlib.ExponentialFamily.fisher(q)
    assert_close(q.fisher(), generic, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("seed", SEEDS)
def test_full_gaussian_fisher_is_jacobian_of_expectation(seed):
    """F v = (∂μ/∂λ) v for symmetric directions v (the full Gaussian's Fisher is autograd's Hessian)."""
    gen = torch.Generator().manual_seed(seed)
    q = random_family("full", gen)
    d = q.mean.numel()
    v1 = torch.randn(d, generator=gen, dtype=torch.float64)
    b = torch.randn(d, d, generator=gen, dtype=torch.float64)
    v2 = 0.5 * (b + b.T)
    direction = torch.cat([v1, v2.reshape(-1)])

    def mu_of_flat(flat):
        return flatten_params(q._expectation_from_natural(unflatten_params(flat, q.natural_params)))

    _, jvp = torch.autograd.functional.jvp(mu_of_flat, flatten_params(q.natural_params), direction)
    assert_close(q.fisher() @ direction, jvp, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("name", ["fixed", "diagonal", "bernoulli", "spin"])
@pytest.mark.parametrize("seed", SEEDS)
def test_natural_gradient_is_gradient_wrt_expectation(name, seed):
    """F⁻¹ ∇_λ f(μ(λ)) = ∇_μ f(μ) for a nonlinear f (the full Gaussian is covered by the JVP test)."""
    q = _family(name, seed)
    weights = [torch.linspace(-1.0, 1.0, t.numel(), dtype=torch.float64).reshape(t.shape) for t in q.natural_params]

    def f(mu_blocks):
        return sum((torch.sin(w * m) * m).sum() for w, m in zip(weights, mu_blocks))

    natural = [t.clone().requires_grad_(True) for t in q.natural_params]
    grad_lambda = torch.autograd.grad(f(q._expectation_from_natural(q.NaturalParams(*natural))), natural)
    mu = [t.clone().requires_grad_(True) for t in q.expectation_params]
    grad_mu = torch.autograd.grad(f(mu), mu)
    natural_grad = torch.linalg.solve(q.fisher(), flatten_params(grad_lambda))
    assert_close(natural_grad, flatten_params(grad_mu), rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("seed", SEEDS)
def test_kl_is_bregman_divergence_and_closed_form(name, seed):
    q, p = _family(name, seed), _family(name, seed + 100)
    if name == "fixed":
        p = blrlib.FixedCovarianceGaussian.from_mean(p.mean, variance=q.variance)
    closed = q.kl_divergence(p)
    bregman = blrlib.ExponentialFamily.kl_divergence(q, p)
    assert_close(closed, bregman, rtol=1e-9, atol=1e-12)
    assert closed > 0
    assert_close(q.kl_divergence(q), torch.zeros((), dtype=torch.float64), atol=1e-12, rtol=0)


@pytest.mark.parametrize("seed", SEEDS)
def test_full_gaussian_kl_against_textbook_formula(seed):
    gen = torch.Generator().manual_seed(seed)
    q, p = random_family("full", gen), random_family("full", gen)
    cov_q, cov_p = q.covariance, p.covariance
    d = q.mean.numel()
    diff = p.mean - q.mean
    textbook = 0.5 * (
        torch.trace(torch.linalg.solve(cov_p, cov_q)) + diff @ torch.linalg.solve(cov_p, diff) - d
        + torch.logdet(cov_p) - torch.logdet(cov_q)
    )
    assert_close(q.kl_divergence(p), textbook, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["fixed", "diagonal", "full"])
def test_gaussian_log_prob_and_entropy_match_torch_distributions(name, generator):
    q = random_family(name, generator)
    if name == "full":
        ref = torch.distributions.MultivariateNormal(q.mean, precision_matrix=q.precision)
    elif name == "diagonal":
        ref = torch.distributions.Independent(torch.distributions.Normal(q.mean, q.stddev), 1)
    else:
        ref = torch.distributions.Independent(torch.distributions.Normal(q.mean, math.sqrt(q.variance) * torch.ones_like(q.mean)), 1)
    theta = torch.randn(7, q.mean.numel(), generator=generator, dtype=torch.float64)
    assert_close(q.log_prob(theta), ref.log_prob(theta), rtol=1e-10, atol=1e-10)
    assert_close(q.entropy(), ref.entropy(), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("support", [(0.0, 1.0), (-1.0, 1.0)])
def test_bernoulli_log_prob_entropy(support, generator):
    p = 0.1 + 0.8 * torch.rand(4, generator=generator, dtype=torch.float64)
    q = blrlib.Bernoulli.from_probs(p, support=support)
    theta = q.sample(5, generator=generator)
    assert set(theta.unique().tolist()) <= set(support)
    z = (theta == support[1]).to(torch.float64)
    ref = torch.distributions.Bernoulli(probs=p)
    assert_close(q.log_prob(theta), ref.log_prob(z).sum(-1), rtol=1e-10, atol=1e-12)
    assert_close(q.entropy(), ref.entropy().sum(), rtol=1e-10, atol=1e-12)
    assert_close(q.probs, p, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", FAMILIES)
def test_sample_moments_match_expectation_params(name):
    """E_q[T(θ)] = μ, within 5 Monte Carlo standard errors."""
    gen = torch.Generator().manual_seed(7)
    q = random_family(name, gen, d=2)
    theta = q.sample(40_000, generator=gen)
    stats = q.sufficient_statistics(theta)
    for block, mu in zip(stats, q.expectation_params):
        est = block.mean(0)
        se = block.std(0) / math.sqrt(block.shape[0])
        assert bool(((est - mu).abs() <= 5 * se + 1e-12).all()), (est, mu)


def test_constructors_do_not_mutate_or_alias_inputs(generator):
    mean = torch.randn(3, generator=generator, dtype=torch.float64)
    precision = random_spd(3, generator)
    mean_copy, precision_copy = mean.clone(), precision.clone()
    q = blrlib.FullGaussian.from_mean_precision(mean, precision)
    mean.add_(100.0)
    precision.mul_(3.0)
    assert_close(q.mean, mean_copy, rtol=1e-12, atol=1e-12)
    assert_close(q.precision, precision_copy, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------- bad input
def test_negative_precision_is_rejected():
    with pytest.raises(ValueError, match="precision must be strictly positive"):
        blrlib.DiagonalGaussian.from_mean_precision([0.0, 1.0], [1.0, -2.0])
    with pytest.raises(ValueError, match="precision must be positive definite"):
        blrlib.FullGaussian.from_mean_precision([0.0, 1.0], [[1.0, 0.0], [0.0, -1.0]])


def test_non_symmetric_precision_is_rejected():
    with pytest.raises(ValueError, match="precision must be symmetric"):
        blrlib.FullGaussian.from_mean_precision([0.0, 1.0], [[2.0, 1.0], [0.0, 2.0]])


def test_mismatched_shapes_are_rejected():
    with pytest.raises(ValueError, match=r"precision has shape \(3,\) but mean has shape \(2,\)"):
        blrlib.DiagonalGaussian.from_mean_precision([0.0, 1.0], [1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match=r"precision must have shape \(2, 2\)"):
        blrlib.FullGaussian.from_mean_precision([0.0, 1.0], torch.eye(3))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_parameters_are_rejected(bad):
    with pytest.raises(ValueError, match="mean contains"):
        blrlib.FullGaussian.from_mean_precision([0.0, bad], torch.eye(2))
    with pytest.raises(ValueError, match="probs contains"):
        blrlib.Bernoulli.from_probs([0.5, bad])


def test_other_bad_arguments():
    with pytest.raises(ValueError, match="variance must be a finite positive number"):
        blrlib.FixedCovarianceGaussian.from_mean([0.0], variance=-1.0)
    with pytest.raises(ValueError, match="probs must lie strictly between 0 and 1"):
        blrlib.Bernoulli.from_probs([0.0, 0.5])
    with pytest.raises(ValueError, match="support must be two finite numbers"):
        blrlib.Bernoulli.from_probs([0.5], support=(1.0, -1.0))
    with pytest.raises(ValueError, match="mean must be a vector"):
        blrlib.DiagonalGaussian.from_mean_precision(torch.tensor(0.0), torch.tensor(1.0))
    with pytest.raises(ValueError, match="mean must be a vector"):
        blrlib.FixedCovarianceGaussian.from_mean(torch.zeros(2, 2))
    with pytest.raises(ValueError, match="other must be a FullGaussian"):
        blrlib.FullGaussian.from_mean_precision([0.0], [[1.0]]).kl_divergence(blrlib.DiagonalGaussian.from_mean_precision([0.0], [1.0]))
