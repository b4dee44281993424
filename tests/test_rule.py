"""The generic rule: its algebra, its special cases, and its refusals."""

import pytest
import torch
from torch.testing import assert_close

import blrlib
from blrlib.estimators import expectation_gradient

from conftest import random_family, random_spd


def _quadratic(d, gen):
    hess = random_spd(d, gen)
    b = torch.randn(d, generator=gen, dtype=torch.float64)
    return hess, b, (lambda th: 0.5 * th @ hess @ th - b @ th)


@pytest.mark.parametrize("name", ["diagonal", "full", "bernoulli", "spin"])
@pytest.mark.parametrize("rho", [0.1, 0.5, 1.0])
def test_constant_base_measure_form(name, rho, generator):
    """λ' = (1 − ρ)λ − ρ ∇_μ E_q[ℓ̄] for families with a constant base measure."""
    q = random_family(name, generator)
    grads = [0.1 * torch.randn(t.shape, generator=generator, dtype=torch.float64) for t in q.expectation_params]
    if name == "full":
        grads[1] = 0.5 * (grads[1] + grads[1].T)
    if name in ("diagonal", "full"):  # keep the precision positive: a positive-definite Hessian estimate
        grads[1] = grads[1] @ grads[1].T if name == "full" else grads[1].abs()
    new = blrlib.blr_step(q, grads, rho)
    for lam_new, lam, g in zip(new.natural_params, q.natural_params, grads):
        assert_close(lam_new, (1 - rho) * lam - rho * g, rtol=1e-12, atol=1e-12)


def test_fixed_covariance_form_is_gradient_descent(generator):
    """λ' = λ − ρ ∇_μ E_q[ℓ̄]; with μ = m and λ = m/σ²: m' = m − ρσ² ∇_m."""
    q = blrlib.FixedCovarianceGaussian.from_mean(torch.randn(4, generator=generator, dtype=torch.float64), variance=0.3)
    g = torch.randn(4, generator=generator, dtype=torch.float64)
    new = blrlib.blr_step(q, (g,), 0.2)
    assert_close(new.mean, q.mean - 0.2 * 0.3 * g, rtol=1e-12, atol=1e-12)
    assert new.variance == q.variance


@pytest.mark.parametrize("rho", [0.3, 1.0])
def test_full_gaussian_delta_step_is_damped_newton(rho, generator):
    """S' = (1 − ρ)S + ρ∇²ℓ̄(m), m' = m − ρ S'⁻¹ ∇ℓ̄(m); ρ = 1 is Newton's method."""
    d = 4
    q = random_family("full", generator, d)
    hess, b, loss = _quadratic(d, generator)
    loss4 = lambda th: loss(th) + 0.25 * (th**4).sum()  # noqa: E731 (a non-quadratic loss)
    g = torch.func.grad(loss4)(q.mean)
    h = torch.autograd.functional.hessian(loss4, q.mean)
    new = blrlib.blr_step(q, expectation_gradient(loss4, q), rho)
    s_new = (1 - rho) * q.precision + rho * h
    assert_close(new.precision, s_new, rtol=1e-10, atol=1e-10)
    assert_close(new.mean, q.mean - rho * torch.linalg.solve(s_new, g), rtol=1e-10, atol=1e-10)


def test_conjugate_quadratic_is_solved_in_one_step(generator):
    """ℓ̄ quadratic ⇒ ρ = 1 gives the exact 'posterior' N(H⁻¹b, H⁻¹) from any start."""
    d = 3
    hess, b, loss = _quadratic(d, generator)
    for _ in range(3):
        q = random_family("full", generator, d)
        new = blrlib.blr_step(q, expectation_gradient(loss, q), 1.0)
        assert_close(new.mean, torch.linalg.solve(hess, b), rtol=1e-10, atol=1e-10)
        assert_close(new.precision, hess, rtol=1e-10, atol=1e-10)


def test_run_blr_records_iterates_and_converges(generator):
    hess, b, loss = _quadratic(2, generator)
    q0 = blrlib.FullGaussian.from_mean_precision(torch.zeros(2, dtype=torch.float64), torch.eye(2, dtype=torch.float64))
    result = blrlib.run_blr(q0, lambda q: expectation_gradient(loss, q), rho=0.5, num_steps=40)
    assert len(result.iterates) == 41 and result.iterates[0] is q0
    assert_close(result.final.mean, torch.linalg.solve(hess, b), rtol=1e-8, atol=1e-8)
    schedule = blrlib.run_blr(q0, lambda q: expectation_gradient(loss, q), rho=lambda t: 1.0, num_steps=1)
    assert_close(schedule.final.precision, hess, rtol=1e-10, atol=1e-10)


def test_step_does_not_mutate_its_inputs(generator):
    q = random_family("diagonal", generator)
    before = [t.clone() for t in q.natural_params]
    grads = (torch.ones(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64))
    grads_before = [g.clone() for g in grads]
    blrlib.blr_step(q, grads, 0.5)
    for a, b in zip(q.natural_params, before):
        assert torch.equal(a, b)
    for a, b in zip(grads, grads_before):
        assert torch.equal(a, b)


