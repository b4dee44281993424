"""Tests for the teaching optimizers of blrlib.optim.teaching (RuleSGD, RuleRMSprop and their functional forms).

References: torch.optim.SGD / RMSprop / Adam, and blrlib's generic blr_step with the matching family.
"""

from __future__ import annotations


import pytest
import torch
from torch.func import functional_call, grad

import blrlib
from blrlib.optim.teaching import (
    ModifiedRuleState,
    RuleRMSprop,
    RuleRMSpropState,
    RuleSGD,
    modified_rule,
    modified_rule_init,
    rule_rmsprop,
    rule_rmsprop_init,
    rule_sgd,
    rule_sgd_init,
)

N, B, STEPS = 64, 16, 50
TIGHT = dict(rtol=1e-11, atol=1e-13)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def make_model(seed=1, dtype=torch.float64, device="cpu"):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)).to(dtype=dtype, device=device)


def make_data(dtype=torch.float64, device="cpu"):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(N, 3, generator=g, dtype=torch.float64)
    y = torch.randn(N, 2, generator=g, dtype=torch.float64)
    batches = [torch.randperm(N, generator=g)[:B] for _ in range(STEPS)]
    return X.to(dtype=dtype, device=device), y.to(dtype=dtype, device=device), batches


def minibatch_loss(model, X, y):
    return ((model(X) - y) ** 2).mean()


def train(model, opt, X, y, batches, scheduler=None):
    for b in batches:
        opt.zero_grad()
        minibatch_loss(model, X[b], y[b]).backward()
        opt.step()
        if scheduler is not None:
            scheduler.step()
    return flat(model)


