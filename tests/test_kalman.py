"""The rule's Kalman filter, RTS smoother and non-linear updates against references without rule code."""

import math

import pytest
import torch

from blrlib import FullGaussian, classical
from blrlib.inference import kalman, quadrature

DT = torch.float64
TOL = dict(rtol=1e-10, atol=1e-10)


def _spd(n, gen, scale=1.0):
    a = torch.randn(n, n, generator=gen, dtype=DT)
    return scale * (a @ a.T / n + 0.3 * torch.eye(n, dtype=DT))


def random_model(seed, d=4, k=2, T=30):
    gen = torch.Generator().manual_seed(seed)
    F = 0.6 * torch.randn(d, d, generator=gen, dtype=DT)
    model = kalman.LinearGaussianModel(F, _spd(d, gen, 0.5), torch.randn(k, d, generator=gen, dtype=DT),
                                       _spd(k, gen), torch.randn(d, generator=gen, dtype=DT), _spd(d, gen, 2.0))
    return model, torch.randn(T, k, generator=gen, dtype=DT)


def joint_log_evidence(model, zs):
    """log N(z_1..z_T) of the stacked observations, from the joint Gaussian (no recursion)."""
    F, Q, H, R, m1, P1 = model
    T, d = zs.shape[0], m1.numel()
    means, covs = [m1], [P1]
    for _ in range(T - 1):
        means.append(F @ means[-1])
        covs.append(F @ covs[-1] @ F.T + Q)
    # Cov(x_s, x_t) = F^(t-s) P_s for t >= s
    big = torch.zeros(T * d, T * d, dtype=DT)
    for s in range(T):
        for t in range(s, T):
            block = torch.linalg.matrix_power(F, t - s) @ covs[s]
            big[t * d:(t + 1) * d, s * d:(s + 1) * d] = block
            big[s * d:(s + 1) * d, t * d:(t + 1) * d] = block.T
    Hbig = torch.block_diag(*[H] * T)
    cov_z = Hbig @ big @ Hbig.T + torch.block_diag(*[R] * T)
    mean_z = Hbig @ torch.cat(means)
    return torch.distributions.MultivariateNormal(mean_z, cov_z).log_prob(zs.reshape(-1))


@pytest.mark.parametrize("seed,d,k", [(0, 4, 2), (1, 3, 3), (2, 2, 1), (3, 5, 2)])
def test_rule_filter_equals_gain_form_and_smoother_equals_rts(seed, d, k):
    model, zs = random_model(seed, d, k)
    result = kalman.kalman_filter(model, zs)
    means, covs, log_ev = classical.kalman_filter(*model, zs)
    torch.testing.assert_close(result.means, means, **TOL)
    torch.testing.assert_close(result.covariances, covs, **TOL)
    torch.testing.assert_close(result.log_evidence, log_ev, **TOL)
    smoothed = kalman.rts_smoother(result, model.transition, model.transition_noise)
    reference = classical.rts_smoother(model.transition, model.transition_noise, means, covs)
    torch.testing.assert_close(smoothed[0], reference[0], **TOL)
    torch.testing.assert_close(smoothed[1], reference[1], **TOL)


@pytest.mark.parametrize("seed", [0, 1])
def test_log_evidence_matches_joint_gaussian(seed):
    model, zs = random_model(seed, d=3, k=2, T=6)
    torch.testing.assert_close(kalman.kalman_filter(model, zs).log_evidence, joint_log_evidence(model, zs), **TOL)
    torch.testing.assert_close(classical.kalman_filter(*model, zs)[2], joint_log_evidence(model, zs), **TOL)


def test_a_planted_sign_error_is_caught(monkeypatch):
    model, zs = random_model(0)
    reference = classical.kalman_filter(*model, zs)[0]
    original = kalman.observation_gradient

    def flipped(H, R, z):
        g = original(H, R, z)
        return FullGaussian.ExpectationParams(-g[0], g[1])

    monkeypatch.setattr(kalman, "observation_gradient", flipped)
    with pytest.raises(AssertionError):
        torch.testing.assert_close(kalman.kalman_filter(model, zs).means, reference, **TOL)


@pytest.mark.parametrize("rho", [1.0, 0.3])
def test_update_from_any_start_and_contraction(rho):
    gen = torch.Generator().manual_seed(5)
    prior = FullGaussian.from_mean_covariance(torch.randn(3, generator=gen, dtype=DT), _spd(3, gen))
    start = FullGaussian.from_mean_covariance(torch.randn(3, generator=gen, dtype=DT), _spd(3, gen, 3.0))
    H, R, z = torch.randn(2, 3, generator=gen, dtype=DT), _spd(2, gen), torch.randn(2, generator=gen, dtype=DT)
    exact = kalman.update(prior, z, H, R)
    q = start
    for t in range(1, 4):
        q = kalman.update(prior, z, H, R, start=q, rho=rho)
        for lam, lam_star, lam0 in zip(q.natural_params, exact.natural_params, start.natural_params):
            torch.testing.assert_close(lam - lam_star, (1 - rho) ** t * (lam0 - lam_star), **TOL)


def _range_bearing(x):
    return torch.stack([torch.sqrt(x[0] ** 2 + x[1] ** 2), torch.atan2(x[1], x[0])])


