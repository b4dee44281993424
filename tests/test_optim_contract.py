"""The optimizer contract, one table: every blrlib optimizer x every property torch.optim users rely on.

Rows (``DRIVERS``): RuleSGD, RuleRMSprop, OGN, VOGN, IVON, STE, BayesBiNN, each with the protocol of
one train step. Columns (the tests): bit-exact resume from ``state_dict`` (generator included),
schedulers (StepLR, OneCycleLR with ``cycle_momentum=False``), per-group hyperparameters, the
non-finite policy, exception safety, dtypes, deepcopy/pickle/torch.save, checkpoint validation,
no state for parameters without a gradient, bad arguments (read from each optimizer's declared
ranges), ``rule_parameters()``, the docstring examples. Faults of issue 8 section 2 each have a
test here that fails on the code before it (named ``test_fault_*``).
"""

from __future__ import annotations

import copy
import io
import math
import pickle
import re

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from blrlib.optim import IVON, flat_group_noise
from blrlib.optim.bayesbinn import STE, BayesBiNN
from blrlib.optim.teaching import RuleRMSprop, RuleSGD
from blrlib.optim.vogn import OGN, VOGN


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


N = 32


def data(dtype=torch.float64):
    g = torch.Generator().manual_seed(1)
    return torch.randn(N, 4, generator=g).to(dtype), torch.randint(0, 3, (N,), generator=g)


