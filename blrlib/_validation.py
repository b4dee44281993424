"""Argument checks shared by every module.

Each check raises :class:`ValueError` whose message names the argument and says what is allowed,
so that bad input never turns into a silent NaN or a wrong answer further down.
"""

from __future__ import annotations

import math
from typing import Any

import torch

__all__ = [
    "as_float_tensor",
    "check_rho",
    "check_finite",
    "check_positive",
    "check_symmetric_positive_definite",
    "check_same_shape",
]


def as_float_tensor(name: str, value: Any, *, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Return ``value`` as a floating-point tensor without touching the caller's object.

    Tensors keep their dtype and device (integer tensors become float64); anything else
    (Python numbers, lists, NumPy arrays) becomes a float64 tensor. The result never shares
    memory with ``value``, so later in-place changes on either side cannot leak across.
    """
    if isinstance(value, torch.Tensor):
        tensor = value.detach().clone()
        if not tensor.is_floating_point():
            tensor = tensor.to(torch.float64)
    else:
        try:
            tensor = torch.as_tensor(value, dtype=torch.float64).clone()
        except (TypeError, ValueError, RuntimeError) as err:
            raise ValueError(f"{name} must be a number, array or tensor of real numbers; got {type(value).__name__}") from err
    if dtype is not None:
        tensor = tensor.to(dtype)
    check_finite(name, tensor)
    return tensor


def check_rho(rho: Any) -> float:
    """Check the step size of the rule, ρ ∈ (0, 1], and return it as a float."""
    try:
        value = float(rho)
    except (TypeError, ValueError) as err:
        raise ValueError(f"rho must be a number in (0, 1]; got {rho!r}") from err
    if not (0.0 < value <= 1.0) or math.isnan(value):
        raise ValueError(f"rho must lie in (0, 1]; got {value}")
    return value


def check_finite(name: str, tensor: torch.Tensor) -> None:
    """Raise if ``tensor`` holds a NaN or an infinity."""
    if not bool(torch.isfinite(tensor).all()):
        bad = "NaN" if bool(torch.isnan(tensor).any()) else "an infinite value"
        raise ValueError(f"{name} contains {bad}; all entries must be finite")


def check_positive(name: str, tensor: torch.Tensor) -> None:
    """Raise unless every entry of ``tensor`` is strictly positive."""
    if not bool((tensor > 0).all()):
        raise ValueError(f"{name} must be strictly positive everywhere; smallest entry is {tensor.min().item():.6g}")


def check_symmetric_positive_definite(name: str, matrix: torch.Tensor) -> None:
    """Raise unless ``matrix`` is a square, symmetric, positive-definite matrix."""
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"{name} must be a square matrix; got shape {tuple(matrix.shape)}")
    scale = matrix.abs().max().clamp_min(1.0)
    tol = 1e-6 if matrix.dtype in (torch.float16, torch.bfloat16, torch.float32) else 1e-10
    if not bool(((matrix - matrix.T).abs() <= tol * scale).all()):
        raise ValueError(f"{name} must be symmetric; largest asymmetry is {(matrix - matrix.T).abs().max().item():.3g}")
    _, info = torch.linalg.cholesky_ex(matrix)
    if int(info) != 0:
        smallest = torch.linalg.eigvalsh(matrix).min().item()
        raise ValueError(f"{name} must be positive definite; its smallest eigenvalue is {smallest:.6g}")


def check_same_shape(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    """Raise unless ``a`` and ``b`` have the same shape."""
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(f"{name_a} has shape {tuple(a.shape)} but {name_b} has shape {tuple(b.shape)}; they must match")
