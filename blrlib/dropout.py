r"""Dropout from the Bayesian learning rule: a spike-and-slab candidate per input unit.

The parameters are split into groups :math:`\theta_j` (for dropout on the inputs of a linear layer, group
:math:`j` is column :math:`j` of the weight matrix: the weights that leave input unit :math:`j`). Each
group gets a two-component mixture with a fixed keep probability :math:`p` (``keep_prob``):

.. math::

    q(\theta_j) = p\,\mathcal N(\theta_j \mid m_j, \sigma^2 I) + (1-p)\,\mathcal N(\theta_j \mid 0, \sigma_0^2 I),
    \qquad \sigma_0 \to 0,

equivalently :math:`\theta_j = z_j w_j` with :math:`z_j \sim \mathrm{Bernoulli}(p)` and
:math:`w_j \sim \mathcal N(m_j, \sigma^2 I)`. Only the slab means :math:`m_j` are learned. The rule for the
slab's natural parameter :math:`m_j/\sigma^2` (Lin, Khan & Schmidt, 2019; Khan & Rue, 2023, Sec. 4.3), with

1. the responsibility approximation (the spike and the slab do not overlap, exact as :math:`\sigma_0 \to 0`),
   which removes the entropy's gradient,
2. the delta method inside every component (:math:`w_j \approx m_j`, and the spike at exactly zero), and
3. one mask :math:`z` per example (a Monte Carlo estimate of the average over masks, with importance weight
   :math:`z_j/p` for the group's own mask) and a minibatch scaled to the data set,

gives

.. math::

    m \leftarrow m - \rho\,\sigma^2\Big(\frac{N}{p}\,\hat g + \delta\, m\Big),
    \qquad \hat g = \nabla_m\,\frac1B\sum_{i\in\mathcal M}\ell_i(z^{(i)}\odot m),

where :math:`\hat g` is the gradient of the minibatch-mean loss of the network whose weights are masked,
:math:`\theta = z\odot m`, taken with respect to the unmasked :math:`m` (zero for dropped units): exactly what
``loss.backward()`` gives on a network that multiplies its activations by a 0/1 mask. :math:`N` is the data-set
size (``ess``) and :math:`\delta` the prior precision (``prior_precision``) of
:math:`\bar\ell(\theta) = \sum_i \ell_i(\theta) + \frac\delta2\|\theta\|^2`. This is SGD with dropout
(Srivastava et al., 2014) with learning rate :math:`\rho\sigma^2 N/p` and weight decay :math:`p\delta/N`.

PyTorch's ``torch.nn.Dropout`` is *inverted* dropout: it scales kept activations by :math:`1/p`, so the weight
it stores is :math:`w = p\,m = \mathbb E_q[\theta]`, the mean of the candidate. In those units the same step is
``torch.optim.SGD`` with learning rate :math:`\rho\sigma^2 N p` and weight decay :math:`\delta/(Np)`
(:func:`dropout_sgd_hyperparameters`). Groups that are never dropped are the case :math:`p = 1`, the rule of
:class:`~blrlib.optim.teaching.RuleSGD`.
"""

from __future__ import annotations

import numbers
from typing import Any, NamedTuple, Sequence

import torch

from ._validation import Range, check_hyperparameters
from .optim.kernels import fixed_cov_gaussian_step

__all__ = [
    "check_keep_prob",
    "draw_masks",
    "apply_mask",
    "dropout_rule_step",
    "dropout_sgd_hyperparameters",
    "DropoutSGDHyperparameters",
]


# ---------------------------------------------------------------- argument checks
#: The ranges of the dropout step's arguments, declared once (the checks and the tests read them).
DROPOUT_RANGES = {
    "rho": Range(low=0.0, high=1.0, low_open=True),
    "variance": Range(low=0.0, low_open=True),
    "keep_prob": Range(low=0.0, high=1.0, low_open=True),
    "ess": Range(low=0.0, low_open=True),
    "prior_precision": Range(low=0.0),
}


