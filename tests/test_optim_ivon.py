"""Tests of blrlib.optim.IVON, against the ivon-opt package (test-only oracle) and on its own."""

import copy
import io
import math

import pytest
import torch
import torch.nn as nn

from blrlib.optim import IVON, flat_group_noise

try:  # the GPL ivon-opt package is a test oracle only: the tests that compare with it skip without it
    import ivon
except ImportError:  # pragma: no cover
    ivon = None

needs_oracle = pytest.mark.skipif(ivon is None, reason="ivon-opt (test oracle) not installed")

@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These models are tiny: one intra-op thread is faster, above all on a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]


def mlp(dtype=torch.float64, seed=0, device="cpu"):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 3)).to(
        dtype=dtype, device=device
    )


def data(n=64, dtype=torch.float64, seed=1, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 5, generator=g, dtype=dtype)
    y = torch.randint(0, 3, (n,), generator=g)
    return X.to(device), y.to(device)


def train(model, opt, X, y, steps, samples=1, seed=123, bs=16):
    """Run `steps` IVON steps; the global RNG is seeded once so both optimizers draw alike."""
    torch.manual_seed(seed)
    n = X.shape[0]
    for t in range(steps):
        i = (t * bs) % n
        xb, yb = X[i : i + bs], y[i : i + bs]
        for _ in range(samples):
            with opt.sampled_params(train=True):
                opt.zero_grad()
                loss = nn.functional.cross_entropy(model(xb), yb)
                loss.backward()
        opt.step()
    return model


def params_of(model):
    return [p.detach().clone() for p in model.parameters()]


# hess_init is a power of two: ivon-opt builds h0 from a float32 tensor (0.3 would be rounded).
HYPER = dict(lr=0.05, ess=64.0, hess_init=0.25, beta1=0.9, beta2=0.99, weight_decay=1e-3)


@needs_oracle
@pytest.mark.parametrize("hess_approx", ["price", "gradsq"])
@pytest.mark.parametrize("samples", [1, 3])
def test_same_trajectory_as_ivon_opt(hess_approx, samples):
    X, y = data()
    m_ref, m_new = mlp(), mlp()
    ref = ivon.IVON(m_ref.parameters(), hess_approx=hess_approx, mc_samples=samples, **HYPER)
    new = IVON(m_new.parameters(), hess_approx=hess_approx, mc_samples=samples, noise_fn=flat_group_noise(), **HYPER)
    train(m_ref, ref, X, y, 25, samples)
    train(m_new, new, X, y, 25, samples)
    for a, b in zip(m_ref.parameters(), m_new.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)
    # Hessian and momentum too (ivon-opt keeps them flat, per group)
    h_new = torch.cat([new.state[p]["hess"].flatten() for p in m_new.parameters()])
    g_new = torch.cat([new.state[p]["momentum"].flatten() for p in m_new.parameters()])
    torch.testing.assert_close(h_new, ref.param_groups[0]["hess"], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g_new, ref.param_groups[0]["momentum"], rtol=1e-10, atol=1e-12)
    # the Hessian really moved (the test would not notice a wrong h otherwise)
    assert (h_new - HYPER["hess_init"]).abs().max() > 1e-3


@needs_oracle
def test_same_trajectory_clip_no_debias_no_rescale_two_groups():
    X, y = data()
    kw = dict(HYPER, clip_radius=0.01, debias=False, rescale_lr=False)
    m_ref, m_new = mlp(), mlp()

    def groups(m):
        ps = list(m.parameters())
        return [{"params": ps[:2]}, {"params": ps[2:], "lr": 0.02, "weight_decay": 5e-3}]

    ref = ivon.IVON(groups(m_ref), **kw)
    new = IVON(groups(m_new), noise_fn=flat_group_noise(), **kw)
    train(m_ref, ref, X, y, 20)
    train(m_new, new, X, y, 20)
    for a, b in zip(m_ref.parameters(), m_new.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)


