"""Benchmark: IVON train steps against AdamW and ivon-opt.

Times, interleaved round by round (so that load changes hit every method alike), on MLPs
of about 0.13 M and 2.4 M parameters:

* ``train``: one whole train step (zero_grad, sample, forward, backward, restore, step);
* ``opt``:   the optimizer's own work in that step with the gradients already there
  (AdamW: ``step()``; IVON: entering and leaving ``sampled_params(train=True)`` plus
  ``step()``, i.e. including the Gaussian draw);
* ``draw``:  one ``normal_`` over every parameter tensor (the yardstick);
* peak memory, in a fresh subprocess per optimizer (see ``--help`` and README.md).

Usage::

    python benchmarks/optim_step.py                 # CPU, 2 threads, prints a markdown table
    python benchmarks/optim_step.py --device cuda
    python benchmarks/optim_step.py --quick         # fewer repeats

Medians over the repeats are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.nn as nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from blrlib.optim import IVON  # noqa: E402
import blrlib.optim as blr_optim  # noqa: E402

BEFORE_PATH = ""
BEFORE = None  # ``--before DIR``: a second copy of blrlib (e.g. an older commit), loaded as ``blrlib_before``


def load_before(path):
    """Import the blrlib package at ``path`` under the name ``blrlib_before`` (side-by-side timing)."""
    import importlib
    import importlib.util

    path = os.path.abspath(path)
    spec = importlib.util.spec_from_file_location(
        "blrlib_before", os.path.join(path, "__init__.py"), submodule_search_locations=[path]
    )
    mod = importlib.util.module_from_spec(spec)
    sys.modules["blrlib_before"] = mod
    spec.loader.exec_module(mod)
    return importlib.import_module("blrlib_before.optim")

try:
    import ivon as ivon_opt  # GPL-3, benchmark/test oracle only
except ImportError:  # pragma: no cover
    ivon_opt = None

SIZES = {"0.13M": (784, [150, 100], 10), "2.4M": (784, [2048, 384], 10)}


def make_mlp(size, device, seed=0):
    torch.manual_seed(seed)
    d_in, hidden, d_out = SIZES[size]
    layers, d = [], d_in
    for h in hidden:
        layers += [nn.Linear(d, h), nn.ReLU()]
        d = h
    layers.append(nn.Linear(d, d_out))
    return nn.Sequential(*layers).to(device)


def make_opt(name, model):
    ps = model.parameters()
    if name == "adamw":
        return torch.optim.AdamW(ps, lr=1e-3, weight_decay=1e-4, foreach=True)
    if name == "ivon-opt":
        return ivon_opt.IVON(ps, lr=0.1, ess=50_000)
    if name == "blrlib":
        return IVON(ps, lr=0.1, ess=50_000)
    if name == "blrlib-fused":
        return IVON(ps, lr=0.1, ess=50_000, fused=True)
    if name == "blrlib-nocache":
        return IVON(ps, lr=0.1, ess=50_000, cache_sigma=False)
    if name == "ivon-before":
        return BEFORE.IVON(ps, lr=0.1, ess=50_000)
    raise ValueError(name)


def make_rule_opt(name, model):
    """The other diagonal-Gaussian optimizers; ``-before`` names use the ``--before`` copy."""
    base, _, before = name.partition("-")
    mod = BEFORE if before else blr_optim
    ps = model.parameters()
    if base == "rmsprop":
        return mod.RuleRMSprop(ps, lr=1e-3, ess=50_000, prior_precision=1.0)
    if base == "ogn":
        return mod.OGN(ps, lr=1e-3, ess=50_000, beta1=0.9)
    if base == "vogn":
        return mod.VOGN(ps, lr=1e-3, ess=50_000, beta1=0.9)
    raise ValueError(name)


def bench_rule(device, size, rows_pe, methods, rounds, reps):
    """Time ``step()`` of RuleRMSprop (p.grad in place), OGN and VOGN (``per_example_grads`` of
    ``rows_pe`` rows given; VOGN also enters ``sampled_params()`` once), interleaved."""
    models = {m: make_mlp(size, device) for m in methods}
    opts = {m: make_rule_opt(m, models[m]) for m in methods}
    g = torch.Generator().manual_seed(0)
    for m in methods:
        for p in models[m].parameters():
            p.grad = 1e-3 * torch.randn(p.shape, generator=g).to(device)
    pe = [1e-3 * torch.randn((rows_pe, *p.shape), generator=g).to(device) for p in models[methods[0]].parameters()]

    def one(m):
        opt = opts[m]
        if m.startswith("rmsprop"):
            opt.step()
        elif m.startswith("ogn"):
            opt.step(per_example_grads=pe)
        else:
            with opt.sampled_params():
                pass
            opt.step(per_example_grads=pe)

    t = {m: [] for m in methods}
    for m in methods:
        for _ in range(2):
            one(m)
    for _ in range(rounds):
        for m in methods:
            for _ in range(reps):
                sync(device)
                a = CLOCK()
                one(m)
                sync(device)
                t[m].append(CLOCK() - a)
    return {m: 1e3 * statistics.median(v) for m, v in t.items()}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def train_step(name, model, opt, X, y):
    opt.zero_grad()
    if name == "adamw":
        nn.functional.cross_entropy(model(X), y).backward()
    else:
        with opt.sampled_params(train=True):
            nn.functional.cross_entropy(model(X), y).backward()
    opt.step()


def opt_only(name, model, opt):
    """The optimizer's work of one step with gradients already in place."""
    if name == "adamw":
        opt.step()
        return
    with opt.sampled_params(train=True):
        pass
    opt.step()