def flat(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


# ---------------------------------------------------------------- RuleSGD
@pytest.mark.parametrize("device", DEVICES)
def test_rule_sgd_matches_torch_sgd(device):
    X, y, batches = make_data(device=device)
    delta, lr = 0.7, 0.05
    ref = make_model(device=device)
    expected = train(ref, torch.optim.SGD(ref.parameters(), lr=lr, weight_decay=delta / N), X, y, batches)
    model = make_model(device=device)
    got = train(model, RuleSGD(model.parameters(), lr=lr, ess=N, prior_precision=delta), X, y, batches)
    torch.testing.assert_close(got, expected, **TIGHT)
    # The same optimizer written with rho and variance: lr = rho * variance * N.
    model = make_model(device=device)
    rho, variance = 0.25, lr / (0.25 * N)
    got = train(model, RuleSGD(model.parameters(), rho=rho, variance=variance, ess=N, prior_precision=delta), X, y, batches)
    torch.testing.assert_close(got, expected, **TIGHT)


def _flat_loss_fn(model, X, y, delta):
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    sizes = [p.numel() for _, p in model.named_parameters()]

    def unflatten(theta):
        return {n: t.reshape(s) for n, t, s in zip(names, torch.split(theta, sizes), shapes)}

    def loss(theta, b):
        out = functional_call(model, unflatten(theta), (X[b],))
        per_example = ((out - y[b]) ** 2).mean(1)
        return (N / len(b)) * per_example.sum() + 0.5 * delta * (theta * theta).sum()

    return loss, unflatten


def test_rule_sgd_matches_generic_blr_step():
    X, y, batches = make_data()
    delta, rho, variance = 0.3, 0.5, 0.002
    model = make_model()
    loss, _ = _flat_loss_fn(model, X, y, delta)
    q = blrlib.FixedCovarianceGaussian.from_mean(flat(model), variance=variance)
    state = rule_sgd_init(flat(model))
    opt_model = make_model()
    opt = RuleSGD(opt_model.parameters(), rho=rho, variance=variance, ess=N, prior_precision=delta)
    for b in batches:
        g_full = blrlib.delta_method(lambda th: loss(th, b), q.mean, hessian_kind="none").gradient
        q = blrlib.blr_step(q, q.gradient_wrt_expectation(g_full), rho)
        # functional form: needs the minibatch-mean gradient of the data term only
        g_mean = grad(lambda th: loss(th, b) - 0.5 * delta * (th * th).sum())(state.mean) / N
        state = rule_sgd(state, g_mean, rho=rho, variance=variance, ess=N, prior_precision=delta)
        opt.zero_grad()
        # minibatch mean loss of the per-example loss used above: ((out - y)^2).mean(1) averaged over the batch
        ((opt_model(X[b]) - y[b]) ** 2).mean(1).mean().backward()
        opt.step()
    torch.testing.assert_close(state.mean, q.mean, **TIGHT)
    torch.testing.assert_close(flat(opt_model), q.mean, **TIGHT)


# ---------------------------------------------------------------- RuleRMSprop
def test_rule_rmsprop_matches_generic_blr_step():
    X, y, batches = make_data()
    delta, rho, s0 = 2.0, 0.1, 50.0
    model = make_model()
    loss, _ = _flat_loss_fn(model, X, y, 0.0)  # data term only: (N/B) sum_batch l_i
    theta0 = flat(model)
    q = blrlib.DiagonalGaussian.from_mean_precision(theta0, torch.full_like(theta0, s0))
    opt_model = make_model()
    opt = RuleRMSprop(opt_model.parameters(), lr=rho, ess=N, prior_precision=delta, init_precision=s0)
    for b in batches:
        m = q.mean
        g_data = grad(lambda th: loss(th, b))(m)  # N * g_hat
        g_hat = g_data / N
        expected_grad = g_data + delta * m
        expected_hess = N * g_hat**2 + delta  # squared minibatch gradient + exact prior Hessian
        q = blrlib.blr_step(q, q.gradient_wrt_expectation(expected_grad, expected_hess), rho)
        opt.zero_grad()
        ((opt_model(X[b]) - y[b]) ** 2).mean(1).mean().backward()
        opt.step()
    torch.testing.assert_close(flat(opt_model), q.mean, **TIGHT)
    torch.testing.assert_close(torch.cat([s.reshape(-1) for s in opt.posterior_precision()]), q.precision, **TIGHT)
    torch.testing.assert_close(torch.cat([s.reshape(-1) for s in opt.posterior_std()]), q.stddev, **TIGHT)


def test_modified_rule_with_rule_settings_is_rule_rmsprop():
    gen = torch.Generator().manual_seed(3)
    m0 = torch.randn(7, generator=gen, dtype=torch.float64)
    rho, delta, s0 = 0.2, 3.0, 10.0
    a = rule_rmsprop_init(m0, s0)
    b = modified_rule_init(m0, s0 / N)
    for _ in range(30):
        g = torch.randn(7, generator=gen, dtype=torch.float64)
        a = rule_rmsprop(a, g, rho=rho, ess=N, prior_precision=delta)
        b = modified_rule(b, g, lr=rho, rho=rho, weight_decay=delta / N, hessian="rule")
    torch.testing.assert_close(b.mean, a.mean, **TIGHT)
    torch.testing.assert_close(N * b.second_moment, a.precision, **TIGHT)


class _ModifiedRuleOptimizer(torch.optim.Optimizer):
    """A thin wrapper to drive the functional modified_rule from a model."""

    def __init__(self, params, **kw):
        super().__init__(params, kw)

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            kw = {k: v for k, v in group.items() if k != "params"}
            for p in group["params"]:
                st = self.state[p]
                if "s" not in st:
                    st["s"] = modified_rule_init(p)
                st["s"] = modified_rule(st["s"], p.grad, **kw)
                p.copy_(st["s"].mean)


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_modified_rule_reproduces_adam(weight_decay):
    X, y, batches = make_data()
    ref = make_model()
    expected = train(ref, torch.optim.Adam(ref.parameters(), lr=0.01, betas=(0.9, 0.99), eps=1e-8, weight_decay=weight_decay), X, y, batches)
    model = make_model()
    opt = _ModifiedRuleOptimizer(model.parameters(), lr=0.01, rho=1 - 0.99, beta1=0.9, eps=1e-8, weight_decay=weight_decay,
                                 hessian="torch", sqrt=True, bias_correction=True)
    torch.testing.assert_close(train(model, opt, X, y, batches), expected, **TIGHT)


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_modified_rule_reproduces_rmsprop(weight_decay):
    X, y, batches = make_data()
    ref = make_model()
    expected = train(ref, torch.optim.RMSprop(ref.parameters(), lr=0.01, alpha=0.9, eps=1e-8, weight_decay=weight_decay), X, y, batches)
    model = make_model()
    opt = _ModifiedRuleOptimizer(model.parameters(), lr=0.01, rho=1 - 0.9, eps=1e-8, weight_decay=weight_decay, hessian="torch", sqrt=True)
    torch.testing.assert_close(train(model, opt, X, y, batches), expected, **TIGHT)


def test_modified_rule_fails_with_a_wrong_switch():
    """The Adam check is sharp: dropping the bias correction is detected."""
    X, y, batches = make_data()
    ref = make_model()
    expected = train(ref, torch.optim.Adam(ref.parameters(), lr=0.01), X, y, batches)
    model = make_model()
    opt = _ModifiedRuleOptimizer(model.parameters(), lr=0.01, rho=0.001, beta1=0.9, eps=1e-8, hessian="torch", sqrt=True)
    with pytest.raises(AssertionError):
        torch.testing.assert_close(train(model, opt, X, y, batches), expected, **TIGHT)


def test_functional_forms_are_pure():
    m0 = torch.ones(3, dtype=torch.float64)
    g = torch.full((3,), 0.5, dtype=torch.float64)
    s = rule_sgd_init(m0)
    s2 = rule_sgd(s, g, rho=0.5, variance=1.0)
    assert torch.equal(s.mean, m0) and s.step == 0 and s2.step == 1
    r = rule_rmsprop_init(m0, 2.0)
    r2 = rule_rmsprop(r, g, rho=0.5)
    assert torch.equal(r.precision, torch.full((3,), 2.0, dtype=torch.float64)) and isinstance(r2, RuleRMSpropState)
    torch.testing.assert_close(r2.precision, 0.5 * 2.0 + 0.5 * g**2)
    torch.testing.assert_close(r2.mean, m0 - 0.5 * g / r2.precision)
    a = modified_rule_init(m0)
    a2 = modified_rule(a, g, lr=0.1, rho=0.5)
    assert isinstance(a2, ModifiedRuleState) and torch.equal(a.first_moment, torch.zeros(3, dtype=torch.float64))
    a2.first_moment.add_(1.0)
    assert torch.equal(g, torch.full((3,), 0.5, dtype=torch.float64))  # no aliasing of the caller's gradient


# ---------------------------------------------------------------- torch.optim behaviour


BAD_ARGS = [
    (RuleSGD, dict(), r"Invalid lr/rho"),
    (RuleSGD, dict(lr=0.1, rho=0.5), r"Invalid lr/rho"),
    (RuleSGD, dict(lr=-0.1), r"Invalid lr: -0\.1"),
    (RuleSGD, dict(lr=float("nan")), r"Invalid lr: nan"),
    (RuleSGD, dict(lr=2.0, variance=1.0, ess=1.0), r"Invalid lr: 2\.0 .*rho .* = 2"),
    (RuleSGD, dict(rho=0.0), r"Invalid rho: 0\.0 \(must be a finite real number > 0 and <= 1\)"),
    (RuleSGD, dict(rho=1.5), r"Invalid rho: 1\.5"),
    (RuleSGD, dict(rho=0.5, variance=0.0), r"Invalid variance: 0\.0"),
    (RuleSGD, dict(lr=0.1, ess=0), r"Invalid ess: 0"),
    (RuleSGD, dict(lr=0.1, prior_precision=-1.0), r"Invalid prior_precision: -1\.0"),
    (RuleSGD, dict(lr="0.1"), r"Invalid lr: '0\.1'"),
    (RuleRMSprop, dict(lr=0.0), r"Invalid lr: 0\.0 \(must be a finite real number > 0 and <= 1\)"),
    (RuleRMSprop, dict(lr=1.5), r"Invalid lr: 1\.5"),
    (RuleRMSprop, dict(beta=1.0), r"Invalid beta: 1\.0 \(must be a finite real number >= 0 and < 1 or None\)"),
    (RuleRMSprop, dict(ess=-3.0), r"Invalid ess: -3\.0"),
    (RuleRMSprop, dict(prior_precision=float("inf")), r"Invalid prior_precision: inf"),
    (RuleRMSprop, dict(init_precision=0.0), r"Invalid init_precision: 0\.0"),
    (RuleRMSprop, dict(lr=True), r"Invalid lr: True"),
]


@pytest.mark.parametrize("cls,kwargs,pattern", BAD_ARGS, ids=[f"{c.__name__}-{p[:22]}" for c, _, p in BAD_ARGS])
def test_bad_hyperparameters_raise(cls, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        cls(make_model().parameters(), **kwargs)


def test_bad_hyperparameter_in_a_param_group_raises():
    model = make_model()
    with pytest.raises(ValueError, match=r"Invalid prior_precision: -2"):
        RuleRMSprop([{"params": model[0].parameters()}, {"params": model[2].parameters(), "prior_precision": -2}], lr=0.1)
    with pytest.raises(ValueError, match=r"Invalid rho: 3"):
        RuleSGD([{"params": model[0].parameters()}, {"params": model[2].parameters(), "rho": 3}], lr=0.1)


def test_modified_rule_bad_hessian():
    with pytest.raises(ValueError, match=r"Invalid hessian: 'exact'"):
        modified_rule(modified_rule_init(torch.zeros(2)), torch.zeros(2), lr=0.1, rho=0.1, hessian="exact")


def test_param_groups_with_their_own_hyperparameters():
    X, y, batches = make_data()
    ref = make_model()
    expected = train(ref, torch.optim.SGD([
        {"params": ref[0].parameters(), "lr": 0.1, "weight_decay": 1.0 / N},
        {"params": ref[2].parameters(), "lr": 0.02, "weight_decay": 0.0},
    ]), X, y, batches)
    model = make_model()
    opt = RuleSGD([
        {"params": model[0].parameters(), "lr": 0.1, "prior_precision": 1.0},
        {"params": model[2].parameters(), "rho": 0.5, "variance": 0.02 / (0.5 * N)},
    ], lr=0.05, ess=N)
    torch.testing.assert_close(train(model, opt, X, y, batches), expected, **TIGHT)
    assert opt.rule_parameters()[1]["rho"] == pytest.approx(0.5)
    # RuleRMSprop: two groups equal two separate optimizers
    a = make_model()
    opt_a = RuleRMSprop([{"params": a[0].parameters()}, {"params": a[2].parameters(), "lr": 0.2, "prior_precision": 9.0}],
                        lr=0.05, ess=N, prior_precision=3.0, init_precision=30.0)
    b = make_model()
    opt_b1 = RuleRMSprop(b[0].parameters(), lr=0.05, ess=N, prior_precision=3.0, init_precision=30.0)
    opt_b2 = RuleRMSprop(b[2].parameters(), lr=0.2, ess=N, prior_precision=9.0, init_precision=30.0)
    for batch in batches:
        for opts, model_ in (([opt_a], a), ([opt_b1, opt_b2], b)):
            for o in opts:
                o.zero_grad()
            minibatch_loss(model_, X[batch], y[batch]).backward()
            for o in opts:
                o.step()
    assert torch.equal(flat(a), flat(b))


def test_scheduler_drives_lr():
    X, y, batches = make_data()
    ref = make_model()
    sgd = torch.optim.SGD(ref.parameters(), lr=0.1, weight_decay=0.5 / N)
    expected = train(ref, sgd, X, y, batches, torch.optim.lr_scheduler.StepLR(sgd, step_size=10, gamma=0.5))
    model = make_model()
    opt = RuleSGD(model.parameters(), lr=0.1, ess=N, prior_precision=0.5)
    got = train(model, opt, X, y, batches, torch.optim.lr_scheduler.StepLR(opt, step_size=10, gamma=0.5))
    torch.testing.assert_close(got, expected, **TIGHT)
    assert opt.rule_parameters()[0]["rho"] == pytest.approx(0.5**5)

    model = make_model()
    opt = RuleRMSprop(model.parameters(), lr=0.1, ess=N, prior_precision=2.0, init_precision=10.0)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.9)
    train(model, opt, X, y, batches[:5], sched)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * 0.9**5)


