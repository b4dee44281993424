"""Tests for blrlib.optim.bayesbinn: STE and BayesBiNN against hand-written references of the published
algorithms, against blrlib's generic blr_step, and the torch.optim behaviour (groups, checkpoints,
schedulers, bad input)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import blrlib
from blrlib.optim.bayesbinn import (
    STE,
    BayesBiNN,
    binary_rule_step,
    relaxation_scale,
    relaxed_sample,
    sign_weights,
)

DT = torch.float64
CUDA = torch.cuda.is_available()
DEVICES = ["cpu"] + (["cuda"] if CUDA else [])


# ---------------------------------------------------------------- a small binary network and its data
def make_problem(seed=0, n=40, d=5, h=6, k=3, device="cpu", dtype=DT):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=dtype).to(device)
    y = torch.randint(0, k, (n,), generator=g).to(device)
    lam1 = (0.8 * torch.randn(h, d, generator=g, dtype=dtype)).to(device)
    lam2 = (0.8 * torch.randn(k, h, generator=g, dtype=dtype)).to(device)
    return X, y, [lam1, lam2]


def net(ws, X):
    w1, w2 = ws
    hidden = torch.tanh(X @ w1.T / math.sqrt(w1.shape[1]))
    return hidden @ w2.T / math.sqrt(w2.shape[1])


def mean_loss(ws, X, y):
    return F.cross_entropy(net(ws, X), y)


def batches(num_steps, n, bs, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randperm(n, generator=g)[:bs] for _ in range(num_steps)]


def run_optimizer(opt, params, X, y, idx_list, samples=1):
    for idx in idx_list:
        for _ in range(samples):
            with opt.sampled_params(train=True):
                mean_loss(params, X[idx], y[idx]).backward()
        opt.step()
    return [p.detach().clone() for p in params]


# ---------------------------------------------------------------- hand-written references (plain loops)
def reference_bayesbinn(lams, X, y, idx_list, *, lr, N, tau, lam0=0.0, M=1, generator=None):
    """Algorithm 1 of Meng, Bachmann & Khan (2020), written out with plain tensors."""
    lams = [l.clone() for l in lams]
    for idx in idx_list:
        sums = [torch.zeros_like(l) for l in lams]
        for _ in range(M):
            ws = []
            for l in lams:
                e = torch.rand(l.shape, generator=generator, dtype=l.dtype, device=l.device)
                delta = 0.5 * torch.log(e / (1 - e))
                ws.append(torch.tanh((l + delta) / tau).requires_grad_(True))
            gs = torch.autograd.grad(mean_loss(ws, X[idx], y[idx]), ws)
            for k, (l, w, g) in enumerate(zip(lams, ws, gs)):
                s = N * (1 - w.detach() ** 2) / (tau * (1 - torch.tanh(l) ** 2))
                sums[k] += s * g
        lams = [(1 - lr) * l - lr * (sm / M - lam0) for l, sm in zip(lams, sums)]
    return lams


def reference_ste_sgd(lams, X, y, idx_list, *, lr, N):
    """A practitioner's STE: sign forward, identity backward, torch.optim.SGD with weight decay on the latent weights."""
    latent = [l.clone().requires_grad_(True) for l in lams]
    opt = torch.optim.SGD(latent, lr=lr * N, weight_decay=1.0 / N)
    for idx in idx_list:
        opt.zero_grad()
        ws = [l + (torch.where(l >= 0, 1.0, -1.0).to(l.dtype) - l).detach() for l in latent]
        mean_loss(ws, X[idx], y[idx]).backward()
        opt.step()
    return [l.detach() for l in latent]


