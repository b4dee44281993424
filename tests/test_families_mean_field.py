"""The mean-field product family and the blockwise rule (VMP, EM and SVI are built on it)."""

import pytest
import torch
from torch.testing import assert_close

import blrlib
from blrlib import DiagonalGaussian, Gamma, MeanField

D = torch.float64


def _product():
    return MeanField(
        mu=DiagonalGaussian.from_mean_precision(torch.tensor([0.3], dtype=D), torch.tensor([2.0], dtype=D)),
        tau=Gamma.from_shape_rate(torch.tensor([1.5], dtype=D), torch.tensor([0.7], dtype=D)),
    )


def test_blockwise_step_is_one_rule_per_block_with_its_own_rho():
    q = _product()
    g_mu = (torch.tensor([0.4], dtype=D), torch.tensor([1.2], dtype=D))
    g_tau = (torch.tensor([-2.0], dtype=D), torch.tensor([3.0], dtype=D))
    new = blrlib.blr_step(q, {"mu": g_mu, "tau": g_tau}, {"mu": 0.3, "tau": 0.8})
    for name, grads, rho in (("mu", g_mu, 0.3), ("tau", g_tau, 0.8)):
        alone = blrlib.blr_step(q[name], grads, rho)
        for a, b in zip(new[name].natural_params, alone.natural_params):
            assert_close(a, b, rtol=0, atol=0)
        for lam_new, lam, g in zip(new[name].natural_params, q[name].natural_params, grads):
            assert_close(lam_new, (1 - rho) * lam - rho * g, rtol=1e-14, atol=1e-14)
    only_tau = blrlib.blr_step(q, {"tau": g_tau}, 0.5)
    assert only_tau["mu"] is q["mu"]  # a block without a gradient is not touched
    assert only_tau.names == ("mu", "tau")


def test_product_functionals_are_sums_over_factors():
    q, p = _product(), MeanField(
        mu=DiagonalGaussian.from_mean_precision(torch.tensor([-0.1], dtype=D), torch.tensor([0.5], dtype=D)),
        tau=Gamma.from_shape_rate(torch.tensor([2.5], dtype=D), torch.tensor([1.7], dtype=D)),
    )
    assert_close(q.entropy(), q["mu"].entropy() + q["tau"].entropy().sum(), rtol=1e-14, atol=1e-14)
    assert_close(q.kl_divergence(p), q["mu"].kl_divergence(p["mu"]) + q["tau"].kl_divergence(p["tau"]).sum())
    theta = q.sample(4, generator=torch.Generator().manual_seed(0))
    expected = q["mu"].log_prob(theta["mu"]) + q["tau"].log_prob(theta["tau"]).sum(-1)
    assert_close(q.log_prob(theta), expected, rtol=1e-14, atol=1e-14)
    assert set(q.expectation_params) == {"mu", "tau"}
    assert_close(q.entropy_gradient_expectation()["tau"][1], -q["tau"].natural_params[1], rtol=0, atol=0)


def _vmp_reference(x, mu0, lam0, a0, b0, e_tau, sweeps):
    """Bishop, PRML 10.26-10.30 (the univariate Gaussian's mean-field updates), written without blrlib."""
    n, xbar = len(x), x.mean()
    out = []
    for _ in range(sweeps):
        mean_n = (lam0 * mu0 + n * xbar) / (lam0 + n)
        prec_n = (lam0 + n) * e_tau
        e_mu, e_mu2 = mean_n, mean_n**2 + 1 / prec_n
        a_n = a0 + (n + 1) / 2
        b_n = b0 + 0.5 * ((x * x).sum() - 2 * e_mu * x.sum() + n * e_mu2 + lam0 * (e_mu2 - 2 * mu0 * e_mu + mu0**2))
        e_tau = a_n / b_n
        out.append(tuple(torch.as_tensor(v, dtype=D).reshape(1) for v in (mean_n, prec_n, a_n, b_n)))
    return out


