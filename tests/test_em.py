"""EM as the rule (blrlib.inference.em) against references that contain no rule code."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from blrlib.families import Categorical, FullGaussian, MeanField
from blrlib.inference import em

DTYPE = torch.float64


def random_problem(seed, n=60, d=2, K=3):
    rng = np.random.default_rng(seed)
    centres = 3.0 * rng.standard_normal((K, d))
    X = np.concatenate([c + rng.standard_normal((n // K, d)) for c in centres])
    weights = rng.dirichlet(np.full(K, 5.0))
    means = X[rng.choice(len(X), K, replace=False)]
    roots = rng.standard_normal((K, d, d))
    precisions = np.einsum("kij,klj->kil", roots, roots) + d * np.eye(d)
    return X, weights, means, precisions


def numpy_em(X, weights, means, precisions, num_iterations):
    """Textbook EM for a full-covariance Gaussian mixture (Bishop 2006, section 9.2.2); no blrlib code."""
    N, d = X.shape
    out = []
    for _ in range(num_iterations):
        log_p = np.empty((N, len(weights)))
        for k in range(len(weights)):
            diff = X - means[k]
            _, logdet = np.linalg.slogdet(precisions[k])
            maha = np.einsum("ni,ij,nj->n", diff, precisions[k], diff)
            log_p[:, k] = np.log(weights[k]) + 0.5 * logdet - 0.5 * d * np.log(2 * np.pi) - 0.5 * maha
        log_p -= log_p.max(1, keepdims=True)
        resp = np.exp(log_p)
        resp /= resp.sum(1, keepdims=True)
        Nk = resp.sum(0)
        weights = Nk / N
        means = resp.T @ X / Nk[:, None]
        covs = np.stack([(resp[:, k, None] * (X - means[k])).T @ (X - means[k]) / Nk[k] for k in range(len(Nk))])
        precisions = np.linalg.inv(covs)
        out.append((weights, means, precisions))
    return out


def as_params(weights, means, precisions):
    return em.MixtureParameters(*(torch.tensor(a, dtype=DTYPE) for a in (weights, means, precisions)))


@pytest.mark.parametrize("seed, d, K", [(0, 2, 3), (1, 1, 2), (2, 3, 2)])
def test_run_em_matches_textbook_em(seed, d, K):
    X, w, m, P = random_problem(seed, d=d, K=K)
    history = em.run_em(torch.tensor(X), as_params(w, m, P), 6, tol=1e-11)
    reference = numpy_em(X, w, m, P, 6)
    for ours, theirs in zip(history.parameters[1:], reference):
        for a, b in zip(ours, theirs):
            np.testing.assert_allclose(a.numpy(), b, rtol=1e-9, atol=1e-9 * np.abs(b).max())


def test_run_em_matches_sklearn_one_iteration_at_a_time():
    from sklearn.datasets import load_iris
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture

    X = load_iris().data[:, 2:4]
    rng = np.random.default_rng(0)
    w, m, P = np.full(3, 1 / 3), X[rng.choice(len(X), 3, replace=False)], np.stack([np.eye(2)] * 3)
    gm = GaussianMixture(3, tol=0, reg_covar=0, max_iter=1, warm_start=True, init_params="random",
                         weights_init=w, means_init=m, precisions_init=P)
    history = em.run_em(torch.tensor(X), as_params(w, m, P), 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for ours in history.parameters[1:]:
            gm.fit(X)
            for a, b in zip(ours, (gm.weights_, gm.means_, gm.precisions_)):
                np.testing.assert_allclose(a.numpy(), b, rtol=1e-10, atol=1e-10 * np.abs(b).max())


def test_log_likelihood_never_decreases():
    X, w, m, P = random_problem(3)
    history = em.run_em(torch.tensor(X), as_params(w, m, P), 8)
    assert np.diff(history.log_likelihoods).min() > -1e-9
    assert history.log_likelihoods[-1] > history.log_likelihoods[0] + 1.0


@pytest.mark.parametrize("start_logits", [0.0, 3.0])
def test_e_step_rho_one_gives_responsibilities_from_any_start(start_logits):
    X, w, m, P = random_problem(4)
    X = torch.tensor(X)
    theta = em.pack(as_params(w, m, P))
    q_theta = FullGaussian.from_mean_precision(theta, torch.eye(theta.numel(), dtype=DTYPE))
    q_z = Categorical.from_logits(torch.full((X.shape[0], 3), start_logits, dtype=DTYPE).cumsum(1))
    new = em.e_step(MeanField(z=q_z, theta=q_theta), X, rho=1.0)["z"]
    expected = torch.softmax(em.log_joint(X, theta, 3), dim=1)
    torch.testing.assert_close(new.probs, expected, rtol=1e-12, atol=1e-14)


def test_e_step_rho_below_one_averages_log_odds():
    X, w, m, P = random_problem(5)
    X = torch.tensor(X)
    theta = em.pack(as_params(w, m, P))
    q_theta = FullGaussian.from_mean_precision(theta, torch.eye(theta.numel(), dtype=DTYPE))
    start = torch.randn(X.shape[0], 3, generator=torch.Generator().manual_seed(0), dtype=DTYPE)
    q_z = Categorical.from_logits(start)
    new = em.e_step(MeanField(z=q_z, theta=q_theta), X, rho=0.3)["z"]
    log_p = em.log_joint(X, theta, 3)
    target = 0.7 * (start[:, :2] - start[:, 2:]) + 0.3 * (log_p[:, :2] - log_p[:, 2:])
    torch.testing.assert_close(new.natural_params.logit, target, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("rho", [1.0, 0.5])
def test_m_step_fixed_point_is_moment_matching(rho):
    X, w, m, P = random_problem(6)
    Xt = torch.tensor(X)
    resp = torch.softmax(torch.randn(len(X), 3, generator=torch.Generator().manual_seed(1), dtype=DTYPE), 1)
    q_z = Categorical.from_probs(resp)
    theta = em.pack(as_params(w, m, P))
    q_theta = FullGaussian.from_mean_precision(theta, torch.eye(theta.numel(), dtype=DTYPE))
    result = em.m_step(MeanField(z=q_z, theta=q_theta), Xt, rho=rho, tol=1e-12, max_steps=400)
    assert torch.equal(result.q["z"].probs, q_z.probs)  # the latent block is left alone
    weights, means, precisions = em.unpack(result.q["theta"].mean, 3, 2)
    Nk = resp.sum(0)
    torch.testing.assert_close(weights, Nk / len(X), rtol=1e-10, atol=1e-12)
    expected_means = resp.T @ Xt / Nk[:, None]
    torch.testing.assert_close(means, expected_means, rtol=1e-10, atol=1e-10)
    for k in range(3):
        diff = Xt - expected_means[k]
        cov = (resp[:, k, None] * diff).T @ diff / Nk[k]
        torch.testing.assert_close(torch.linalg.inv(precisions[k]), cov, rtol=1e-9, atol=1e-10)
    # the delta-method precision is the Hessian of Q, positive definite
    assert bool((torch.linalg.eigvalsh(result.q["theta"].precision) > 0).all())
    if rho < 1:
        assert result.num_steps > 10  # damped steps converge linearly


def test_pack_unpack_round_trip():
    _, w, m, P = random_problem(8, d=3)
    params = as_params(w, m, P)
    back = em.unpack(em.pack(params), 3, 3)
    for a, b in zip(back, params):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda X, p, q, qz: em.run_em(X, p, -1), "Invalid num_iterations"),
        (lambda X, p, q, qz: em.run_em(X[:, 0], p, 1), "Invalid X"),
        (lambda X, p, q, qz: em.e_step(MeanField(z=qz, theta=q), X, rho=0.0), "Invalid rho"),
        (lambda X, p, q, qz: em.m_step(MeanField(z=qz, theta=q), X, rho=1.5), "Invalid rho"),
        (lambda X, p, q, qz: em.m_step(MeanField(z=qz, theta=q), X, tol=0.0), "Invalid tol"),
        (lambda X, p, q, qz: em.m_step(MeanField(z=qz, theta=q), X, max_steps=0), "Invalid max_steps"),
        (lambda X, p, q, qz: em.m_step(MeanField(z=qz, theta=q), X, strict=1), "Invalid strict"),
        (lambda X, p, q, qz: em.run_em(X, p, 1, e_rho=0.0), "Invalid rho"),
        (lambda X, p, q, qz: em.run_em(X, p, 1, m_rho=float("nan")), "Invalid rho"),
        (lambda X, p, q, qz: em.m_step(MeanField(z=qz), X), "Invalid q"),
        (lambda X, p, q, qz: em.latent_message(MeanField(z=qz, theta=qz), X), "Invalid q\\['theta'\\]"),
        (lambda X, p, q, qz: em.pack(em.MixtureParameters(p.weights * 2, p.means, p.precisions)), "Invalid weights"),
        (lambda X, p, q, qz: em.pack(em.MixtureParameters(p.weights, p.means, -p.precisions)), "Invalid precisions"),
        (lambda X, p, q, qz: em.unpack(torch.zeros(5, dtype=DTYPE), 3, 2), "Invalid theta shape"),
        (lambda X, p, q, qz: em.e_step(MeanField(z=Categorical.from_logits(torch.zeros(3, 3)), theta=q), X),
         "Invalid q\\['z'\\]"),
    ],
)
def test_bad_input(call, match):
    X, w, m, P = random_problem(9)
    X = torch.tensor(X)
    params = as_params(w, m, P)
    theta = em.pack(params)
    q = FullGaussian.from_mean_precision(theta, torch.eye(theta.numel(), dtype=DTYPE))
    qz = Categorical.from_logits(torch.zeros(X.shape[0], 3, dtype=DTYPE))
    with pytest.raises(ValueError, match=match):
        call(X, params, q, qz)


def test_initial_candidate_and_max_steps():
    X, w, m, P = random_problem(11)
    X = torch.tensor(X)
    q = em.initial_candidate(X, as_params(w, m, P))
    torch.testing.assert_close(q["z"].probs, torch.full((len(X), 3), 1 / 3, dtype=DTYPE))
    torch.testing.assert_close(q["theta"].mean, em.pack(as_params(w, m, P)))
    q = em.e_step(q, X)
    with pytest.raises(ValueError, match="did not converge"):
        em.m_step(q, X, rho=0.25, max_steps=3)


def test_inputs_are_not_mutated():
    X, w, m, P = random_problem(10)
    X = torch.tensor(X)
    params = as_params(w, m, P)
    copies = [X.clone()] + [p.clone() for p in params]
    em.run_em(X, params, 2)
    for a, b in zip([X, *params], copies):
        assert torch.equal(a, b)


def test_planted_error_is_caught():
    """The textbook comparison fails when the M-step's step is wrong by a factor (rho = 0.5, stopped early)."""
    X, w, m, P = random_problem(0)
    history = em.run_em(torch.tensor(X), as_params(w, m, P), 2, m_rho=0.5, tol=1e-3)
    reference = numpy_em(X, w, m, P, 2)
    with pytest.raises(AssertionError):
        np.testing.assert_allclose(history.parameters[2].means.numpy(), reference[1][1], rtol=1e-9)


