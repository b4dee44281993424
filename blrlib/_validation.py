"""Argument checks shared by every module: one validator, ranges declared as data.

Each check raises :class:`ValueError` whose message names the argument and says what is allowed,
so that bad input never turns into a silent NaN or a wrong answer further down. Scalar checks use
one form, torch's plus the range::

    Invalid <name>: <value> (must be <range>)

A hyperparameter's range is declared once, as a :class:`Range`, in a table ``{name: Range}``
(each optimizer's ``HYPERPARAMETERS``); :func:`check_hyperparameters` reads the table,
:func:`document_ranges` writes it into a docstring, and the tests derive their bad-argument cases
from it (:meth:`Range.bad_values`).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Mapping

import torch

__all__ = [
    "Range",
    "check_real",
    "check_int",
    "check_choice",
    "check_bool",
    "check_hyperparameters",
    "check_with_phrase",
    "document_ranges",
    "require_ess",
    "as_float_tensor",
    "check_rho",
    "check_finite",
    "check_positive",
    "check_symmetric_positive_definite",
    "check_same_shape",
]


def _fmt(value) -> str:
    return repr(value) if isinstance(value, str) else str(value)


@dataclass(frozen=True)
class Range:
    """The allowed values of one scalar argument, as data.

    ``kind`` is ``"real"`` (an interval given by ``low``/``high``, ``None`` meaning unbounded, each
    bound closed unless ``low_open``/``high_open``; NaN always refused, infinity only with
    ``allow_inf``), ``"int"`` (an integer ``>= low``), ``"bool"`` or ``"choice"`` (one of
    ``choices``). ``optional=True`` also accepts ``None`` (meaning "derived from other arguments").
    """

    kind: str = "real"
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    allow_inf: bool = False
    choices: tuple = ()
    optional: bool = False

    def describe(self) -> str:
        """The ``<range>`` of the message, e.g. ``a finite real number > 0 and <= 1``."""
        if self.kind == "bool":
            text = "True or False"
        elif self.kind == "choice":
            text = "one of " + ", ".join(repr(c) for c in self.choices)
        elif self.kind == "int":
            text = f"an integer >= {int(self.low)}" if self.low is not None else "an integer"
        else:
            parts = []
            if self.low is not None:
                parts.append(f"> {self.low:g}" if self.low_open else f">= {self.low:g}")
            if self.high is not None:
                parts.append(f"< {self.high:g}" if self.high_open else f"<= {self.high:g}")
            rng = " and ".join(parts)
            if self.allow_inf:
                text = f"a real number {rng}" if rng else "a real number"
            else:
                text = f"a finite real number {rng}" if rng else "a finite real number"
        return text + (" or None" if self.optional else "")

    def check(self, name: str, value):
        """Return ``value`` (a float for ``"real"``, an int for ``"int"``) or raise ``ValueError``."""
        if value is None and self.optional:
            return None
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise ValueError(f"Invalid {name}: {_fmt(value)} (must be {self.describe()})")
            return value
        if self.kind == "choice":
            if isinstance(value, (list, dict, set)) or value not in self.choices:
                raise ValueError(f"Invalid {name}: {_fmt(value)} (must be {self.describe()})")
            return value
        if self.kind == "int":
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or (
                self.low is not None and value < self.low
            ):
                raise ValueError(f"Invalid {name}: {_fmt(value)} (must be {self.describe()})")
            return int(value)
        if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_complex():
            value = value.item()  # a one-element tensor hyperparameter (as torch's lr may be)
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ValueError(f"Invalid {name}: {_fmt(value)} (must be {self.describe()})")
        v = float(value)
        bad = math.isnan(v) or (not self.allow_inf and math.isinf(v))
        if self.low is not None and not bad:
            bad = v <= self.low if self.low_open else v < self.low
        if self.high is not None and not bad:
            bad = v >= self.high if self.high_open else v > self.high
        if bad:
            raise ValueError(f"Invalid {name}: {_fmt(value)} (must be {self.describe()})")
        return v

    def bad_values(self) -> list:
        """Values this range refuses (for the tests' bad-argument tables)."""
        if self.kind == "bool":
            return [1, "yes"]
        if self.kind == "choice":
            return ["no-such-choice"]
        if self.kind == "int":
            out = [1.5, True, "1"]
            if self.low is not None:
                out.append(int(self.low) - 1)
            return out
        out = [float("nan"), "0.1"]
        if not self.allow_inf:
            out.append(float("inf"))
        if self.low is not None:
            out.append(self.low if self.low_open else self.low - 1.0)
        if self.high is not None:
            out.append(self.high if self.high_open else self.high + 1.0)
        if self.low is None and self.high is None and self.allow_inf:
            out = [float("nan"), "0.1"]
        return out


# Ranges used by several modules
POSITIVE = Range(low=0.0, low_open=True)
NONNEGATIVE = Range(low=0.0)
UNIT_OPEN_CLOSED = Range(low=0.0, high=1.0, low_open=True)  # (0, 1]: the rule's rho, a keep probability
UNIT_CLOSED_OPEN = Range(low=0.0, high=1.0, high_open=True)  # [0, 1): a momentum
UNIT_CLOSED = Range(low=0.0, high=1.0)  # [0, 1]: a decay beta2 = 1 - rho
REAL = Range()
BOOL = Range(kind="bool")


def check_real(
    name: str,
    value,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    allow_inf: bool = False,
) -> float:
    """Check that ``value`` is a real number in the given interval and return it as a float.

    ``low``/``high`` are the bounds (``None``: unbounded); ``*_open`` makes a bound strict.
    NaN is always rejected; infinity only with ``allow_inf``. (Shorthand for :class:`Range`.)
    """
    return Range(low=low, high=high, low_open=low_open, high_open=high_open, allow_inf=allow_inf).check(name, value)


def check_int(name: str, value, *, low: int) -> int:
    """Check that ``value`` is an integer ``>= low`` and return it."""
    return Range(kind="int", low=low).check(name, value)


def check_choice(name: str, value, choices) -> object:
    """Check that ``value`` is one of ``choices``."""
    return Range(kind="choice", choices=tuple(choices)).check(name, value)


def check_bool(name: str, value) -> bool:
    """Check that ``value`` is ``True`` or ``False``."""
    return BOOL.check(name, value)


def check_with_phrase(name: str, value, rng: Range, phrase: str):
    """``rng.check`` with the message ``Invalid <name>: <value> (<phrase>: <range>)``; ``phrase`` keeps an
    older wording (e.g. ``"lr must be positive"``) that callers may still match."""
    try:
        return rng.check(name, value)
    except ValueError:
        raise ValueError(f"Invalid {name}: {_fmt(value)} ({phrase}: {rng.describe()})") from None


def check_hyperparameters(values: Mapping[str, Any], ranges: Mapping[str, Range]) -> dict:
    """Check every entry of ``values`` that ``ranges`` declares; return the checked values.

    Entries without a declared range pass through unchanged (e.g. ``params``)."""
    out = dict(values)
    for name, rng in ranges.items():
        if name in values:
            rng.check(name, values[name])
    return out


def document_ranges(ranges: Mapping[str, Range], defaults: Mapping[str, Any] | None = None) -> str:
    """A reST table of the declared ranges (and defaults), for a docstring."""
    defaults = defaults or {}
    rows = [(f"``{n}``", r.describe(), repr(defaults[n]) if n in defaults else "") for n, r in ranges.items()]
    w = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(("argument", "range", "default"))]
    line = "  ".join("=" * x for x in w)
    head = "  ".join(h.ljust(x) for h, x in zip(("argument", "range", "default"), w))
    body = ["  ".join(c.ljust(x) for c, x in zip(r, w)).rstrip() for r in rows]
    return "\n".join([line, head.rstrip(), line, *body, line])


def require_ess(ess) -> None:
    """``ess`` (the effective data-set size) has no default: say so when it is missing."""
    if ess is None:
        raise ValueError("Invalid ess: None (must be a finite real number > 0: the number of training examples)")


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
    """Check the step size of the rule, ρ ∈ (0, 1], and return it as a float.

    The message names ``rho`` twice (``Invalid rho: 2.0 (rho must be ...)``) so that callers matching
    either the old text ``"rho must"`` or the common form ``"Invalid rho"`` see it."""
    try:
        return UNIT_OPEN_CLOSED.check("rho", rho)
    except ValueError:
        raise ValueError(f"Invalid rho: {_fmt(rho)} (rho must be {UNIT_OPEN_CLOSED.describe()})") from None


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