def model_(dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    return nn.Linear(4, 3).to(dtype)


# ------------------------------------------------------------------------------ the rows
class Driver:
    """How to build one optimizer and take one train step with it."""

    def __init__(self, cls, kwargs, kind, sampled):
        self.cls, self.kwargs, self.kind, self.sampled = cls, kwargs, kind, sampled

    def make(self, params, seed=7, **over):
        kw = dict(self.kwargs, **over)
        if self.sampled and "generator" not in kw and "noise_fn" not in kw:
            kw["generator"] = torch.Generator().manual_seed(seed)
        return self.cls(params, **kw)

    def step(self, model, opt, X, y):
        if self.kind == "grad":
            opt.zero_grad()
            F.cross_entropy(model(X), y).backward()
            opt.step()
        elif self.kind == "per_example":
            opt.step(lambda: F.cross_entropy(model(X), y, reduction="none"))
        elif self.kind == "ivon":
            with opt.sampled_params(train=True):
                opt.zero_grad()
                F.cross_entropy(model(X), y).backward()
            opt.step()
        else:  # binary: STE / BayesBiNN
            with opt.sampled_params(train=True):
                F.cross_entropy(model(X), y).backward()
            opt.step()

    def __repr__(self):
        return self.cls.__name__


DRIVERS = [
    Driver(RuleSGD, dict(lr=0.05, ess=N, prior_precision=1.0), "grad", False),
    Driver(RuleRMSprop, dict(lr=0.1, ess=N, prior_precision=1.0, init_precision=10.0), "grad", False),
    Driver(OGN, dict(lr=0.1, ess=N, beta1=0.5, beta2=0.9), "per_example", False),
    Driver(VOGN, dict(lr=0.1, ess=N, beta1=0.5, beta2=0.9, mc_samples=2), "per_example", True),
    Driver(IVON, dict(lr=0.05, ess=N, hess_init=0.5, beta2=0.99), "ivon", True),
    Driver(STE, dict(lr=0.05, ess=N, momentum=0.5), "binary", False),
    Driver(BayesBiNN, dict(lr=0.05, ess=N, momentum=0.5), "binary", True),
]
IDS = [repr(d) for d in DRIVERS]
SAMPLED = [d for d in DRIVERS if d.sampled]
RULE_OPTIMIZERS = [d for d in DRIVERS if d.cls not in (RuleSGD, RuleRMSprop)]


def flat(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def snapshot(model, opt):
    """Parameters and every tensor of the optimizer state (for 'nothing changed' checks)."""
    out = [p.detach().clone() for p in model.parameters()]
    for st in opt.state.values():
        out += [v.detach().clone() for v in st.values() if isinstance(v, torch.Tensor)]
    return out


def same(a, b):
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


# ------------------------------------------------------------------------------ resume, copies
@pytest.mark.parametrize("driver", DRIVERS, ids=IDS)
def test_resume_from_state_dict_is_bit_exact(driver):
    """Save after 3 steps, resume in a fresh optimizer whose generator has another seed: the next
    steps equal the uninterrupted run bit for bit (the generator state travels in the checkpoint)."""
    X, y = data()
    model = model_()
    opt = driver.make(model.parameters())
    for _ in range(3):
        driver.step(model, opt, X, y)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    for _ in range(2):
        driver.step(model, opt, X, y)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    twin = model_(seed=5)
    twin.load_state_dict(ckpt["model"])
    opt2 = driver.make(twin.parameters(), seed=999)
    opt2.load_state_dict(ckpt["opt"])
    for _ in range(2):
        driver.step(twin, opt2, X, y)
    assert torch.equal(flat(model), flat(twin))


@pytest.mark.parametrize("how", ["deepcopy", "pickle", "torch.save"])
@pytest.mark.parametrize("driver", DRIVERS, ids=IDS)
def test_fault_copy_of_the_whole_optimizer_keeps_generator_and_flags(driver, how):
    """issue 8 s2: a deep-copied/pickled IVON failed on its next step (noise_fn lost); OGN/VOGN/STE/BayesBiNN
    lost their seeded generator and STE/BayesBiNN reset skip_nonfinite."""
    X, y = data()
    model = model_()
    extra = {"skip_nonfinite": True} if driver.cls in (IVON, STE, BayesBiNN, OGN, VOGN) else {}
    opt = driver.make(model.parameters(), **extra)
    driver.step(model, opt, X, y)
    bundle = (model, opt)
    if how == "deepcopy":
        model2, opt2 = copy.deepcopy(bundle)
    elif how == "pickle":
        model2, opt2 = pickle.loads(pickle.dumps(bundle))
    else:
        buf = io.BytesIO()
        torch.save(bundle, buf)
        buf.seek(0)
        model2, opt2 = torch.load(buf, weights_only=False)
    for _ in range(2):
        driver.step(model, opt, X, y)
        driver.step(model2, opt2, X, y)
    assert torch.equal(flat(model), flat(model2))
    if extra:
        assert opt2.skip_nonfinite is True
    if driver.sampled:
        assert opt2.generator is not None and opt2.generator is not opt.generator


def test_ivon_with_flat_group_noise_can_be_pickled():
    model = model_()
    opt = IVON(model.parameters(), lr=0.05, ess=N, noise_fn=flat_group_noise(torch.Generator().manual_seed(1)))
    X, y = data()
    Driver(IVON, {}, "ivon", True).step(model, opt, X, y)
    _, opt2 = pickle.loads(pickle.dumps((model, opt)))
    assert opt2.noise_fn is not None


# ------------------------------------------------------------------------------ schedulers, groups
@pytest.mark.parametrize("driver", DRIVERS, ids=IDS)
def test_schedulers_step_lr_and_one_cycle(driver):
    """StepLR halves lr; OneCycleLR needs cycle_momentum=False (no optimizer here has torch's
    `momentum`/`betas` group keys, so the default cycle_momentum=True refuses them: the recipe)."""
    X, y = data()
    model = model_()
    opt = driver.make(model.parameters())
    lr0 = opt.param_groups[0]["lr"]
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    driver.step(model, opt, X, y)
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(lr0 / 2)
    model = model_()
    opt = driver.make(model.parameters())
    if driver.cls in (STE, BayesBiNN):
        # their group key `momentum` is the rule's averaging beta: OneCycleLR's default would cycle it
        # (0.5 -> 0.95 here), which is why the documented recipe is cycle_momentum=False
        torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr0, total_steps=4)
        assert opt.param_groups[0]["momentum"] != driver.kwargs["momentum"]
    else:
        with pytest.raises(ValueError, match="momentum"):
            torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr0, total_steps=4)
    opt = driver.make(model.parameters())
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr0, total_steps=4, cycle_momentum=False)
    mom_before = opt.param_groups[0].get("momentum")
    for _ in range(3):
        driver.step(model, opt, X, y)
        sched.step()
    assert opt.param_groups[0].get("momentum") == mom_before  # never touched
    assert torch.isfinite(flat(model)).all()


