"""Tests for blrlib.dropout: the dropout update of the rule with a spike-and-slab candidate."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch.func import grad

from blrlib import FixedCovarianceGaussian, blr_step, expectation_gradient
from blrlib.dropout import (
    apply_mask,
    check_keep_prob,
    draw_masks,
    dropout_rule_step,
    dropout_sgd_hyperparameters,
)
from blrlib.optim.teaching import rule_sgd, rule_sgd_init

DT = torch.float64


def _problem(seed=0, n=12, d=5):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=DT)
    y = torch.randn(n, generator=g, dtype=DT)
    m = torch.randn(d, generator=g, dtype=DT)
    return X, y, m


def _loss_at(X, y):
    """Mean loss of a tiny nonlinear model at weights theta (one per example: theta of shape (n, d))."""

    def loss(theta):
        pred = torch.tanh((X * theta).sum(-1))
        return 0.5 * ((pred - y) ** 2).mean()

    return loss


# ---------------------------------------------------------------- the step against hand-written references
@pytest.mark.parametrize("keep_prob", [0.3, 0.8, 1.0])
def test_step_equals_hand_written_dropout_sgd(keep_prob):
    X, y, m = _problem()
    masks = draw_masks((len(X), X.shape[1]), keep_prob, generator=torch.Generator().manual_seed(1))
    loss = _loss_at(X, y)
    g = grad(lambda mean: loss(masks * mean))(m)  # gradient wrt m at the masked weights z ⊙ m
    rho, variance, N, delta = 0.7, 0.01, 50.0, 3.0
    new = dropout_rule_step(m, g, rho=rho, variance=variance, keep_prob=keep_prob, ess=N, prior_precision=delta)
    # plain dropout SGD: lr = ρσ²N/p on the mean loss, weight decay pδ/N, written out by hand
    lr, wd = rho * variance * N / keep_prob, keep_prob * delta / N
    expected = m.clone()
    for j in range(len(m)):
        expected[j] = m[j] - lr * (g[j] + wd * m[j])
    torch.testing.assert_close(new, expected, rtol=1e-13, atol=1e-14)


def test_step_is_pure():
    X, y, m = _problem()
    g = torch.randn_like(m)
    m_copy, g_copy = m.clone(), g.clone()
    dropout_rule_step(m, g, rho=0.5, variance=0.1, keep_prob=0.5, ess=10, prior_precision=1)
    assert torch.equal(m, m_copy) and torch.equal(g, g_copy)


def test_keep_prob_one_is_rule_sgd_and_blr_step():
    X, y, m = _problem(seed=3)
    loss = _loss_at(X, y)
    N, delta, rho, variance = 40.0, 2.0, 0.6, 0.02
    g = grad(loss)(m.expand(len(X), -1).contiguous()).sum(0)  # gradient wrt the shared weights
    ours = dropout_rule_step(m, g, rho=rho, variance=variance, keep_prob=1.0, ess=N, prior_precision=delta)
    teaching = rule_sgd(rule_sgd_init(m), g, rho=rho, variance=variance, ess=N, prior_precision=delta).mean

    def objective(theta):
        return N * loss(theta.expand(len(X), -1)) + 0.5 * delta * (theta * theta).sum()

    q = FixedCovarianceGaussian.from_mean(m, variance=variance)
    generic = blr_step(q, expectation_gradient(objective, q, method="delta"), rho).mean
    torch.testing.assert_close(ours, teaching, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(ours, generic, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("keep_prob", [0.25, 0.6, 0.9])
def test_given_masks_it_is_blr_step_with_variance_over_p(keep_prob):
    """With the masks fixed, the step is the generic rule for N(m, σ²/p I) on N ℓ(z ⊙ θ) + (pδ/2)‖θ‖²."""
    X, y, m = _problem(seed=5)
    masks = draw_masks((len(X), X.shape[1]), keep_prob, generator=torch.Generator().manual_seed(7))
    loss = _loss_at(X, y)
    N, delta, rho, variance = 30.0, 1.5, 0.4, 0.05
    g = grad(lambda mean: loss(masks * mean))(m)
    ours = dropout_rule_step(m, g, rho=rho, variance=variance, keep_prob=keep_prob, ess=N, prior_precision=delta)

    def masked_objective(theta):
        return N * loss(masks * theta) + 0.5 * keep_prob * delta * (theta * theta).sum()

    q = FixedCovarianceGaussian.from_mean(m, variance=variance / keep_prob)
    generic = blr_step(q, expectation_gradient(masked_objective, q, method="delta"), rho).mean
    torch.testing.assert_close(ours, generic, rtol=1e-12, atol=1e-13)


def test_average_over_all_masks_is_the_slab_expectation():
    """The importance-weighted direction (1/p) z ⊙ ∇ℓ(z ⊙ m), averaged over all 2^d masks, is the
    delta-method expectation E[∇_j ℓ(z ⊙ m) | z_j = 1] of the rule, group by group."""
    d, p = 4, 0.7
    g = torch.Generator().manual_seed(11)
    A = torch.randn(d, d, generator=g, dtype=DT)
    m = torch.randn(d, generator=g, dtype=DT)

    def ell(theta):
        return torch.log1p(torch.exp(A @ theta)).sum() + (theta**3).sum() / 3

    masks = [torch.tensor(z, dtype=DT) for z in itertools.product((0.0, 1.0), repeat=d)]
    probs = [float(p ** z.sum() * (1 - p) ** (d - z.sum())) for z in masks]
    estimate = sum(w * (z / p) * grad(ell)(z * m) for w, z in zip(probs, masks))
    exact = torch.zeros(d, dtype=DT)
    for j in range(d):
        kept = [(w / p, z) for w, z in zip(probs, masks) if z[j] == 1]  # conditional on z_j = 1
        exact[j] = sum(w * grad(ell)(z * m)[j] for w, z in kept)
    torch.testing.assert_close(estimate, exact, rtol=1e-12, atol=1e-13)
    assert math.isclose(sum(probs), 1.0)


def test_sgd_mapping_reproduces_torch_dropout_network():
    """Inverted dropout (torch.nn.Dropout) with SGD(lr, weight_decay) from the mapping: w = p m after each step."""
    torch.manual_seed(0)
    p, N, rho, variance, delta = 0.6, 64.0, 0.5, 1e-3, 4.0
    X = torch.randn(8, 3, dtype=DT)
    y = torch.randn(8, 2, dtype=DT)
    layer = torch.nn.Linear(3, 2, bias=False).to(DT)
    m = layer.weight.detach().clone() / p  # slab means
    hp = dropout_sgd_hyperparameters(rho=rho, variance=variance, keep_prob=p, ess=N, prior_precision=delta)
    opt = torch.optim.SGD(layer.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
    gen = torch.Generator().manual_seed(3)
    for _ in range(5):
        masks = draw_masks(X.shape, p, generator=gen)
        opt.zero_grad()
        torch.nn.functional.mse_loss(layer(apply_mask(X, masks, p)), y).backward()
        opt.step()
        g = grad(lambda mean: torch.nn.functional.mse_loss(apply_mask(X, masks) @ mean.T, y))(m)
        m = dropout_rule_step(m, g, rho=rho, variance=variance, keep_prob=p, ess=N, prior_precision=delta)
        torch.testing.assert_close(layer.weight.detach(), p * m, rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------- masks
def test_draw_masks_reproducible_and_binary():
    a = draw_masks((200, 30), 0.8, generator=torch.Generator().manual_seed(4))
    b = draw_masks((200, 30), 0.8, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert set(a.unique().tolist()) <= {0.0, 1.0}
    assert abs(a.mean().item() - 0.8) < 0.03
    assert a.dtype == DT and a.shape == (200, 30)
    assert torch.equal(draw_masks(5, 1.0), torch.ones(5, dtype=DT))


def test_apply_mask_plain_and_inverted():
    x = torch.tensor([[1.0, 2.0, 3.0]], dtype=DT)
    z = torch.tensor([[1.0, 0.0, 1.0]], dtype=DT)
    torch.testing.assert_close(apply_mask(x, z), torch.tensor([[1.0, 0.0, 3.0]], dtype=DT))
    torch.testing.assert_close(apply_mask(x, z, 0.5), torch.tensor([[2.0, 0.0, 6.0]], dtype=DT))


def test_apply_mask_matches_torch_dropout_given_its_mask():
    torch.manual_seed(2)
    x = torch.rand(50, 7, dtype=DT) + 0.1  # no zeros, so the mask can be read off the output
    drop = torch.nn.Dropout(p=0.3).train()
    out = drop(x)
    mask = (out != 0).to(DT)
    torch.testing.assert_close(apply_mask(x, mask, 0.7), out, rtol=1e-15, atol=0)


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("bad", [0, 0.0, -0.1, 1.5, float("nan"), float("inf"), True, "0.5", None])
def test_bad_keep_prob(bad):
    with pytest.raises(ValueError, match="keep_prob"):
        check_keep_prob(bad)
    with pytest.raises(ValueError, match="keep_prob"):
        draw_masks(3, bad)
    with pytest.raises(ValueError, match="keep_prob"):
        dropout_rule_step(torch.zeros(2, dtype=DT), torch.zeros(2, dtype=DT), rho=0.5, variance=1.0, keep_prob=bad)


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("rho", dict(rho=0.0)),
        ("rho", dict(rho=1.5)),
        ("variance", dict(variance=0.0)),
        ("variance", dict(variance=-1.0)),
        ("ess", dict(ess=0)),
        ("prior_precision", dict(prior_precision=-1.0)),
        ("prior_precision", dict(prior_precision=float("nan"))),
    ],
)
def test_bad_hyperparameters(name, kwargs):
    args = dict(rho=0.5, variance=0.1, keep_prob=0.5, ess=10.0, prior_precision=1.0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        dropout_rule_step(torch.zeros(3, dtype=DT), torch.zeros(3, dtype=DT), **args)
    with pytest.raises(ValueError, match=name):
        dropout_sgd_hyperparameters(**args)


def test_bad_gradient_and_mask():
    m = torch.zeros(3, dtype=DT)
    kw = dict(rho=0.5, variance=0.1, keep_prob=0.5)
    with pytest.raises(ValueError, match="masked_grad.*shape"):
        dropout_rule_step(m, torch.zeros(4, dtype=DT), **kw)
    with pytest.raises(ValueError, match="masked_grad.*NaN"):
        dropout_rule_step(m, torch.tensor([0.0, float("nan"), 1.0], dtype=DT), **kw)
    with pytest.raises(ValueError, match="mean"):
        dropout_rule_step([0.0, 1.0], torch.zeros(2, dtype=DT), **kw)
    with pytest.raises(ValueError, match="mask"):
        apply_mask(torch.ones(3, dtype=DT), torch.tensor([0.0, 0.5, 1.0], dtype=DT))
    with pytest.raises(ValueError, match="mask"):
        apply_mask(torch.ones(2, 3, dtype=DT), torch.ones(4, dtype=DT))
    with pytest.raises(ValueError, match="shape"):
        draw_masks((2, -1), 0.5)
