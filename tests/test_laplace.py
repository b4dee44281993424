"""blrlib.laplace against references without rule code: scipy.optimize, torch.func.hessian, closed forms."""

import math
import warnings

import numpy as np
import pytest
import scipy.optimize
import torch

from blrlib import FullGaussian
from blrlib.laplace import Laplace, gaussian_fixed_point

DT = torch.float64


def logistic_loss(seed, n=60, d=3, delta=1.0):
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=gen, dtype=DT)
    y = torch.where(torch.rand(n, generator=gen, dtype=DT) < torch.sigmoid(X @ torch.ones(d, dtype=DT)), 1.0, -1.0)
    return lambda w: torch.nn.functional.softplus(-y * (X @ w)).sum() + 0.5 * delta * (w**2).sum()


@pytest.mark.parametrize("seed,rho", [(0, 1.0), (1, 0.5), (2, 0.8)])
def test_delta_fixed_point_is_the_laplace_approximation(seed, rho):
    loss = logistic_loss(seed)
    q0 = FullGaussian.from_mean_precision(torch.zeros(3, dtype=DT), 3.0 * torch.eye(3, dtype=DT))
    q, steps, change = gaussian_fixed_point(loss, q0, rho=rho, max_steps=200, tol=1e-13)
    assert change < 1e-13 and steps < 200
    fun = lambda w: float(loss(torch.as_tensor(w, dtype=DT)))  # noqa: E731
    jac = lambda w: torch.func.grad(loss)(torch.as_tensor(w, dtype=DT)).numpy()  # noqa: E731
    ref = scipy.optimize.minimize(fun, np.zeros(3), jac=jac, method="BFGS", options={"gtol": 1e-11})
    np.testing.assert_allclose(q.mean.numpy(), ref.x, rtol=0, atol=1e-9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.func.hessian's forward mode
        reference_hessian = torch.func.hessian(loss)(q.mean)
    torch.testing.assert_close(q.precision, reference_hessian, rtol=1e-10, atol=1e-10)


def test_gauss_hermite_fixed_point_is_the_variational_optimum():
    # Poisson counts with a log link and a N(0, 1/delta) prior on theta: E_q[e^theta] = exp(m + v/2), so the
    # variational optimum solves  n exp(m + v/2) - sum(y) + delta m = 0  and  1/v = n exp(m + v/2) + delta.
    y = torch.tensor([3.0, 0.0, 2.0, 5.0, 1.0], dtype=DT)
    n, delta = len(y), 0.5

    def loss(theta):
        return (torch.exp(theta[0]) * n - y.sum() * theta[0]) + 0.5 * delta * theta[0] ** 2

    def equations(p):
        m, log_v = p
        v = math.exp(log_v)
        e = n * math.exp(m + v / 2)
        return [e - float(y.sum()) + delta * m, 1 / v - e - delta]

    m_ref, log_v_ref = scipy.optimize.fsolve(equations, [0.5, -2.0], xtol=1e-14)
    q0 = FullGaussian.from_mean_precision(torch.zeros(1, dtype=DT), torch.eye(1, dtype=DT))
    q, _, change = gaussian_fixed_point(loss, q0, method="gauss_hermite", num_points=30, rho=0.7,
                                        max_steps=300, tol=1e-14)
    assert abs(float(q.mean[0]) - m_ref) < 1e-10
    assert abs(float(q.covariance[0, 0]) - math.exp(log_v_ref)) < 1e-10
    laplace, _, _ = gaussian_fixed_point(loss, q0)
    assert abs(float(laplace.mean[0]) - m_ref) > 1e-3  # Laplace's mean is not the variational mean here


def small_net(seed=0, hidden=8):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(1, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 1)).to(DT)


def regression_data(n=30, seed=0):
    gen = torch.Generator().manual_seed(seed)
    X = torch.linspace(-2, 2, n, dtype=DT).unsqueeze(1)
    return X, torch.sin(2 * X) + 0.1 * torch.randn(n, 1, generator=gen, dtype=DT)


