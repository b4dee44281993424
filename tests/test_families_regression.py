"""blrlib's numerical families against the SymPy derivations of `blrlib.symbolic`.

For each family the closed forms of the expectation parameters, the Fisher information, the
entropy and the KL divergence are compared, at random parameter values, with quantities derived
in SymPy from the log-partition alone:

* mu and F: the lambdified gradient and Hessian of A;
* the entropy: H(q) = A(lam) - <lam, mu> - E[log h(theta)];
* the KL divergence: the Bregman divergence A(lam') - A(lam) - <lam' - lam, mu(lam)>.

Sampling is checked more loosely: sample means of T(theta) lie within five Monte Carlo standard
errors of mu. (Moved here from the chapter *Exponential families*, which keeps one example.)
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import sympy as sp
import torch
from numpy.testing import assert_allclose

from blrlib import Bernoulli, DiagonalGaussian, FixedCovarianceGaussian, FullGaussian, symbolic
from blrlib.symbolic import is_zero

DTYPE = torch.float64
RTOL = 1e-10
N_MC = 100_000


def assert_mc_mean(samples: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    """Sample mean within five Monte Carlo standard errors of the expected value."""
    se = samples.std(0) / math.sqrt(samples.shape[0])
    err = (samples.mean(0) - expected).abs()
    assert bool((err <= 5 * se + 1e-12).all()), f"{what}: |mean - expected| = {err} vs 5 SE = {5 * se}"


def bregman(A_fn, mu_fn, lam, lam_other) -> float:
    """KL(q_lam || q_lam') = A(lam') - A(lam) - <lam' - lam, mu(lam)>, from SymPy."""
    return A_fn(*lam_other) - A_fn(*lam) - np.dot(np.subtract(lam_other, lam), np.ravel(mu_fn(*lam)))


