"""Tests of blrlib.families.mixture: the mixture-of-Gaussians candidate and its natural-gradient step.

The references are built without any rule code: the Fisher information as autograd Hessians of
log-partitions, the gradient of the objective by autograd through Gauss-Hermite quadrature.
"""

from __future__ import annotations

import math

import pytest
import torch

import blrlib
from blrlib.families.mixture import (
    GaussianMixture,
    MixtureExpectations,
    gauss_hermite,
    mixture_blr_step,
    mixture_expectations,
)

DT = torch.float64


def random_mixture(K: int, d: int, seed: int) -> GaussianMixture:
    gen = torch.Generator().manual_seed(seed)
    weights = torch.softmax(torch.randn(K, generator=gen, dtype=DT), 0)
    means = 2.0 * torch.randn(K, d, generator=gen, dtype=DT)
    roots = torch.randn(K, d, d, generator=gen, dtype=DT)
    precisions = roots @ roots.transpose(-1, -2) + (1.0 + d) * torch.eye(d, dtype=DT)
    return GaussianMixture.from_weights_means_precisions(weights, means, precisions)


def double_well(theta):
    """A smooth non-conjugate loss in any dimension (a quartic well per coordinate, tilted, plus a softplus)."""
    return (2.0 * (theta**2 - 1.0) ** 2 + 0.3 * theta).sum() + 0.5 * torch.nn.functional.softplus(-3.0 * theta.sum())


def himmelblau(theta):
    x, y = theta[0], theta[1]
    return (x**2 + y - 11.0) ** 2 + (x + y**2 - 7.0) ** 2


# ------------------------------------------------------------------ an exact step by autograd (no rule code)
def _symmetric_from_vech(vech: torch.Tensor, d: int) -> torch.Tensor:
    rows, cols = torch.triu_indices(d, d)
    mat = torch.zeros(d, d, dtype=vech.dtype)
    mat = mat.index_put((rows, cols), vech)
    return mat + mat.T - torch.diag(torch.diagonal(mat))


def _log_partition(l1: torch.Tensor, l2: torch.Tensor) -> torch.Tensor:
    d = l1.numel()
    return -0.25 * l1 @ torch.linalg.solve(l2, l1) - 0.5 * torch.logdet(-2.0 * l2) + 0.5 * d * math.log(2 * math.pi)


def _unpack(x: torch.Tensor, K: int, d: int):
    """Flat coordinates (first, then per component: lambda1 (d), vech(lambda2)) -> (first, [l1], [l2])."""
    p = d + d * (d + 1) // 2
    first, rest = x[: K - 1], x[K - 1 :].reshape(K, p)
    return first, [r[:d] for r in rest], [_symmetric_from_vech(r[d:], d) for r in rest]


def _pack(first, l1s, l2s, d):
    rows, cols = torch.triu_indices(d, d)
    return torch.cat([first] + [torch.cat([a, b[rows, cols]]) for a, b in zip(l1s, l2s)])


def _objective(v, l1s, l2s, loss, nodes, w):
    """L = sum_k pi_k E_{q_k}[loss + log q] by Gauss-Hermite, differentiable in every parameter."""
    K = len(l1s)
    logw = torch.cat([v, v.new_zeros(1)])
    logw = logw - torch.logsumexp(logw, 0)
    precisions = torch.stack([-2.0 * l2 for l2 in l2s])
    means = torch.stack([torch.linalg.solve(S, l1) for S, l1 in zip(precisions, l1s)])
    chol = torch.linalg.cholesky(precisions)
    pts = means[:, None, :] + torch.linalg.solve_triangular(chol.transpose(-1, -2), nodes.T.expand(K, -1, -1), upper=True).transpose(-1, -2)
    diff = pts[:, :, None, :] - means  # (K, N, K, d)
    quad = torch.einsum("knji,jil,knjl->knj", diff, precisions, diff)
    d = means.shape[1]
    log_comp = logw - 0.5 * quad + 0.5 * torch.logdet(precisions) - 0.5 * d * math.log(2 * math.pi)
    log_q = torch.logsumexp(log_comp, -1)
    values = torch.stack([torch.stack([loss(p) for p in row]) for row in pts])
    return (logw.exp() * ((values + log_q) * w).sum(-1)).sum()


