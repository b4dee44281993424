"""Candidate families: exponential families with natural and expectation parameters."""

from .base import ExponentialFamily, flatten_params, unflatten_params
from .bernoulli import Bernoulli
from .gaussian import DiagonalGaussian, FixedCovarianceGaussian, FullGaussian

__all__ = [
    "ExponentialFamily",
    "FixedCovarianceGaussian",
    "DiagonalGaussian",
    "FullGaussian",
    "Bernoulli",
    "flatten_params",
    "unflatten_params",
]