CLOCK = time.perf_counter


def bench(device, sizes, batches, methods, rounds, reps):
    rows = []
    for size in sizes:
        models = {m: make_mlp(size, device) for m in methods}
        opts = {m: make_opt(m, models[m]) for m in methods}
        nparams = sum(p.numel() for p in models[methods[0]].parameters())
        bufs = [torch.empty_like(p) for p in models[methods[0]].parameters()]
        for batch in batches:
            g = torch.Generator().manual_seed(0)
            X = torch.randn(batch, SIZES[size][0], generator=g).to(device)
            y = torch.randint(0, 10, (batch,), generator=g).to(device)
            t = {("train", m): [] for m in methods}
            t.update({("opt", m): [] for m in methods})
            t[("draw", "")] = []
            for m in methods:  # warm-up
                for _ in range(3):
                    train_step(m, models[m], opts[m], X, y)
            for _ in range(rounds):
                for m in methods:
                    for _ in range(reps):
                        sync(device)
                        a = CLOCK()
                        train_step(m, models[m], opts[m], X, y)
                        sync(device)
                        t[("train", m)].append(CLOCK() - a)
                for m in methods:
                    for _ in range(reps):
                        sync(device)
                        a = CLOCK()
                        opt_only(m, models[m], opts[m])
                        sync(device)
                        t[("opt", m)].append(CLOCK() - a)
                for _ in range(reps):
                    sync(device)
                    a = CLOCK()
                    for b in bufs:
                        b.normal_()
                    sync(device)
                    t[("draw", "")].append(CLOCK() - a)
            med = {k: 1e3 * statistics.median(v) for k, v in t.items()}
            rows.append(dict(size=size, nparams=nparams, batch=batch, ms=med))
            print(f"# {size} batch {batch}: " + ", ".join(f"{k[0]}/{k[1]} {v:.2f}" for k, v in med.items()),
                  file=sys.stderr, flush=True)
    return rows