def _vmp_gradients(x, mu0, lam0, a0, b0):
    """nabla_mu E_q[l] for l = -log p(x, mu, tau): the coefficients of each block's T (blrlib-free algebra)."""
    n = len(x)

    def grad_mu(q):  # E_tau[tau]/2 [sum (x - mu)^2 + lam0 (mu - mu0)^2] in T = (mu, mu^2)
        e_tau = q["tau"].mean
        return (-e_tau * (x.sum() + lam0 * mu0), 0.5 * e_tau * (n + lam0))

    def grad_tau(q):  # in T = (log tau, tau)
        e_mu, e_mu2 = q["mu"].expectation_params
        quad = (x * x).sum() - 2 * e_mu * x.sum() + n * e_mu2 + lam0 * (e_mu2 - 2 * mu0 * e_mu + mu0**2)
        return (-(a0 - 1 + 0.5 * (n + 1)) * torch.ones(1, dtype=D), b0 + 0.5 * quad)

    return {"mu": grad_mu, "tau": grad_tau}


@pytest.mark.parametrize("seed", [0, 1])
def test_mean_field_sweep_with_rho_one_is_vmp(seed):
    gen = torch.Generator().manual_seed(seed)
    x = 1.0 + 0.7 * torch.randn(12, generator=gen, dtype=D)
    mu0, lam0, a0, b0 = 0.2, 1.5, 2.0, 1.0
    q = _product()
    reference = _vmp_reference(x, mu0, lam0, a0, b0, e_tau=q["tau"].mean.item(), sweeps=8)
    fns = _vmp_gradients(x, mu0, lam0, a0, b0)
    for mean_n, prec_n, a_n, b_n in reference:
        q = blrlib.mean_field_sweep(q, fns, 1.0)
        assert_close(q["mu"].mean, mean_n, rtol=1e-12, atol=1e-12)
        assert_close(q["mu"].precision, prec_n, rtol=1e-12, atol=1e-12)
        assert_close(q["tau"].shape, a_n, rtol=1e-12, atol=1e-12)
        assert_close(q["tau"].rate, b_n, rtol=1e-12, atol=1e-12)
    # The opposite order is a different schedule: after one sweep it differs from the reference's first.
    other = blrlib.mean_field_sweep(_product(), fns, 1.0, order=["tau", "mu"])
    assert not torch.allclose(other["mu"].precision, reference[0][1])


def test_run_blr_on_a_product_with_per_block_rho_and_the_step_index():
    x = torch.tensor([0.5, 1.5, 1.0, 2.0], dtype=D)
    fns = _vmp_gradients(x, 0.0, 1.0, 2.0, 1.0)
    seen = []

    def grads(q, t):
        seen.append(t)
        return {name: fn(q) for name, fn in fns.items()}

    result = blrlib.run_blr(_product(), grads, {"mu": 0.5, "tau": 0.25}, num_steps=3)
    assert seen == [0, 1, 2] and len(result.iterates) == 4
    first = result.iterates[1]
    q0 = _product()
    expected = blrlib.blr_step(q0["tau"], fns["tau"](q0), 0.25)
    assert_close(first["tau"].natural_params[1], expected.natural_params[1], rtol=0, atol=0)


BAD = [
    (lambda: MeanField(), r"Invalid factors: none"),
    (lambda: MeanField(a=1.0), r"Invalid factor 'a': float"),
    (lambda: MeanField({"a": _product()["mu"]}, a=_product()["mu"]), r"given twice"),
    (lambda: _product().replace(nu=_product()["mu"]), r"Invalid factor name: 'nu'"),
    (lambda: blrlib.blr_step(_product(), [torch.zeros(1)], 0.5), r"Invalid grad_expectation: list"),
    (lambda: blrlib.blr_step(_product(), {"sigma": (torch.zeros(1),)}, 0.5), r"Invalid grad_expectation blocks: \['sigma'\]"),
    (lambda: blrlib.blr_step(_product(), {"mu": (torch.zeros(1), torch.zeros(1))}, {"tau": 0.5}), r"Invalid rho: no step size"),
    (lambda: blrlib.blr_step(_product(), {"mu": (torch.zeros(1), torch.zeros(1))}, {"mu": 1.5}), r"block 'mu': .*rho"),
    (lambda: blrlib.mean_field_sweep(_product(), {}, 0.5, order=["mu"]), r"Invalid order entry: 'mu'"),
    (lambda: _product().kl_divergence(_product()["mu"]), r"Invalid other"),
    (lambda: _product().log_prob({"mu": torch.zeros(1)}), r"missing \['tau'\]"),
]


@pytest.mark.parametrize("call, message", BAD)
def test_bad_input_is_rejected(call, message):
    with pytest.raises(ValueError, match=message):
        call()
