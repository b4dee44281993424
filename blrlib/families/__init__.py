"""Candidate families: exponential families with natural and expectation parameters.

One member per object (the whole tensor): :class:`FixedCovarianceGaussian`, :class:`Bernoulli`.
A batch of independent members (the leading dimensions; see :mod:`blrlib.families.base`):
:class:`DiagonalGaussian`, :class:`FullGaussian` (one member when the mean is a vector), :class:`Beta`,
:class:`Gamma`, :class:`Dirichlet`, :class:`Categorical`, :class:`NormalGamma`, :class:`Wishart`,
:class:`NormalWishart`. Products of families: :class:`MeanField`. Draws of a Gaussian's parameters come as :class:`GaussianParameters`.
"""

from .base import ExponentialFamily, flatten_params, unflatten_params
from .bernoulli import Bernoulli
from .beta import Beta
from .categorical import Categorical
from .dirichlet import Dirichlet
from .gamma import Gamma
from .gaussian import DiagonalGaussian, FixedCovarianceGaussian, FullGaussian
from .mean_field import MeanField
from .normal_gamma import GaussianParameters, NormalGamma
from .normal_wishart import NormalWishart
from .wishart import Wishart
from .mixture import GaussianMixture, MixtureExpectations, gauss_hermite, mixture_blr_step, mixture_expectations  # noqa: F401

__all__ = [
    "ExponentialFamily",
    "FixedCovarianceGaussian",
    "DiagonalGaussian",
    "FullGaussian",
    "Bernoulli",
    "Beta",
    "Gamma",
    "Dirichlet",
    "Categorical",
    "NormalGamma",
    "Wishart",
    "NormalWishart",
    "GaussianParameters",
    "MeanField",
    "flatten_params",
    "unflatten_params",
]
