"""blrlib.nn: the flat-parameter adapter for torch.func.functional_call and the recording training loop."""

import pytest
import torch
from torch.func import grad, vmap
from torch.testing import assert_close

from blrlib.nn import FlatParameters, TrainingRecord, minibatch_indices, train
from blrlib.optim import IVON

D = torch.float64


def _net(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2)).to(D)


def _data(seed=1, n=24):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, generator=g, dtype=D), torch.randint(0, 2, (n,), generator=g)


# ---------------------------------------------------------------------------- FlatParameters
def test_flatten_unflatten_call_and_gradient_match_the_module():
    net, (X, y) = _net(), _data()
    flat = FlatParameters(net)
    theta = flat.flatten()
    assert flat.numel == sum(p.numel() for p in net.parameters()) == theta.numel()
    for (name, p), view in zip(net.named_parameters(), flat.unflatten(theta).values()):
        assert torch.equal(p.detach(), view)
    assert_close(flat.call(theta, X), net(X), rtol=0, atol=0)
    loss = lambda th: torch.nn.functional.cross_entropy(flat.call(th, X), y)  # noqa: E731
    net.zero_grad()
    torch.nn.functional.cross_entropy(net(X), y).backward()
    assert_close(grad(loss)(theta), torch.cat([p.grad.reshape(-1) for p in net.parameters()]), rtol=1e-12, atol=1e-14)
    # a different theta changes the output, and the module's own weights stay as they were
    before = flat.flatten()
    assert not torch.allclose(flat.call(theta + 0.1, X), net(X))
    assert torch.equal(flat.flatten(), before)


def test_call_under_vmap_equals_a_loop_over_parameter_vectors():
    net, (X, _) = _net(), _data()
    flat = FlatParameters(net)
    thetas = flat.flatten() + 0.1 * torch.randn(4, flat.numel, generator=torch.Generator().manual_seed(2), dtype=D)
    batched = vmap(lambda th: flat.call(th, X))(thetas)
    for k in range(4):
        assert_close(batched[k], flat.call(thetas[k], X), rtol=1e-12, atol=1e-14)


def test_a_subset_of_names_leaves_the_others_fixed_and_assign_copies_in_place():
    net, (X, _) = _net(), _data()
    flat = FlatParameters(net, names=["2.weight", "2.bias"])  # the last layer only
    assert flat.names == ("2.weight", "2.bias") and flat.numel == 12
    theta = torch.zeros(12, dtype=D)
    assert_close(flat.call(theta, X), torch.zeros(24, 2, dtype=D), rtol=0, atol=0)
    first = net[0].weight.detach().clone()
    flat.assign_(theta + 1.0)
    assert torch.equal(net[2].bias.detach(), torch.ones(2, dtype=D))
    assert torch.equal(net[0].weight.detach(), first)
    from_dict = flat.flatten({"2.weight": torch.ones(2, 5, dtype=D), "2.bias": torch.zeros(2, dtype=D)})
    assert_close(from_dict, torch.cat([torch.ones(10, dtype=D), torch.zeros(2, dtype=D)]), rtol=0, atol=0)


BAD = [
    (lambda: FlatParameters("net"), r"Invalid module: str"),
    (lambda: FlatParameters(_net(), names=["0.weight", "nope"]), r"Invalid names: \['nope'\]"),
    (lambda: FlatParameters(_net(), names=[]), r"Invalid names: \[\] \(must be at least one"),
    (lambda: FlatParameters(_net()).unflatten(torch.zeros(3)), r"Invalid theta shape: \(3,\) \(must be \(32,\)"),
    (lambda: FlatParameters(_net()).flatten([torch.zeros(1)]), r"Invalid params: 1 tensors"),
    (lambda: FlatParameters(_net(), names=["2.bias"]).flatten({"2.bias": torch.zeros(3)}), r"Invalid params\['2.bias'\] shape"),
    (lambda: train(_net(), torch.optim.SGD(_net().parameters(), lr=0.1), [], record_every=0, loss_fn=lambda m, b: 0), r"Invalid record_every: 0"),
    (lambda: train(_net(), torch.optim.SGD(_net().parameters(), lr=0.1), []), r"Invalid loss_fn/step_fn"),
    (lambda: list(minibatch_indices(10, 0)), r"Invalid batch_size: 0"),
]