def test_log_likelihood_and_latent_message_against_numpy():
    X, w, m, P = random_problem(12)
    params = as_params(w, m, P)
    log_p = np.stack([np.log(w[k]) + 0.5 * np.linalg.slogdet(P[k])[1] - np.log(2 * np.pi)
                      - 0.5 * np.einsum("ni,ij,nj->n", X - m[k], P[k], X - m[k]) for k in range(3)], 1)
    expected = np.log(np.exp(log_p).sum(1)).sum()
    assert abs(float(em.log_likelihood(torch.tensor(X), params)) - expected) < 1e-10 * abs(expected)
    q = em.initial_candidate(torch.tensor(X), params)
    message = em.latent_message(q, torch.tensor(X))
    np.testing.assert_allclose(message.probs.numpy(), -(log_p[:, :2] - log_p[:, 2:]), rtol=1e-12, atol=1e-12)


def test_run_em_damped_e_step_matches_hand_loop():
    """run_em(e_rho=0.5, m_rho=0.7) is e_step(rho=0.5) then m_step(rho=0.7) from initial_candidate."""
    X, w, m, P = random_problem(12)
    X = torch.tensor(X)
    params = as_params(w, m, P)
    history = em.run_em(X, params, 4, e_rho=0.5, m_rho=0.7)
    q = em.initial_candidate(X, params)
    for t in range(4):
        q = em.m_step(em.e_step(q, X, rho=0.5), X, rho=0.7).q
        for a, b in zip(history.parameters[t + 1], em.unpack(q["theta"].mean, 3, 2)):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    plain = em.run_em(X, params, 4)  # and it is not plain EM
    assert not torch.allclose(plain.parameters[-1].means, history.parameters[-1].means, rtol=1e-6)


def test_m_step_non_strict_returns_after_max_steps():
    """strict=False, max_steps=1: one safeguarded step (precisions stay positive definite), no error."""
    X, w, m, P = random_problem(11)
    X = torch.tensor(X)
    q = em.e_step(em.initial_candidate(X, as_params(w, m, P)), X)
    result = em.m_step(q, X, rho=0.5, max_steps=1, strict=False)
    assert result.num_steps == 1
    one = em.m_step(q, X, rho=0.5, max_steps=1, strict=False).q["theta"].mean
    full = em.m_step(q, X).q["theta"].mean
    assert float((one - full).abs().max()) > 1e-3  # one step is not the fixed point
    assert bool((torch.linalg.eigvalsh(em.unpack(one, 3, 2).precisions) > 0).all())
