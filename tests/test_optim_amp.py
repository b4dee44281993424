"""Mixed precision and gradient accumulation for the teaching and binary optimizers.

RuleSGD, RuleRMSprop, STE and BayesBiNN under ``torch.autocast(device_type="cpu", dtype=torch.bfloat16)``
with ``torch.amp.GradScaler("cpu")``: the update equals the update of the same run without a scaler (the
scale is a power of two, so the scaled and unscaled gradients differ by an exact factor), and a step with
an infinite gradient is skipped, leaving parameters and optimizer state unchanged. Gradient accumulation
over two backward passes (float64) equals one backward pass on the concatenated batch. OGN/VOGN take
per-example gradients from the user (no GradScaler); their closure may run under autocast.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from blrlib.optim.bayesbinn import STE, BayesBiNN
from blrlib.optim.teaching import RuleRMSprop, RuleSGD
from blrlib.optim.vogn import OGN

BF16 = dict(device_type="cpu", dtype=torch.bfloat16)
SCALE = 2.0**10


def data(n=32, d=5, k=3, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=dtype), torch.randint(0, k, (n,), generator=g)


def mlp(dtype=torch.float32, bias=True, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 8, bias=bias), nn.Tanh(), nn.Linear(8, 3, bias=bias)).to(dtype)


def snapshot(model, opt):
    params = [p.detach().clone() for p in model.parameters()]
    state = {
        i: {k: (v.clone() if torch.is_tensor(v) else copy.deepcopy(v)) for k, v in opt.state[p].items()}
        for i, p in enumerate(model.parameters())
        if p in opt.state
    }
    return params, state


def assert_same_snapshot(a, b, exact=True, **tol):
    (pa, sa), (pb, sb) = a, b
    assert len(pa) == len(pb) and sa.keys() == sb.keys()
    for x, y in zip(pa, pb):
        torch.testing.assert_close(x, y, rtol=0, atol=0) if exact else torch.testing.assert_close(x, y, **tol)
    for i in sa:
        assert sa[i].keys() == sb[i].keys()
        for k in sa[i]:
            x, y = sa[i][k], sb[i][k]
            if torch.is_tensor(x):
                torch.testing.assert_close(x, y, rtol=0, atol=0) if exact else torch.testing.assert_close(x, y, **tol)
            else:
                assert x == y


# ---------------------------------------------------------------- RuleSGD and RuleRMSprop (plain p.grad optimizers)
TEACHING = [
    (RuleSGD, dict(rho=0.5, variance=1e-3, ess=32, prior_precision=0.5)),
    (RuleRMSprop, dict(lr=0.1, ess=32, prior_precision=0.5, init_precision=10.0)),
    (RuleRMSprop, dict(lr=0.1, beta=0.9, ess=32, prior_precision=0.5)),
]


def teaching_step(model, opt, X, y, scaler):
    opt.zero_grad()
    with torch.autocast(**BF16):
        loss = F.cross_entropy(model(X), y)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()


@pytest.mark.parametrize("cls, kw", TEACHING)
def test_teaching_gradscaler_matches_unscaled(cls, kw):
    X, y = data()
    runs = []
    for use_scaler in (False, True):
        model = mlp()
        opt = cls(model.parameters(), **kw)
        scaler = torch.amp.GradScaler("cpu", init_scale=SCALE, enabled=use_scaler)
        for _ in range(4):
            teaching_step(model, opt, X, y, scaler)
        runs.append(snapshot(model, opt))
    # gradients of a power-of-two-scaled loss are the unscaled ones times the scale (bf16 and fp32 both
    # scale exactly), and unscale_ divides exactly: float32 round-off at most
    assert_same_snapshot(runs[0], runs[1], exact=False, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("cls, kw", TEACHING)
def test_teaching_gradscaler_one_update_equals_update_from_unscaled_grads(cls, kw):
    """One step: the update with the scaler equals the optimizer's update from the unscaled gradients."""
    X, y = data()
    model = mlp()
    opt = cls(model.parameters(), **kw)
    teaching_step(model, opt, X, y, torch.amp.GradScaler("cpu", enabled=False))  # some state first
    ref_model = copy.deepcopy(model)
    ref_opt = cls(ref_model.parameters(), **kw)
    ref_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    scaler = torch.amp.GradScaler("cpu", init_scale=SCALE)
    opt.zero_grad()
    with torch.autocast(**BF16):
        loss = F.cross_entropy(model(X), y)
    scaler.scale(loss).backward()
    scaled = [p.grad.clone() for p in model.parameters()]
    scaler.step(opt)
    scaler.update()
    for q, g in zip(ref_model.parameters(), scaled):
        q.grad = g / SCALE
    ref_opt.step()
    assert_same_snapshot(snapshot(model, opt), snapshot(ref_model, ref_opt), exact=False, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("cls, kw", TEACHING)
def test_teaching_gradscaler_skips_inf_step(cls, kw):
    X, y = data()
    model = mlp()
    opt = cls(model.parameters(), **kw)
    scaler = torch.amp.GradScaler("cpu", init_scale=SCALE)
    teaching_step(model, opt, X, y, scaler)
    before = snapshot(model, opt)
    scale = scaler.get_scale()
    opt.zero_grad()
    with torch.autocast(**BF16):
        loss = F.cross_entropy(model(X), y)
    scaler.scale(loss * float("inf")).backward()
    scaler.step(opt)
    scaler.update()
    assert scaler.get_scale() < scale
    assert_same_snapshot(before, snapshot(model, opt))
    teaching_step(model, opt, X, y, scaler)  # training goes on
    assert all(int(opt.state[p]["step"]) == 2 for p in model.parameters())


@pytest.mark.parametrize("cls, kw", TEACHING)
def test_teaching_gradient_accumulation_equals_full_batch(cls, kw):
    X, y = data(dtype=torch.float64)
    runs = []
    for accumulate in (False, True):
        model = mlp(dtype=torch.float64)
        opt = cls(model.parameters(), **kw)
        for _ in range(3):
            opt.zero_grad()
            if accumulate:
                for Xh, yh in zip(X.chunk(2), y.chunk(2)):
                    (F.cross_entropy(model(Xh), yh) / 2).backward()
            else:
                F.cross_entropy(model(X), y).backward()
            opt.step()
        runs.append(snapshot(model, opt))
    assert all(p.dtype == torch.float64 for p in runs[1][0])
    assert_same_snapshot(runs[0], runs[1], exact=False, rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------- STE and BayesBiNN (gradients read on block exit)
BINARY = [
    (STE, dict(lr=0.1, ess=32, forward="sign")),
    (STE, dict(lr=0.1, ess=32, forward="mean", momentum=0.9, prior_lambda=0.1)),
    (BayesBiNN, dict(lr=0.1, ess=32, temperature=1.0)),
    (BayesBiNN, dict(lr=0.1, ess=32, temperature=0.5, momentum=0.9)),
]
IDS = ["ste-sign", "ste-mean-momentum", "bayesbinn", "bayesbinn-momentum"]


def binary_opt(cls, model, kw, **extra):
    return cls(model.parameters(), generator=torch.Generator().manual_seed(3), **kw, **extra)


def binary_step(model, opt, X, y, scaler, samples=1, inf=False):
    for _ in range(samples):
        with opt.sampled_params(train=True):
            with torch.autocast(**BF16):
                loss = F.cross_entropy(model(X), y)
            scaler.scale(loss * float("inf") if inf else loss).backward()
    scaler.step(opt)
    scaler.update()


@pytest.mark.parametrize("samples", [1, 2])
@pytest.mark.parametrize("cls, kw", BINARY, ids=IDS)
def test_binary_gradscaler_matches_unscaled(cls, kw, samples):
    X, y = data()
    runs = []
    for use_scaler in (False, True):
        model = mlp(bias=False)
        opt = binary_opt(cls, model, kw, skip_nonfinite=True)
        scaler = torch.amp.GradScaler("cpu", init_scale=SCALE, enabled=use_scaler)
        for _ in range(4):
            binary_step(model, opt, X, y, scaler, samples)
        assert opt.skipped_steps == 0
        runs.append(snapshot(model, opt))
    assert_same_snapshot(runs[0], runs[1], exact=False, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("cls, kw", BINARY, ids=IDS)
def test_binary_gradscaler_one_update_equals_update_from_unscaled_grads(cls, kw):
    """One step under the scaler equals the hand-written rule fed the unscaled gradient (same sample)."""
    X, y = data()
    model = mlp(bias=False)
    opt = binary_opt(cls, model, kw)
    lam = [p.detach().clone() for p in model.parameters()]
    scaler = torch.amp.GradScaler("cpu", init_scale=SCALE)
    with opt.sampled_params(train=True):
        weights = [p.detach().clone() for p in model.parameters()]
        with torch.autocast(**BF16):
            loss = F.cross_entropy(model(X), y)
        scaler.scale(loss).backward()
    grads = [p.grad / SCALE for p in model.parameters()]
    scaler.step(opt)
    scaler.update()
    rho, n, lam0, beta = kw["lr"], kw["ess"], kw.get("prior_lambda", 0.0), kw.get("momentum", 0.0)
    for p, l, w, g in zip(model.parameters(), lam, weights, grads):
        if cls is STE:
            g_mu = n * g
        else:  # w = tanh((lambda + delta) / tau): the scale N (1 - w^2) / (tau (1 - tanh^2 lambda))
            tau = kw["temperature"]
            g_mu = n * (1 - w**2) / (tau * (1 - torch.tanh(l) ** 2)) * g
        d = g_mu + l - lam0
        expected = l - rho * ((1 - beta) * d / (1 - beta)) if beta else l - rho * d
        torch.testing.assert_close(p.detach(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cls, kw", BINARY, ids=IDS)
def test_binary_gradscaler_skips_inf_step(cls, kw):
    X, y = data()
    model = mlp(bias=False)
    opt = binary_opt(cls, model, kw, skip_nonfinite=True)
    scaler = torch.amp.GradScaler("cpu", init_scale=SCALE)
    binary_step(model, opt, X, y, scaler)
    before = snapshot(model, opt)
    scale = scaler.get_scale()
    binary_step(model, opt, X, y, scaler, inf=True)
    assert scaler.get_scale() < scale and opt.skipped_steps == 1
    assert_same_snapshot(before, snapshot(model, opt))
    binary_step(model, opt, X, y, scaler)  # training goes on, the skipped step left no sums behind
    assert all(int(opt.state[p]["step"]) == 2 for p in model.parameters())
    # an overflow in an earlier sample of the step also skips it (the scaler sees only the last p.grad)
    before = snapshot(model, opt)
    with opt.sampled_params(train=True):
        scaler.scale(F.cross_entropy(model(X), y) * float("inf")).backward()
    binary_step(model, opt, X, y, scaler)
    assert opt.skipped_steps == 2
    assert_same_snapshot(before, snapshot(model, opt))


@pytest.mark.parametrize("cls, kw", BINARY, ids=IDS)
def test_binary_gradscaler_without_skip_nonfinite_raises_on_block_exit(cls, kw):
    """The default (skip_nonfinite=False) is unchanged: an infinite gradient raises, nothing is changed."""
    X, y = data()
    model = mlp(bias=False)
    opt = binary_opt(cls, model, kw)
    scaler = torch.amp.GradScaler("cpu", init_scale=SCALE)
    before = snapshot(model, opt)
    with pytest.raises(ValueError, match="NaN or infinite gradient"):
        with opt.sampled_params(train=True):
            scaler.scale(F.cross_entropy(model(X), y) * float("inf")).backward()
    assert_same_snapshot(before, snapshot(model, opt))


@pytest.mark.parametrize("cls, kw", BINARY[:1] + BINARY[2:3], ids=["ste", "bayesbinn"])
def test_binary_gradscaler_unscale_raises(cls, kw):
    X, y = data()
    model = mlp(bias=False)
    opt = binary_opt(cls, model, kw, skip_nonfinite=True)
    scaler = torch.amp.GradScaler("cpu", init_scale=SCALE)
    before = snapshot(model, opt)
    with opt.sampled_params(train=True):
        scaler.scale(F.cross_entropy(model(X), y)).backward()
    scaler.unscale_(opt)
    with pytest.raises(RuntimeError, match="unscale_"):
        scaler.step(opt)
    assert_same_snapshot(before, snapshot(model, opt))


def test_binary_skip_nonfinite_without_scaler():
    p = nn.Parameter(torch.tensor([0.3, -0.2], dtype=torch.float64))
    opt = STE([p], lr=0.1, ess=5, momentum=0.9, skip_nonfinite=True)
    with opt.sampled_params(train=True):
        (p * float("nan")).sum().backward()
    opt.step()
    assert opt.skipped_steps == 1 and len(opt.state) == 0
    assert torch.equal(p.detach(), torch.tensor([0.3, -0.2], dtype=torch.float64))
    with pytest.raises(ValueError, match="skip_nonfinite"):
        STE([p], lr=0.1, ess=5, skip_nonfinite=1)


@pytest.mark.parametrize("cls, kw", BINARY, ids=IDS)
def test_binary_gradient_accumulation_equals_full_batch(cls, kw):
    """Two backward passes inside one sampled_params block (the same sample) equal one on the whole batch."""
    X, y = data(dtype=torch.float64)
    runs = []
    for accumulate in (False, True):
        model = mlp(dtype=torch.float64, bias=False)
        opt = binary_opt(cls, model, kw)
        for _ in range(3):
            with opt.sampled_params(train=True):
                if accumulate:
                    for Xh, yh in zip(X.chunk(2), y.chunk(2)):
                        (F.cross_entropy(model(Xh), yh) / 2).backward()
                else:
                    F.cross_entropy(model(X), y).backward()
            opt.step()
        runs.append(snapshot(model, opt))
    assert all(p.dtype == torch.float64 for p in runs[1][0])
    assert_same_snapshot(runs[0], runs[1], exact=False, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("kw", [kw for _, kw in BINARY[:2]], ids=IDS[:2])
def test_ste_two_blocks_equal_full_batch(kw):
    """For STE the weights do not depend on a sample, so two blocks on two halves are accumulation too."""
    X, y = data(dtype=torch.float64)
    runs = []
    for accumulate in (False, True):
        model = mlp(dtype=torch.float64, bias=False)
        opt = binary_opt(STE, model, kw)
        for _ in range(3):
            for Xh, yh in zip(X.chunk(2), y.chunk(2)) if accumulate else [(X, y)]:
                with opt.sampled_params(train=True):
                    F.cross_entropy(model(Xh), yh).backward()
            opt.step()
        runs.append(snapshot(model, opt))
    assert_same_snapshot(runs[0], runs[1], exact=False, rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------- OGN: per-example losses under autocast
def test_ogn_closure_under_autocast_close_to_float32():
    """OGN differentiates the per-example losses itself; computed under bf16 autocast, the step is a
    bf16-accurate version of the float32 one (no GradScaler: bf16 has float32's exponent range)."""
    X = torch.randn(64, 3, generator=torch.Generator().manual_seed(0))
    y = X @ torch.tensor([[0.5], [-1.0], [2.0]]) + 0.1
    runs = []
    for autocast in (False, True):
        model = nn.Linear(3, 1)
        torch.manual_seed(0)
        model.reset_parameters()
        opt = OGN(model.parameters(), lr=0.5, ess=64, prior_precision=1.0)

        def closure():
            with torch.autocast(**BF16, enabled=autocast):
                out = model(X)
            return 0.5 * (out.float() - y).pow(2).sum(1)

        for _ in range(3):
            opt.step(closure)
        for p in model.parameters():
            assert p.dtype == torch.float32 and opt.state[p]["precision"].dtype == torch.float32
        runs.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*runs):
        torch.testing.assert_close(a, b, rtol=3e-2, atol=3e-2)
