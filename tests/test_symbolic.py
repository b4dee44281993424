"""Symbolic families: the derivations the book relies on, and that they would catch a mistake."""

import pytest
import sympy as sp

from blrlib import symbolic

FAST_FAMILIES = [symbolic.bernoulli, symbolic.poisson, symbolic.gamma, symbolic.gaussian_fixed_variance, symbolic.gaussian_1d]


@pytest.mark.parametrize("make", FAST_FAMILIES, ids=lambda f: f.__name__)
def test_fisher_is_kl_hessian_and_natural_gradient_identity(make):
    fam = make()
    assert symbolic.is_zero(fam.kl_hessian_at_zero() - fam.fisher)
    assert symbolic.is_zero(fam.natural_gradient_residual())


def _gaussian_density_in_mean_precision(fam):
    """exp(log q) with λ = (s m, −s/2) written through a real mean m and a positive precision s."""
    m, s = sp.Symbol("m", real=True), sp.Symbol("s", positive=True)
    l1, l2 = fam.natural
    return sp.exp(fam.log_density), {l1: s * m, l2: -s / 2}


def test_expectation_params_are_expected_sufficient_statistics():
    fam = symbolic.gaussian_1d()
    (theta,) = fam.theta
    density, at = _gaussian_density_in_mean_precision(fam)
    density = density.subs(at)
    for k in range(2):
        moment = sp.integrate(fam.sufficient_statistics[k] * density, (theta, -sp.oo, sp.oo))
        assert symbolic.is_zero(moment - fam.expectation_params[k].subs(at))
    assert symbolic.is_zero(sp.integrate(density, (theta, -sp.oo, sp.oo)) - 1)


def test_known_closed_forms():
    lam = symbolic.bernoulli().natural[0]
    assert symbolic.is_zero(symbolic.bernoulli().expectation_params[0] - 1 / (1 + sp.exp(-lam)))
    assert symbolic.is_zero(symbolic.poisson().fisher[0, 0] - sp.exp(symbolic.poisson().natural[0]))
    g = symbolic.gamma()
    alpha, beta = g.natural[0] + 1, -g.natural[1]
    assert symbolic.is_zero(g.expectation_params[1] - alpha / beta)


@pytest.mark.parametrize("make", [symbolic.bernoulli, symbolic.gaussian_1d, symbolic.gamma], ids=lambda f: f.__name__)
def test_entropy_gradient_is_minus_lambda(make):
    fam = make()
    assert symbolic.is_zero(fam.entropy_gradient_expectation() + fam.natural)


def test_non_constant_base_measure_is_refused():
    with pytest.raises(ValueError, match="base measure"):
        symbolic.poisson().entropy_gradient_expectation()


def test_a_wrong_log_partition_is_caught():
    """If A were off by a factor, the expectation parameters would no longer be E[T] and the check fails."""
    fam = symbolic.gaussian_1d()
    wrong = symbolic.SymbolicFamily("wrong", fam.theta, fam.natural, fam.sufficient_statistics, fam.log_base_measure, 2 * fam.log_partition)
    (theta,) = fam.theta
    density, at = _gaussian_density_in_mean_precision(fam)
    first_moment = sp.integrate(theta * density.subs(at), (theta, -sp.oo, sp.oo))
    assert not symbolic.is_zero(first_moment - wrong.expectation_params[0].subs(at))
    assert symbolic.is_zero(first_moment - fam.expectation_params[0].subs(at))


def test_shape_mismatch_is_rejected():
    x, lam = sp.symbols("x lam")
    with pytest.raises(ValueError, match="natural has shape"):
        symbolic.SymbolicFamily("bad", (x,), sp.Matrix([lam]), sp.Matrix([x, x**2]), sp.Integer(0), lam**2)
