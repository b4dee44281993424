r"""Neural-network plumbing the chapters share: one flat parameter vector, and a loop that records iterates.

The rule works on a vector :math:`\theta \in \mathbb{R}^P`; a ``torch.nn.Module`` keeps its weights as
named tensors. :class:`FlatParameters` is the adapter between the two, built on
``torch.func.functional_call``: ``flat.unflatten(theta)`` gives the module's parameters as views of
``theta`` (so autograd, ``torch.func.grad`` and ``vmap`` see a function of the vector), and
``flat.call(theta, x)`` evaluates the network at :math:`\theta` without touching the module's own
weights. A minibatch objective of the book then reads

.. code-block:: python

    flat = FlatParameters(net)
    def objective(theta):          # (N/B) sum_i l_i(theta) + delta/2 ||theta||^2
        logits = flat.call(theta, X[batch])
        return N / len(batch) * F.cross_entropy(logits, y[batch], reduction="sum") \
            + 0.5 * delta * theta @ theta
    q = blrlib.DiagonalGaussian.from_mean_precision(flat.flatten(), ...)

:func:`train` is the loop nine chapters wrote by hand: for each batch, zero the gradients, compute
the loss, backpropagate and step (inside ``optimizer.sampled_params(train=True)`` for the optimizers
that sample, such as IVON, STE and BayesBiNN), and record the flat parameter vector, the loss and
optionally an evaluation. :func:`minibatch_indices` draws the shuffled index batches it consumes.

API:

* ``FlatParameters(module, names=None)``: ``names``, ``shapes``, ``sizes``, ``numel``,
  ``flatten(params=None)`` (the module's current parameters, or a mapping/sequence of tensors, as one
  detached vector), ``unflatten(theta)`` (name -> view of ``theta``), ``call(theta, *args, **kwargs)``
  (the module's forward at ``theta``), ``assign_(theta)`` (copy ``theta`` into the module in place).
* ``train(model, optimizer, batches, loss_fn, *, scheduler=None, record_every=1, evaluate=None,
  step_fn=None, progress=False, desc=None) -> TrainingRecord(iterates, losses, steps, evaluations)``.
* ``minibatch_indices(num_examples, batch_size, *, epochs=1, generator=None, drop_last=False,
  device=None)``: an iterator of index tensors, a fresh permutation per epoch.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Iterable, Iterator, Mapping, NamedTuple, Sequence

import torch
from torch.func import functional_call

__all__ = ["FlatParameters", "TrainingRecord", "train", "minibatch_indices"]


def _invalid(name: str, value: Any, must: str) -> ValueError:
    return ValueError(f"Invalid {name}: {value} (must be {must})")


class FlatParameters:
    r"""The parameters of ``module`` as one vector :math:`\theta` (concatenated in ``named_parameters`` order).

    Args:
        module: the network (not modified by anything but :meth:`assign_`).
        names: the parameter names to include (default: all parameters that require a gradient);
            the others keep the module's own values in :meth:`call`.
    """

    def __init__(self, module: torch.nn.Module, names: Sequence[str] | None = None):
        if not isinstance(module, torch.nn.Module):
            raise _invalid("module", type(module).__name__, "a torch.nn.Module")
        params = dict(module.named_parameters())
        if names is None:
            names = [n for n, p in params.items() if p.requires_grad]
        names = list(names)
        unknown = [n for n in names if n not in params]
        if unknown:
            raise _invalid("names", unknown, f"parameter names of the module, from {list(params)}")
        if not names:
            raise _invalid("names", names, "at least one parameter")
        if len(set(names)) != len(names):
            raise _invalid("names", names, "unique")
        self.module = module
        self.names = tuple(names)
        self.shapes = tuple(params[n].shape for n in names)
        self.sizes = tuple(params[n].numel() for n in names)
        self.numel = sum(self.sizes)

    def flatten(self, params: Mapping[str, torch.Tensor] | Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        """One detached vector from the module's current parameters, or from ``params`` (a mapping
        name -> tensor or a sequence in :attr:`names` order)."""
        if params is None:
            current = dict(self.module.named_parameters())
            tensors = [current[n] for n in self.names]
        elif isinstance(params, Mapping):
            missing = [n for n in self.names if n not in params]
            if missing:
                raise _invalid("params", f"missing {missing}", f"a tensor for every name in {list(self.names)}")
            tensors = [params[n] for n in self.names]
        else:
            tensors = list(params)
            if len(tensors) != len(self.names):
                raise _invalid("params", f"{len(tensors)} tensors", f"{len(self.names)}, one per name in {list(self.names)}")
        for name, t, shape in zip(self.names, tensors, self.shapes):
            if tuple(t.shape) != tuple(shape):
                raise _invalid(f"params[{name!r}] shape", tuple(t.shape), f"{tuple(shape)}")
        return torch.cat([t.detach().reshape(-1) for t in tensors])

    def unflatten(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """Name -> view of ``theta`` with that parameter's shape (differentiable in ``theta``)."""
        self._check_vector(theta)
        return {n: t.reshape(s) for n, t, s in zip(self.names, torch.split(theta, self.sizes), self.shapes)}

    def call(self, theta: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        """``module(*args, **kwargs)`` with the parameters in :attr:`names` taken from ``theta``
        (``torch.func.functional_call``); works under ``torch.func.grad`` and ``vmap``."""
        return functional_call(self.module, self.unflatten(theta), args, kwargs)

    def assign_(self, theta: torch.Tensor) -> torch.nn.Module:
        """Copy ``theta`` into the module's parameters in place (no autograd history); returns the module."""
        views = self.unflatten(theta.detach())
        current = dict(self.module.named_parameters())
        with torch.no_grad():
            for name, value in views.items():
                current[name].copy_(value)
        return self.module

    def _check_vector(self, theta: torch.Tensor) -> None:
        if not isinstance(theta, torch.Tensor) or theta.ndim != 1 or theta.numel() != self.numel:
            shape = tuple(theta.shape) if isinstance(theta, torch.Tensor) else type(theta).__name__
            raise _invalid("theta shape", shape, f"({self.numel},), one entry per parameter")

    def __repr__(self) -> str:
        return f"FlatParameters({len(self.names)} tensors, {self.numel} entries)"


class TrainingRecord(NamedTuple):
    """What :func:`train` returns.

    ``iterates[k]`` is the flat parameter vector after ``steps[k]`` optimizer steps (``steps[0] = 0``:
    the start); ``losses[t]`` the loss of batch ``t`` (before its step, at the sampled parameters for a
    sampling optimizer); ``evaluations[k]`` what ``evaluate(model)`` returned at ``steps[k]`` (empty
    without ``evaluate``)."""

    iterates: list
    losses: torch.Tensor
    steps: list
    evaluations: list


def _sampled_context(optimizer: torch.optim.Optimizer):
    sampled = getattr(optimizer, "sampled_params", None)
    if sampled is None:
        return None
    try:
        takes_train = "train" in inspect.signature(sampled).parameters
    except (TypeError, ValueError):
        takes_train = False
    if not takes_train:
        raise _invalid(
            "optimizer",
            type(optimizer).__name__,
            "an optimizer whose step needs only p.grad (torch.optim, IVON, STE, BayesBiNN), "
            "or pass step_fn for one that needs per-example gradients (VOGN, OGN)",
        )
    return sampled


def _default_step(loss_fn: Callable[[torch.nn.Module, Any], torch.Tensor]):
    def step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: Any) -> torch.Tensor:
        sampled = _sampled_context(optimizer)
        if sampled is None:
            optimizer.zero_grad()
            loss = loss_fn(model, batch)
            loss.backward()
        else:
            with sampled(train=True):  # forward and backward at a posterior sample
                optimizer.zero_grad()
                loss = loss_fn(model, batch)
                loss.backward()
        optimizer.step()
        return loss

    return step