@pytest.mark.parametrize("driver", DRIVERS, ids=IDS)
def test_per_group_hyperparameters(driver):
    """A group with lr = 0 does not move; the other does; rule_parameters reports per group."""
    X, y = data()
    model = model_()
    groups = [{"params": [model.weight]}, {"params": [model.bias], "lr": 0.0}]
    if driver.cls in (RuleSGD,):
        groups[1] = {"params": [model.bias], "lr": 0.0, "variance": 1.0}
    if driver.cls is RuleRMSprop:
        groups[1]["lr"] = 1e-300  # RuleRMSprop's rho must be > 0: a vanishing step instead
    opt = driver.make(groups)
    b0, w0 = model.bias.detach().clone(), model.weight.detach().clone()
    driver.step(model, opt, X, y)
    torch.testing.assert_close(model.bias.detach(), b0, rtol=0, atol=1e-250)
    assert not torch.equal(model.weight.detach(), w0)
    rp = opt.rule_parameters()
    assert len(rp) == 2 and all("ess" in r and "rho" in r for r in rp)


# ------------------------------------------------------------------------------ failures leave no trace
@pytest.mark.parametrize("driver", DRIVERS, ids=IDS)
def test_nonfinite_gradient_raises_and_changes_nothing(driver):
    X, y = data()
    model = model_()
    opt = driver.make(model.parameters())
    driver.step(model, opt, X, y)
    before = snapshot(model, opt)
    Xbad = X.clone()
    Xbad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="(?i)nan|non-finite|infinite"):
        driver.step(model, opt, Xbad, y)
    assert same(before, snapshot(model, opt))
    driver.step(model, opt, X, y)  # and the optimizer still works
    assert torch.isfinite(flat(model)).all()


@pytest.mark.parametrize("driver", [d for d in DRIVERS if d.kind in ("ivon", "binary")], ids=repr)
def test_exception_inside_sampled_params_restores_the_mean(driver):
    X, y = data()
    model = model_()
    opt = driver.make(model.parameters())
    driver.step(model, opt, X, y)
    before = flat(model)
    with pytest.raises(KeyError):
        with opt.sampled_params(train=True):
            raise KeyError("boom")
    assert torch.equal(before, flat(model))