# ----------------------------------------------------------------------------- memory
_MEM_CHILD = r"""
import ctypes, json, sys, torch
sys.path.insert(0, {root!r})
torch.set_num_threads({threads})
from torch.utils._python_dispatch import TorchDispatchMode
import benchmarks.optim_step as bo
from benchmarks.optim_step import make_mlp, make_opt, train_step
if {before!r}:
    bo.BEFORE = bo.load_before({before!r})
dev = torch.device({device!r})

if dev.type == "cuda":
    def cur():
        return torch.cuda.memory_allocated()
else:
    # glibc's count of bytes in use (heap + mmap): torch's CPU allocator allocates with malloc
    libc = ctypes.CDLL("libc.so.6")
    class MI2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in
                    "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
    libc.mallinfo2.restype = MI2
    def cur():
        m = libc.mallinfo2()
        return m.uordblks + m.hblkhd

class Peak(TorchDispatchMode):
    # the largest number of bytes in use after any aten op (forward, backward, optimizer)
    def __init__(self):
        super().__init__()
        self.peak = cur()
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {{}}))
        self.peak = max(self.peak, cur())
        return out

model = make_mlp({size!r}, dev)
X = torch.randn({batch}, 784, device=dev); y = torch.randint(0, 10, ({batch},), device=dev)
def fb():
    model.zero_grad(set_to_none=False)
    torch.nn.functional.cross_entropy(model(X), y).backward()
fb(); fb()
torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)  # import torch._dynamo (optimizers do) before counting
base = cur()  # model, data, gradients
with Peak() as pk:
    fb()
act = pk.peak - base  # activations and autograd temporaries of a bare forward/backward
if {name!r} == "none":
    print(json.dumps(dict(extra=act, held=0, pbytes=sum(p.numel() * p.element_size() for p in model.parameters()))))
    sys.exit(0)
opt = make_opt({name!r}, model)
for _ in range(3):
    train_step({name!r}, model, opt, X, y)
held = cur() - base  # what the optimizer keeps between steps
with Peak() as pk:
    train_step({name!r}, model, opt, X, y)
pbytes = sum(p.numel() * p.element_size() for p in model.parameters())
print(json.dumps(dict(extra=pk.peak - base, held=held, pbytes=pbytes)))
"""


def memory(device, size, batch, methods, threads):
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    out = {}
    for m in ["none"] + methods:
        code = _MEM_CHILD.format(root=root, before=BEFORE_PATH, threads=threads, device=str(device), size=size, batch=batch, name=m)
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        out[m] = json.loads(r.stdout.strip().splitlines()[-1])
    return out


