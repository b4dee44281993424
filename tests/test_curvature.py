"""Tests of blrlib.curvature: per-example gradients and the Gauss-Newton diagonal."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call, jacrev

from blrlib import curvature

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def mlp(out=3, seed=0, device="cpu"):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, out)).to(dtype=torch.float64, device=device)


def classification(n=20, seed=1, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=g, dtype=torch.float64).to(device), torch.randint(0, 3, (n,), generator=g).to(device)


def regression(n=20, seed=2):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=g, dtype=torch.float64), torch.randn(n, 1, generator=g, dtype=torch.float64)


def loop_gradients(model, loss_fn, X, y):
    """The plain reference: one backward pass per example."""
    params = [p for p in model.parameters() if p.requires_grad]
    rows = []
    for i in range(X.shape[0]):
        loss = loss_fn(model(X[i : i + 1]), y[i : i + 1])
        rows.append(torch.autograd.grad(loss, params))
    return [torch.stack([r[k] for r in rows]) for k in range(len(params))]


def mse(out, target):
    return 0.5 * ((out - target) ** 2).sum()


@pytest.mark.parametrize("device", DEVICES)
def test_per_example_gradients_match_a_python_loop(device):
    model = mlp(device=device)
    X, y = classification(device=device)
    pe = curvature.per_example_gradients(model, F.cross_entropy, X, y)
    ref = loop_gradients(model, F.cross_entropy, X, y)
    assert list(pe.grads) == [n for n, _ in model.named_parameters()]
    for got, want in zip(pe.grads.values(), ref):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(pe.losses, F.cross_entropy(model(X), y, reduction="none"), rtol=1e-12, atol=0)


def test_batched_autograd_matches_a_python_loop():
    model = mlp(out=1)
    X, y = regression()
    losses = 0.5 * ((model(X) - y) ** 2).sum(1)
    got = curvature.per_example_grads_from_losses(losses, list(model.parameters()))
    for g, want in zip(got, loop_gradients(model, mse, X, y)):
        torch.testing.assert_close(g, want, rtol=1e-12, atol=1e-14)


def test_gauss_newton_diagonal_is_the_diagonal_of_the_full_matrix():
    """The full matrix (1/M) J^T J from the Jacobian of the per-example losses, and, for the squared
    loss, the generalised Gauss-Newton form (1/M) J_f^T diag(r^2) J_f from the output Jacobian."""
    model = mlp(out=1)
    X, y = regression(n=15)
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def unflatten(v):
        out, k = {}, 0
        for n, s in zip(names, shapes):
            size = int(torch.tensor(s).prod())
            out[n] = v[k : k + size].reshape(s)
            k += size
        return out

    def outputs(v):
        return functional_call(model, unflatten(v), (X,)).squeeze(1)

    def losses(v):
        return 0.5 * (outputs(v) - y.squeeze(1)) ** 2

    J = jacrev(losses)(flat)  # (M, P)
    full = J.T @ J / X.shape[0]
    Jf = jacrev(outputs)(flat)
    r = outputs(flat) - y.squeeze(1)
    ggn = Jf.T @ torch.diag(r**2) @ Jf / X.shape[0]
    torch.testing.assert_close(full, ggn, rtol=1e-10, atol=1e-13)

    stats = curvature.gauss_newton_diagonal(model, mse, X, y)
    diag = torch.cat([h.reshape(-1) for h in stats.gauss_newton.values()])
    torch.testing.assert_close(diag, torch.diagonal(full), rtol=1e-10, atol=1e-14)
    grad = torch.cat([g.reshape(-1) for g in stats.grad.values()])
    torch.testing.assert_close(grad, J.mean(0), rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(stats.loss, losses(flat).mean(), rtol=1e-12, atol=0)
    # and the Gauss-Newton diagonal is not the square of the mean gradient
    assert not torch.allclose(diag, grad**2)


def test_chunk_size_params_and_flatten():
    model = mlp()
    X, y = classification()
    a = curvature.per_example_gradients(model, F.cross_entropy, X, y)
    b = curvature.per_example_gradients(model, F.cross_entropy, X, y, chunk_size=7)
    torch.testing.assert_close(curvature.flatten_per_example(a.grads), curvature.flatten_per_example(b.grads))
    assert curvature.flatten_per_example(a.grads).shape == (20, sum(p.numel() for p in model.parameters()))
    shifted = {n: p.detach() + 0.1 for n, p in model.named_parameters()}
    c = curvature.per_example_gradients(model, F.cross_entropy, X, y, params=shifted)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1)
    d = curvature.per_example_gradients(model, F.cross_entropy, X, y)
    for u, v in zip(c.grads.values(), d.grads.values()):
        torch.testing.assert_close(u, v)


def test_frozen_parameters_are_left_out():
    model = mlp()
    model[0].weight.requires_grad_(False)
    X, y = classification()
    pe = curvature.per_example_gradients(model, F.cross_entropy, X, y)
    assert "0.weight" not in pe.grads and len(pe.grads) == 3


def test_bad_input():
    model = mlp()
    X, y = classification()
    with pytest.raises(ValueError, match="inputs has 20 examples but targets has 19"):
        curvature.per_example_gradients(model, F.cross_entropy, X, y[:-1])
    with pytest.raises(ValueError, match="empty"):
        curvature.per_example_gradients(model, F.cross_entropy, X[:0], y[:0])
    with pytest.raises(ValueError, match="loss_fn must be callable"):
        curvature.per_example_gradients(model, None, X, y)
    with pytest.raises(ValueError, match="not a parameter"):
        curvature.per_example_gradients(model, F.cross_entropy, X, y, params={"nope": X})
    with pytest.raises(ValueError, match="1-D tensor"):
        curvature.per_example_grads_from_losses(F.cross_entropy(model(X), y), list(model.parameters()))
    with pytest.raises(ValueError, match="does not require grad"):
        curvature.per_example_grads_from_losses(torch.zeros(3), list(model.parameters()))
    with pytest.raises(ValueError, match="rows"):
        curvature.flatten_per_example([torch.zeros(3, 2), torch.zeros(4, 2)])