def _joint_charts(K: int, d: int):
    """The joint's log-partition A_joint(eta, lambda) and the change of chart (v, lambda) -> (eta, lambda)."""

    def log_partitions(a1, a2):
        return torch.stack([_log_partition(u, s) for u, s in zip(a1, a2)])

    def joint_log_partition(x):
        eta, a1, a2 = _unpack(x, K, d)
        return torch.logsumexp(torch.cat([eta, eta.new_zeros(1)]) + log_partitions(a1, a2), 0)

    def to_eta(x):  # eta_k = v_k - A(lambda_k) + A(lambda_K)
        v, a1, a2 = _unpack(x, K, d)
        a = log_partitions(a1, a2)
        return _pack(v - a[:-1] + a[-1], a1, a2, d)

    def to_v(x):
        eta, a1, a2 = _unpack(x, K, d)
        a = log_partitions(a1, a2)
        return eta + a[:-1] - a[-1], a1, a2

    return joint_log_partition, to_eta, to_v


def ratio_chart_fisher(q: GaussianMixture) -> torch.Tensor:
    """The joint's Fisher in (v, lambda), J^T (Hessian of A_joint) J, J the Jacobian of (v, lambda) -> (eta, lambda)."""
    K, d = q.num_components, q.dim
    comps = [q.component(k).natural_params for k in range(K)]
    x0 = _pack(q.log_weight_ratios, [c.precision_mean for c in comps], [c.neg_half_precision for c in comps], d)
    joint_log_partition, to_eta, _ = _joint_charts(K, d)
    J = torch.autograd.functional.jacobian(to_eta, x0)
    return J.T @ torch.autograd.functional.hessian(joint_log_partition, to_eta(x0)) @ J


def exact_step(q: GaussianMixture, loss, rho: float, num_points: int, coordinates: str = "weight_ratios"):
    """x <- x - rho F(x)^{-1} grad L(x), F the joint's Fisher (autograd Hessian of its log-partition)
    in the chosen chart."""
    K, d = q.num_components, q.dim
    nodes, w = gauss_hermite(num_points, d)
    comps = [q.component(k).natural_params for k in range(K)]
    l1s = [c.precision_mean for c in comps]
    l2s = [c.neg_half_precision for c in comps]
    joint_log_partition, to_eta, eta_to_v = _joint_charts(K, d)
    x_v = _pack(q.log_weight_ratios, l1s, l2s, d)
    if coordinates == "weight_ratios":
        x0 = x_v

        def to_v(x):
            return _unpack(x, K, d)

        F = ratio_chart_fisher(q)
    else:
        x0, to_v = to_eta(x_v), eta_to_v
        F = torch.autograd.functional.hessian(joint_log_partition, x0)
    grad_L = torch.autograd.functional.jacobian(lambda x: _objective(*to_v(x), loss, nodes, w), x0)
    x1 = x0 - rho * torch.linalg.solve(F, grad_L)
    v, a1, a2 = to_v(x1)
    return GaussianMixture((v, torch.stack(a1), torch.stack(a2)))


@pytest.mark.parametrize("K,d,seed", [(2, 1, 0), (3, 2, 1), (2, 3, 2)])
def test_ratio_chart_fisher_is_block_diagonal(K, d, seed):
    """blockdiag(F_cat, pi_k F_k) in (v, lambda), for vector and matrix lambda_k (SymPy checks scalar lambda_k)."""
    q = random_mixture(K, d, seed)
    p = d + d * (d + 1) // 2
    F_cat = torch.autograd.functional.hessian(lambda v: torch.log1p(v.exp().sum()), q.log_weight_ratios)
    blocks = [F_cat]
    for k in range(K):
        c = q.component(k).natural_params
        xk = torch.cat([c.precision_mean, c.neg_half_precision[tuple(torch.triu_indices(d, d))]])
        assert xk.numel() == p
        F_k = torch.autograd.functional.hessian(lambda y: _log_partition(y[:d], _symmetric_from_vech(y[d:], d)), xk)
        blocks.append(q.weights[k] * F_k)
    expected = torch.block_diag(*blocks)
    F = ratio_chart_fisher(q)
    torch.testing.assert_close(F, expected, rtol=1e-10, atol=1e-12)
    # and it can fail: the weights left out of the component blocks
    unweighted = torch.block_diag(F_cat, *[b / q.weights[k] for k, b in enumerate(blocks[1:])])
    assert not torch.allclose(F, unweighted, rtol=1e-6, atol=1e-8)


