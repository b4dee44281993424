"""Shared fixtures: random, well-conditioned parameters for every family, in float64."""

import pytest
import torch

import blrlib


def random_spd(d: int, generator: torch.Generator) -> torch.Tensor:
    a = torch.randn(d, d, generator=generator, dtype=torch.float64)
    return a @ a.T + d * torch.eye(d, dtype=torch.float64)


def random_family(name: str, generator: torch.Generator, d: int = 3):
    mean = torch.randn(d, generator=generator, dtype=torch.float64)
    if name == "fixed":
        return blrlib.FixedCovarianceGaussian.from_mean(mean, variance=0.5 + torch.rand(1, generator=generator).item())
    if name == "diagonal":
        return blrlib.DiagonalGaussian.from_mean_precision(mean, 0.5 + torch.rand(d, generator=generator, dtype=torch.float64))
    if name == "full":
        return blrlib.FullGaussian.from_mean_precision(mean, random_spd(d, generator))
    if name == "bernoulli":
        return blrlib.Bernoulli.from_probs(0.1 + 0.8 * torch.rand(d, generator=generator, dtype=torch.float64))
    if name == "spin":
        return blrlib.Bernoulli.from_probs(0.1 + 0.8 * torch.rand(d, generator=generator, dtype=torch.float64), support=(-1.0, 1.0))
    raise KeyError(name)


FAMILIES = ["fixed", "diagonal", "full", "bernoulli", "spin"]


@pytest.fixture
def generator():
    return torch.Generator().manual_seed(1234)
