"""blrlib: the Bayesian learning rule as a small library.

Candidate families (:mod:`blrlib.families`), the generic step (:mod:`blrlib.rule`), estimators of the
expectations it needs (:mod:`blrlib.estimators`), classical reference algorithms
(:mod:`blrlib.classical`), symbolic derivations (:mod:`blrlib.symbolic`), one device helper
(:mod:`blrlib.device`), optimizers for PyTorch (:mod:`blrlib.optim`) and network plumbing
(:mod:`blrlib.nn`: a flat parameter vector for ``torch.func.functional_call`` and a training loop
that records iterates).
"""

from . import classical, estimators, families, rule
from .device import large_problems, pick_device, seed_everything
from .estimators import delta_method, expectation_gradient, gauss_newton, monte_carlo
from .families import Bernoulli, DiagonalGaussian, ExponentialFamily, FixedCovarianceGaussian, FullGaussian
from .families import Beta, Categorical, Dirichlet, Gamma, MeanField, NormalGamma, NormalWishart, Wishart
from .rule import blr_step, improved_blr_step, mean_field_sweep, run_blr

__version__ = "0.1.0"

# Heavier submodules (SymPy, the optimizers) load on first use: ``blrlib.symbolic``, ``blrlib.optim``.
_LAZY_SUBMODULES = (
    "symbolic", "optim", "metrics", "curvature", "dropout", "nn", "plotting", "laplace", "inference",
)


def __getattr__(name):
    if name in _LAZY_SUBMODULES:
        import importlib

        module = importlib.import_module(f".{name}", __name__)
        globals()[name] = module
        return module
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Bernoulli",
    "DiagonalGaussian",
    "ExponentialFamily",
    "FixedCovarianceGaussian",
    "FullGaussian",
    "Beta",
    "Gamma",
    "Dirichlet",
    "Categorical",
    "NormalGamma",
    "Wishart",
    "NormalWishart",
    "MeanField",
    "blr_step",
    "mean_field_sweep",
    "improved_blr_step",
    "run_blr",
    "delta_method",
    "monte_carlo",
    "gauss_newton",
    "expectation_gradient",
    "pick_device",
    "seed_everything",
    "large_problems",
    "classical",
    "estimators",
    "families",
    "rule",
    *_LAZY_SUBMODULES,
]