@pytest.mark.parametrize("rho", [0.0, -0.1, 1.5, float("nan"), "big"])
def test_rho_outside_unit_interval_is_rejected(rho, generator):
    q = random_family("diagonal", generator)
    with pytest.raises(ValueError, match=r"rho must"):
        blrlib.blr_step(q, q.expectation_params, rho)


def test_shape_and_structure_mismatch_is_rejected(generator):
    q = random_family("diagonal", generator)
    with pytest.raises(ValueError, match=r"grad_expectation must have 2 blocks"):
        blrlib.blr_step(q, (torch.zeros(3),), 0.5)
    with pytest.raises(ValueError, match=r"grad_expectation.mean has shape \(2,\)"):
        blrlib.blr_step(q, (torch.zeros(2), torch.zeros(3)), 0.5)


def test_nan_gradient_is_rejected(generator):
    q = random_family("full", generator)
    g = [torch.zeros_like(t) for t in q.expectation_params]
    g[0][1] = float("nan")
    with pytest.raises(ValueError, match=r"grad_expectation.mean contains NaN"):
        blrlib.blr_step(q, g, 0.5)


def test_step_that_breaks_positive_definiteness_says_so(generator):
    q = random_family("full", generator)
    g = [torch.zeros_like(t) for t in q.expectation_params]
    g[1] = -10.0 * q.precision  # a Hessian estimate so negative that S' is no longer positive definite
    with pytest.raises(ValueError, match="precision .* must be positive definite"):
        blrlib.blr_step(q, g, 0.5)


# ---------------------------------------------------------------------------- the improved rule
@pytest.mark.parametrize("name", ["diagonal", "full"])
def test_improved_step_keeps_precision_positive_for_negative_hessians(name, generator):
    """S' ⪰ S/2 even when the Hessian estimate is strongly negative (where the plain rule fails)."""
    q = random_family(name, generator)
    d = q.mean.numel()
    g = torch.randn(d, generator=generator, dtype=torch.float64)
    hess = -20.0 * (q.precision if name == "full" else q.precision)
    grads = q.gradient_wrt_expectation(g, hess)
    with pytest.raises(ValueError, match="positive"):
        blrlib.blr_step(q, grads, 0.5)
    new = blrlib.improved_blr_step(q, grads, 0.5)
    gap = new.precision - 0.5 * q.precision
    if name == "full":
        assert torch.linalg.eigvalsh(gap).min() >= -1e-10
    else:
        assert bool((gap >= -1e-12).all())


@pytest.mark.parametrize("name", ["diagonal", "full"])
def test_improved_step_is_plain_step_plus_correction(name, generator):
    q = random_family(name, generator)
    d = q.mean.numel()
    g = torch.randn(d, generator=generator, dtype=torch.float64)
    if name == "full":
        hess = random_spd(d, generator)
    else:
        hess = 0.5 + torch.rand(d, generator=generator, dtype=torch.float64)
    rho = 0.3
    grads = q.gradient_wrt_expectation(g, hess)
    plain, improved = blrlib.blr_step(q, grads, rho), blrlib.improved_blr_step(q, grads, rho)
    gap = q.precision - hess
    correction = 0.5 * rho**2 * (gap @ torch.linalg.solve(q.precision, gap) if name == "full" else gap * gap / q.precision)
    assert_close(improved.precision, plain.precision + correction, rtol=1e-10, atol=1e-10)
    assert_close(improved.mean, q.mean - rho * (torch.linalg.solve(improved.precision, g) if name == "full" else g / improved.precision), rtol=1e-10, atol=1e-10)
    # With Ĥ = S the correction vanishes and both rules agree.
    same = q.gradient_wrt_expectation(g, q.precision)
    assert_close(blrlib.improved_blr_step(q, same, rho).precision, blrlib.blr_step(q, same, rho).precision, rtol=1e-12, atol=1e-12)


def test_improved_step_rejects_other_families(generator):
    q = random_family("bernoulli", generator)
    with pytest.raises(ValueError, match="q must be a FullGaussian or DiagonalGaussian"):
        blrlib.improved_blr_step(q, q.expectation_params, 0.5)


# ---------------------------------------------------------------------------- run_blr's step index
def test_run_blr_passes_the_step_index_to_two_argument_callbacks(generator):
    """A loss that changes every step (a filter's, a minibatch's): the callback gets t = 0, 1, ..."""
    q0 = random_family("full", generator, 2)
    targets = torch.randn(5, 2, generator=generator, dtype=torch.float64)
    seen = []

    def grads(q, t):
        seen.append(t)
        return expectation_gradient(lambda th: 0.5 * ((th - targets[t]) ** 2).sum(), q)

    result = blrlib.run_blr(q0, grads, rho=1.0, num_steps=5)
    assert seen == [0, 1, 2, 3, 4]
    for t in range(5):  # rho = 1 on a quadratic: each iterate is that step's target
        assert_close(result.iterates[t + 1].mean, targets[t], rtol=1e-12, atol=1e-12)
    # pass_step=False keeps the one-argument form even for a callback with two parameters.
    calls = []
    blrlib.run_blr(q0, lambda q, extra=None, *rest: calls.append(extra) or grads(q, 0), 1.0, 2, pass_step=False)
    assert calls == [None, None]