def np_(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def bernoulli_plus_minus() -> symbolic.SymbolicFamily:
    """The Bernoulli on {-1, +1}: A = log(e^-lam + e^lam), normalised by hand."""
    lam = sp.Symbol("lambda", real=True)
    theta = sp.Symbol("theta", real=True)
    return symbolic.SymbolicFamily(
        "Bernoulli on {-1, +1}", (theta,), sp.Matrix([lam]), sp.Matrix([theta]), sp.Integer(0),
        sp.log(sum(sp.exp(lam * t) for t in (-1, 1))),
    )


def test_plus_minus_family_is_tanh():
    family = bernoulli_plus_minus()
    (lam,) = family.natural
    assert is_zero(family.expectation_params[0] - sp.tanh(lam))
    assert is_zero((family.fisher[0, 0] - (1 - sp.tanh(lam) ** 2)).rewrite(sp.exp))


@pytest.mark.parametrize("support", [(0.0, 1.0), (-1.0, 1.0)], ids=["0/1", "-1/+1"])
@pytest.mark.parametrize("seed", [0, 1])
def test_bernoulli_against_sympy(support, seed):
    family = symbolic.bernoulli() if support == (0.0, 1.0) else bernoulli_plus_minus()
    (lam,) = family.natural
    A = sp.lambdify(lam, family.log_partition, "numpy")
    mu = sp.lambdify(lam, family.expectation_params[0], "numpy")
    F = sp.lambdify(lam, family.fisher[0, 0], "numpy")
    g = torch.Generator().manual_seed(seed)
    logits, logits_other = 2 * torch.randn(5, generator=g, dtype=DTYPE), 2 * torch.randn(5, generator=g, dtype=DTYPE)
    q = Bernoulli.from_natural((logits,), support=support)
    q_other = Bernoulli.from_natural((logits_other,), support=support)
    L, L2 = logits.numpy(), logits_other.numpy()
    assert_allclose(np_(q.expectation_params.mean), mu(L), rtol=RTOL)
    assert_allclose(np_(q.fisher()), np.diag(F(L)), rtol=RTOL)
    assert_allclose(np_(q.entropy()), np.sum(A(L) - L * mu(L)), rtol=RTOL)
    kl = sum(bregman(A, mu, [a], [b]) for a, b in zip(L, L2))
    assert_allclose(np_(q.kl_divergence(q_other)), kl, rtol=RTOL)
    assert_mc_mean(q.sample(N_MC, generator=g), q.expectation_params.mean, "Bernoulli samples")


@pytest.mark.parametrize("variance", [0.7, 2.5])
def test_fixed_variance_gaussian_against_sympy(variance):
    exact = sp.Rational(str(variance))
    family = symbolic.gaussian_fixed_variance(exact)
    (lam,) = family.natural
    A = sp.lambdify(lam, family.log_partition, "numpy")
    mu = sp.lambdify(lam, family.expectation_params[0], "numpy")
    # H = A - lam mu - E[log h], with log h = -theta^2 / (2 sigma^2): constant in the mean.
    mu_sym = family.expectation_params[0]
    entropy = family.log_partition - lam * mu_sym + (mu_sym**2 + exact) / (2 * exact)
    assert is_zero(entropy - sp.log(2 * sp.pi * sp.E * exact) / 2)
    g = torch.Generator().manual_seed(3)
    means, means_other = torch.randn(4, generator=g, dtype=DTYPE), torch.randn(4, generator=g, dtype=DTYPE)
    q = FixedCovarianceGaussian.from_mean(means, variance)
    q_other = FixedCovarianceGaussian.from_mean(means_other, variance)
    L, L2 = np_(q.natural_params.mean_over_variance), np_(q_other.natural_params.mean_over_variance)
    assert_allclose(np_(q.expectation_params.mean), mu(L), rtol=RTOL)
    assert_allclose(np_(q.fisher()), variance * np.eye(4), rtol=RTOL)
    assert_allclose(np_(q.entropy()), 4 * float(entropy), rtol=RTOL)
    kl = sum(bregman(A, mu, [a], [b]) for a, b in zip(L, L2))
    assert_allclose(np_(q.kl_divergence(q_other)), kl, rtol=RTOL)
    assert_mc_mean(q.sample(N_MC, generator=g), q.mean, "fixed-variance samples")


@pytest.mark.parametrize("seed", [0, 1])
def test_diagonal_gaussian_against_sympy(seed):
    family = symbolic.gaussian_1d()
    l1, l2 = family.natural
    A = sp.lambdify((l1, l2), family.log_partition, "numpy")
    mu = sp.lambdify((l1, l2), list(family.expectation_params), "numpy")
    F = sp.lambdify((l1, l2), family.fisher, "numpy")
    g = torch.Generator().manual_seed(seed)

    def random_diagonal():
        m = torch.randn(3, generator=g, dtype=DTYPE)
        s = torch.exp(torch.randn(3, generator=g, dtype=DTYPE))
        return DiagonalGaussian.from_mean_precision(m, s)

    q, q_other = random_diagonal(), random_diagonal()
    L1, L2 = (np_(t) for t in q.natural_params)
    O1, O2 = (np_(t) for t in q_other.natural_params)
    mu1, mu2 = (np.asarray(v) for v in mu(L1, L2))
    assert_allclose(np_(q.expectation_params.mean), mu1, rtol=RTOL)
    assert_allclose(np_(q.expectation_params.second_moment), mu2, rtol=RTOL)
    blocks = np.array([F(a, b) for a, b in zip(L1, L2)], dtype=float)  # (d, 2, 2)
    # fisher() orders the 2d natural parameters as (lam1_1..lam1_d, lam2_1..lam2_d).
    expected = np.block([[np.diag(blocks[:, 0, 0]), np.diag(blocks[:, 0, 1])],
                         [np.diag(blocks[:, 1, 0]), np.diag(blocks[:, 1, 1])]])
    assert_allclose(np_(q.fisher()), expected, rtol=RTOL)
    assert_allclose(np_(q.entropy()), np.sum(A(L1, L2) - L1 * mu1 - L2 * mu2), rtol=RTOL)
    kl = sum(bregman(A, mu, [a, b], [c, d]) for a, b, c, d in zip(L1, L2, O1, O2))
    assert_allclose(np_(q.kl_divergence(q_other)), kl, rtol=RTOL)
    samples = q.sample(N_MC, generator=g)
    assert_mc_mean(samples, q.expectation_params.mean, "diagonal samples (theta)")
    assert_mc_mean(samples**2, q.expectation_params.second_moment, "diagonal samples (theta^2)")


def test_full_gaussian_against_sympy():
    """FullGaussian stores lam2 = -S/2 as a full matrix; the minimal parameters of the SymPy
    family are lam_full = J lam_min, so the minimal Fisher is J^T F_full J."""
    family = symbolic.gaussian_2d()
    A = sp.lambdify(family.natural, family.log_partition, "numpy")
    mu = sp.lambdify(family.natural, family.expectation_params, "numpy")
    F = sp.lambdify(family.natural, family.fisher, "numpy")
    J = np.zeros((6, 5))
    J[0, 0] = J[1, 1] = J[2, 2] = J[5, 4] = 1.0
    J[3, 3] = J[4, 3] = 0.5
    g = torch.Generator().manual_seed(5)

    def random_full():
        B = torch.randn(2, 2, generator=g, dtype=DTYPE)
        m = torch.randn(2, generator=g, dtype=DTYPE)
        return FullGaussian.from_mean_precision(m, B @ B.T + 0.5 * torch.eye(2, dtype=DTYPE))

    def minimal_natural(q):
        eta, Lam = (np_(t) for t in q.natural_params)
        return [eta[0], eta[1], Lam[0, 0], 2 * Lam[0, 1], Lam[1, 1]]

    for _ in range(3):
        q, q_other = random_full(), random_full()
        lam, lam_other = minimal_natural(q), minimal_natural(q_other)
        M = np_(q.expectation_params.second_moment)
        assert_allclose([*np_(q.expectation_params.mean), M[0, 0], M[0, 1], M[1, 1]], np.ravel(mu(*lam)), rtol=RTOL)
        assert_allclose(J.T @ np_(q.fisher()) @ J, np.array(F(*lam), dtype=float), rtol=RTOL, atol=1e-12)
        assert_allclose(np_(q.entropy()), A(*lam) - np.dot(lam, np.ravel(mu(*lam))), rtol=RTOL)
        assert_allclose(np_(q.kl_divergence(q_other)), bregman(A, mu, lam, lam_other), rtol=RTOL)
    samples = q.sample(N_MC, generator=g)
    assert_mc_mean(samples, q.mean, "full samples (theta)")
    outer = (samples[:, :, None] * samples[:, None, :]).reshape(N_MC, 4)
    assert_mc_mean(outer, q.expectation_params.second_moment.reshape(4), "full samples (theta theta^T)")


def test_bregman_check_catches_a_wrong_entropy():
    """The checks above can fail: an entropy off by a factor 1/2 in A is caught."""
    family = symbolic.bernoulli()
    (lam,) = family.natural
    A = sp.lambdify(lam, family.log_partition / 2, "numpy")  # planted error
    mu = sp.lambdify(lam, family.expectation_params[0], "numpy")
    logits = torch.tensor([-1.0, 0.3, 2.0], dtype=DTYPE)
    q = Bernoulli.from_natural((logits,))
    L = logits.numpy()
    with pytest.raises(AssertionError):
        assert_allclose(np_(q.entropy()), np.sum(A(L) - L * mu(L)), rtol=RTOL)