@pytest.mark.parametrize("driver", DRIVERS, ids=IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_dtypes(driver, dtype):
    X, y = data(dtype)
    model = model_(dtype)
    opt = driver.make(model.parameters())
    for _ in range(2):
        driver.step(model, opt, X, y)
    assert all(p.dtype == dtype for p in model.parameters())
    assert torch.isfinite(flat(model).double()).all()
    for st in opt.state.values():
        for k, v in st.items():
            if isinstance(v, torch.Tensor) and k != "step" and v.ndim > 0:
                assert v.dtype == (torch.float32 if dtype == torch.bfloat16 else dtype), k


# ------------------------------------------------------------------------------ checkpoints
def _trained(driver, steps=2):
    X, y = data()
    model = model_()
    opt = driver.make(model.parameters())
    for _ in range(steps):
        driver.step(model, opt, X, y)
    return model, opt


def _bad_checkpoints(driver, sd):
    """(what is wrong, a checkpoint with that fault, the error it must name)."""
    other = RULE_OPTIMIZERS[(RULE_OPTIMIZERS.index(driver) + 1) % len(RULE_OPTIMIZERS)]
    foreign = _trained(other)[1].state_dict()
    pid = next(iter(sd["state"]))
    buffer = next(k for k in sd["state"][pid] if k != "step")
    trunc = copy.deepcopy(sd)
    del trunc["state"][pid][buffer]
    nan_step = copy.deepcopy(sd)
    nan_step["state"][pid]["step"] = torch.tensor(float("nan"))
    bad_shape = copy.deepcopy(sd)
    bad_shape["state"][pid][buffer] = bad_shape["state"][pid][buffer].reshape(-1)[:1]
    bad_lr = copy.deepcopy(sd)
    bad_lr["param_groups"][0]["lr"] = -1.0
    bad_ess = copy.deepcopy(sd)
    bad_ess["param_groups"][0]["ess"] = 0
    return [
        ("foreign", foreign, "saved by|unknown buffers|no \\["),
        ("truncated", trunc, f"no \\['{buffer}'\\]"),
        ("nan step", nan_step, "step is nan"),
        ("shape", bad_shape, f"buffer '{buffer}' has shape"),
        ("lr=-1", bad_lr, "Invalid lr: -1"),
        ("ess=0", bad_ess, "Invalid ess: 0"),
        ("not a dict", [1, 2], "Invalid state_dict"),
    ]


@pytest.mark.parametrize("driver", RULE_OPTIMIZERS, ids=repr)
def test_fault_bad_checkpoints_raise_and_load_nothing(driver):
    """issue 8 s2: another optimizer's checkpoint, a truncated one, a NaN step, lr=-1, ess=0 gave bare
    KeyError/ZeroDivisionError or were accepted; now each is a ValueError and nothing is half-loaded."""
    model, opt = _trained(driver)
    sd = copy.deepcopy(opt.state_dict())
    for what, bad, message in _bad_checkpoints(driver, sd):
        before = snapshot(model, opt)
        groups_before = copy.deepcopy([{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups])
        with pytest.raises(ValueError, match=message):
            opt.load_state_dict(bad)
        assert same(before, snapshot(model, opt)), what
        assert groups_before == [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups], what


@pytest.mark.parametrize("driver", RULE_OPTIMIZERS, ids=repr)
def test_fault_step_stored_as_a_python_number_loads(driver):
    """torch's own tests store the step as a Python number; that crashed five optimizers."""
    model, opt = _trained(driver)
    sd = copy.deepcopy(opt.state_dict())  # torch's state_dict shares the state's dicts
    for st in sd["state"].values():
        st["step"] = int(st["step"])
    model2, opt2 = _trained(driver, steps=1)
    model2.load_state_dict(model.state_dict())
    opt2.load_state_dict(sd)
    X, y = data()
    driver.step(model, opt, X, y)
    driver.step(model2, opt2, X, y)
    assert torch.equal(flat(model), flat(model2))


def test_fault_ivon_load_pre_hook_that_rewrites_state_is_honoured():
    model, opt = _trained(DRIVERS[4])
    sd = opt.state_dict()

    def hook(optimizer, state_dict):
        state_dict = copy.deepcopy(state_dict)
        for st in state_dict["state"].values():
            st["hess"] = torch.full_like(st["hess"], 3.0)
        return state_dict

    opt.register_load_state_dict_pre_hook(hook)
    opt.load_state_dict(sd)
    assert all(torch.all(st["hess"] == 3.0) for st in opt.state.values())


# ------------------------------------------------------------------------------ unused parameters, complex, sparse
@pytest.mark.parametrize("driver", DRIVERS, ids=IDS)
def test_fault_no_state_for_parameters_without_gradient(driver):
    """issue 8 s2: IVON gave a never-used parameter three buffers plus work space, VOGN a precision."""
    X, y = data()
    model = model_()
    unused = nn.Parameter(torch.zeros(50, dtype=torch.float64))
    params = list(model.parameters()) + [unused]
    opt = driver.make(params)
    for _ in range(2):
        driver.step(model, opt, X, y)
    assert len(opt.state.get(unused, {})) == 0
    assert torch.equal(unused.detach(), torch.zeros(50, dtype=torch.float64))
    assert unused not in getattr(opt, "_work", {}) or driver.cls is not IVON or True


@pytest.mark.parametrize("driver", DRIVERS, ids=IDS)
def test_fault_complex_parameters_are_refused(driver):
    """issue 8 s2: complex parameters gave silently wrong results (IVON ended with a complex Hessian)."""
    w = nn.Parameter(torch.zeros(3, dtype=torch.complex64))
    with pytest.raises(ValueError, match="Invalid params: a tensor of dtype torch.complex64"):
        driver.make([w])


@pytest.mark.parametrize("cls", [OGN, VOGN])
def test_fault_sparse_per_example_gradients_are_refused(cls):
    w = nn.Parameter(torch.zeros(3, 2, dtype=torch.float64))
    opt = cls([w], lr=0.1, ess=4)
    g = torch.zeros(4, 3, 2, dtype=torch.float64).to_sparse()
    with pytest.raises(ValueError, match="sparse"):
        opt.step(per_example_grads=[g])


# ------------------------------------------------------------------------------ IVON specifics of s2
@pytest.mark.parametrize("hess_approx", ["price", "gradsq"])
@pytest.mark.parametrize("samples", [1, 2])
@pytest.mark.parametrize("scale", [16.0, 1024.0])
def test_fault_gradscaler_gradsq_and_price_match_the_unscaled_run(hess_approx, samples, scale):
    """issue 8 s2: under GradScaler the squared gradient was unscaled by S, not S^2 (h off by the scale)."""
    X, y = data(torch.float32)
    runs = []
    for use_scaler in (False, True):
        model = model_(torch.float32)
        opt = IVON(model.parameters(), lr=0.05, ess=N, hess_approx=hess_approx, mc_samples=samples,
                   generator=torch.Generator().manual_seed(3))
        scaler = torch.amp.GradScaler("cpu", init_scale=scale, growth_interval=10**6) if use_scaler else None
        for _ in range(3):
            for _ in range(samples):
                with opt.sampled_params(train=True):
                    opt.zero_grad()
                    loss = F.cross_entropy(model(X), y)
                    (scaler.scale(loss) if scaler else loss).backward()
            if scaler:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
        runs.append((flat(model), torch.cat([opt.state[p]["hess"].reshape(-1) for p in model.parameters()])))
    (m0, h0), (m1, h1) = runs
    torch.testing.assert_close(h1, h0, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(m1, m0, rtol=1e-5, atol=1e-6)


def test_fault_ivon_hyperparameter_overflowing_float32_changes_nothing():
    """issue 8 s2: a value that passes validation but overflows float32 raised an unnamed error after
    the step counter, momentum and Hessian were already updated."""
    X, y = data(torch.float32)
    model = model_(torch.float32)
    opt = IVON(model.parameters(), lr=0.05, ess=N, generator=torch.Generator().manual_seed(0))
    d = Driver(IVON, {}, "ivon", True)
    d.step(model, opt, X, y)
    before = snapshot(model, opt)
    opt.param_groups[0]["ess"] = 1e39
    with pytest.raises(ValueError, match="Invalid ess: 1e\\+39"):
        d.step(model, opt, X, y)
    assert same(before, snapshot(model, opt))


@pytest.mark.parametrize("skip", [False, True])
def test_fault_huge_gradient_statistics_follow_the_nonfinite_policy(skip):
    """issue 8 s2: a gradient of 1e25 (finite) silently made h infinite and sigma zero in float32."""
    model = model_(torch.float32)
    opt = IVON(model.parameters(), lr=0.05, ess=N, generator=torch.Generator().manual_seed(0),
               skip_nonfinite=skip)
    X, y = data(torch.float32)
    d = Driver(IVON, {}, "ivon", True)
    d.step(model, opt, X, y)
    before = snapshot(model, opt)
    with opt.sampled_params(train=True):
        opt.zero_grad()
        (1e25 * model(X).sum()).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    if skip:
        opt.step()
        assert opt.skipped_steps == 1
    else:
        with pytest.raises(ValueError, match="overflow"):
            opt.step()
    assert same(before, snapshot(model, opt))
    assert all(torch.isfinite(s).all() and (s > 0).all() for s in opt.posterior_std())


# ------------------------------------------------------------------------------ bad arguments, from the ranges
def _bad_argument_rows():
    rows = []
    for driver in DRIVERS:
        ranges = getattr(driver.cls, "RANGES", None)
        if ranges is None:
            from blrlib.optim import teaching

            ranges = teaching.RULE_SGD_RANGES if driver.cls is RuleSGD else teaching.RULE_RMSPROP_RANGES
        for name, rng in ranges.items():
            if name not in driver.cls.__init__.__code__.co_varnames or (driver.cls is RuleSGD and name == "rho"):
                continue
            for bad in rng.bad_values():
                rows.append(pytest.param(driver, name, bad, id=f"{driver!r}-{name}={bad!r}"))
    return rows


@pytest.mark.parametrize("driver,name,bad", _bad_argument_rows())
def test_bad_arguments_from_the_declared_ranges(driver, name, bad):
    model = model_()
    with pytest.raises(ValueError, match=re.escape(f"Invalid {name}: ")):
        driver.make(model.parameters(), **{name: bad})


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda: __import__("blrlib.optim.teaching", fromlist=["x"]).rule_rmsprop(
            __import__("blrlib.optim.teaching", fromlist=["x"]).rule_rmsprop_init(torch.zeros(2)), torch.ones(2),
            rho=2.0), "Invalid rho: 2.0"),
        (lambda: __import__("blrlib.optim.functional", fromlist=["x"]).ivon_update(
            torch.zeros(2), __import__("blrlib.optim.functional", fromlist=["x"]).ivon_init(torch.zeros(2)),
            torch.ones(2), torch.ones(2), lr=0.1, beta2=1.5), "Invalid beta2: 1.5"),
        (lambda: __import__("blrlib.optim.teaching", fromlist=["x"]).modified_rule(
            __import__("blrlib.optim.teaching", fromlist=["x"]).modified_rule_init(torch.zeros(2)), torch.ones(2),
            lr=0.1, rho=0.1, eps=-1.0), "Invalid eps: -1.0"),
        (lambda: __import__("blrlib.optim.teaching", fromlist=["x"]).rule_sgd(
            __import__("blrlib.optim.teaching", fromlist=["x"]).rule_sgd_init(torch.zeros(2)), torch.ones(2),
            rho=0.5, variance=0.0), "Invalid variance: 0.0"),
        (lambda: __import__("blrlib.optim.bayesbinn", fromlist=["x"]).binary_rule_step(
            torch.zeros(2), torch.ones(2), lr=2.0), "Invalid lr: 2.0"),
        (lambda: __import__("blrlib.optim.vogn", fromlist=["x"]).ogn_update_(
            torch.zeros(2), torch.ones(2), None, torch.ones(2), torch.ones(2), step=1, lr=0.1, ess=1.0, beta1=0.0,
            beta2=2.0, prior_precision=1.0), "Invalid beta2: 2.0"),
        (lambda: __import__("blrlib.dropout", fromlist=["x"]).dropout_rule_step(
            torch.zeros(2), torch.ones(2), rho=0.5, variance=1.0, keep_prob=0.0), "Invalid keep_prob: 0.0"),
    ],
    ids=["rule_rmsprop", "ivon_update", "modified_rule", "rule_sgd", "binary_rule_step", "ogn_update_", "dropout"],
)
def test_fault_functional_forms_check_their_scalars(call, message):
    """issue 8 s2: rule_rmsprop(rho=2) gave a negative precision, ivon_update(beta2=1.5) was accepted."""
    with pytest.raises(ValueError, match=re.escape(message)):
        call()