# ---------------------------------------------------------------- the updates
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("M,tau,lam0", [(1, 1.0, 0.0), (3, 0.5, 0.3)])
def test_bayesbinn_matches_algorithm_1(device, M, tau, lam0):
    X, y, lams = make_problem(device=device)
    idx = batches(15, X.shape[0], 8)
    ref = reference_bayesbinn(
        lams, X, y, idx, lr=0.05, N=X.shape[0], tau=tau, lam0=lam0, M=M,
        generator=torch.Generator(device).manual_seed(7),
    )
    params = [torch.nn.Parameter(l.clone()) for l in lams]
    opt = BayesBiNN(params, lr=0.05, ess=X.shape[0], temperature=tau, prior_lambda=lam0,
                    generator=torch.Generator(device).manual_seed(7))
    out = run_optimizer(opt, params, X, y, idx, samples=M)
    for a, b in zip(out, ref):
        assert a.dtype == DT
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_bayesbinn_fails_with_a_wrong_factor():
    # The comparison is sharp: dropping the temperature from s changes the trajectory.
    X, y, lams = make_problem()
    idx = batches(5, X.shape[0], 8)
    ref = reference_bayesbinn(lams, X, y, idx, lr=0.05, N=X.shape[0], tau=0.5,
                              generator=torch.Generator().manual_seed(3))
    wrong = reference_bayesbinn(lams, X, y, idx, lr=0.05, N=X.shape[0], tau=1.0,
                                generator=torch.Generator().manual_seed(3))
    assert not torch.allclose(ref[0], wrong[0], rtol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_ste_sign_equals_sgd_with_weight_decay(device):
    X, y, lams = make_problem(device=device)
    idx = batches(20, X.shape[0], 10)
    ref = reference_ste_sgd(lams, X, y, idx, lr=0.02, N=X.shape[0])
    params = [torch.nn.Parameter(l.clone()) for l in lams]
    opt = STE(params, lr=0.02, ess=X.shape[0], forward="sign")
    out = run_optimizer(opt, params, X, y, idx)
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("lam0", [0.0, -0.4])
def test_ste_mean_equals_blr_step(lam0):
    """forward='mean' is the rule with the delta method: blrlib.blr_step on a Bernoulli on {-1, +1}."""
    X, y, lams = make_problem()
    shapes = [l.shape for l in lams]
    sizes = [l.numel() for l in lams]
    N, rho = X.shape[0], 0.05
    idx = batches(10, N, 10)

    def unflat(theta):
        return [t.reshape(s) for t, s in zip(torch.split(theta, sizes), shapes)]

    q = blrlib.Bernoulli((torch.cat([l.reshape(-1) for l in lams]),), support=(-1.0, 1.0))
    for i in idx:
        def loss(theta, i=i):
            return N * mean_loss(unflat(theta), X[i], y[i]) - lam0 * theta.sum()

        q = blrlib.blr_step(q, blrlib.expectation_gradient(loss, q, method="delta"), rho)
    params = [torch.nn.Parameter(l.clone()) for l in lams]
    opt = STE(params, lr=rho, ess=N, prior_lambda=lam0, forward="mean")
    out = run_optimizer(opt, params, X, y, idx)
    torch.testing.assert_close(torch.cat([o.reshape(-1) for o in out]), q.natural_params.logit, rtol=1e-12, atol=1e-12)


def test_ste_mean_differs_from_sign():
    X, y, lams = make_problem()
    idx = batches(3, X.shape[0], 10)
    outs = []
    for fwd in ("mean", "sign"):
        params = [torch.nn.Parameter(l.clone()) for l in lams]
        outs.append(run_optimizer(STE(params, lr=0.05, ess=40, forward=fwd), params, X, y, idx))
    assert not torch.allclose(outs[0][0], outs[1][0])


def test_momentum_matches_reference():
    X, y, lams = make_problem()
    idx = batches(8, X.shape[0], 10)
    beta, rho, N = 0.9, 0.05, X.shape[0]
    # reference: u <- beta u + (1-beta)(N g + lam - lam0); lam <- lam - rho u / (1 - beta^t)
    ref = [l.clone() for l in lams]
    us = [torch.zeros_like(l) for l in lams]
    for t, i in enumerate(idx, start=1):
        ws = [torch.tanh(l).requires_grad_(True) for l in ref]
        gs = torch.autograd.grad(mean_loss(ws, X[i], y[i]), ws)
        for k in range(len(ref)):
            us[k] = beta * us[k] + (1 - beta) * (N * gs[k] + ref[k] - 0.1)
            ref[k] = ref[k] - rho * us[k] / (1 - beta**t)
    params = [torch.nn.Parameter(l.clone()) for l in lams]
    opt = STE(params, lr=rho, ess=N, prior_lambda=0.1, momentum=beta, forward="mean")
    out = run_optimizer(opt, params, X, y, idx)
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- functional pieces
def test_relaxation_scale_is_the_reparameterised_derivative():
    g = torch.Generator().manual_seed(0)
    lam = torch.randn(50, generator=g, dtype=DT) * 2
    u = torch.rand(50, generator=g, dtype=DT)
    for tau in (0.3, 1.0, 2.0):
        mu = torch.tanh(lam).requires_grad_(True)
        w = relaxed_sample(torch.atanh(mu), u, tau)
        (dw_dmu,) = torch.autograd.grad(w.sum(), mu)
        torch.testing.assert_close(relaxation_scale(lam, u, tau), dw_dmu, rtol=1e-9, atol=1e-10)
        literal = (1 - relaxed_sample(lam, u, tau) ** 2) / (tau * (1 - torch.tanh(lam) ** 2))
        torch.testing.assert_close(relaxation_scale(lam, u, tau), literal, rtol=1e-9, atol=1e-10)


def test_relaxation_scale_is_finite_for_large_lambda():
    lam = torch.tensor([40.0, -40.0, 300.0], dtype=torch.float32)
    u = torch.tensor([0.5, 0.3, 0.9], dtype=torch.float32)
    s = relaxation_scale(lam, u, 1.0)
    assert torch.isfinite(s).all()
    assert (s >= 0).all()


def test_relaxed_sample_at_low_temperature_samples_q():
    lam = torch.tensor([-0.7, 0.0, 0.4, 1.5], dtype=DT)
    u = torch.rand(200_000, 4, generator=torch.Generator().manual_seed(1), dtype=DT)
    w = relaxed_sample(lam, u, 1e-6)
    freq = (w > 0).double().mean(0)
    torch.testing.assert_close(freq, torch.sigmoid(2 * lam), atol=5e-3, rtol=0)


def test_binary_rule_step_and_sign():
    lam = torch.tensor([0.5, -1.0, 0.0], dtype=DT)
    g = torch.tensor([1.0, 2.0, -3.0], dtype=DT)
    torch.testing.assert_close(binary_rule_step(lam, g, lr=0.1, prior_lambda=0.2), 0.9 * lam - 0.1 * (g - 0.2))
    assert sign_weights(lam).tolist() == [1.0, -1.0, 1.0]


# ---------------------------------------------------------------- torch.optim behaviour
def _train(opt_factory, steps, lams, X, y, idx_list, start=0, opt=None, params=None):
    if params is None:
        params = [torch.nn.Parameter(l.clone()) for l in lams]
    if opt is None:
        opt = opt_factory(params)
    for idx in idx_list[start:start + steps]:
        with opt.sampled_params(train=True):
            mean_loss(params, X[idx], y[idx]).backward()
        opt.step()
    return opt, params


def test_param_groups_have_their_own_hyperparameters():
    X, y, lams = make_problem()
    idx = batches(6, X.shape[0], 8)
    N = X.shape[0]
    # reference with per-group lr and temperature, noise drawn in group order
    g = torch.Generator().manual_seed(5)
    ref = [l.clone() for l in lams]
    hyper = [(0.05, 0.5), (0.2, 1.5)]
    for i in idx:
        ws, us = [], []
        for l, (_, tau) in zip(ref, hyper):
            u = torch.rand(l.shape, generator=g, dtype=DT)
            us.append(u)
            ws.append(torch.tanh((l + 0.5 * torch.log(u / (1 - u))) / tau).requires_grad_(True))
        gs = torch.autograd.grad(mean_loss(ws, X[i], y[i]), ws)
        ref = [(1 - lr) * l - lr * (N * (1 - w.detach() ** 2) / (tau * (1 - torch.tanh(l) ** 2)) * gr)
               for l, w, gr, (lr, tau) in zip(ref, ws, gs, hyper)]
    params = [torch.nn.Parameter(l.clone()) for l in lams]
    opt = BayesBiNN([{"params": [params[0]], "lr": 0.05, "temperature": 0.5},
                     {"params": [params[1]], "lr": 0.2, "temperature": 1.5}],
                    ess=N, generator=torch.Generator().manual_seed(5))
    out = run_optimizer(opt, params, X, y, idx)
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_add_param_group_validates():
    p = torch.nn.Parameter(torch.zeros(3, dtype=DT))
    opt = STE([p], lr=0.1, ess=10)
    with pytest.raises(ValueError, match=r"Invalid lr: 2"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2))], "lr": 2.0})
    opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2))], "lr": 0.5})
    assert opt.param_groups[1]["ess"] == 10 and opt.param_groups[1]["forward"] == "sign"


