"""Data-parallel IVON over 2 CPU processes (gloo) equals one process with mc_samples=2."""

import os
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn

from blrlib.optim import IVON
from blrlib.optim.distributed import all_reduce_mean_, local_grad_hook

STEPS = 20
HYPER = dict(lr=0.05, ess=128.0, hess_init=0.5, beta2=0.95, weight_decay=1e-3)


def make_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2)).double()


def shards():
    g = torch.Generator().manual_seed(7)
    X = torch.randn(2, 32, 4, generator=g, dtype=torch.float64)
    y = torch.randn(2, 32, 2, generator=g, dtype=torch.float64)
    return X, y


def noise_from(gen):
    def fn(noises, group):
        for n in noises:
            n.normal_(generator=gen)

    return fn


def _worker(rank, world, init_file, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        for use_ddp in (False, True):
            _run_rank(rank, out_dir, use_ddp)
    finally:
        dist.destroy_process_group()


def _run_rank(rank, out_dir, use_ddp):
    if True:
        model = make_model()
        gen = torch.Generator().manual_seed(1000 + rank)
        opt = IVON(model.parameters(), sync=True, noise_fn=noise_from(gen), **HYPER)
        net = model
        if use_ddp:
            net = nn.parallel.DistributedDataParallel(model)
            net.register_comm_hook(None, local_grad_hook)
        X, y = shards()
        for _ in range(STEPS):
            with opt.sampled_params(train=True):
                opt.zero_grad()
                nn.functional.mse_loss(net(X[rank]), y[rank]).backward()
            opt.step()
        torch.save(
            {
                "m": [p.detach() for p in model.parameters()],
                "h": [opt.state[p]["hess"] for p in model.parameters()],
            },
            os.path.join(out_dir, f"rank{rank}_ddp{int(use_ddp)}.pt"),
        )


def single_process_reference():
    model = make_model()
    gens = [torch.Generator().manual_seed(1000 + k) for k in range(2)]
    which = {"k": 0}

    def fn(noises, group):
        for n in noises:
            n.normal_(generator=gens[which["k"]])

    opt = IVON(model.parameters(), mc_samples=2, noise_fn=fn, **HYPER)
    X, y = shards()
    for _ in range(STEPS):
        for k in range(2):
            which["k"] = k
            with opt.sampled_params(train=True):
                opt.zero_grad()
                nn.functional.mse_loss(model(X[k]), y[k]).backward()
        opt.step()
    return [p.detach() for p in model.parameters()], [opt.state[p]["hess"] for p in model.parameters()]


@pytest.mark.skipif(not dist.is_available() or sys.platform == "win32", reason="torch.distributed unavailable")
def test_two_ranks_match_single_process_with_two_samples(tmp_path):
    """Bare model and DDP with the no-communication hook, in one pair of processes."""
    m_ref, h_ref = single_process_reference()  # first: forked children inherit torch._dynamo's import
    init_file = tmp_path / "store"
    # fork: the children need no fresh `import torch` (seconds on a loaded 2-core machine)
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    mp.start_processes(_worker, args=(2, str(init_file), str(tmp_path)), nprocs=2, join=True, start_method=method)
    for use_ddp in (0, 1):
        r0 = torch.load(tmp_path / f"rank0_ddp{use_ddp}.pt")
        r1 = torch.load(tmp_path / f"rank1_ddp{use_ddp}.pt")
        for a, b in zip(r0["m"] + r0["h"], r1["m"] + r1["h"]):
            assert torch.equal(a, b)  # the ranks hold identical m and h
        for a, b in zip(r0["m"] + r0["h"], m_ref + h_ref):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    # h really learned from the data (else the comparison of h would be empty)
    assert max((h - HYPER["hess_init"]).abs().max().item() for h in h_ref) > 1e-2


def test_all_reduce_mean_without_process_group_is_noop():
    t = [torch.ones(3)]
    assert all_reduce_mean_(t) == 1
    assert torch.equal(t[0], torch.ones(3))


def _disjoint_worker(rank, world, init_file, out_dir):
    """Two parameters of the same size; each rank's loss touches only one of them."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        a, b = (nn.Parameter(torch.full((3,), v, dtype=torch.float64)) for v in (0.5, -0.5))
        gen = torch.Generator().manual_seed(2000 + rank)
        opt = IVON([a, b], sync=True, noise_fn=noise_from(gen), **HYPER)
        target = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
        for _ in range(5):
            with opt.sampled_params(train=True):
                opt.zero_grad()
                (((a if rank == 0 else b) - target) ** 2).sum().backward()
            opt.step()
        torch.save({"m": [a.detach(), b.detach()], "h": [opt.state[p]["hess"] for p in (a, b)]},
                   os.path.join(out_dir, f"disjoint{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available() or sys.platform == "win32", reason="torch.distributed unavailable")
def test_fault_parameters_with_gradients_on_different_ranks_stay_in_sync(tmp_path):
    """issue 8 s2: with two same-size parameters each getting a gradient on one rank only, their
    statistics were averaged into each other and the replicas diverged silently. Every rank now
    reduces every parameter in the same order (zeros where it has no gradient, as DDP does)."""
    init_file = tmp_path / "store"
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    mp.start_processes(_disjoint_worker, args=(2, str(init_file), str(tmp_path)), nprocs=2, join=True,
                       start_method=method)
    r0, r1 = (torch.load(tmp_path / f"disjoint{r}.pt") for r in (0, 1))
    for x, y in zip(r0["m"] + r0["h"], r1["m"] + r1["h"]):
        assert torch.equal(x, y)
    # both parameters moved towards the target (each learned from its own rank's data)
    assert (r0["m"][0] > 0.5).all() and (r0["m"][1] > -0.5).all()
