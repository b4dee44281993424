"""A/B timing of IVON's own work per step (sample, restore, ``step()``), new against an older copy.

Only the optimizer's work is timed (the gradients are fixed tensors), many rounds, interleaved
round by round, on the calling thread's CPU time (1 thread), so that the few per cent at stake are
not drowned by the noise of a full train step on a shared machine. ``new-nocheck`` is the new code
with the statistics check (the non-finite/overflow policy) switched off: its cost is new - nocheck.

    git archive <commit> blrlib | tar -x -C /tmp/before
    python benchmarks/ivon_opt_ab.py --before /tmp/before/blrlib --size 2.4M --rounds 25
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import statistics
import sys
import time

import torch
import torch.nn as nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import blrlib.optim as new  # noqa: E402


def load_before(path):
    path = os.path.abspath(path)
    spec = importlib.util.spec_from_file_location(
        "blrlib_before", os.path.join(path, "__init__.py"), submodule_search_locations=[path]
    )
    mod = importlib.util.module_from_spec(spec)
    sys.modules["blrlib_before"] = mod
    spec.loader.exec_module(mod)
    return importlib.import_module("blrlib_before.optim")


def mlp(size):
    torch.manual_seed(0)
    hidden = (150, 100) if size == "0.13M" else (2048, 384)
    return nn.Sequential(nn.Linear(784, hidden[0]), nn.ReLU(), nn.Linear(hidden[0], hidden[1]), nn.ReLU(),
                         nn.Linear(hidden[1], 10))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", required=True)
    ap.add_argument("--size", choices=["0.13M", "2.4M"], default="2.4M")
    ap.add_argument("--rounds", type=int, default=25)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    old = load_before(args.before)
    variants = {}
    for name, cls in (("new", new.IVON), ("before", old.IVON), ("new-nocheck", new.IVON)):
        model = mlp(args.size)
        opt = cls(model.parameters(), lr=0.1, ess=50000, generator=torch.Generator().manual_seed(0))
        if name == "new-nocheck":
            opt._check_statistics = lambda *a, **k: None
        for p in model.parameters():
            p.grad = torch.randn_like(p) * 1e-3
        variants[name] = opt

    def once(opt):
        t0 = time.thread_time()
        with opt.sampled_params(train=True):
            pass
        opt.step()
        return time.thread_time() - t0

    for opt in variants.values():
        for _ in range(3):
            once(opt)
    res = {k: [] for k in variants}
    for _ in range(args.rounds):
        for k, opt in variants.items():
            res[k].append(statistics.median(once(opt) for _ in range(args.reps)))
    med = {k: statistics.median(v) for k, v in res.items()}
    print(f"IVON opt, {args.size} MLP, {args.rounds} rounds x {args.reps} reps, 1 thread, thread CPU time (ms):")
    for k, v in med.items():
        print(f"  {k:12s} {1e3 * v:8.2f}")
    print(f"  new/before {med['new'] / med['before']:.3f}   nocheck/before {med['new-nocheck'] / med['before']:.3f}")


if __name__ == "__main__":
    main()
