"""Optimizers derived from the Bayesian learning rule.

* :class:`IVON` -- improved variational online Newton (drop-in for ``ivon.IVON``).
* :mod:`blrlib.optim.functional` -- the updates as functions of state and gradients.
* :mod:`blrlib.optim.distributed` -- helpers for data-parallel IVON.
* ``OGN``, ``VOGN`` (:mod:`blrlib.optim.vogn`), ``STE``, ``BayesBiNN``
  (:mod:`blrlib.optim.bayesbinn`), ``RuleSGD``, ``RuleRMSprop``
  (:mod:`blrlib.optim.teaching`) -- resolved on first access.
"""

from importlib import import_module

from .ivon import IVON, flat_group_noise
from . import functional, distributed

_LAZY = {
    "OGN": "vogn",
    "VOGN": "vogn",
    "STE": "bayesbinn",
    "BayesBiNN": "bayesbinn",
    "RuleSGD": "teaching",
    "RuleRMSprop": "teaching",
}

__all__ = ["IVON", "flat_group_noise", "functional", "distributed", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
