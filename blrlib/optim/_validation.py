"""Argument checks shared by the optimizers of :mod:`blrlib.optim`.

Every check raises :class:`ValueError` with a message of the form
``"Invalid <name>: <value> (must be <range>)"`` so that a user sees at once which
argument is wrong and what it may be.
"""

from __future__ import annotations

import math
import numbers

__all__ = [
    "require_ess",
    "check_real",
    "check_int",
    "check_choice",
]


def _fmt(value) -> str:
    return repr(value) if isinstance(value, str) else str(value)


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
    """Check that ``value`` is a real number in the given interval and return it as float.

    ``low``/``high`` are the bounds (``None``: unbounded); ``*_open`` makes a bound strict.
    NaN is always rejected; infinity only with ``allow_inf``.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"Invalid {name}: {_fmt(value)} (must be a real number)")
    v = float(value)
    parts = []
    if low is not None:
        parts.append(f"> {low:g}" if low_open else f">= {low:g}")
    if high is not None:
        parts.append(f"< {high:g}" if high_open else f"<= {high:g}")
    rng = " and ".join(parts)
    if not allow_inf:
        rng_txt = f"a finite real number {rng}" if parts else "a finite real number"
    else:
        rng_txt = rng if parts else "a real number"
    bad = math.isnan(v) or (not allow_inf and math.isinf(v))
    if low is not None and not bad:
        bad = v <= low if low_open else v < low
    if high is not None and not bad:
        bad = v >= high if high_open else v > high
    if bad:
        raise ValueError(f"Invalid {name}: {_fmt(value)} (must be {rng_txt})")
    return v


def check_int(name: str, value, *, low: int) -> int:
    """Check that ``value`` is an integer ``>= low`` and return it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"Invalid {name}: {_fmt(value)} (must be an integer >= {low})")
    return int(value)


def check_choice(name: str, value, choices) -> object:
    """Check that ``value`` is one of ``choices``."""
    if value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise ValueError(f"Invalid {name}: {_fmt(value)} (must be one of {allowed})")
    return value


def require_ess(ess) -> None:
    """``ess`` (the effective data-set size) has no default: say so when it is missing.

    The range check itself is :func:`check_real` with ``low=0, low_open=True``, done with the
    other hyperparameters of each param group."""
    if ess is None:
        raise ValueError("Invalid ess: None (must be a finite real number > 0: the number of training examples)")