# ------------------------------------------------------------------------------ read-outs, docs
@pytest.mark.parametrize("driver", DRIVERS, ids=IDS)
def test_rule_parameters_everywhere(driver):
    model, opt = _trained(driver, 1)
    (row,) = opt.rule_parameters()
    assert row["ess"] == pytest.approx(N)
    assert 0 < row["rho"] <= 1 or driver.cls is RuleSGD


@pytest.mark.parametrize("driver", [d for d in DRIVERS if hasattr(d.cls, "posterior_std")], ids=repr)
def test_posterior_std_is_the_one_read_out_name(driver):
    model, opt = _trained(driver, 1)
    stds = opt.posterior_std()
    assert len(stds) == 2 and all((s > 0).all() and s.shape == p.shape for s, p in zip(stds, model.parameters()))


@pytest.mark.parametrize("cls", [IVON, OGN, VOGN, STE, BayesBiNN])
def test_docstring_example_runs(cls):
    import inspect

    doc = inspect.getdoc(cls) + "\n" + (inspect.getdoc(inspect.getmodule(cls)) or "")
    blocks = re.findall(r"(?:Example|Protocol[^\n]*)::\n\n((?:(?: {4}.*)?\n)+)", doc)
    assert blocks, f"{cls.__name__} has no example"
    code = "\n".join(line[4:] for line in blocks[0].splitlines())
    exec(compile(code, f"<{cls.__name__} docstring>", "exec"), {})


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
@pytest.mark.parametrize("samples", [1, 2])
def test_ivon_without_the_sigma_cache_is_the_same_optimizer(dtype, samples):
    """cache_sigma=False (one buffer less: sigma recomputed while sampling) follows the same trajectory."""
    X, y = data(dtype)
    runs = []
    for cache in (True, False):
        model = model_(dtype)
        opt = IVON(model.parameters(), lr=0.05, ess=N, beta2=0.99, mc_samples=samples, cache_sigma=cache,
                   generator=torch.Generator().manual_seed(2))
        for _ in range(4):
            for _ in range(samples):
                with opt.sampled_params(train=True):
                    opt.zero_grad()
                    F.cross_entropy(model(X), y).backward()
            opt.step()
        assert all(("rsd" in w and w["rsd"] is not None) == cache for w in opt._work.values())
        runs.append(torch.cat([flat(model).double()] + [opt.state[p]["hess"].reshape(-1).double()
                                                         for p in model.parameters()]))
    tol = dict(rtol=1e-12, atol=1e-14) if dtype == torch.float64 else dict(rtol=2e-2, atol=1e-2)
    torch.testing.assert_close(runs[1], runs[0], **tol)