def check_keep_prob(keep_prob: Any) -> float:
    """Check the keep probability :math:`p \\in (0, 1]` (``p = 1`` means no dropout) and return it."""
    return DROPOUT_RANGES["keep_prob"].check("keep_prob", keep_prob)


# ---------------------------------------------------------------- masks
def draw_masks(
    shape: int | Sequence[int],
    keep_prob: float,
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    r"""Draw dropout masks :math:`z \sim \mathrm{Bernoulli}(p)`, entries in :math:`\{0, 1\}`.

    Args:
        shape: the shape of the mask tensor, for example ``(num_examples, num_units)`` for one mask per
            example, or ``num_units`` for a single mask.
        keep_prob: :math:`p \in (0, 1]`, the probability that a unit is kept (PyTorch's ``Dropout(p=...)``
            takes the *drop* probability :math:`1 - p`).
        generator: a ``torch.Generator`` (on ``device``) for reproducible masks; ``None`` uses the global one.
        dtype, device: of the returned tensor.

    Returns:
        A tensor of zeros and ones; with ``keep_prob = 1`` all ones (no randomness is consumed).
    """
    p = check_keep_prob(keep_prob)
    shape = (int(shape),) if isinstance(shape, numbers.Integral) else tuple(int(s) for s in shape)
    if any(s < 0 for s in shape):
        raise ValueError(f"Invalid shape: {shape} (sizes must be non-negative integers)")
    if not torch.empty((), dtype=dtype).is_floating_point():
        raise ValueError(f"Invalid dtype: {dtype} (must be a floating-point dtype)")
    if p == 1.0:
        return torch.ones(shape, dtype=dtype, device=device)
    uniform = torch.rand(shape, generator=generator, dtype=dtype, device=device)
    return (uniform < p).to(dtype)


def _check_mask(mask: torch.Tensor) -> torch.Tensor:
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"Invalid mask: expected a tensor, got {type(mask).__name__}")
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError("Invalid mask: entries must be 0 or 1 (a dropout mask z ~ Bernoulli(p))")
    return mask


def apply_mask(inputs: torch.Tensor, mask: torch.Tensor, keep_prob: float | None = None) -> torch.Tensor:
    r"""Multiply ``inputs`` by a 0/1 mask: :math:`z \odot x`, or :math:`z \odot x / p` (inverted dropout).

    Masking the inputs of a linear layer, :math:`W(z\odot x) = (W\,\mathrm{diag}(z))\,x`, is the same as
    masking the columns of its weight matrix, :math:`\theta = z \odot m`: the weights of the dropped input
    units are set to zero. With ``keep_prob`` given, the kept inputs are also divided by :math:`p`, as
    ``torch.nn.Dropout`` does in training mode.

    Args:
        inputs: activations, for example of shape ``(batch, units)``.
        mask: zeros and ones, broadcastable to ``inputs`` (one mask per example: the same shape).
        keep_prob: ``None`` for the plain mask :math:`z\odot x`; :math:`p\in(0,1]` for :math:`z\odot x/p`.
    """
    mask = _check_mask(mask)
    try:
        torch.broadcast_shapes(mask.shape, inputs.shape)
    except RuntimeError as err:
        raise ValueError(f"Invalid mask: shape {tuple(mask.shape)} does not broadcast to inputs of shape {tuple(inputs.shape)}") from err
    masked = inputs * mask.to(dtype=inputs.dtype, device=inputs.device)
    if keep_prob is not None:
        masked = masked / check_keep_prob(keep_prob)
    return masked


