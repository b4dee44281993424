"""Optimizers derived from the Bayesian learning rule.

* :mod:`blrlib.optim.kernels` -- the rule's step for each family, written once (diagonal Gaussian,
  fixed-covariance Gaussian, Bernoulli), which every optimizer below and ``blr_step`` call.
* :class:`IVON` -- improved variational online Newton (drop-in for ``ivon.IVON``).
* :mod:`blrlib.optim.functional` -- the updates as functions of state and gradients.
* :mod:`blrlib.optim.distributed` -- helpers for data-parallel IVON.
* ``OGN``, ``VOGN`` (:mod:`blrlib.optim.vogn`), ``STE``, ``BayesBiNN``
  (:mod:`blrlib.optim.bayesbinn`), ``RuleSGD``, ``RuleRMSprop``
  (:mod:`blrlib.optim.teaching`) -- resolved on first access.
* ``RuleOptimizer`` (:mod:`blrlib.optim._base`) -- what IVON, OGN/VOGN and STE/BayesBiNN share:
  validated hyperparameters, checkpoints and copies, and the sampling protocol (``sampled_params``,
  the noise hook, per-device generators, Monte Carlo folding, the GradScaler protocol, the
  non-finite policy); each optimizer supplies only its estimator and its statistics.
"""

from importlib import import_module

from . import distributed, functional, kernels
from ._base import RuleOptimizer
from .ivon import IVON, FlatGroupNoise, flat_group_noise

_LAZY = {
    "OGN": "vogn",
    "VOGN": "vogn",
    "STE": "bayesbinn",
    "BayesBiNN": "bayesbinn",
    "RuleSGD": "teaching",
    "RuleRMSprop": "teaching",
}

__all__ = [
    "IVON",
    "FlatGroupNoise",
    "flat_group_noise",
    "RuleOptimizer",
    "functional",
    "kernels",
    "distributed",
    *_LAZY,
]


def __getattr__(name):
    if name in _LAZY:
        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
