"""Estimators of E_q[∇ℓ] and E_q[∇²ℓ]: exact where they should be, convergent where they are Monte Carlo."""

import math

import pytest
import torch
from torch.testing import assert_close

import blrlib
from blrlib.estimators import delta_method, expectation_gradient, gauss_newton, monte_carlo

from conftest import random_family, random_spd


def _quadratic(d, gen):
    hess = random_spd(d, gen)
    b = torch.randn(d, generator=gen, dtype=torch.float64)
    return hess, b, (lambda th: 0.5 * th @ hess @ th - b @ th)


def test_delta_method_on_quadratic_is_exact(generator):
    hess, b, loss = _quadratic(3, generator)
    m = torch.randn(3, generator=generator, dtype=torch.float64)
    est = delta_method(loss, m)
    assert_close(est.gradient, hess @ m - b, rtol=1e-12, atol=1e-12)
    assert_close(est.hessian, hess, rtol=1e-12, atol=1e-12)
    assert_close(delta_method(loss, m, "diagonal").hessian, torch.diagonal(hess), rtol=1e-12, atol=1e-12)
    assert delta_method(loss, m, "none").hessian is None


@pytest.mark.parametrize("name", ["full", "diagonal"])
@pytest.mark.parametrize("method", ["exact", "stein"])
def test_monte_carlo_converges_for_quadratic_loss(name, method):
    """For ℓ = ½θᵀHθ − bᵀθ: E_q[∇ℓ] = Hm − b and E_q[∇²ℓ] = H; the estimates approach them at the 1/√K rate."""
    gen = torch.Generator().manual_seed(3)
    d = 3
    hess, b, loss = _quadratic(d, gen)
    q = random_family(name, gen, d)
    exact_grad = hess @ q.mean - b
    exact_hess = hess if name == "full" else torch.diagonal(hess)
    errors = []
    for k in (100, 10_000):
        est = monte_carlo(loss, q, k, generator=gen, hessian_method=method)
        errors.append(((est.gradient - exact_grad).norm().item(), (est.hessian - exact_hess).norm().item()))
        if method == "exact":
            assert_close(est.hessian, exact_hess, rtol=1e-10, atol=1e-10)
    assert errors[1][0] < 0.25 * errors[0][0] + 1e-12
    assert errors[1][0] < 0.1 * exact_grad.norm().item() + 0.1
    if method == "stein":
        assert errors[1][1] < 0.35 * errors[0][1]
        assert errors[1][1] < 0.1 * exact_hess.norm().item()


def test_monte_carlo_matches_closed_form_for_non_quadratic_loss():
    """ℓ(θ) = Σ cos θ_i under N(m, diag(s)⁻¹): E[∇ℓ] = −sin(m) e^{−v/2}, E[∇²ℓ] = −cos(m) e^{−v/2}, v = 1/s."""
    gen = torch.Generator().manual_seed(5)
    q = blrlib.DiagonalGaussian.from_mean_precision(torch.tensor([0.3, -1.0], dtype=torch.float64), torch.tensor([2.0, 0.8], dtype=torch.float64))
    loss = lambda th: torch.cos(th).sum()  # noqa: E731
    damp = torch.exp(-0.5 / q.precision)
    k = 200_000
    for method in ("exact", "stein"):
        est = monte_carlo(loss, q, k, generator=gen, hessian_method=method)
        tol = 6.0 / math.sqrt(k) * 3
        assert_close(est.gradient, -torch.sin(q.mean) * damp, rtol=0, atol=tol)
        assert_close(est.hessian, -torch.cos(q.mean) * damp, rtol=0, atol=tol)


def test_monte_carlo_is_reproducible_with_generator():
    q = blrlib.FullGaussian.from_mean_precision(torch.zeros(2, dtype=torch.float64), torch.eye(2, dtype=torch.float64))
    loss = lambda th: torch.logsumexp(th, 0)  # noqa: E731
    a = monte_carlo(loss, q, 10, generator=torch.Generator().manual_seed(0), hessian_method="stein")
    b = monte_carlo(loss, q, 10, generator=torch.Generator().manual_seed(0), hessian_method="stein")
    assert torch.equal(a.gradient, b.gradient) and torch.equal(a.hessian, b.hessian)
    assert_close(a.hessian, a.hessian.T, rtol=0, atol=0)


def test_gauss_newton_matches_loop_over_examples(generator):
    n, d = 12, 4
    x = torch.randn(n, d, generator=generator, dtype=torch.float64)
    y = (torch.rand(n, generator=generator) < 0.5).to(torch.float64)
    theta = torch.randn(d, generator=generator, dtype=torch.float64)

    def per_example(th, xi, yi):
        return torch.nn.functional.binary_cross_entropy_with_logits(xi @ th, yi)

    est_diag = gauss_newton(per_example, theta, x, y)
    est_full = gauss_newton(per_example, theta, x, y, diagonal=False)
    grads = torch.stack([torch.func.grad(per_example)(theta, x[i], y[i]) for i in range(n)])
    assert_close(est_diag.gradient, grads.sum(0), rtol=1e-12, atol=1e-12)
    assert_close(est_diag.hessian, (grads**2).sum(0), rtol=1e-12, atol=1e-12)
    assert_close(est_full.hessian, grads.T @ grads, rtol=1e-12, atol=1e-12)
    assert_close(torch.diagonal(est_full.hessian), est_diag.hessian, rtol=1e-12, atol=1e-12)


def test_expectation_gradient_chains_bonnet_and_price(generator):
    """∇_μ E_q[ℓ] = (E[∇ℓ] − E[∇²ℓ] m, ½ E[∇²ℓ]), checked against autograd through μ ↦ E_q[ℓ] for a quadratic ℓ."""
    d = 3
    hess, b, loss = _quadratic(d, generator)
    q = random_family("full", generator, d)

    def expected_loss(mean, second):  # E_q[½θᵀHθ − bᵀθ] = ½ tr(H (Σ + mmᵀ)) − bᵀm, written through μ
        return 0.5 * torch.trace(hess @ second) - b @ mean

    mu = [t.clone().requires_grad_(True) for t in q.expectation_params]
    auto = torch.autograd.grad(expected_loss(*mu), mu)
    ours = expectation_gradient(loss, q)
    assert_close(ours[0], auto[0], rtol=1e-10, atol=1e-10)
    assert_close(ours[1], auto[1], rtol=1e-10, atol=1e-10)


def test_estimators_reject_bad_input(generator):
    q = random_family("full", generator)
    loss = lambda th: (th**2).sum()  # noqa: E731
    with pytest.raises(ValueError, match="num_samples must be a positive integer"):
        monte_carlo(loss, q, 0)
    with pytest.raises(ValueError, match="hessian_method must be one of"):
        monte_carlo(loss, q, 3, hessian_method="magic")
    with pytest.raises(ValueError, match="q must be a Gaussian candidate"):
        monte_carlo(loss, blrlib.Bernoulli.from_probs([0.5]), 3)
    with pytest.raises(ValueError, match="loss contains NaN"):
        delta_method(lambda th: th.sum() * float("nan"), q.mean)
    with pytest.raises(ValueError, match="loss must return a scalar tensor"):
        delta_method(lambda th: th, q.mean)
    with pytest.raises(ValueError, match="method must be one of"):
        expectation_gradient(loss, q, method="laplace")
    with pytest.raises(ValueError, match=r"data\[1\] has 3 examples but data\[0\] has 4"):
        gauss_newton(lambda th, x, y: (x @ th - y) ** 2, torch.zeros(2), torch.zeros(4, 2), torch.zeros(3))