@pytest.mark.parametrize("sigma,delta", [(0.1, 1.0), (0.3, 4.0)])
def test_last_layer_is_the_closed_form_bayesian_linear_regression(sigma, delta):
    net = small_net()
    X, y = regression_data()
    loss_fn = lambda f, t: ((f - t) ** 2).sum() / (2 * sigma**2)  # noqa: E731
    la = Laplace(net, loss_fn, prior_precision=delta, subset="last_layer").fit(X, y)
    phi = torch.cat([net[:-1](X).detach(), torch.ones(len(X), 1, dtype=DT)], 1)  # weight then bias
    S = phi.T @ phi / sigma**2 + delta * torch.eye(phi.shape[1], dtype=DT)
    torch.testing.assert_close(la.posterior.precision, S, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(la.mean, torch.linalg.solve(S, phi.T @ y[:, 0] / sigma**2), rtol=1e-10, atol=1e-10)
    X_test = torch.linspace(-4, 4, 7, dtype=DT).unsqueeze(1)
    phi_test = torch.cat([net[:-1](X_test).detach(), torch.ones(7, 1, dtype=DT)], 1)
    mean, var = la.predictive(X_test)
    torch.testing.assert_close(var[:, 0], (phi_test @ torch.linalg.solve(S, phi_test.T)).diagonal(),
                               rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(mean[:, 0], phi_test @ la.mean, rtol=1e-10, atol=1e-10)
    _, var_mc = la.predictive(X_test, method="samples", num_samples=4000, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(var_mc, var, rtol=0.15, atol=1e-6)


def test_diagonal_gauss_newton_matches_the_jacobian_by_hand():
    net = small_net(1, hidden=4)
    X, y = regression_data(12)
    sigma, delta = 0.2, 2.0
    la = Laplace(net, lambda f, t: ((f - t) ** 2).sum() / (2 * sigma**2), prior_precision=delta,
                 hessian="diagonal", curvature="gauss_newton").fit(X, y, num_steps=1)
    params = list(net.parameters())
    rows = []
    for x in X:
        net.zero_grad()
        net(x.unsqueeze(0)).sum().backward()
        rows.append(torch.cat([p.grad.reshape(-1) for p in params]))
    J = torch.stack(rows)
    torch.testing.assert_close(la.posterior.precision, (J**2).sum(0) / sigma**2 + delta, rtol=1e-10, atol=1e-10)
    assert la.sample(5, generator=torch.Generator().manual_seed(0)).shape == (5, la.num_params)
    torch.testing.assert_close(la.variance, 1 / la.posterior.precision, rtol=1e-12, atol=0)


def test_non_positive_definite_hessian_bad_shapes_and_no_mutation():
    net = small_net(2)
    X, y = regression_data()
    before = [p.detach().clone() for p in net.parameters()]
    loss_fn = lambda f, t: ((f - t) ** 2).sum() / (2 * 0.1**2)  # noqa: E731
    with pytest.raises(ValueError, match="not positive definite"):
        Laplace(net, loss_fn, prior_precision=1e-3).fit(X, y)  # an untrained net is not at a minimum
    for p, b in zip(net.parameters(), before):
        assert torch.equal(p.detach(), b)
    la = Laplace(net, loss_fn, subset="last_layer")
    with pytest.raises(ValueError, match="Invalid targets"):
        la.fit(X, y[:-1])
    with pytest.raises(ValueError, match="Invalid targets"):
        la.fit(X, y[:, 0])
    with pytest.raises(ValueError, match="call fit"):
        la.predictive(X)
    with pytest.raises(ValueError, match="Invalid subset"):
        Laplace(net, loss_fn, subset="first_layer")
    with pytest.raises(ValueError, match="Invalid prior_precision"):
        Laplace(net, loss_fn, prior_precision=0.0)
    with pytest.raises(ValueError, match="Invalid method"):
        gaussian_fixed_point(logistic_loss(0), FullGaussian.from_mean_precision(torch.zeros(3, dtype=DT),
                                                                              torch.eye(3, dtype=DT)), method="mc")


@pytest.mark.parametrize("prior_precision", [0.0, 2.5])
def test_glm_quadrature_matches_tensor_product_quadrature(prior_precision):
    from blrlib.inference.quadrature import gauss_hermite, gauss_hermite_glm

    gen = torch.Generator().manual_seed(3)
    X = torch.randn(20, 2, generator=gen, dtype=DT)
    y = torch.where(torch.rand(20, generator=gen, dtype=DT) < 0.5, 1.0, -1.0)
    q = FullGaussian.from_mean_covariance(torch.tensor([0.3, -0.2], dtype=DT),
                                          torch.tensor([[0.5, 0.1], [0.1, 0.3]], dtype=DT))
    link = lambda t, a: torch.nn.functional.softplus(-t * a)  # noqa: E731

    def loss(w):
        return link(y, X @ w).sum() + 0.5 * prior_precision * w @ w

    glm = gauss_hermite_glm(link, X, y, q, 80, prior_precision)
    grid = gauss_hermite(loss, q, 40)
    torch.testing.assert_close(glm.gradient, grid.gradient, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(glm.hessian, grid.hessian, rtol=1e-9, atol=1e-9)
    with pytest.raises(ValueError, match="Invalid targets"):
        gauss_hermite_glm(link, X, y[:-1], q, 10)


def test_assume_mode_keeps_the_trained_weights():
    net = small_net(3)
    X, y = regression_data()
    loss_fn = lambda f, t: ((f - t) ** 2).sum() / (2 * 0.1**2)  # noqa: E731
    weights = torch.nn.utils.parameters_to_vector(net.parameters()).detach()
    la = Laplace(net, loss_fn, hessian="diagonal", curvature="gauss_newton").fit(X, y, assume_mode=True, rho=0.5)
    torch.testing.assert_close(la.mean, weights, rtol=0, atol=1e-12)
    moved = Laplace(net, loss_fn, hessian="diagonal", curvature="gauss_newton").fit(X, y)
    assert (moved.mean - weights).abs().max() > 1e-3 and la.gradient_norm > 0


def test_fixed_point_with_custom_expectations_equals_tensor_quadrature():
    from blrlib.inference.quadrature import gauss_hermite_glm

    gen = torch.Generator().manual_seed(6)
    X = torch.randn(25, 2, generator=gen, dtype=DT)
    y = torch.where(torch.rand(25, generator=gen, dtype=DT) < torch.sigmoid(X @ torch.ones(2, dtype=DT)), 1.0, -1.0)
    link = lambda t, a: torch.nn.functional.softplus(-t * a)  # noqa: E731
    q0 = FullGaussian.from_mean_precision(torch.zeros(2, dtype=DT), torch.eye(2, dtype=DT))
    glm = gaussian_fixed_point(None, q0, expectations=lambda q: gauss_hermite_glm(link, X, y, q, 60, 1.5),
                               rho=0.9, tol=1e-13, max_steps=300).q
    grid = gaussian_fixed_point(lambda w: link(y, X @ w).sum() + 0.75 * w @ w, q0, method="gauss_hermite",
                                num_points=30, rho=0.9, tol=1e-13, max_steps=300).q
    torch.testing.assert_close(glm.mean, grid.mean, rtol=1e-8, atol=1e-9)
    torch.testing.assert_close(glm.covariance, grid.covariance, rtol=1e-8, atol=1e-9)


def test_last_layer_fit_is_a_fixed_point_after_one_step():
    net = small_net(4)
    X, y = regression_data()
    loss_fn = lambda f, t: ((f - t) ** 2).sum() / (2 * 0.2**2)  # noqa: E731
    one = Laplace(net, loss_fn, prior_precision=2.0, subset="last_layer").fit(X, y)
    damped = Laplace(net, loss_fn, prior_precision=2.0, subset="last_layer").fit(X, y, num_steps=60, rho=0.5)
    torch.testing.assert_close(damped.mean, one.mean, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(damped.posterior.precision, one.posterior.precision, rtol=1e-9, atol=1e-9)


def classifier(seed=0, hidden=6, classes=3):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(2, hidden), torch.nn.Tanh(),
                               torch.nn.Linear(hidden, classes)).to(DT)


def classification_data(n=20, classes=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, generator=gen, dtype=DT), torch.randint(classes, (n,), generator=gen)


def cross_entropy(outputs, targets):
    return torch.nn.functional.cross_entropy(outputs, targets, reduction="sum")


def gauss_newton_by_hand(net, X, delta):
    # sum_i J_i^T (diag p_i - p_i p_i^T) J_i + delta I, one example at a time with backward()
    params = list(net.parameters())
    total = 0
    for x in X:
        logits = net(x.unsqueeze(0))[0]
        p = torch.softmax(logits, 0).detach()
        rows = []
        for k in range(len(logits)):
            grads = torch.autograd.grad(logits[k], params, retain_graph=True)
            rows.append(torch.cat([g.reshape(-1) for g in grads]))
        J = torch.stack(rows)
        total = total + J.T @ (torch.diag(p) - torch.outer(p, p)) @ J
    return total + delta * torch.eye(total.shape[0], dtype=DT)


@pytest.mark.parametrize("hessian", ["full", "diagonal"])
def test_gauss_newton_for_a_classifier_with_class_labels(hessian):
    net = classifier(1)
    X, y = classification_data()
    la = Laplace(net, cross_entropy, prior_precision=0.7, hessian=hessian,
                 curvature="gauss_newton").fit(X, y, assume_mode=True)
    reference = gauss_newton_by_hand(net, X, 0.7)
    expected = reference if hessian == "full" else reference.diagonal()
    torch.testing.assert_close(la.posterior.precision, expected, rtol=1e-10, atol=1e-10)
    mean, var = la.predictive(X[:4])
    assert mean.shape == var.shape == (4, 3) and (var > 0).all()


def test_last_layer_laplace_for_a_classifier():
    net = classifier(2)
    X, y = classification_data(seed=1)
    la = Laplace(net, cross_entropy, prior_precision=2.0, subset="last_layer").fit(X, y, assume_mode=True)
    with torch.no_grad():
        phi = net[:-1](X)
    probs = torch.softmax(net(X), 1).detach()
    # last layer: logits_k = W_k . phi + b_k; weight index (k, j) = k * hidden + j, then the K biases
    rows = []
    for i in range(len(X)):
        J = torch.cat([torch.kron(torch.eye(3, dtype=DT), phi[i][None]), torch.eye(3, dtype=DT)], 1)
        rows.append(J.T @ (torch.diag(probs[i]) - torch.outer(probs[i], probs[i])) @ J)
    expected = sum(rows) + 2.0 * torch.eye(rows[0].shape[0], dtype=DT)
    torch.testing.assert_close(la.posterior.precision, expected, rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="Invalid targets"):
        la.fit(X, y + 3)  # class labels out of range: the loss itself fails
    with pytest.raises(ValueError, match="Invalid targets"):
        la.fit(X, torch.zeros(len(X), dtype=DT))  # real-valued targets must match the outputs


def test_fixed_point_argument_checks_and_the_improved_step():
    q0 = FullGaussian.from_mean_precision(torch.zeros(3, dtype=DT), torch.eye(3, dtype=DT))
    with pytest.raises(ValueError, match="Invalid loss"):
        gaussian_fixed_point(None, q0)
    expectations = lambda q: None  # noqa: E731
    with pytest.raises(ValueError, match="Invalid method"):
        gaussian_fixed_point(None, q0, expectations=expectations, method="gauss_hermite")
    with pytest.raises(ValueError, match="Invalid num_points"):
        gaussian_fixed_point(None, q0, expectations=expectations, num_points=5)
    loss = logistic_loss(4)
    plain = gaussian_fixed_point(loss, q0, method="gauss_hermite", num_points=6, rho=0.6, tol=1e-13,
                                 max_steps=300).q
    improved = gaussian_fixed_point(loss, q0, method="gauss_hermite", num_points=6, rho=0.6, tol=1e-13,
                                    max_steps=300, improved=True)
    # the improved step has the same fixed point, reached along a different path
    torch.testing.assert_close(improved.q.mean, plain.mean, rtol=0, atol=1e-10)
    torch.testing.assert_close(improved.q.precision, plain.precision, rtol=1e-9, atol=1e-9)
    first_plain = gaussian_fixed_point(loss, q0, method="gauss_hermite", num_points=6, rho=0.6, max_steps=1).q
    first_improved = gaussian_fixed_point(loss, q0, method="gauss_hermite", num_points=6, rho=0.6, max_steps=1,
                                          improved=True).q
    assert (first_improved.precision - first_plain.precision).abs().max() > 1e-4