@needs_oracle
def test_distribution_over_seeds_matches_ivon_opt():
    """Default noise (per-tensor normal_) differs from ivon-opt's draw, but the law agrees."""
    X = torch.randn(32, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    w_true = torch.tensor([[1.0], [-2.0], [0.5]], dtype=torch.float64)
    Y = X @ w_true + 0.1
    finals = {"ref": [], "new": []}
    for seed in range(150):
        for kind in finals:
            torch.manual_seed(1000)
            model = nn.Linear(3, 1).double()
            kw = dict(lr=0.1, ess=32.0, hess_init=0.5, beta2=0.9, weight_decay=1e-2)
            opt = ivon.IVON(model.parameters(), **kw) if kind == "ref" else IVON(model.parameters(), **kw)
            torch.manual_seed(seed)
            for _ in range(4):
                with opt.sampled_params(train=True):
                    opt.zero_grad()
                    nn.functional.mse_loss(model(X), Y).backward()
                opt.step()
            finals[kind].append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    a, b = torch.stack(finals["ref"]), torch.stack(finals["new"])
    se = torch.sqrt(a.var(0) / len(a) + b.var(0) / len(b))
    assert ((a.mean(0) - b.mean(0)).abs() / se).max() < 4.5
    ratio = b.std(0) / a.std(0)
    assert ((ratio > 0.75) & (ratio < 1.33)).all(), ratio
    assert (a.std(0) > 1e-3).all()  # the noise matters for the final weights


def _quad_run(opt_factory, steps, model=None, seed=0):
    torch.manual_seed(seed)
    model = model or mlp()
    X, y = data()
    opt = opt_factory(model)
    train(model, opt, X, y, steps, seed=seed + 7)
    return model, opt


def test_scheduler_changes_lr_and_update_scales_with_it():
    model = nn.Linear(2, 1).double()
    opt = IVON(model.parameters(), lr=0.1, ess=10.0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    lrs = []
    for _ in range(3):
        with opt.sampled_params(train=True):
            opt.zero_grad()
            model(torch.ones(1, 2, dtype=torch.float64)).sum().backward()
        opt.step()
        lrs.append(opt.param_groups[0]["lr"])
        sched.step()
    assert lrs == [0.1, 0.05, 0.025]
    # lr = 0 leaves the mean unchanged (but h still learns)
    opt.param_groups[0]["lr"] = 0.0
    before = params_of(model)
    with opt.sampled_params(train=True):
        opt.zero_grad()
        model(torch.ones(1, 2, dtype=torch.float64)).sum().backward()
    opt.step()
    for a, b in zip(before, model.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("lr", [0.0])
def test_hessian_stays_positive_with_negative_curvature(lr):
    """1.3 x 10^6 Monte Carlo draws (6400 independent coordinates x 200 steps, vectorised; it was
    64 x 10^4 sequential steps) where the Price estimate is negative.

    lr = 0: loss -x^2/2 at m = 0, so hhat = -eps^2 <= 0 in every draw (a plain average
    would drive h below 0 within ~10 steps). lr > 0: -x^2/2 + x^4/4, which starts on the
    negative-curvature hump and moves to the wells.
    """
    x = nn.Parameter(torch.zeros(100, 64, dtype=torch.float64))
    opt = IVON([x], lr=lr, ess=1.0, hess_init=1.0, beta2=0.9, weight_decay=0.0,
               generator=torch.Generator().manual_seed(0))
    quartic = 0.25 if lr > 0 else 0.0
    hmin = math.inf
    for _ in range(200):
        with opt.sampled_params(train=True):
            opt.zero_grad()
            (-0.5 * x**2 + quartic * x**4).sum().backward()
        opt.step()
        hmin = min(hmin, opt.state[x]["hess"].min().item())
    assert hmin > 0
    assert torch.isfinite(x).all() and torch.isfinite(opt.state[x]["hess"]).all()
    assert hmin < 0.5  # h was pushed down hard (it starts at 1), yet stayed positive


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_gradient_raises_and_leaves_state(bad):
    model = mlp()
    opt = IVON(model.parameters(), **HYPER)
    X, y = data()
    train(model, opt, X, y, 2)
    snap = copy.deepcopy(opt.state_dict())
    before = params_of(model)
    with opt.sampled_params(train=True):
        opt.zero_grad()
        nn.functional.cross_entropy(model(X), y).backward()
    next(model.parameters()).grad[0, 0] = bad
    with pytest.raises(ValueError, match="non-finite"):
        opt.step()
    for a, b in zip(before, model.parameters()):
        assert torch.equal(a, b)
    for k, s in opt.state_dict()["state"].items():
        for key in ("hess", "momentum", "step"):
            assert torch.equal(s[key], snap["state"][k][key])
    # with the flag the step is skipped instead
    opt.skip_nonfinite = True
    with opt.sampled_params(train=True):
        opt.zero_grad()
        nn.functional.cross_entropy(model(X), y).backward()
    list(model.parameters())[-1].grad[0] = bad
    opt.step()
    assert opt.skipped_steps == 1
    for a, b in zip(before, model.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "kw, msg",
    [
        (dict(lr=-1.0), r"Invalid lr: -1.0 \(must be a finite real number >= 0\)"),
        (dict(ess=-1.0), r"Invalid ess: -1.0 \(must be a finite real number > 0\)"),
        (dict(ess=0.0), r"Invalid ess: 0.0"),
        (dict(ess=float("nan")), r"Invalid ess: nan"),
        (dict(hess_init=0.0), r"Invalid hess_init: 0.0 \(must be a finite real number > 0\)"),
        (dict(beta1=1.0), r"Invalid beta1: 1.0 \(must be a finite real number >= 0 and < 1\)"),
        (dict(beta1=-0.1), r"Invalid beta1: -0.1"),
        (dict(beta2=1.5), r"Invalid beta2: 1.5 \(must be a finite real number >= 0 and <= 1\)"),
        (dict(weight_decay=-1e-4), r"Invalid weight_decay: -0.0001 \(must be a finite real number >= 0\)"),
        (dict(mc_samples=0), r"Invalid mc_samples: 0 \(must be an integer >= 1\)"),
        (dict(mc_samples=1.5), r"Invalid mc_samples: 1.5"),
        (dict(hess_approx="exact"), r"Invalid hess_approx: 'exact' \(must be one of 'price', 'gradsq'\)"),
        (dict(clip_radius=0.0), r"Invalid clip_radius: 0.0 \(must be a real number > 0\)"),
        (dict(generator=3), r"Invalid generator"),
    ],
)
def test_bad_arguments_raise(kw, msg):
    args = dict(lr=0.1, ess=10.0)
    args.update(kw)
    with pytest.raises(ValueError, match=msg):
        IVON(nn.Linear(2, 2).parameters(), **args)


def test_bad_group_argument_raises():
    m = nn.Linear(2, 2)
    with pytest.raises(ValueError, match=r"Invalid ess: -3"):
        IVON([{"params": [m.weight]}, {"params": [m.bias], "ess": -3}], lr=0.1, ess=10.0)


def test_step_closure_samples_and_returns_mean_loss():
    model = mlp()
    X, y = data()
    opt = IVON(model.parameters(), mc_samples=2, **HYPER)
    seen = []

    def closure():
        opt.zero_grad()
        seen.append(model[0].weight.detach().clone())
        loss = nn.functional.cross_entropy(model(X), y)
        loss.backward()
        return loss

    m0 = model[0].weight.detach().clone()
    loss = opt.step(closure)
    assert len(seen) == 2 and not torch.equal(seen[0], seen[1]) and not torch.equal(seen[0], m0)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert not torch.equal(model[0].weight, m0)


def test_mc_samples_average_equals_manual_average():
    """K samples: the step uses the mean gradient and the mean Price product."""
    x = nn.Parameter(torch.tensor([0.3, -0.7], dtype=torch.float64))
    eps = [torch.tensor([0.5, -1.0], dtype=torch.float64), torch.tensor([2.0, 0.25], dtype=torch.float64)]
    it = iter(eps)

    def fn(noises, group):
        noises[0].copy_(next(it))

    ess, h0, wd, b1, b2, lr = 10.0, 2.0, 0.1, 0.9, 0.8, 0.05
    opt = IVON([x], lr=lr, ess=ess, hess_init=h0, weight_decay=wd, beta1=b1, beta2=b2, mc_samples=2, noise_fn=fn)
    loss = lambda t: (t**3).sum()  # gradient 3 t^2
    m = x.detach().clone()
    sigma = 1 / torch.sqrt(ess * (h0 + wd) * torch.ones(2, dtype=torch.float64))
    gs = [3 * (m + sigma * e) ** 2 for e in eps]
    for _ in range(2):
        with opt.sampled_params(train=True):
            opt.zero_grad()
            loss(x).backward()
    opt.step()
    g = (gs[0] + gs[1]) / 2
    hhat = (gs[0] * eps[0] + gs[1] * eps[1]) / 2 / sigma
    h = b2 * h0 + (1 - b2) * hhat + 0.5 * (1 - b2) ** 2 * (h0 - hhat) ** 2 / (h0 + wd)
    mom = (1 - b1) * g
    m_new = m - lr * (h0 + wd) * (mom / (1 - b1) + wd * m) / (h + wd)
    torch.testing.assert_close(opt.state[x]["hess"], h, rtol=1e-13, atol=0)
    torch.testing.assert_close(opt.state[x]["momentum"], mom, rtol=1e-13, atol=0)
    torch.testing.assert_close(x.detach(), m_new, rtol=1e-13, atol=0)


def test_gradient_accumulation_inside_a_sample():
    """Two half-batch backward passes inside one block give the full-batch step."""
    X, y = data()
    outs = []
    for split in (False, True):
        model = mlp()
        opt = IVON(model.parameters(), generator=torch.Generator().manual_seed(3), **HYPER)
        for _ in range(3):
            with opt.sampled_params(train=True):
                opt.zero_grad()
                if split:
                    for xb, yb in ((X[:32], y[:32]), (X[32:], y[32:])):
                        (nn.functional.cross_entropy(model(xb), yb) / 2).backward()
                else:
                    nn.functional.cross_entropy(model(X), y).backward()
            opt.step()
        outs.append(params_of(model))
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_zero_grad_outside_block_with_several_samples():
    """Zeroing gradients before each block (instead of inside) gives the same step."""
    X, y = data()
    outs = []
    for inside in (True, False):
        model = mlp()
        opt = IVON(model.parameters(), mc_samples=2, generator=torch.Generator().manual_seed(4), **HYPER)
        for _ in range(3):
            for _ in range(2):
                if not inside:
                    opt.zero_grad()
                with opt.sampled_params(train=True):
                    if inside:
                        opt.zero_grad()
                    nn.functional.cross_entropy(model(X), y).backward()
            opt.step()
        outs.append(params_of(model))
    for a, b in zip(*outs):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("device", DEVICES)
def test_dtypes_and_devices(dtype, device):
    model = mlp(dtype=dtype, device=device)
    X, y = data(dtype=dtype, device=device)
    opt = IVON(model.parameters(), **HYPER)
    before = params_of(model)
    train(model, opt, X, y, 5)
    for p, b in zip(model.parameters(), before):
        assert p.dtype == dtype and p.device.type == device
        assert torch.isfinite(p).all()
        st = opt.state[p]
        assert st["hess"].dtype == (torch.float32 if dtype == torch.bfloat16 else dtype)
        assert st["hess"].device == p.device
    assert not all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    # the Hessian estimate learns in bfloat16 models too (statistics are float32)
    assert max((opt.state[p]["hess"] - 0.25).abs().max().item() for p in model.parameters()) > 1e-4


@pytest.mark.parametrize("device", DEVICES)
def test_state_dict_map_location(device):
    model = mlp()
    X, y = data()
    opt = IVON(model.parameters(), **HYPER)
    train(model, opt, X, y, 3)
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    sd = torch.load(buf, map_location=device)
    model2 = copy.deepcopy(model).to(device)
    opt2 = IVON(model2.parameters(), **HYPER)
    opt2.load_state_dict(sd)
    for p, q in zip(model.parameters(), model2.parameters()):
        assert opt2.state[q]["hess"].device == q.device
        assert torch.equal(opt2.state[q]["hess"].cpu(), opt.state[p]["hess"])
        assert opt2.state[q]["step"].item() == 3


def test_gradscaler_matches_unscaled_run_and_skips_overflow():
    X, y = data(dtype=torch.float32)
    outs = []
    for use_scaler in (False, True):
        model = mlp(dtype=torch.float32)
        opt = IVON(model.parameters(), generator=torch.Generator().manual_seed(2), **HYPER)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, enabled=use_scaler)
        for _ in range(4):
            with opt.sampled_params(train=True):
                opt.zero_grad()
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    loss = nn.functional.cross_entropy(model(X), y)
                scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        outs.append((params_of(model), [opt.state[p]["hess"].clone() for p in model.parameters()]))
    for a, b in zip(outs[0][0] + outs[0][1], outs[1][0] + outs[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    # an overflow: the step is skipped, m and h untouched, the scale reduced
    model = mlp(dtype=torch.float32)
    opt = IVON(model.parameters(), **HYPER)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    before = params_of(model)
    with opt.sampled_params(train=True):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(X), y)
        scaler.scale(loss * float("inf")).backward()
    scaler.step(opt)
    scaler.update()
    assert scaler.get_scale() < 2.0**10 and opt.skipped_steps == 1
    for a, b in zip(before, model.parameters()):
        assert torch.equal(a, b)
    assert all(int(opt.state[p].get("step", 0)) == 0 for p in model.parameters())  # skipped: no state created


def test_gradscaler_unscale_then_clip():
    """scaler.unscale_ + clip_grad_norm_ before scaler.step: IVON reads the clipped grads."""
    X, y = data(dtype=torch.float32)
    model = mlp(dtype=torch.float32)
    opt = IVON(model.parameters(), **HYPER)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    for _ in range(3):
        with opt.sampled_params(train=True):
            opt.zero_grad()
            scaler.scale(nn.functional.cross_entropy(model(X), y)).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1e-3)
        mom_before = [opt.state[p]["momentum"].clone() if p in opt.state else torch.zeros_like(p) for p in model.parameters()]
        grads = [p.grad.clone() for p in model.parameters()]
        scaler.step(opt)
        scaler.update()
        for p, m0, g in zip(model.parameters(), mom_before, grads):
            torch.testing.assert_close(opt.state[p]["momentum"], 0.9 * m0 + 0.1 * g, rtol=1e-5, atol=1e-9)


def test_posterior_std_and_summary():
    model = mlp()
    opt = IVON(model.parameters(), **HYPER)
    stds = opt.posterior_std()
    s0 = 1 / math.sqrt(HYPER["ess"] * (HYPER["hess_init"] + HYPER["weight_decay"]))
    assert len(stds) == len(list(model.parameters()))
    assert all(torch.allclose(s, torch.full_like(s, s0)) for s in stds)
    X, y = data()
    train(model, opt, X, y, 10)
    stds = opt.posterior_std()
    for p, s in zip(model.parameters(), stds):
        h = opt.state[p]["hess"]
        torch.testing.assert_close(s, 1 / torch.sqrt(HYPER["ess"] * (h + HYPER["weight_decay"])))
    rows = opt.posterior_summary([n for n, _ in model.named_parameters()])
    assert [r["name"] for r in rows] == [n for n, _ in model.named_parameters()]
    assert all(r["sigma_min"] <= r["sigma_mean"] <= r["sigma_max"] for r in rows)
    assert all(r["steps"] == 10 and r["hess_rel_change"] > 0 for r in rows)
    assert rows[0]["sigma_init"] == pytest.approx(s0)
    assert rows[0]["sigma_prior"] == pytest.approx(1 / math.sqrt(HYPER["ess"] * HYPER["weight_decay"]))


def test_nested_sampling_and_eval_sampling():
    model = mlp()
    opt = IVON(model.parameters(), **HYPER)
    with opt.sampled_params():
        with pytest.raises(RuntimeError, match="nested"):
            with opt.sampled_params():
                pass
    before = params_of(model)
    X, y = data()
    with torch.no_grad():
        outs = []
        for _ in range(2):
            with opt.sampled_params():
                outs.append(model(X))
    assert not torch.equal(outs[0], outs[1])
    for a, b in zip(before, model.parameters()):
        assert torch.equal(a, b)
    with pytest.raises(RuntimeError, match="sampled_params"):
        opt.step()


def test_gradscaler_with_two_samples():
    X, y = data(dtype=torch.float32)
    outs = []
    for use_scaler in (False, True):
        model = mlp(dtype=torch.float32)
        opt = IVON(model.parameters(), mc_samples=2, generator=torch.Generator().manual_seed(2), **HYPER)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12, enabled=use_scaler)
        for _ in range(3):
            for _ in range(2):
                with opt.sampled_params(train=True):
                    opt.zero_grad()
                    scaler.scale(nn.functional.cross_entropy(model(X), y)).backward()
            scaler.step(opt)
            scaler.update()
        outs.append(params_of(model) + [opt.state[p]["hess"].clone() for p in model.parameters()])
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    # unscale_ with several samples cannot be honoured: it raises instead of mixing scales
    with opt.sampled_params(train=True):
        opt.zero_grad()
        scaler.scale(nn.functional.cross_entropy(model(X), y)).backward()
    with opt.sampled_params(train=True):
        opt.zero_grad()
        scaler.scale(nn.functional.cross_entropy(model(X), y)).backward()
    scaler.unscale_(opt)
    with pytest.raises(RuntimeError, match="unscale_"):
        scaler.step(opt)


@pytest.mark.skipif(
    __import__("os").environ.get("BLRLIB_TEST_COMPILE") != "1",
    reason="torch.compile takes minutes on a small CPU; set BLRLIB_TEST_COMPILE=1",
)
def test_fused_step_matches_foreach_step():
    X, y = data()
    outs = []
    IVON.FUSED_MIN_NUMEL = 40  # fuse the 5x16 and 16x8 weights, keep the rest on the foreach path
    for fused in (False, True):
        model = mlp()
        opt = IVON(model.parameters(), fused=fused, generator=torch.Generator().manual_seed(9), **HYPER)
        train(model, opt, X, y, 8)
        if fused:
            import blrlib.optim.kernels as mod

            assert mod._COMPILED is not None  # the compiled kernel really ran
        outs.append(params_of(model) + [opt.state[p]["hess"] for p in model.parameters()]
                    + [opt.state[p]["momentum"] for p in model.parameters()])
    IVON.FUSED_MIN_NUMEL = 1 << 18
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("weight_decay", [0.0, 0.3])
def test_summary_hess_from_data_is_zero_without_data(weight_decay):
    """All hhat = 0 (a zero loss) => hess_from_data = 0 whatever beta2 and delta (the correction drifts h)."""
    w = torch.nn.Parameter(torch.zeros(4, dtype=torch.float64))
    opt = IVON([w], lr=0.1, ess=10, hess_init=2.0, beta2=0.7, weight_decay=weight_decay)
    for _ in range(30):
        with opt.sampled_params(train=True):
            opt.zero_grad()
            (0.0 * w.sum()).backward()
        opt.step()
    (row,) = opt.posterior_summary()
    assert row["hess_rel_change"] > 0.9  # h moved a lot ...
    assert abs(row["hess_from_data"]) < 1e-12  # ... but none of it is data


def test_summary_separates_decay_from_data():
    """With zero gradients h only decays from h0: hess_rel_change moves, hess_from_data stays at 0."""
    w = torch.nn.Parameter(torch.zeros(5, dtype=torch.float64))
    opt = IVON([w], lr=0.1, ess=10, hess_init=1.0, beta2=0.9, weight_decay=0.0)
    for _ in range(5):
        with opt.sampled_params(train=True):
            opt.zero_grad()
            (0.0 * w.sum()).backward()
        opt.step()
    (row,) = opt.posterior_summary()
    # ĥ = 0: h ← β2 h + ½(1 − β2)² h = 0.905 h per step (decay plus the positivity correction)
    assert row["hess_rel_change"] == pytest.approx(1 - 0.905**5)
    # every hhat = 0: nothing came from the data (the correction term is drift, not data)
    assert abs(row["hess_from_data"]) < 1e-12
    assert row["hess_drift"] == pytest.approx(0.905**5)
    # A real quadratic loss contributes curvature, which the summary attributes to the data.
    for _ in range(20):
        with opt.sampled_params(train=True):
            opt.zero_grad()
            (5.0 * (w**2).sum()).backward()
        opt.step()
    (row,) = opt.posterior_summary()
    assert row["hess_from_data"] > 0.5