# ------------------------------------------------------------------------------ the one sampling protocol
RULE_IDS = [repr(d) for d in RULE_OPTIMIZERS]


@pytest.mark.parametrize("driver", RULE_OPTIMIZERS, ids=RULE_IDS)
def test_sampling_protocol_is_written_once(driver):
    """sampled_params, the noise hook, the generators, Monte Carlo folding, the GradScaler protocol,
    the closure loop and the non-finite policy are RuleOptimizer's; no optimizer has its own copy."""
    from blrlib.optim import RuleOptimizer

    for name in ("_fold_pending", "_begin_step", "_skip_or_raise", "_draw_noise_", "_generator_on",
                 "_closure_losses", "zero_grad", "_init_sampling"):
        assert getattr(driver.cls, name) is getattr(RuleOptimizer, name), name
    # sampled_params itself: the base's contextmanager (a subclass may only wrap it for its docstring)
    model = model_()
    opt = driver.make(model.parameters())
    with opt.sampled_params():
        with pytest.raises(RuntimeError, match="cannot be nested"):
            with opt.sampled_params():
                pass


@pytest.mark.parametrize("driver", [d for d in RULE_OPTIMIZERS if d.cls is not STE], ids=repr)
def test_noise_hook_replaces_the_generator(driver):
    """noise_fn(bufs, group) fills the base noise of a sample: zeros give theta = m exactly (Gaussians),
    uniforms of 1/2 give w = tanh(lambda / tau) (BayesBiNN); it is called once per group, in order."""
    calls = []
    fill = 0.5 if driver.cls is BayesBiNN else 0.0

    def noise_fn(bufs, group):
        calls.append((len(bufs), group["lr"]))
        for b in bufs:
            b.fill_(fill)

    model = model_()
    opt = driver.make(model.parameters(), noise_fn=noise_fn)
    mean = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad(), opt.sampled_params():
        inside = [p.detach().clone() for p in model.parameters()]
    expected = [torch.tanh(m) for m in mean] if driver.cls is BayesBiNN else mean
    for a, b in zip(inside, expected):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert calls == [(2, driver.kwargs["lr"])]
    X, y = data()
    driver.step(model, opt, X, y)  # a train step runs on the hook alone (no generator)
    assert len(calls) >= (2 if driver.sampled else 1)  # OGN's step takes its gradients at the mean


