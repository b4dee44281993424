r"""Classical reference algorithms, written without any Bayesian-learning-rule code.

They are the baselines the book's verifications compare against: plain loops as found in
optimisation textbooks (Nocedal & Wright, 2006; Boyd & Vandenberghe, 2004). They work on NumPy
arrays and PyTorch tensors alike; ``grad_fn`` and ``hess_fn`` are whatever the caller provides.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

__all__ = ["gradient_descent", "newton"]


def _check_steps(num_steps: int) -> int:
    if int(num_steps) != num_steps or num_steps < 0:
        raise ValueError(f"num_steps must be a non-negative integer; got {num_steps}")
    return int(num_steps)


def _stack(iterates: list) -> Any:
    return torch.stack(iterates) if isinstance(iterates[0], torch.Tensor) else np.stack(iterates)


def _copy(x: Any) -> Any:
    return x.clone() if isinstance(x, torch.Tensor) else np.array(x, dtype=float, copy=True)


def gradient_descent(grad_fn: Callable, x0: Any, lr: float, num_steps: int) -> Any:
    r"""Gradient descent, :math:`x_{t+1} = x_t - \alpha\nabla f(x_t)`.

    Returns the iterates :math:`x_0, \dots, x_T` stacked along the first dimension.
    """
    if not lr > 0:
        raise ValueError(f"lr must be positive; got {lr}")
    x = _copy(x0)
    iterates = [x]
    for _ in range(_check_steps(num_steps)):
        x = x - lr * grad_fn(x)
        iterates.append(x)
    return _stack(iterates)


def newton(grad_fn: Callable, hess_fn: Callable, x0: Any, num_steps: int, step_size: float = 1.0) -> Any:
    r"""Newton's method, :math:`x_{t+1} = x_t - \alpha\,[\nabla^2 f(x_t)]^{-1}\nabla f(x_t)`.

    ``step_size`` :math:`\alpha = 1` is the pure Newton step. Returns the stacked iterates.
    """
    if not step_size > 0:
        raise ValueError(f"step_size must be positive; got {step_size}")
    x = _copy(x0)
    iterates = [x]
    for _ in range(_check_steps(num_steps)):
        g, h = grad_fn(x), hess_fn(x)
        direction = torch.linalg.solve(h, g) if isinstance(x, torch.Tensor) else np.linalg.solve(h, g)
        x = x - step_size * direction
        iterates.append(x)
    return _stack(iterates)