@pytest.mark.parametrize("call, message", BAD)
def test_bad_input_is_rejected(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# ---------------------------------------------------------------------------- train
def _loss(X, y):
    return lambda model, idx: torch.nn.functional.cross_entropy(model(X[idx]), y[idx])


def test_train_records_what_a_hand_written_loop_computes():
    X, y = _data()
    batches = list(minibatch_indices(24, 5, epochs=2, generator=torch.Generator().manual_seed(3)))
    assert len(batches) == 10
    net = _net()
    opt = torch.optim.SGD(net.parameters(), lr=0.3, momentum=0.5)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=4, gamma=0.5)
    record = train(net, opt, batches, _loss(X, y), scheduler=sched, record_every=3,
                   evaluate=lambda m: float(m(X).sum()), progress=True, desc="test")
    assert isinstance(record, TrainingRecord)
    assert record.steps == [0, 3, 6, 9, 10] and len(record.iterates) == len(record.evaluations) == 5
    ref = _net()
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.3, momentum=0.5)
    ref_sched = torch.optim.lr_scheduler.StepLR(ref_opt, step_size=4, gamma=0.5)
    flat, iterates, losses = FlatParameters(ref), {0: FlatParameters(ref).flatten()}, []
    for t, idx in enumerate(batches, start=1):
        ref_opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(ref(X[idx]), y[idx])
        loss.backward()
        ref_opt.step()
        ref_sched.step()
        losses.append(loss.item())
        iterates[t] = flat.flatten()
    for k, step in enumerate(record.steps):
        assert torch.equal(record.iterates[k], iterates[step])
    assert torch.equal(record.losses, torch.tensor(losses, dtype=D))
    assert record.evaluations[-1] == float(ref(X).sum().detach())


def test_train_uses_sampled_params_for_a_sampling_optimizer():
    X, y = _data()
    batches = [torch.arange(k, k + 8) for k in (0, 8, 16)]

    def make():
        net = _net(4)
        return net, IVON(net.parameters(), lr=0.1, ess=24, generator=torch.Generator().manual_seed(5))

    net, opt = make()
    record = train(net, opt, batches, _loss(X, y))
    ref, ref_opt = make()
    for idx in batches:
        with ref_opt.sampled_params(train=True):
            ref_opt.zero_grad()
            torch.nn.functional.cross_entropy(ref(X[idx]), y[idx]).backward()
        ref_opt.step()
    assert torch.equal(record.iterates[-1], FlatParameters(ref).flatten())
    assert record.steps == [0, 1, 2, 3]


def test_train_with_a_step_fn():
    X, y = _data()
    calls = []

    def step_fn(model, optimizer, idx):
        calls.append(len(idx))
        optimizer.zero_grad()
        loss = 2.0 * torch.nn.functional.cross_entropy(model(X[idx]), y[idx])
        loss.backward()
        optimizer.step()
        return loss

    net = _net()
    record = train(net, torch.optim.SGD(net.parameters(), lr=0.1), minibatch_indices(24, 10), step_fn=step_fn)
    assert calls == [10, 10, 4] and record.losses.shape == (3,)
    assert not torch.equal(record.iterates[0], record.iterates[-1])


def test_minibatch_indices_cover_every_example_each_epoch():
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    batches = list(minibatch_indices(11, 4, epochs=3, generator=g1, device="cpu"))
    assert [len(b) for b in batches] == [4, 4, 3] * 3
    for e in range(3):
        assert torch.equal(torch.cat(batches[3 * e : 3 * e + 3]).sort().values, torch.arange(11))
    again = list(minibatch_indices(11, 4, epochs=3, generator=g2))
    assert all(torch.equal(a, b) for a, b in zip(batches, again))
    assert [len(b) for b in minibatch_indices(11, 4, drop_last=True)] == [4, 4]