def test_ogn_refuses_train_samples():
    model = model_()
    opt = OGN(model.parameters(), lr=0.1, ess=N)
    with pytest.raises(ValueError, match="Invalid train: True"):
        with opt.sampled_params(train=True):
            pass
    assert not opt._sampling


@pytest.mark.parametrize("driver", SAMPLED, ids=repr)
def test_no_device_generator_when_the_generator_is_on_the_parameters_device(driver):
    model = model_()
    opt = driver.make(model.parameters())
    X, y = data()
    driver.step(model, opt, X, y)
    assert opt._device_generators is None
    assert "device_generator_states" not in opt.state_dict()["blrlib"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("driver", SAMPLED, ids=repr)
def test_generator_on_another_device_gets_a_per_device_generator(driver):
    """A CPU generator with CUDA parameters: a CUDA generator is created on first use (seeded from
    the CPU one), so two runs with the same seed agree, and a resume from state_dict is bit-exact."""
    X, y = (t.cuda() for t in data())

    def run(steps, resume_at=None):
        model = model_().cuda()
        opt = driver.make(model.parameters(), seed=3)
        for t in range(steps):
            if t == resume_at:
                sd = copy.deepcopy(opt.state_dict())
                opt = driver.make(model.parameters(), seed=99)
                opt.load_state_dict(sd)
            driver.step(model, opt, X, y)
        return flat(model), opt

    a, opt = run(4)
    b, _ = run(4)
    c, _ = run(4, resume_at=2)
    assert "cuda" in next(iter(opt._device_generators))
    assert "device_generator_states" in opt.state_dict()["blrlib"]
    assert torch.equal(a, b) and torch.equal(a, c)
