"""Optimizers derived from the Bayesian learning rule.

* :class:`IVON` -- improved variational online Newton (drop-in for ``ivon.IVON``).
* :mod:`blrlib.optim.functional` -- the updates as functions of state and gradients.
* :mod:`blrlib.optim.distributed` -- helpers for data-parallel IVON.
"""

from .ivon import IVON, flat_group_noise
from . import functional, distributed

__all__ = ["IVON", "flat_group_noise", "functional", "distributed"]
