r"""Per-example gradients and the Gauss-Newton diagonal of a PyTorch model.

OGN and VOGN (:mod:`blrlib.optim.vogn`) need, for a minibatch :math:`\mathcal M` of :math:`M`
examples with per-example losses :math:`\ell_i(\theta)`, the per-example gradients
:math:`g_i = \nabla\ell_i(\theta)`, from which they form

.. math::

    \hat g = \frac1M\sum_{i\in\mathcal M} g_i, \qquad
    \hat h = \frac1M\sum_{i\in\mathcal M} g_i \odot g_i ,

the minibatch mean gradient and the diagonal of the *empirical Fisher*
:math:`\frac1M\sum_i g_i g_i^\top`, which Khan et al. (2018) and Osawa et al. (2019) use as their
"Gauss-Newton" approximation. It is not the generalised Gauss-Newton matrix (GGN) of Martens (2020).
For a loss :math:`\ell_i = r_i^2/2` with residual :math:`r_i = f(x_i;\theta) - y_i` and output
Jacobian :math:`J_i`, the empirical Fisher is :math:`\frac1M\sum_i r_i^2 J_i^\top J_i` while the GGN is
:math:`\frac1M\sum_i J_i^\top J_i`; they agree when the squared residuals average to the curvature of the
loss in the output (1 here), for example in expectation over data drawn from the model at :math:`\theta`,
and differ at a close fit (small :math:`r_i`) or far from one. The names in this module
(``gauss_newton_diagonal``, ``gauss_newton``) follow the papers and mean the empirical Fisher.

Two ways to get the :math:`g_i`, neither with a Python loop over examples:

* :func:`per_example_gradients` (and :func:`gauss_newton_diagonal`): ``torch.func`` --
  :func:`torch.func.functional_call` of the model on one example, differentiated with
  :func:`torch.func.grad` and vectorised over the examples with :func:`torch.func.vmap`;
* :func:`per_example_grads_from_losses`: from a vector of per-example losses already computed by an
  ordinary forward pass, with one batched backward pass (``torch.autograd.grad`` with
  ``is_grads_batched=True``, which ``vmap``\ s the vector-Jacobian product over the rows of the
  identity). This is what ``OGN.step(closure)`` uses.

Both assume the examples do not interact in the forward pass (no batch normalisation in training
mode), which is what "per-example gradient" means.
"""

from __future__ import annotations

from typing import Callable, Mapping, NamedTuple, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value, vmap

__all__ = [
    "PerExampleGradients",
    "GradientStatistics",
    "per_example_gradients",
    "gauss_newton_diagonal",
    "per_example_grads_from_losses",
    "flatten_per_example",
]


class PerExampleGradients(NamedTuple):
    """Per-example losses ``(M,)`` and gradients ``{name: (M, *param.shape)}``."""

    losses: Tensor
    grads: dict


class GradientStatistics(NamedTuple):
    r"""Minibatch mean loss, mean gradient :math:`\hat g` and "Gauss-Newton" (empirical Fisher) diagonal :math:`\hat h` (dicts by name)."""

    loss: Tensor
    grad: dict
    gauss_newton: dict


def _check_batch(inputs: Tensor, targets: Tensor) -> int:
    if not isinstance(inputs, Tensor) or not isinstance(targets, Tensor):
        raise ValueError("inputs and targets must be tensors whose first dimension indexes the examples")
    if inputs.ndim == 0 or targets.ndim == 0:
        raise ValueError("inputs and targets need a leading example dimension; got a 0-d tensor")
    if inputs.shape[0] != targets.shape[0]:
        raise ValueError(
            f"inputs has {inputs.shape[0]} examples but targets has {targets.shape[0]}; they must match"
        )
    if inputs.shape[0] == 0:
        raise ValueError("the minibatch is empty; it needs at least one example")
    return int(inputs.shape[0])


def _named_params(model: nn.Module, params: Mapping[str, Tensor] | None) -> dict:
    if params is None:
        params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    else:
        names = dict(model.named_parameters())
        for n in params:
            if n not in names:
                raise ValueError(f"params has the entry {n!r}, which is not a parameter of the model")
    if not params:
        raise ValueError("the model has no parameter that requires a gradient")
    return {n: p.detach() for n, p in params.items()}