def test_delta_update_is_the_extended_kalman_filter():
    prior = FullGaussian.from_mean_covariance(torch.tensor([3.0, 1.0, 0.5, -0.2], dtype=DT),
                                              torch.diag(torch.tensor([0.5, 0.4, 0.1, 0.1], dtype=DT)))
    R = torch.diag(torch.tensor([0.05, 0.01], dtype=DT))
    z = torch.tensor([3.3, 0.35], dtype=DT)
    h = lambda x: _range_bearing(x[:2])  # noqa: E731
    # hand-written EKF update in gain form
    m, P = prior.mean, prior.covariance
    x, y = m[0], m[1]
    r2 = x**2 + y**2
    J = torch.tensor([[x / r2.sqrt(), y / r2.sqrt(), 0, 0], [-y / r2, x / r2, 0, 0]], dtype=DT)
    K = P @ J.T @ torch.linalg.inv(J @ P @ J.T + R)
    m_ekf, P_ekf = m + K @ (z - h(m)), (torch.eye(4, dtype=DT) - K @ J) @ P
    q = kalman.nonlinear_update(prior, z, h, R, method="delta")
    torch.testing.assert_close(q.mean, m_ekf, **TOL)
    torch.testing.assert_close(q.covariance, P_ekf, **TOL)
    iterated = kalman.nonlinear_update(prior, z, h, R, method="delta", num_steps=3)
    assert (iterated.mean - q.mean).abs().max() > 1e-6  # the iterated EKF moves on


def test_gauss_hermite_update_is_exact_for_a_linear_observation():
    gen = torch.Generator().manual_seed(2)
    prior = FullGaussian.from_mean_covariance(torch.randn(3, generator=gen, dtype=DT), _spd(3, gen))
    H, R, z = torch.randn(2, 3, generator=gen, dtype=DT), _spd(2, gen), torch.randn(2, generator=gen, dtype=DT)
    exact = kalman.update(prior, z, H, R)
    q = kalman.nonlinear_update(prior, z, lambda x: H @ x, R, method="gauss_hermite", num_points=3)
    torch.testing.assert_close(q.mean, exact.mean, **TOL)
    torch.testing.assert_close(q.precision, exact.precision, **TOL)


@pytest.mark.parametrize("num_points", [3, 5])
def test_gauss_hermite_expectations_match_closed_forms(num_points):
    gen = torch.Generator().manual_seed(4)
    q = FullGaussian.from_mean_covariance(torch.randn(2, generator=gen, dtype=DT), _spd(2, gen))
    # loss = sum(x^4)/4: gradient x^3, Hessian diag(3 x^2); E[x^3] = m^3 + 3 m v, E[3x^2] = 3(m^2 + v)
    derivs = quadrature.gauss_hermite(lambda x: (x**4).sum() / 4, q, num_points)
    m, v = q.mean, q.covariance.diagonal()
    torch.testing.assert_close(derivs.gradient, m**3 + 3 * m * v, **TOL)
    torch.testing.assert_close(derivs.hessian, torch.diag(3 * (m**2 + v)), **TOL)
    nodes, weights = quadrature.gauss_hermite_nodes(q, num_points)
    assert nodes.shape == (num_points**2, 2) and math.isclose(float(weights.sum()), 1.0, rel_tol=1e-14)


def test_bad_input_and_no_mutation():
    model, zs = random_model(0)
    copies = [t.clone() for t in model]
    kalman.kalman_filter(model, zs)
    for a, b in zip(model, copies):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="Invalid observations"):
        kalman.kalman_filter(model, zs[:, :1])
    prior = FullGaussian.from_mean_covariance(torch.zeros(4, dtype=DT), torch.eye(4, dtype=DT))
    with pytest.raises(ValueError, match="Invalid observation"):
        kalman.update(prior, torch.zeros(2, dtype=DT), torch.ones(2, 3, dtype=DT), torch.eye(2, dtype=DT))
    with pytest.raises(ValueError, match="Invalid z"):
        kalman.update(prior, torch.zeros(3, dtype=DT), torch.ones(2, 4, dtype=DT), torch.eye(2, dtype=DT))
    with pytest.raises(ValueError, match="positive definite"):
        kalman.update(prior, torch.zeros(2, dtype=DT), torch.ones(2, 4, dtype=DT), -torch.eye(2, dtype=DT))
    with pytest.raises(ValueError, match="Invalid method"):
        kalman.nonlinear_update(prior, torch.zeros(2, dtype=DT), lambda x: x[:2], torch.eye(2, dtype=DT), method="ukf")
    with pytest.raises(ValueError, match="Invalid num_points"):
        quadrature.gauss_hermite_nodes(prior, 0)
    with pytest.raises(ValueError, match="Invalid shapes"):
        classical.kalman_filter(model.transition[:2], *model[1:], zs)


@pytest.mark.parametrize("improved", [False, True])
def test_variational_update_with_start_and_improved_step_reaches_the_exact_posterior(improved):
    gen = torch.Generator().manual_seed(8)
    prior = FullGaussian.from_mean_covariance(torch.randn(2, generator=gen, dtype=DT), _spd(2, gen))
    start = FullGaussian.from_mean_covariance(torch.randn(2, generator=gen, dtype=DT), _spd(2, gen, 4.0))
    H, R, z = torch.randn(2, 2, generator=gen, dtype=DT), _spd(2, gen), torch.randn(2, generator=gen, dtype=DT)
    exact = kalman.update(prior, z, H, R)
    q = kalman.nonlinear_update(prior, z, lambda x: H @ x, R, method="gauss_hermite", num_points=2,
                                num_steps=60, rho=0.5, improved=improved, start=start)
    torch.testing.assert_close(q.mean, exact.mean, **TOL)
    torch.testing.assert_close(q.precision, exact.precision, **TOL)
    one = kalman.nonlinear_update(prior, z, lambda x: H @ x, R, method="gauss_hermite", num_points=2,
                                  rho=0.5, improved=improved, start=start)
    assert (one.mean - exact.mean).abs().max() > 1e-3  # one damped step is not there yet