def table(rows, mem, device):
    lines = []
    clock = "thread CPU time" if CLOCK is time.thread_time else "wall time"
    lines.append(f"Device: {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, {clock}. "
                 "Times in ms (medians).")
    lines.append("")
    variants = [v for v in ("blrlib", "blrlib-nocache", "ivon-before", "blrlib-fused") if ("train", v) in rows[0]["ms"]]
    lines.append("| MLP | batch | variant | AdamW train | ivon-opt train | blrlib train | AdamW opt | ivon-opt opt "
                 "| blrlib opt | draw | speed-up vs ivon-opt | (blrlib-AdamW)/draw | blrlib/AdamW |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    nan = float("nan")
    for r in rows:
        ms = r["ms"]
        for v in variants:
            at, it, bt = ms[("train", "adamw")], ms.get(("train", "ivon-opt"), nan), ms[("train", v)]
            lines.append(
                f"| {r['size']} | {r['batch']} | {v} | {at:.2f} | {it:.2f} | {bt:.2f} | {ms[('opt', 'adamw')]:.2f} "
                f"| {ms.get(('opt', 'ivon-opt'), nan):.2f} | {ms[('opt', v)]:.2f} | {ms[('draw', '')]:.2f} "
                f"| {it / bt:.2f}x | {(bt - at) / ms[('draw', '')]:.2f} | {bt / at:.2f} |"
            )
    if mem:
        lines.append("")
        lines.append("Memory (2.4M MLP, batch 128), in parameter-sized buffers (1 = "
                     f"{next(iter(mem.values()))['pbytes'] / 2**20:.1f} MiB). `peak`: the largest number of bytes "
                     "in use after any aten op of a train step (a TorchDispatchMode reads glibc's mallinfo2 on CPU, "
                     "`torch.cuda.memory_allocated` on CUDA) minus the bytes of model, data and gradients "
                     "(`none`: a bare forward/backward, i.e. activations and autograd temporaries); "
                     "`held`: bytes the optimizer keeps between steps.")
        lines.append("")
        lines.append("| optimizer | peak extra (buffers) | held (buffers) |")
        lines.append("|---|---|---|")
        for m, v in mem.items():
            lines.append(f"| {m} | {v['extra'] / v['pbytes']:.2f} | {v['held'] / v['pbytes']:.2f} |")
    return "\n".join(lines)


def rule_table(rule_rows, device):
    clock = "thread CPU time" if CLOCK is time.thread_time else "wall time"
    lines = [f"Device: {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, {clock}. "
             "`step()` in ms (medians); OGN/VOGN from 4 per-example gradients per parameter.", "",
             "| MLP | optimizer | before | after | before/after |", "|---|---|---|---|---|"]
    for size, ms in rule_rows.items():
        for m in ("rmsprop", "ogn", "vogn"):
            b = ms.get(m + "-before", float("nan"))
            lines.append(f"| {size} | {m} | {b:.2f} | {ms[m]:.2f} | {b / ms[m]:.2f}x |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--sizes", default="0.13M,2.4M")
    ap.add_argument("--batches", default="64,128,512")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--fused", action="store_true", help="also time IVON(fused=True) (torch.compile)")
    ap.add_argument("--before", default=None,
                    help="path of another blrlib package (e.g. `git archive <commit> blrlib | tar -x -C /tmp/b`, "
                         "then /tmp/b/blrlib): time its IVON, RuleRMSprop, OGN, VOGN side by side")
    ap.add_argument("--rule-only", action="store_true", help="only the RuleRMSprop/OGN/VOGN step table")
    ap.add_argument("--no-rule", action="store_true", help="skip the RuleRMSprop/OGN/VOGN step table")
    ap.add_argument("--nocache", action="store_true", help="also time IVON(cache_sigma=False)")
    ap.add_argument("--clock", choices=["wall", "thread"], default="wall",
                    help="wall: perf_counter; thread: CPU time of the calling thread (with --threads 1 this "
                         "is the work done, insensitive to other processes on a loaded machine)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    global CLOCK
    CLOCK = time.thread_time if args.clock == "thread" else time.perf_counter
    device = torch.device(args.device)
    global BEFORE, BEFORE_PATH
    if args.before:
        BEFORE_PATH = os.path.abspath(args.before)
        BEFORE = load_before(BEFORE_PATH)
    rounds = 3 if args.quick else args.rounds
    rule_methods = ["rmsprop", "ogn", "vogn"]
    if BEFORE is not None:
        rule_methods = [x for m in rule_methods for x in (m + "-before", m)]
    rule_rows = {}
    for size in ([] if args.no_rule else args.sizes.split(",")):
        rule_rows[size] = bench_rule(device, size, 4, rule_methods, rounds, args.reps)
        print(f"# rule {size}: {rule_rows[size]}", file=sys.stderr, flush=True)
    if rule_rows:
        print(rule_table(rule_rows, device))
    if args.rule_only:
        return
    methods = ["adamw", "blrlib"] + (["ivon-opt"] if ivon_opt is not None else [])
    if args.nocache:
        methods.append("blrlib-nocache")
    if BEFORE is not None:
        methods.append("ivon-before")
    if args.fused:
        methods.append("blrlib-fused")
    rows = bench(device, args.sizes.split(","), [int(b) for b in args.batches.split(",")], methods, rounds, args.reps)
    mem = {} if args.no_memory else memory(device, "2.4M", 128, methods, args.threads)
    print(table(rows, mem, device))


if __name__ == "__main__":
    main()