def per_example_gradients(
    model: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    inputs: Tensor,
    targets: Tensor,
    *,
    params: Mapping[str, Tensor] | None = None,
    chunk_size: int | None = None,
) -> PerExampleGradients:
    r"""Per-example losses :math:`\ell_i(\theta)` and gradients :math:`g_i = \nabla_\theta\ell_i(\theta)`.

    Computed with ``vmap(grad_and_value(...))`` over a :func:`~torch.func.functional_call` of the
    model on a batch of one example: no Python loop over examples.

    Args:
        model: the network :math:`f_\theta`; its buffers are used as they are.
        loss_fn: ``loss_fn(output, target) -> scalar``, written as for a minibatch (for example
            ``torch.nn.functional.cross_entropy``); it is called on batches of *one* example, so a
            ``"mean"`` or ``"sum"`` reduction both give :math:`\ell_i`.
        inputs, targets: tensors whose first dimension indexes the :math:`M` examples.
        params: optional ``{name: tensor}`` at which to differentiate (default: the model's
            parameters that require a gradient, in ``named_parameters`` order).
        chunk_size: passed to :func:`torch.func.vmap` to bound memory.

    Returns:
        :class:`PerExampleGradients` with ``losses`` of shape ``(M,)`` and ``grads`` a dict
        ``{name: (M, *shape)}`` in parameter order (so ``list(result.grads.values())`` lines up
        with ``[p for p in model.parameters() if p.requires_grad]``).
    """
    _check_batch(inputs, targets)
    if not callable(loss_fn):
        raise ValueError(f"loss_fn must be callable; got {type(loss_fn).__name__}")
    theta = _named_params(model, params)
    buffers = {n: b.detach() for n, b in model.named_buffers()}

    def loss_one(theta_, x, y):
        out = functional_call(model, (theta_, buffers), (x.unsqueeze(0),))
        value = loss_fn(out, y.unsqueeze(0))
        if value.ndim != 0:
            value = value.sum()
        return value

    grads, losses = vmap(grad_and_value(loss_one), in_dims=(None, 0, 0), chunk_size=chunk_size)(
        theta, inputs, targets
    )
    return PerExampleGradients(losses.detach(), {n: g.detach() for n, g in grads.items()})


def gauss_newton_diagonal(
    model: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    inputs: Tensor,
    targets: Tensor,
    *,
    params: Mapping[str, Tensor] | None = None,
    chunk_size: int | None = None,
) -> GradientStatistics:
    r"""Mean gradient :math:`\hat g = \frac1M\sum_i g_i` and "Gauss-Newton" (empirical Fisher) diagonal :math:`\hat h = \frac1M\sum_i g_i^2`.

    Same arguments as :func:`per_example_gradients`; the per-example gradients are reduced
    immediately, so only the two means are returned (with the mean loss).
    """
    pe = per_example_gradients(model, loss_fn, inputs, targets, params=params, chunk_size=chunk_size)
    grad = {n: g.mean(0) for n, g in pe.grads.items()}
    gn = {n: (g * g).mean(0) for n, g in pe.grads.items()}
    return GradientStatistics(pe.losses.mean(), grad, gn)


def per_example_grads_from_losses(losses: Tensor, params: Sequence[Tensor]) -> list:
    r"""Per-example gradients :math:`\partial\ell_i/\partial p` from a vector of per-example losses.

    ``losses`` (shape ``(M,)``) must come from an ordinary forward pass through ``params``. One
    batched backward pass (``torch.autograd.grad(..., is_grads_batched=True)``, a ``vmap`` over the
    rows of the :math:`M\times M` identity) gives every :math:`g_i`; the graph is freed afterwards.

    Returns a list aligned with ``params``: a tensor of shape ``(M, *p.shape)``, or ``None`` for a
    parameter the losses do not depend on.
    """
    if not isinstance(losses, Tensor) or losses.ndim != 1 or losses.shape[0] == 0:
        shape = tuple(losses.shape) if isinstance(losses, Tensor) else type(losses).__name__
        raise ValueError(f"losses must be a 1-D tensor of per-example losses (shape (M,), M >= 1); got {shape}")
    if not losses.requires_grad:
        raise ValueError("losses does not require grad: compute it from the parameters with autograd enabled")
    params = list(params)
    if not params:
        raise ValueError("params is empty")
    eye = torch.eye(losses.shape[0], dtype=losses.dtype, device=losses.device)
    return list(torch.autograd.grad(losses, params, grad_outputs=eye, is_grads_batched=True, allow_unused=True))


def flatten_per_example(grads: Mapping[str, Tensor] | Sequence[Tensor]) -> Tensor:
    """Concatenate per-example gradients ``(M, *shape)`` into one ``(M, P)`` matrix (parameter order)."""
    tensors = list(grads.values()) if isinstance(grads, Mapping) else list(grads)
    if not tensors:
        raise ValueError("grads is empty")
    m = tensors[0].shape[0]
    for t in tensors:
        if t.shape[0] != m:
            raise ValueError(f"every entry of grads must have {m} rows (examples); got {t.shape[0]}")
    return torch.cat([t.reshape(m, -1) for t in tensors], dim=1)