# ------------------------------------------------------------------ the density
@pytest.mark.parametrize("K,d,seed", [(1, 1, 0), (3, 1, 1), (2, 2, 2), (4, 3, 3)])
def test_log_prob_matches_torch_distributions(K, d, seed):
    q = random_mixture(K, d, seed)
    ref = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(probs=q.weights),
        torch.distributions.MultivariateNormal(q.means, precision_matrix=q.precisions),
    )
    theta = torch.randn(7, d, generator=torch.Generator().manual_seed(seed + 10), dtype=DT)
    torch.testing.assert_close(q.log_prob(theta), ref.log_prob(theta), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("K,d,seed", [(1, 2, 0), (3, 1, 1), (3, 2, 2), (2, 3, 3)])
def test_log_prob_derivatives_match_autograd(K, d, seed):
    q = random_mixture(K, d, seed)
    theta = torch.randn(5, d, generator=torch.Generator().manual_seed(seed), dtype=DT)
    value, g, h = q.log_prob_derivatives(theta)
    one = lambda t: q.log_prob(t)  # noqa: E731
    for i in range(theta.shape[0]):
        torch.testing.assert_close(g[i], torch.autograd.functional.jacobian(one, theta[i]), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(h[i], torch.autograd.functional.hessian(one, theta[i]), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(value, q.log_prob(theta))


def test_weights_and_log_weight_ratios():
    q = GaussianMixture.from_weights_means_precisions([0.2, 0.5, 0.3], [[0.0], [1.0], [2.0]], torch.ones(3, 1, 1))
    torch.testing.assert_close(q.weights, torch.tensor([0.2, 0.5, 0.3], dtype=DT))
    torch.testing.assert_close(q.log_weight_ratios, torch.log(torch.tensor([0.2 / 0.3, 0.5 / 0.3], dtype=DT)))
    torch.testing.assert_close(q.component(1).mean, torch.tensor([1.0], dtype=DT))


def test_from_components_and_responsibilities():
    comps = [blrlib.FullGaussian.from_mean_precision(torch.tensor([float(k), -1.0], dtype=DT), (k + 2.0) * torch.eye(2, dtype=DT)) for k in range(3)]
    weights = torch.tensor([0.2, 0.3, 0.5], dtype=DT)
    q = GaussianMixture.from_components(weights, comps)
    theta = torch.tensor([[0.4, -0.8], [2.2, 0.0]], dtype=DT)
    log_joint = torch.stack([torch.log(weights[k]) + comps[k].log_prob(theta) for k in range(3)], -1)
    torch.testing.assert_close(q.responsibilities(theta), torch.softmax(log_joint, -1))
    torch.testing.assert_close(q.log_prob(theta), torch.logsumexp(log_joint, -1))
    torch.testing.assert_close(q.responsibilities(theta).sum(-1), torch.ones(2, dtype=DT))
    with pytest.raises(ValueError, match="Invalid components"):
        GaussianMixture.from_components(weights, [comps[0], "not a Gaussian"])


def test_sample_moments():
    q = random_mixture(3, 2, 5)
    x = q.sample(200_000, generator=torch.Generator().manual_seed(0))
    mean = (q.weights[:, None] * q.means).sum(0)
    second = (q.weights[:, None, None] * (q.covariances + q.means[:, :, None] * q.means[:, None, :])).sum(0)
    torch.testing.assert_close(x.mean(0), mean, atol=0.02, rtol=0)
    torch.testing.assert_close(x.T @ x / x.shape[0], second, atol=0.06, rtol=0)


# ------------------------------------------------------------------ quadrature
@pytest.mark.parametrize("n,d", [(3, 1), (5, 2), (4, 3)])
def test_gauss_hermite_moments(n, d):
    x, w = gauss_hermite(n, d)
    assert x.shape == (n**d, d) and w.shape == (n**d,)
    torch.testing.assert_close(w.sum(), torch.tensor(1.0, dtype=DT))
    torch.testing.assert_close((w[:, None] * x**2).sum(0), torch.ones(d, dtype=DT))
    if 2 * n - 1 >= 4:
        torch.testing.assert_close((w * x[:, 0] ** 4).sum(), torch.tensor(3.0, dtype=DT))
    else:  # n = 3 is exact up to degree 5, so test degree 6 fails for n = 3: 15 vs the rule's value
        assert abs(float((w * x[:, 0] ** 6).sum()) - 15.0) > 1.0


# ------------------------------------------------------------------ the step against exact natural gradients
@pytest.mark.parametrize("coordinates", ["weight_ratios", "joint"])
@pytest.mark.parametrize("rho", [0.05, 0.3])
def test_step_equals_exact_natural_gradient_1d(coordinates, rho):
    q = GaussianMixture.from_weights_means_precisions(
        [0.5, 0.3, 0.2], [[-1.2], [0.1], [0.9]], torch.tensor([4.0, 2.0, 6.0], dtype=DT).reshape(3, 1, 1)
    )
    n = 150
    new = mixture_blr_step(q, mixture_expectations(double_well, q, num_points=n), rho, coordinates=coordinates)
    ref = exact_step(q, double_well, rho, n, coordinates)
    torch.testing.assert_close(new.weights, ref.weights, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(new.means, ref.means, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(new.precisions, ref.precisions, rtol=1e-9, atol=1e-11)


def test_step_equals_exact_natural_gradient_2d():
    q = GaussianMixture.from_weights_means_precisions(
        [0.6, 0.4], [[-0.8, 0.5], [0.7, -0.3]], torch.tensor([[[3.0, 0.8], [0.8, 2.0]], [[4.0, -1.0], [-1.0, 3.0]]], dtype=DT)
    )
    n = 40
    new = mixture_blr_step(q, mixture_expectations(double_well, q, num_points=n), 0.2)
    ref = exact_step(q, double_well, 0.2, n)
    # 40^2 nodes, not 150^2 (cost): residual about 1e-6, so a loose tolerance
    for a, b in ((new.weights, ref.weights), (new.means, ref.means), (new.precisions, ref.precisions)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def planted_sign_error(q, e, rho, **kw):
    return mixture_blr_step(q, MixtureExpectations(-e.value, e.gradient, e.hessian), rho, **kw)


def planted_missing_log_q(q, e, rho, **kw):
    e_loss = mixture_expectations(double_well, q, num_points=150, coupling=False)
    return mixture_blr_step(q, e_loss, rho, **kw)


def planted_factor_error(q, e, rho, **kw):
    return mixture_blr_step(q, MixtureExpectations(e.value, e.gradient, 2.0 * e.hessian), rho, **kw)


@pytest.mark.parametrize("planted", [planted_sign_error, planted_missing_log_q, planted_factor_error])
def test_planted_errors_fail_the_check(planted):
    q = GaussianMixture.from_weights_means_precisions(
        [0.5, 0.3, 0.2], [[-1.2], [0.1], [0.9]], torch.tensor([4.0, 2.0, 6.0], dtype=DT).reshape(3, 1, 1)
    )
    e = mixture_expectations(double_well, q, num_points=150)
    new = planted(q, e, 0.2)
    ref = exact_step(q, double_well, 0.2, 150)
    with pytest.raises(AssertionError):
        for a, b in ((new.weights, ref.weights), (new.means, ref.means), (new.precisions, ref.precisions)):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_joint_coordinates_same_components_weights_differ_by_rho_squared():
    q = GaussianMixture.from_weights_means_precisions(
        [0.3, 0.3, 0.4], [[-1.0, 0.5], [0.2, -0.4], [1.1, 0.9]], torch.tensor([[[3.0, 0.8], [0.8, 2.0]]] * 3, dtype=DT)
    )
    e = mixture_expectations(double_well, q, num_points=12)
    diffs = []
    for rho in (0.004, 0.002, 0.001):
        a = mixture_blr_step(q, e, rho)
        b = mixture_blr_step(q, e, rho, coordinates="joint")
        torch.testing.assert_close(a.means, b.means, rtol=1e-13, atol=1e-13)
        torch.testing.assert_close(a.precisions, b.precisions, rtol=1e-13, atol=1e-13)
        diffs.append(float((a.log_weight_ratios - b.log_weight_ratios).abs().max()))
    assert diffs[-1] > 0
    for big, small in zip(diffs, diffs[1:]):
        assert 3.6 < big / small < 4.4  # halving rho quarters the difference


# ------------------------------------------------------------------ special cases
def test_one_component_is_the_gaussian_rule():
    """K = 1: log q = log q_1, so the mixture step is blr_step with E[grad loss], E[Hessian loss]."""
    q = random_mixture(1, 2, 11)
    n = 10
    new = mixture_blr_step(q, mixture_expectations(double_well, q, num_points=n), 0.4)
    comp = q.component(0)
    x, w = gauss_hermite(n, 2)
    pts = comp.mean + torch.linalg.solve_triangular(torch.linalg.cholesky(comp.precision).T, x.T, upper=True).T
    g = sum(wi * torch.autograd.functional.jacobian(double_well, p) for wi, p in zip(w, pts))
    h = sum(wi * torch.autograd.functional.hessian(double_well, p) for wi, p in zip(w, pts))
    ref = blrlib.blr_step(comp, comp.gradient_wrt_expectation(g, h), 0.4)
    torch.testing.assert_close(new.means[0], ref.mean, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(new.precisions[0], ref.precision, rtol=1e-10, atol=1e-12)


def test_uncoupled_delta_is_damped_newton():
    starts = torch.tensor([[3.5, 2.5], [-3.0, 3.5], [-3.5, -3.0], [3.5, -2.0]], dtype=DT)
    rho, steps = 0.6, 15
    S0 = 50.0 * torch.eye(2, dtype=DT)
    q = GaussianMixture.from_weights_means_precisions(torch.full((4,), 0.25, dtype=DT), starts, S0.expand(4, 2, 2))
    for _ in range(steps):
        q = mixture_blr_step(q, mixture_expectations(himmelblau, q, "delta", num_points=3, coupling=False), rho)
    g_fn = lambda t: torch.autograd.functional.jacobian(himmelblau, t)  # noqa: E731
    h_fn = lambda t: torch.autograd.functional.hessian(himmelblau, t)  # noqa: E731
    for k in range(4):
        m, S = starts[k].clone(), S0.clone()
        for _ in range(steps):
            S = (1 - rho) * S + rho * h_fn(m)
            m = m - rho * torch.linalg.solve(S, g_fn(m))
        torch.testing.assert_close(q.means[k], m, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(q.precisions[k], S, rtol=1e-10, atol=1e-10)


def test_uncoupled_weight_step_is_natural_gradient_of_the_joint_entropy_objective():
    """coupling=False: v <- v - rho F_cat^{-1} grad_v L_u, L_u = sum_k pi_k (E_k[loss] + log pi_k - H(q_k))."""
    q = GaussianMixture.from_weights_means_precisions(
        [0.5, 0.3, 0.2], [[-1.2], [0.1], [0.9]], torch.tensor([4.0, 2.0, 6.0], dtype=DT).reshape(3, 1, 1)
    )
    n, rho = 30, 0.3
    x, w = gauss_hermite(n, 1)
    pts = q.means + x.T / q.precisions[:, 0].sqrt()  # (K, n)
    expected_loss = torch.stack([sum(wi * double_well(p.reshape(1)) for wi, p in zip(w, row)) for row in pts])
    entropies = 0.5 * (1 + math.log(2 * math.pi)) - 0.5 * torch.log(q.precisions[:, 0, 0])

    def objective(v):
        log_pi = torch.log_softmax(torch.cat([v, v.new_zeros(1)]), 0)
        return (log_pi.exp() * (expected_loss + log_pi - entropies)).sum()

    v = q.log_weight_ratios
    g = torch.autograd.functional.jacobian(objective, v)
    F = torch.autograd.functional.hessian(lambda u: torch.log1p(u.exp().sum()), v)
    new = mixture_blr_step(q, mixture_expectations(double_well, q, num_points=n, coupling=False), rho)
    torch.testing.assert_close(new.log_weight_ratios, v - rho * torch.linalg.solve(F, g), rtol=1e-12, atol=1e-12)


def test_improved_step_keeps_precisions_positive_where_plain_step_fails():
    # near Himmelblau's local maximum (-0.27, -0.92) the Hessian is negative definite
    q = GaussianMixture.from_weights_means_precisions([0.5, 0.5], [[-0.3, -0.9], [3.0, 2.0]], torch.eye(2, dtype=DT).expand(2, 2, 2))
    e = mixture_expectations(himmelblau, q, "delta", num_points=5)
    with pytest.raises(ValueError, match="positive definite"):
        mixture_blr_step(q, e, 0.5)
    new = mixture_blr_step(q, e, 0.5, improved=True)
    assert bool((torch.linalg.eigvalsh(new.precisions) > 0).all())


def test_delta_method_ignores_spread_of_the_loss():
    q = random_mixture(2, 2, 3)
    quad = mixture_expectations(double_well, q, "quadrature", num_points=8, coupling=False)
    delta = mixture_expectations(double_well, q, "delta", num_points=8, coupling=False)
    for k in range(2):
        torch.testing.assert_close(delta.gradient[k], torch.autograd.functional.jacobian(double_well, q.means[k]))
    assert not torch.allclose(quad.gradient, delta.gradient)


# ------------------------------------------------------------------ bad input, no mutation
def test_inputs_not_mutated():
    w, m, S = torch.tensor([0.4, 0.6], dtype=DT), torch.zeros(2, 1, dtype=DT), torch.ones(2, 1, 1, dtype=DT)
    copies = [t.clone() for t in (w, m, S)]
    q = GaussianMixture.from_weights_means_precisions(w, m, S)
    mixture_blr_step(q, mixture_expectations(double_well, q, num_points=4), 0.1)
    for a, b in zip((w, m, S), copies):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda q, e: mixture_blr_step(q, e, 1.5), "rho"),
        (lambda q, e: mixture_blr_step(q, e, 0.1, coordinates="polar"), "Invalid coordinates"),
        (lambda q, e: mixture_blr_step(q, e, 0.1, improved="yes"), "Invalid improved"),
        (lambda q, e: mixture_blr_step(q, e._replace(value=e.value[:1]), 0.1), "Invalid expectations.value shape"),
        (lambda q, e: mixture_expectations(double_well, q, "sampling"), "Invalid method"),
        (lambda q, e: mixture_expectations(double_well, q, num_points=0), "Invalid num_points"),
        (lambda q, e: mixture_expectations(double_well, q, coupling=1), "Invalid coupling"),
        (lambda q, e: mixture_expectations(double_well, "q"), "Invalid q"),
        (lambda q, e: q.component(2), "Invalid k"),
        (lambda q, e: q.sample(0), "Invalid num_samples"),
        (lambda q, e: gauss_hermite(3, 0), "Invalid dim"),
        (lambda q, e: GaussianMixture.from_weights_means_precisions([0.5, 0.6], torch.zeros(2, 1), torch.ones(2, 1, 1)), "Invalid weights"),
        (lambda q, e: GaussianMixture.from_weights_means_precisions([1.0], torch.zeros(2, 1), torch.ones(2, 1, 1)), "Invalid weights shape"),
        (lambda q, e: GaussianMixture.from_weights_means_precisions([0.5, 0.5], torch.zeros(2, 1), -torch.ones(2, 1, 1)), "positive definite"),
        (lambda q, e: GaussianMixture((torch.zeros(2), torch.zeros(2, 1), -torch.ones(2, 1, 1))), "log_weight_ratios shape"),
    ],
)
def test_bad_arguments_raise(call, match):
    q = GaussianMixture.from_weights_means_precisions([0.5, 0.5], [[0.0], [1.0]], torch.ones(2, 1, 1, dtype=DT))
    e = mixture_expectations(double_well, q, num_points=4)
    with pytest.raises(ValueError, match=match):
        call(q, e)
