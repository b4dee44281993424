r"""Predictive metrics for classifiers: NLL, calibration (ECE, reliability bins), entropy.

All functions take **probabilities** ``probs`` of shape ``(N, C)`` (rows on the simplex;
for a Bayesian model, the Monte Carlo average of the softmax over posterior samples,
not of the logits) and integer class labels ``targets`` of shape ``(N,)``. Use
:func:`probs_from_logits` to average ``S`` sampled logits of shape ``(S, N, C)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._validation import check_int

__all__ = [
    "probs_from_logits",
    "nll",
    "accuracy",
    "reliability_bins",
    "expected_calibration_error",
    "predictive_entropy",
]


def _check_probs(probs: Tensor, targets: Tensor | None = None, atol: float = 1e-4) -> None:
    if not isinstance(probs, Tensor) or probs.ndim != 2:
        raise ValueError(f"Invalid probs: expected a tensor of shape (N, C), got {getattr(probs, 'shape', type(probs))}")
    if probs.shape[0] == 0:
        raise ValueError("Invalid probs: no examples (N = 0)")
    if not torch.isfinite(probs).all() or (probs < 0).any():
        raise ValueError("Invalid probs: entries must be finite and >= 0")
    if not torch.allclose(probs.sum(1), torch.ones((), dtype=probs.dtype, device=probs.device), atol=atol):
        raise ValueError("Invalid probs: rows must sum to 1 (pass probabilities, not logits)")
    if targets is not None:
        if not isinstance(targets, Tensor) or targets.shape != probs.shape[:1] or targets.is_floating_point():
            raise ValueError(f"Invalid targets: expected integer labels of shape ({probs.shape[0]},)")
        if (targets < 0).any() or (targets >= probs.shape[1]).any():
            raise ValueError(f"Invalid targets: labels must lie in [0, {probs.shape[1] - 1}]")


def probs_from_logits(logits: Tensor) -> Tensor:
    r"""Predictive probabilities :math:`\bar p = \frac1S\sum_s \mathrm{softmax}(z_s)` from
    logits of shape ``(S, N, C)`` (posterior samples) or ``(N, C)`` (one model)."""
    if logits.ndim == 2:
        return torch.softmax(logits, -1)
    if logits.ndim != 3:
        raise ValueError(f"Invalid logits: expected shape (S, N, C) or (N, C), got {tuple(logits.shape)}")
    return torch.softmax(logits, -1).mean(0)


def nll(probs: Tensor, targets: Tensor, eps: float = 1e-12) -> float:
    r"""Mean negative log-likelihood :math:`-\frac1N\sum_i \log \max(p_{i,y_i}, \epsilon)` (nats).

    ``eps`` guards against :math:`\log 0`.
    """
    _check_probs(probs, targets)
    p = probs.gather(1, targets.long().unsqueeze(1)).squeeze(1).double()
    return float(-(p.clamp_min(eps).log()).mean())


def accuracy(probs: Tensor, targets: Tensor) -> float:
    r"""Fraction of examples with :math:`\arg\max_c p_{ic} = y_i` (ties: the first maximum)."""
    _check_probs(probs, targets)
    return float((probs.argmax(1) == targets).double().mean())


def reliability_bins(probs: Tensor, targets: Tensor, n_bins: int = 15) -> dict:
    r"""Confidence histogram for a reliability diagram.

    The confidence of example :math:`i` is :math:`c_i = \max_c p_{ic}`, its prediction
    :math:`\hat y_i = \arg\max_c p_{ic}`. Bin :math:`b` (:math:`b = 1..B`) holds the
    examples with :math:`c_i \in ((b-1)/B,\ b/B]` (the first bin also holds 0). Returns a
    dict of tensors of length :math:`B`: ``edges`` (:math:`B+1` values), ``count``
    :math:`n_b`, ``confidence`` (mean :math:`c_i` in the bin), ``accuracy`` (mean of
    :math:`\hat y_i = y_i`); empty bins have count 0 and NaN confidence and accuracy.
    """
    n_bins = check_int("n_bins", n_bins, low=1)
    _check_probs(probs, targets)
    conf, pred = probs.double().max(1)
    correct = (pred == targets).double()
    idx = (torch.ceil(conf * n_bins).long() - 1).clamp(0, n_bins - 1)
    count = torch.bincount(idx, minlength=n_bins).double()
    sum_conf = torch.zeros(n_bins, dtype=torch.float64, device=probs.device).index_add_(0, idx, conf)
    sum_acc = torch.zeros(n_bins, dtype=torch.float64, device=probs.device).index_add_(0, idx, correct)
    nan = torch.full_like(count, math.nan)
    nz = count > 0
    return dict(
        edges=torch.linspace(0, 1, n_bins + 1, dtype=torch.float64, device=probs.device),
        count=count,
        confidence=torch.where(nz, sum_conf / count.clamp_min(1), nan),
        accuracy=torch.where(nz, sum_acc / count.clamp_min(1), nan),
    )


def expected_calibration_error(probs: Tensor, targets: Tensor, n_bins: int = 15) -> float:
    r"""Expected calibration error with :math:`B` equal-width confidence bins:

    .. math:: \mathrm{ECE} = \sum_{b=1}^{B} \frac{n_b}{N}\,\big|\mathrm{acc}_b - \mathrm{conf}_b\big|

    with the bins of :func:`reliability_bins` (empty bins contribute 0).
    """
    bins = reliability_bins(probs, targets, n_bins)
    nz = bins["count"] > 0
    w = bins["count"][nz] / bins["count"].sum()
    return float((w * (bins["accuracy"][nz] - bins["confidence"][nz]).abs()).sum())


def predictive_entropy(probs: Tensor) -> Tensor:
    r"""Entropy :math:`H_i = -\sum_c p_{ic}\log p_{ic}` (nats, :math:`0\log 0 = 0`) per example;
    a tensor of shape ``(N,)``. Take ``.mean()`` for the average."""
    _check_probs(probs)
    p = probs.double()
    return -torch.where(p > 0, p * p.clamp_min(1e-300).log(), torch.zeros_like(p)).sum(1)
