r"""Data-parallel IVON with :mod:`torch.distributed`.

Why the optimizer, not DDP, must reduce
---------------------------------------
With :math:`R` ranks, rank :math:`k` draws its own :math:`\epsilon_k`, evaluates the loss on
its own shard at :math:`\theta_k = m + \sigma\epsilon_k` and gets :math:`g_k`. IVON's Monte
Carlo estimates over the :math:`R` (sample, shard) pairs are

.. math::

    \hat g = \frac1R \sum_k g_k, \qquad
    \hat h = \frac1R \sum_k g_k\,\epsilon_k / \sigma .

The Price product :math:`g_k\epsilon_k` must be formed on rank :math:`k`, *before* averaging.
A plain :class:`~torch.nn.parallel.DistributedDataParallel` wrapper averages the gradients
during ``backward``, so every rank would instead form
:math:`\bar g\,\epsilon_k/\sigma = \frac1R\sum_j g_j\,\epsilon_k/\sigma`. For :math:`j\neq k`,
:math:`g_j` does not depend on :math:`\epsilon_k`, so :math:`\mathbb E[g_j\epsilon_k]=0` and only
the :math:`j=k` term carries curvature: the estimate is the right one divided by :math:`R`
(and the noise of the other ranks' terms is added). The Hessian estimate shrinks by the
number of ranks, the posterior variance is inflated by about :math:`R`.

Recipe
------
1. ``dist.init_process_group(...)``; each rank builds the same model and
   ``opt = IVON(model.parameters(), ..., sync=True)``; give each rank a different noise
   seed (``generator=torch.Generator().manual_seed(seed + rank)``) and its own shard.
2. Either use the bare model (no DDP), or wrap it in DDP and stop DDP's gradient
   all-reduce, so that ``p.grad`` is the rank's own gradient: run ``backward`` under
   ``ddp_model.no_sync()``, or register :func:`local_grad_hook` once
   (``ddp_model.register_comm_hook(None, local_grad_hook)``).
3. ``with opt.sampled_params(train=True): loss = ...; loss.backward()``, then
   ``opt.step()``: it forms :math:`g_k\epsilon_k` locally and all-reduces (averages) the
   gradient and the Price product, so every rank applies the same update and all ranks
   keep identical :math:`m` and :math:`h`.

With ``mc_samples=K`` per rank the averages run over all :math:`RK` samples.

Every rank must produce gradients for the same parameters (the collective packs them in
the same order); a parameter that gets no gradient on one rank but does on another makes
the ranks' collectives disagree.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["all_reduce_mean_", "local_grad_hook"]


def all_reduce_mean_(tensors: list, group=None) -> int:
    """Average ``tensors`` in place over the ranks of ``group``; return the world size.

    Tensors are packed per (device, dtype) into one flat buffer so that one collective
    is issued per bucket (the same packing DDP uses). No-op (returns 1) when
    :mod:`torch.distributed` is not initialised.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    world = dist.get_world_size(group)
    if world == 1 or not tensors:
        return world
    buckets: dict = {}
    for t in tensors:
        buckets.setdefault((t.device, t.dtype), []).append(t)
    for ts in buckets.values():
        flat = torch._utils._flatten_dense_tensors(ts)
        dist.all_reduce(flat, group=group)
        flat.div_(world)
        for t, f in zip(ts, torch._utils._unflatten_dense_tensors(flat, ts)):
            t.copy_(f)
    return world


def local_grad_hook(state, bucket):
    """A DDP communication hook that does not communicate.

    ``ddp.register_comm_hook(None, local_grad_hook)`` leaves each rank's own gradient in
    ``p.grad`` so that :class:`~blrlib.optim.IVON` (``sync=True``) can form the Price
    product on each rank before it averages.
    """
    fut = torch.futures.Future()
    fut.set_result(bucket.buffer())
    return fut