# ---------------------------------------------------------------- the rule's step
def dropout_rule_step(
    mean: torch.Tensor,
    masked_grad: torch.Tensor,
    *,
    rho: float,
    variance: float,
    keep_prob: float,
    ess: float = 1.0,
    prior_precision: float = 0.0,
) -> torch.Tensor:
    r"""One step of the rule for the slab means of a spike-and-slab candidate (the dropout update).

    .. math::

        m_{t+1} = m_t - \rho\,\sigma^2\Big(\frac{N}{p}\,\hat g_t + \delta\, m_t\Big)

    Symbols: :math:`m_t` = ``mean`` (slab means, the weights of a unit when it is kept), :math:`\hat g_t` =
    ``masked_grad``, :math:`\rho` = ``rho``, :math:`\sigma^2` = ``variance`` (the slab variance, fixed),
    :math:`p` = ``keep_prob``, :math:`N` = ``ess``, :math:`\delta` = ``prior_precision``.

    ``masked_grad`` is the gradient, with respect to :math:`m`, of the minibatch-mean loss evaluated at the
    masked weights :math:`z^{(i)} \odot m` (one mask per example),
    :math:`\hat g = \frac1B\sum_{i}z^{(i)} \odot \nabla_\theta\ell_i(z^{(i)}\odot m)`: zero for the units an
    example dropped. The factor :math:`1/p` is the importance weight that turns the average over examples
    into an estimate of the slab's expected gradient (given that its own unit is kept); the prior's
    gradient :math:`\delta m` is exact and is not masked. With :math:`p = 1` this is
    :func:`blrlib.optim.teaching.rule_sgd`. The function is pure: it returns a new tensor.

    Raises:
        ValueError: naming the argument, for a bad hyperparameter, shapes that differ or a gradient that is
            not finite.
    """
    check_hyperparameters(dict(rho=rho, variance=variance, keep_prob=keep_prob, ess=ess,
                               prior_precision=prior_precision), DROPOUT_RANGES)
    p = float(keep_prob)
    if not isinstance(mean, torch.Tensor) or not mean.is_floating_point():
        raise ValueError(f"Invalid mean: expected a floating-point tensor, got {type(mean).__name__}")
    if not isinstance(masked_grad, torch.Tensor):
        raise ValueError(f"Invalid masked_grad: expected a tensor, got {type(masked_grad).__name__}")
    if tuple(masked_grad.shape) != tuple(mean.shape):
        raise ValueError(f"Invalid masked_grad: shape {tuple(masked_grad.shape)} differs from mean's {tuple(mean.shape)}")
    if not bool(torch.isfinite(masked_grad).all()):
        raise ValueError("Invalid masked_grad: contains NaN or infinite values; all entries must be finite")
    masked_grad = masked_grad.to(dtype=mean.dtype, device=mean.device)
    # the fixed-covariance Gaussian's step with the importance weight 1/p folded into N
    return fixed_cov_gaussian_step(mean, masked_grad, rho=float(rho), variance=float(variance),
                                   ess=float(ess) / p, prior_precision=float(prior_precision))


class DropoutSGDHyperparameters(NamedTuple):
    """``torch.optim.SGD`` settings that reproduce :func:`dropout_rule_step` on an inverted-dropout network."""

    lr: float
    weight_decay: float


def dropout_sgd_hyperparameters(
    *, rho: float, variance: float, keep_prob: float, ess: float, prior_precision: float = 0.0
) -> DropoutSGDHyperparameters:
    r"""The ``torch.optim.SGD`` learning rate and weight decay that equal the rule on ``torch.nn.Dropout`` networks.

    ``torch.nn.Dropout(1 - p)`` divides kept activations by :math:`p`, so the weight it stores is
    :math:`w = p\,m`. Multiplying :func:`dropout_rule_step` by :math:`p` and using
    :math:`\nabla_w = \hat g / p` (the chain rule through :math:`z\odot w/p`) gives

    .. math::

        w_{t+1} = w_t - \underbrace{\rho\sigma^2 N p}_{\text{lr}}\Big(\nabla_w + \underbrace{\frac{\delta}{Np}}_{\text{weight decay}}\,w_t\Big).

    For a group that is never dropped use ``keep_prob = 1`` (the mapping of plain SGD).
    """
    check_hyperparameters(dict(rho=rho, variance=variance, keep_prob=keep_prob, ess=ess,
                               prior_precision=prior_precision), DROPOUT_RANGES)
    rho, variance, p, ess, prior_precision = (float(x) for x in (rho, variance, keep_prob, ess, prior_precision))
    return DropoutSGDHyperparameters(lr=rho * variance * ess * p, weight_decay=prior_precision / (ess * p))