def test_parameters_without_gradient_and_dtype_kept():
    model = make_model(dtype=torch.float32)
    opt = RuleRMSprop(model.parameters(), lr=0.1, ess=N, init_precision=4.0)
    X, y, _ = make_data(dtype=torch.float32)
    model[2].bias.requires_grad_(False)
    bias = model[2].bias.detach().clone()
    opt.zero_grad()
    minibatch_loss(model, X, y).backward()
    opt.step()
    assert torch.equal(model[2].bias, bias)
    stds = opt.posterior_std()
    assert all(s.dtype == torch.float32 for s in stds)
    assert torch.equal(stds[-1], torch.full_like(bias, 0.5))  # never updated: s0^{-1/2}
    assert all(p.dtype == torch.float32 for p in model.parameters())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    X, y, batches = make_data()
    cpu = make_model()
    a = train(cpu, RuleRMSprop(cpu.parameters(), lr=0.05, ess=N, prior_precision=5.0, init_precision=20.0), X, y, batches)
    Xc, yc, _ = make_data(device="cuda")
    gpu = make_model(device="cuda")
    b = train(gpu, RuleRMSprop(gpu.parameters(), lr=0.05, ess=N, prior_precision=5.0, init_precision=20.0), Xc, yc, batches)
    torch.testing.assert_close(b.cpu(), a, rtol=1e-9, atol=1e-11)
