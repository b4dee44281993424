"""The functional IVON equals the IVON class, step by step."""

import pytest
import torch

from blrlib.optim import IVON
from blrlib.optim import functional as F


def loss_fn(x):
    return (x**4 / 4 - x**2 / 2 + 0.3 * x).sum()  # negative curvature near 0


@pytest.mark.parametrize("hess_approx", ["price", "gradsq"])
@pytest.mark.parametrize("K", [1, 2])
@pytest.mark.parametrize("clip", [float("inf"), 0.05])
def test_functional_matches_class(hess_approx, K, clip):
    hyper = dict(lr=0.05, hess_init=0.5, beta1=0.8, beta2=0.9, weight_decay=0.01, clip_radius=clip)
    ess = 20.0
    x0 = torch.linspace(-1, 1, 7, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    noises = [[torch.randn(7, generator=gen, dtype=torch.float64) for _ in range(K)] for _ in range(15)]

    x = torch.nn.Parameter(x0.clone())
    flat = iter([e for step in noises for e in step])
    opt = IVON([x], ess=ess, mc_samples=K, hess_approx=hess_approx,
               noise_fn=lambda bufs, group: bufs[0].copy_(next(flat)), **hyper)
    m, st = x0.clone(), F.ivon_init(x0, hyper["hess_init"])
    for step_noise in noises:
        for _ in range(K):
            with opt.sampled_params(train=True):
                opt.zero_grad()
                loss_fn(x).backward()
        opt.step()
        grads = []
        for e in step_noise:
            theta = F.ivon_sample(m, st, e, ess, hyper["weight_decay"]).requires_grad_()
            loss_fn(theta).backward()
            grads.append(theta.grad)
        m, st = F.ivon_step(m, st, grads, step_noise, ess=ess, hess_approx=hess_approx, **hyper)
    torch.testing.assert_close(x.detach(), m, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(opt.state[x]["hess"], st.hess, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(opt.state[x]["momentum"], st.momentum, rtol=1e-12, atol=1e-13)
    assert st.step == 15 and opt.state[x]["step"].item() == 15


def test_functional_is_pure():
    m = torch.ones(3)
    st = F.ivon_init(m, 1.0)
    g = torch.full((3,), 0.5)
    m2, st2 = F.ivon_update(m, st, g, torch.full((3,), 2.0), lr=0.1)
    assert torch.equal(m, torch.ones(3)) and torch.equal(st.hess, torch.ones(3)) and st.step == 0
    assert st2.step == 1 and not torch.equal(m2, m)


def test_bad_method():
    with pytest.raises(ValueError, match="Invalid hess_approx"):
        F.ivon_hess_estimate([torch.ones(1)], [torch.ones(1)], torch.ones(1), 1.0, "exact")