def test_lr_scheduler_changes_rho():
    X, y, lams = make_problem()
    idx = batches(4, X.shape[0], 10)
    params = [torch.nn.Parameter(l.clone()) for l in lams]
    opt = STE(params, lr=0.1, ess=X.shape[0], forward="mean")
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    ref = [l.clone() for l in lams]
    for t, i in enumerate(idx):
        rho = 0.1 * 0.5 ** (t // 2)
        ws = [torch.tanh(l).requires_grad_(True) for l in ref]
        gs = torch.autograd.grad(mean_loss(ws, X[i], y[i]), ws)
        ref = [binary_rule_step(l, X.shape[0] * gr, lr=rho) for l, gr in zip(ref, gs)]
        with opt.sampled_params(train=True):
            mean_loss(params, X[i], y[i]).backward()
        opt.step()
        sched.step()
    for a, b in zip(params, ref):
        torch.testing.assert_close(a.detach(), b, rtol=1e-12, atol=1e-12)


def test_closure_runs_mc_samples():
    X, y, lams = make_problem()
    idx = batches(3, X.shape[0], 8)
    ref = reference_bayesbinn(lams, X, y, idx, lr=0.1, N=40, tau=1.0, M=2, generator=torch.Generator().manual_seed(2))
    params = [torch.nn.Parameter(l.clone()) for l in lams]
    opt = BayesBiNN(params, lr=0.1, ess=40, mc_samples=2, generator=torch.Generator().manual_seed(2))
    for i in idx:
        def closure(i=i):
            loss = mean_loss(params, X[i], y[i])
            loss.backward()
            return loss
        loss = opt.step(closure)
        assert loss.ndim == 0 and torch.isfinite(loss)
    for a, b in zip(params, ref):
        torch.testing.assert_close(a.detach(), b, rtol=1e-10, atol=1e-12)


def test_float32_stays_float32_and_params_without_grad_are_skipped():
    used = torch.nn.Parameter(torch.randn(4, 3))
    unused = torch.nn.Parameter(torch.randn(2))
    before = unused.detach().clone()
    opt = BayesBiNN([used, unused], lr=0.1, ess=10, generator=torch.Generator().manual_seed(0))
    with opt.sampled_params(train=True):
        (torch.ones(5, 4) @ used).sum().backward()
    opt.step()
    assert used.dtype == torch.float32 and torch.isfinite(used).all()
    assert torch.equal(unused.detach(), before)


# ---------------------------------------------------------------- protocol and safety


def test_step_without_a_block_raises():
    p = torch.nn.Parameter(torch.zeros(2))
    opt = STE([p], lr=0.1, ess=5)
    (p.sum()).backward()
    with pytest.raises(RuntimeError, match=r"sampled_params\(train=True\)"):
        opt.step()


def test_nested_blocks_raise():
    p = torch.nn.Parameter(torch.zeros(2))
    opt = BayesBiNN([p], lr=0.1, ess=5)
    with opt.sampled_params():
        with pytest.raises(RuntimeError, match="nested"):
            with opt.sampled_params():
                pass
    assert torch.equal(p.detach(), torch.zeros(2))


def test_binary_params_and_probs():
    lam = torch.tensor([[-2.0, 0.0, 0.1, 3.0]], dtype=DT)
    p = torch.nn.Parameter(lam.clone())
    opt = BayesBiNN([p], lr=0.1, ess=5)
    with opt.binary_params():
        assert p.detach().tolist() == [[-1.0, 1.0, 1.0, 1.0]]
    assert torch.equal(p.detach(), lam)
    torch.testing.assert_close(opt.probs()[0], torch.sigmoid(2 * lam))
    g = torch.Generator().manual_seed(0)
    draws = []
    for _ in range(1000):
        with opt.binary_params(mode="sample", generator=g):
            assert set(p.detach().unique().tolist()) <= {-1.0, 1.0}
            draws.append(p.detach().clone())
    freq = (torch.stack(draws) > 0).double().mean(0)
    torch.testing.assert_close(freq, torch.sigmoid(2 * lam), atol=0.06, rtol=0)
    assert torch.equal(p.detach(), lam)


def test_ste_forward_weights():
    lam = torch.tensor([-0.5, 0.0, 2.0], dtype=DT)
    for fwd, expected in [("mean", torch.tanh(lam)), ("sign", torch.tensor([-1.0, 1.0, 1.0], dtype=DT))]:
        p = torch.nn.Parameter(lam.clone())
        opt = STE([p], ess=3, forward=fwd)
        with opt.sampled_params():
            assert torch.equal(p.detach(), expected)
        assert torch.equal(p.detach(), lam)


# ---------------------------------------------------------------- bad input
P = [torch.nn.Parameter(torch.zeros(2))]


@pytest.mark.parametrize("cls,kwargs,pattern", [
    (STE, dict(lr=-0.1, ess=1), r"Invalid lr: -0\.1 \(must be .*>= 0 and <= 1\)"),
    (STE, dict(lr=1.5, ess=1), r"Invalid lr: 1\.5"),
    (STE, dict(lr=0.1), r"Invalid ess: None"),
    (STE, dict(lr=0.1, ess=0), r"Invalid ess: 0 \(must be .*> 0\)"),
    (STE, dict(lr=0.1, ess=1, momentum=1.0), r"Invalid momentum: 1\.0 \(must be .*< 1\)"),
    (STE, dict(lr=0.1, ess=1, prior_lambda=float("nan")), r"Invalid prior_lambda: nan"),
    (STE, dict(lr=0.1, ess=1, forward="tanh"), r"Invalid forward: 'tanh' \(must be one of 'mean', 'sign'\)"),
    (STE, dict(lr=0.1, ess=1, mc_samples=0), r"Invalid mc_samples: 0 \(must be an integer >= 1\)"),
    (BayesBiNN, dict(lr=0.1, ess=1, temperature=0.0), r"Invalid temperature: 0\.0 \(must be .*> 0\)"),
    (BayesBiNN, dict(lr=0.1, ess=1, temperature=float("inf")), r"Invalid temperature: inf"),
    (BayesBiNN, dict(lr=0.1, ess=1, generator=123), r"Invalid generator: 123"),
])
def test_bad_arguments(cls, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        cls(P, **kwargs)


def test_bad_mode_and_integer_params():
    opt = BayesBiNN(P, lr=0.1, ess=1)
    with pytest.raises(ValueError, match=r"Invalid mode: 'map'"):
        with opt.binary_params(mode="map"):
            pass
    with pytest.raises(ValueError, match=r"Invalid params: a tensor of dtype torch.int64"):
        STE([torch.zeros(2, dtype=torch.long)], lr=0.1, ess=1)
    with pytest.raises(ValueError, match=r"Invalid lr: 2"):
        binary_rule_step(torch.zeros(2), torch.zeros(2), lr=2.0)


def test_overflowing_scale_raises_instead_of_corrupting_lambda():
    # tau > 1 and a large |lambda|: s ~ exp(2 |lambda| (1 - 1/tau)) overflows float32.
    p = torch.nn.Parameter(torch.full((3,), 200.0))
    opt = BayesBiNN([p], lr=0.1, ess=10, temperature=3.0, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"overflowed .*use temperature <= 1"):
        with opt.sampled_params(train=True):
            (p * 1.0).sum().backward()
    assert torch.equal(p.detach(), torch.full((3,), 200.0))
    # in float64 the same step is finite
    p64 = torch.nn.Parameter(torch.full((3,), 200.0, dtype=DT))
    opt = BayesBiNN([p64], lr=0.1, ess=10, temperature=3.0, generator=torch.Generator().manual_seed(0))
    with opt.sampled_params(train=True):
        (p64 * 1.0).sum().backward()
    opt.step()
    assert torch.isfinite(p64).all()
