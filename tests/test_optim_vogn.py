"""Tests of blrlib.optim.vogn: OGN and VOGN against the generic rule, hand-written loops, and as optimizers."""

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from blrlib import DiagonalGaussian, blr_step, curvature
from blrlib.optim.vogn import OGN, VOGN

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def mlp(dtype=torch.float64, seed=0, device="cpu"):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).to(dtype=dtype, device=device)


def data(n=24, dtype=torch.float64, seed=1, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 3, generator=g, dtype=dtype)
    y = torch.randint(0, 2, (n,), generator=g)
    return X.to(device), y.to(device)


def flat(tensors):
    return torch.cat([t.detach().reshape(-1) for t in tensors])


def closure_for(model, X, y):
    return lambda: F.cross_entropy(model(X), y, reduction="none")


N, DELTA, RHO = 200.0, 2.0, 0.3


def blr_reference(model, X, y, steps, *, sample=False, generator=None):
    """The rule itself: blr_step on a DiagonalGaussian over all weights, with the Gauss-Newton
    expected Hessian N*h_hat + delta and the expected gradient N*g_hat + delta*m."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    m = flat(model.parameters())
    q = DiagonalGaussian.from_mean_precision(m, torch.full_like(m, DELTA))

    def unflatten(v):
        out, k = {}, 0
        for n, s in zip(names, shapes):
            size = s.numel()
            out[n] = v[k : k + size].reshape(s)
            k += size
        return out

    for _ in range(steps):
        m = q.mean
        if sample:  # the same draws, in the same order, as VOGN.sampled_params
            eps = torch.cat([torch.randn(s, generator=generator, dtype=m.dtype).reshape(-1) for s in shapes])
            theta = m + eps / q.precision.sqrt()
        else:
            theta = m
        pe = curvature.per_example_gradients(model, F.cross_entropy, X, y, params=unflatten(theta))
        G = curvature.flatten_per_example(pe.grads)
        g_hat, h_hat = G.mean(0), (G * G).mean(0)
        grad_mu = q.gradient_wrt_expectation(N * g_hat + DELTA * m, N * h_hat + DELTA)
        q = blr_step(q, grad_mu, RHO)
    return q


@pytest.mark.parametrize("cls", [OGN, VOGN])
def test_step_equals_the_generic_rule(cls):
    X, y = data()
    model, twin = mlp(), mlp()
    kw = dict(generator=torch.Generator().manual_seed(5)) if cls is VOGN else {}
    opt = cls(model.parameters(), lr=RHO, ess=N, beta1=0.0, beta2=1 - RHO, prior_precision=DELTA, **kw)
    for _ in range(6):
        opt.step(closure_for(model, X, y))
    q = blr_reference(twin, X, y, 6, sample=cls is VOGN, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(flat(model.parameters()), q.mean, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(flat(opt.posterior_precision()), q.precision, rtol=1e-10, atol=0)
    # a wrong factor anywhere would show: the rule's step with rho/2 is far away
    assert not torch.allclose(flat(opt.posterior_precision()), blr_reference(mlp(), X, y, 1).precision)


def test_osawa_per_example_loop_with_momentum():
    """Hand-written reference of Osawa et al. (2019) in their per-example scaling
    (s~, delta~ = delta/N), with a Python loop over examples, momentum and debiasing."""
    X, y = data(n=10)
    model, ref = mlp(), mlp()
    b1, b2, lr = 0.8, 0.9, 0.05
    opt = OGN(model.parameters(), lr=lr, ess=N, beta1=b1, beta2=b2, prior_precision=DELTA, init_precision=3.0)
    params = list(ref.parameters())
    dt = DELTA / N
    s_t = [torch.full_like(p, 3.0 / N - dt) for p in params]  # s = N (s~ + delta~)
    mom = [torch.zeros_like(p) for p in params]
    for t in range(1, 8):
        opt.step(closure_for(model, X, y))
        rows = []
        for i in range(X.shape[0]):
            loss = F.cross_entropy(ref(X[i : i + 1]), y[i : i + 1])
            rows.append(torch.autograd.grad(loss, params))
        with torch.no_grad():
            for k, p in enumerate(params):
                g = sum(r[k] for r in rows) / len(rows)
                h = sum(r[k] ** 2 for r in rows) / len(rows)
                s_t[k] = b2 * s_t[k] + (1 - b2) * h
                mom[k] = b1 * mom[k] + (1 - b1) * (g + dt * p)
                p -= lr * (mom[k] / (1 - b1**t)) / (s_t[k] + dt)
    torch.testing.assert_close(flat(model.parameters()), flat(params), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(flat(opt.posterior_precision()), N * (flat(s_t) + dt), rtol=1e-10, atol=0)


def test_explicit_per_example_grads_equal_closure():
    X, y = data()
    a, b = mlp(), mlp()
    oa = OGN(a.parameters(), lr=0.2, ess=N, beta1=0.5)
    ob = OGN(b.parameters(), lr=0.2, ess=N, beta1=0.5)
    for _ in range(3):
        oa.step(closure_for(a, X, y))
        ob.step(per_example_grads=curvature.per_example_gradients(b, F.cross_entropy, X, y).grads)
    torch.testing.assert_close(flat(a.parameters()), flat(b.parameters()), rtol=1e-12, atol=1e-14)


def test_vogn_mc_samples_equal_concatenated_explicit_samples():
    X, y = data()
    a, b = mlp(), mlp()
    oa = VOGN(a.parameters(), lr=0.2, ess=N, mc_samples=3, generator=torch.Generator().manual_seed(2))
    ob = VOGN(b.parameters(), lr=0.2, ess=N, generator=torch.Generator().manual_seed(2))
    for _ in range(3):
        oa.step(closure_for(a, X, y))
        rows = []
        for _ in range(3):
            with ob.sampled_params():
                rows.append(curvature.per_example_gradients(b, F.cross_entropy, X, y).grads)
        ob.step(per_example_grads=[torch.cat([r[n] for r in rows]) for n in rows[0]])
    torch.testing.assert_close(flat(a.parameters()), flat(b.parameters()), rtol=1e-12, atol=1e-14)


def test_param_groups_and_lr_scheduler():
    X, y = data()
    a, b = mlp(), mlp()
    groups = [
        {"params": a[0].parameters(), "lr": 0.3, "beta2": 0.5},
        {"params": a[2].parameters(), "prior_precision": 4.0},
    ]
    oa = OGN(groups, lr=0.1, ess=N)
    assert oa.param_groups[1]["lr"] == 0.1 and oa.param_groups[0]["beta2"] == 0.5
    ob1 = OGN(b[0].parameters(), lr=0.3, ess=N, beta2=0.5)
    ob2 = OGN(b[2].parameters(), lr=0.1, ess=N, prior_precision=4.0)
    sched = torch.optim.lr_scheduler.StepLR(oa, step_size=1, gamma=0.5)
    for t in range(3):
        oa.step(closure_for(a, X, y))
        sched.step()
        pb = list(b.parameters())
        pe = curvature.per_example_gradients(b, F.cross_entropy, X, y).grads
        g = list(pe.values())
        ob1.step(per_example_grads=g[:2])
        ob2.step(per_example_grads=g[2:])
        for o in (ob1, ob2):
            o.param_groups[0]["lr"] *= 0.5
    torch.testing.assert_close(flat(a.parameters()), flat(pb), rtol=1e-12, atol=1e-14)
    assert oa.param_groups[0]["lr"] == pytest.approx(0.3 / 8)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_devices_and_dtypes(device, dtype):
    X, y = data(dtype=dtype, device=device)
    model = mlp(dtype=dtype, device=device)
    opt = VOGN(model.parameters(), lr=0.1, ess=N, beta1=0.9, generator=torch.Generator().manual_seed(0))
    loss = opt.step(closure_for(model, X, y))
    assert loss.dtype == dtype and loss.device.type == device
    for p, s in zip(model.parameters(), opt.posterior_precision()):
        assert p.dtype == dtype and s.dtype == dtype and s.device == p.device
        assert torch.isfinite(p).all()


def test_bfloat16_parameters_keep_float32_state():
    X, y = data(dtype=torch.bfloat16)
    model = mlp(dtype=torch.bfloat16)
    opt = OGN(model.parameters(), lr=0.1, ess=N)
    opt.step(closure_for(model, X, y))
    assert all(s.dtype == torch.float32 for s in opt.posterior_precision())
    opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    assert all(s.dtype == torch.float32 for s in opt.posterior_precision())


def test_frozen_and_unused_parameters_are_left_alone():
    X, y = data()
    model = mlp()
    unused = nn.Parameter(torch.ones(3, dtype=torch.float64))
    model[0].bias.requires_grad_(False)
    before = model[0].bias.detach().clone()
    opt = OGN([*model.parameters(), unused], lr=0.1, ess=N)
    opt.step(closure_for(model, X, y))
    assert torch.equal(model[0].bias, before)
    assert torch.equal(unused, torch.ones(3, dtype=torch.float64))
    assert unused not in opt.state and model[0].bias not in opt.state


def test_precision_stays_positive_on_negative_curvature():
    """10^4 VOGN chain-steps (50 independent chains x 200 steps, vectorised; it was one chain of 10^4
    sequential steps) on per-example losses -cos(x_i . theta) (negative curvature near the maxima):
    the precision only ever mixes in squares, so it stays positive. Gradients in closed form, at
    the samples, through the explicit API (cheap steps)."""
    start = torch.tensor([0.1, -0.2], dtype=torch.float64)
    theta = nn.Parameter(start + 0.3 * torch.randn(50, 2, generator=torch.Generator().manual_seed(1),
                                                   dtype=torch.float64))
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    opt = VOGN([theta], lr=0.5, ess=8, beta2=0.5, prior_precision=0.0, init_precision=1e-3,
               generator=torch.Generator().manual_seed(0))
    smallest = float("inf")
    for _ in range(200):
        with opt.sampled_params(), torch.no_grad():
            # chain c: d/dtheta_c of -cos(x_i . theta_c), per example i: shape (8, 50, 2)
            g = torch.sin(x @ theta.T)[:, :, None] * x[:, None, :]
        opt.step(per_example_grads=[g])
        smallest = min(smallest, opt.state[theta]["precision"].min().item())
    assert smallest > 0 and torch.isfinite(theta).all()
    # the closure path on the same problem agrees with the closed-form gradients
    opt2 = VOGN([theta], lr=0.5, ess=8, beta2=0.5, prior_precision=0.0, init_precision=1e-3)
    opt2.step(lambda: -torch.cos(x @ theta.T).sum(1))
    assert opt2.state[theta]["precision"].min() > 0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(lr=-1.0), r"Invalid lr: -1.0 \(must be a finite real number >= 0\)"),
        (dict(lr=float("nan")), r"Invalid lr: nan"),
        (dict(ess=0), r"Invalid ess: 0 \(must be a finite real number > 0\)"),
        (dict(ess=None), r"Invalid ess: None"),
        (dict(beta1=1.0), r"Invalid beta1: 1.0 \(must be a finite real number >= 0 and < 1\)"),
        (dict(beta2=1.5), r"Invalid beta2: 1.5 \(must be a finite real number >= 0 and <= 1\)"),
        (dict(prior_precision=-1.0), r"Invalid prior_precision: -1.0 \(must be a finite real number >= 0\)"),
        (dict(init_precision=0.0), r"Invalid init_precision: 0.0 \(must be a finite real number > 0 or None\)"),
        (dict(prior_precision=0.0), r"Invalid init_precision: None with prior_precision 0"),
        (dict(debias="yes"), r"Invalid debias"),
        (dict(mc_samples=0), r"Invalid mc_samples: 0 \(must be an integer >= 1\)"),
        (dict(mc_samples=1.5), r"Invalid mc_samples: 1.5"),
        (dict(generator=3), r"Invalid generator"),
    ],
)
def test_bad_hyperparameters(kwargs, message):
    model = mlp()
    args = dict(lr=0.1, ess=N)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        VOGN(model.parameters(), **args)
    if "mc_samples" not in kwargs:
        with pytest.raises(ValueError, match=message):
            OGN(model.parameters(), **args)
    opt = VOGN(model.parameters(), lr=0.1, ess=N)
    if "generator" not in kwargs:
        with pytest.raises(ValueError, match=message.split(" ")[0]):
            opt.add_param_group({"params": [nn.Parameter(torch.zeros(2))], **kwargs})


def test_bad_step_calls():
    X, y = data()
    model = mlp()
    opt = OGN(model.parameters(), lr=0.1, ess=N)
    with pytest.raises(ValueError, match="exactly one of closure"):
        opt.step()
    with pytest.raises(ValueError, match="per-example losses"):
        opt.step(lambda: F.cross_entropy(model(X), y))
    with pytest.raises(ValueError, match="has 1 entries but the optimizer has 4"):
        opt.step(per_example_grads=[torch.zeros(3, 5, 3)])
    with pytest.raises(ValueError, match=r"expected \(M, \*\(5, 3\)\)"):
        opt.step(per_example_grads=[torch.zeros(3, 3, 5), None, None, None])
    with pytest.raises(ValueError, match="4 examples but an earlier entry has 3"):
        opt.step(per_example_grads=[torch.zeros(3, 5, 3), torch.zeros(4, 5), None, None])