def train(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[Any],
    loss_fn: Callable[[torch.nn.Module, Any], torch.Tensor] | None = None,
    *,
    scheduler: Any = None,
    record_every: int = 1,
    evaluate: Callable[[torch.nn.Module], Any] | None = None,
    step_fn: Callable[[torch.nn.Module, torch.optim.Optimizer, Any], torch.Tensor] | None = None,
    progress: bool = False,
    desc: str | None = None,
) -> TrainingRecord:
    """Train ``model`` with ``optimizer`` over ``batches``, recording the iterates.

    For each batch: ``optimizer.zero_grad()``, ``loss = loss_fn(model, batch)``, ``loss.backward()``,
    ``optimizer.step()`` (the forward and backward inside ``optimizer.sampled_params(train=True)``
    when the optimizer samples, as IVON, STE and BayesBiNN do), then ``scheduler.step()`` if given.
    Optimizers that need per-example gradients (VOGN, OGN) or any other protocol take
    ``step_fn(model, optimizer, batch) -> loss`` instead of ``loss_fn``.

    Args:
        batches: an iterable of whatever ``loss_fn`` takes (for example index tensors from
            :func:`minibatch_indices`, or ``(x, y)`` pairs).
        record_every: record the flat parameters (and ``evaluate``) every this many steps, and
            after the last step; the start is always recorded.
        evaluate: optional ``evaluate(model) -> value`` at each record point (called under
            ``torch.no_grad()``; the optimizer's mean parameters are in the model there).
        progress: a plain ``tqdm`` bar over the batches (tag the cell ``remove-stderr``).
    """
    if isinstance(record_every, bool) or not isinstance(record_every, int) or record_every < 1:
        raise _invalid("record_every", record_every, "an integer >= 1")
    if (loss_fn is None) == (step_fn is None):
        raise _invalid("loss_fn/step_fn", "both or neither given", "exactly one of the two")
    flat = FlatParameters(model)
    step = step_fn if step_fn is not None else _default_step(loss_fn)

    def record(k: int) -> None:
        iterates.append(flat.flatten())
        steps.append(k)
        if evaluate is not None:
            with torch.no_grad():
                evaluations.append(evaluate(model))

    iterates: list = []
    steps: list = []
    evaluations: list = []
    losses: list = []
    record(0)
    iterator: Iterable[Any] = batches
    if progress:
        from tqdm import tqdm

        iterator = tqdm(batches, desc=desc or type(optimizer).__name__, leave=False)
    t = 0
    for t, batch in enumerate(iterator, start=1):
        loss = step(model, optimizer, batch)
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise _invalid("loss", type(loss).__name__, "a scalar tensor returned by loss_fn/step_fn")
        losses.append(float(loss.detach()))
        if scheduler is not None:
            scheduler.step()
        if t % record_every == 0:
            record(t)
    if steps[-1] != t:
        record(t)
    return TrainingRecord(iterates, torch.tensor(losses, dtype=torch.float64), steps, evaluations)


def minibatch_indices(
    num_examples: int,
    batch_size: int,
    *,
    epochs: int = 1,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
    device: torch.device | str | None = None,
) -> Iterator[torch.Tensor]:
    """Shuffled index batches: for each epoch a fresh ``torch.randperm(num_examples, generator=...)``
    cut into consecutive batches of ``batch_size`` (the last one shorter unless ``drop_last``)."""
    for name, value, low in (("num_examples", num_examples, 1), ("batch_size", batch_size, 1), ("epochs", epochs, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise _invalid(name, value, f"an integer >= {low}")
    for _ in range(epochs):
        order = torch.randperm(num_examples, generator=generator)
        if device is not None:
            order = order.to(device)
        for start in range(0, num_examples, batch_size):
            batch = order[start : start + batch_size]
            if drop_last and batch.numel() < batch_size:
                break
            yield batch
