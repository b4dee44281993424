"""SVI as the rule (blrlib.inference.svi) against a hand-written Hoffman et al. (2013) loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import digamma

from blrlib.families import MeanField
from blrlib.inference import svi, vmp

DTYPE = torch.float64


def hoffman_svi(X, globals_, batches, rhos, prior):
    """Hoffman et al. (2013), Algorithm 1, for Bishop's Bayesian Gaussian mixture, in NumPy (no blrlib):
    local responsibilities, intermediate global parameters from the minibatch replicated N/|B| times,
    and lambda <- (1 - rho) lambda + rho lambda_hat in the natural parameters."""
    a0, m0, b0, W0inv, nu0 = prior
    alpha, beta, m, Winv, nu = (np.array(g, dtype=float) for g in globals_)
    N, d = X.shape
    K = len(alpha)
    out = []
    for idx, rho in zip(batches, rhos):
        Xb = X[idx]
        w = N / len(Xb)
        W = np.linalg.inv(Winv)
        e_log_pi = digamma(alpha) - digamma(alpha.sum())
        e_logdet = np.array([sum(digamma((nu[k] - i) / 2) for i in range(d)) + d * np.log(2)
                             + np.linalg.slogdet(W[k])[1] for k in range(K)])
        diff = Xb[:, None, :] - m[None]
        maha = d / beta + nu * np.einsum("nki,kij,nkj->nk", diff, W, diff)
        log_r = e_log_pi + 0.5 * e_logdet - 0.5 * d * np.log(2 * np.pi) - 0.5 * maha
        r = np.exp(log_r - log_r.max(1, keepdims=True))
        r /= r.sum(1, keepdims=True)
        Nk, Sx, Sxx = w * r.sum(0), w * r.T @ Xb, w * np.einsum("nk,ni,nj->kij", r, Xb, Xb)
        hat = (a0 - 1 + Nk, b0 * m0 + Sx, -(b0 + Nk) / 2, -0.5 * (W0inv + b0 * np.outer(m0, m0) + Sxx),
               (nu0 + Nk - d) / 2)
        cur = (alpha - 1, beta[:, None] * m, -beta / 2,
               -0.5 * (Winv + beta[:, None, None] * np.einsum("ki,kj->kij", m, m)), (nu - d) / 2)
        new = [(1 - rho) * c + rho * h for c, h in zip(cur, hat)]
        alpha, beta, nu = new[0] + 1, -2 * new[2], 2 * new[4] + d
        m = new[1] / beta[:, None]
        Winv = -2 * new[3] - beta[:, None, None] * np.einsum("ki,kj->kij", m, m)
        out.append((alpha, beta, m, Winv, nu))
    return out


def setup(K=3, seed=0):
    from sklearn.datasets import load_iris

    X = load_iris().data[:, 2:4]
    prior_np = (0.1, X.mean(0), 1.0, np.cov(X.T), 2.0)
    prior = vmp.MixturePrior(0.1, torch.tensor(X.mean(0)), 1.0, torch.tensor(np.cov(X.T)), 2.0)
    resp0 = np.random.RandomState(seed).uniform(size=(len(X), K))
    q = vmp.mixture_candidate(torch.tensor(resp0 / resp0.sum(1, keepdims=True)), prior)
    q = vmp.vmp_sweep(q, vmp.mixture_expected_loss(torch.tensor(X), prior), 1.0, ["weights", "components"])
    return X, prior_np, prior, MeanField(weights=q["weights"], components=q["components"])


def read(q):
    c = q["components"]
    return (q["weights"].concentration, c.beta, c.loc, c.scale_inv, c.dof)


@pytest.mark.parametrize("K, batch, tau0, kappa", [(3, 10, 1.0, 0.7), (4, 25, 10.0, 0.9)])
def test_svi_matches_hoffman_loop(K, batch, tau0, kappa):
    X, prior_np, prior, q = setup(K)
    rng = np.random.default_rng(K)
    batches = [rng.choice(len(X), batch, replace=False) for _ in range(12)]
    rhos = [svi.step_size(t, tau0, kappa) for t in range(1, 13)]
    reference = hoffman_svi(X, [a.numpy() for a in read(q)], batches, rhos, prior_np)
    for idx, rho, ref in zip(batches, rhos, reference):
        q = svi.svi_step(q, torch.tensor(X[idx]), len(X), prior, rho)
        for a, b in zip(read(q), ref):
            np.testing.assert_allclose(a.numpy(), b, rtol=1e-11, atol=1e-11 * np.abs(b).max())


def test_full_batch_svi_with_rho_one_is_a_vmp_sweep():
    X, _, prior, q = setup(3)
    Xt = torch.tensor(X)
    one = svi.svi_step(q, Xt, len(X), prior, 1.0)
    full = MeanField(z=vmp.mixture_candidate(torch.full((len(X), 3), 1 / 3, dtype=DTYPE), prior)["z"],
                     weights=q["weights"], components=q["components"])
    full = vmp.vmp_sweep(full, vmp.mixture_expected_loss(Xt, prior), 1.0, ["z", "weights", "components"])
    for a, b in zip(read(one), read(full)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_step_size_schedule():
    assert svi.step_size(1, 0.0, 1.0) == 1.0
    assert svi.step_size(3, 1.0, 0.5 + 1e-9) == pytest.approx(4 ** -(0.5 + 1e-9))
    assert svi.step_size(1, 1.0, 0.7) == pytest.approx(2**-0.7)


def test_run_svi_records_elbo_and_improves():
    X, _, prior, q = setup(3)
    gen = torch.Generator().manual_seed(0)
    history = svi.run_svi(q, torch.tensor(X), prior, 30, 3, tau0=2.0, kappa=0.6, generator=gen, elbo_every=5)
    assert len(history.step_sizes) == 15
    assert history.elbo_steps == [0, 5, 10, 15]
    assert history.elbos[-1] > history.elbos[0]
    assert history.step_sizes[0] == pytest.approx(3**-0.6)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda q, X, p: svi.step_size(0), "Invalid t"),
        (lambda q, X, p: svi.step_size(1, -1.0), "Invalid tau0"),
        (lambda q, X, p: svi.step_size(1, 1.0, 0.5), "Invalid kappa"),
        (lambda q, X, p: svi.svi_step(q, X, 3, p, 0.5), "Invalid num_data"),
        (lambda q, X, p: svi.svi_step(MeanField(weights=q["weights"]), X, 300, p, 0.5), "Invalid q_global"),
        (lambda q, X, p: svi.svi_step(q, X, 300, p, 1.5), "Invalid rho"),
        (lambda q, X, p: svi.run_svi(q, X, p, 0, 1), "Invalid batch_size"),
        (lambda q, X, p: svi.run_svi(q, X, p, 10, -1), "Invalid num_epochs"),
        (lambda q, X, p: svi.svi_step(q, X.to(torch.int64), 300, p, 0.5), "Invalid X_batch"),
        (lambda q, X, p: svi.run_svi(q, X, p, 10, 1, kappa=0.3), "Invalid kappa"),
        (lambda q, X, p: svi.run_svi(q, X, p._replace(dof=0.5), 10, 1), "Invalid dof"),
    ],
)
def test_bad_input(call, match):
    X, _, prior, q = setup(3)
    with pytest.raises(ValueError, match=match):
        call(q, torch.tensor(X), prior)


def test_planted_error_is_caught():
    """Without the N/|B| scaling of the minibatch term the iterates leave the Hoffman loop's."""
    X, prior_np, prior, q = setup(3)
    idx = np.arange(10)
    ref = hoffman_svi(X, [a.numpy() for a in read(q)], [idx], [0.5], prior_np)[0]
    wrong = svi.svi_step(q, torch.tensor(X[idx]), 10, prior, 0.5)  # claims the batch is all the data
    with pytest.raises(AssertionError):
        np.testing.assert_allclose(read(wrong)[1].numpy(), ref[1], rtol=1e-6)


def test_full_data_elbo_is_the_elbo_after_a_latent_step():
    X, _, prior, q = setup(3, seed=2)
    Xt = torch.tensor(X)
    full = MeanField(z=vmp.mixture_candidate(torch.full((len(X), 3), 1 / 3, dtype=DTYPE), prior)["z"],
                     weights=q["weights"], components=q["components"])
    full = vmp.vmp_sweep(full, vmp.mixture_expected_loss(Xt, prior), 1.0, ["z"])
    torch.testing.assert_close(svi.full_data_elbo(q, Xt, prior), vmp.mixture_elbo(full, Xt, prior),
                               rtol=1e-13, atol=1e-10)
    # any other responsibilities give a lower bound that is no higher
    other = vmp.mixture_candidate(torch.full((len(X), 3), 1 / 3, dtype=DTYPE), prior)
    other = MeanField(z=other["z"], weights=q["weights"], components=q["components"])
    assert float(vmp.mixture_elbo(other, Xt, prior)) < float(svi.full_data_elbo(q, Xt, prior))


# ---------------------------------------------------------------- LDA against scikit-learn
def sklearn_lda_run(X, K, batch, alpha, eta, tau0, kappa, num_batches, seed):
    import warnings

    from sklearn.decomposition import LatentDirichletAllocation

    lda = LatentDirichletAllocation(n_components=K, doc_topic_prior=alpha, topic_word_prior=eta,
                                    learning_method="online", learning_offset=tau0, learning_decay=kappa,
                                    total_samples=len(X), batch_size=batch, mean_change_tol=0,
                                    max_doc_update_iter=20, n_jobs=1, random_state=seed)
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for i in range(num_batches):
            lda.partial_fit(X[i * batch : (i + 1) * batch])
            out.append(lda.components_.copy())
    return out


def rule_lda_run(X, K, batch, alpha, eta, tau0, kappa, num_batches, seed, digamma):
    from blrlib.families import Dirichlet

    rs = np.random.RandomState(seed)  # the draws scikit-learn makes, in its order
    topics = Dirichlet.from_concentration(torch.tensor(rs.gamma(100.0, 0.01, (K, X.shape[1]))))
    out = []
    for i in range(num_batches):
        start = torch.tensor(rs.gamma(100.0, 0.01, (batch, K)))
        topics, _ = svi.lda_svi_step(topics, torch.tensor(X[i * batch : (i + 1) * batch]), len(X), alpha, eta,
                                     svi.step_size(i + 1, tau0, kappa), start, 20, digamma=digamma)
        out.append(topics.concentration.numpy())
    return out


@pytest.mark.parametrize("K, batch, alpha, eta, tau0, kappa, seed", [(4, 30, 0.25, 0.1, 10.0, 0.7, 0),
                                                                      (3, 20, 0.5, 0.3, 2.0, 0.9, 1)])
def test_lda_svi_matches_sklearn_online_lda(K, batch, alpha, eta, tau0, kappa, seed):
    from sklearn.datasets import load_digits

    X = load_digits().data[:120]
    args = (X, K, batch, alpha, eta, tau0, kappa, 3, seed)
    reference = sklearn_lda_run(*args)
    ours = rule_lda_run(*args, digamma=svi.asymptotic_digamma)
    for a, b in zip(ours, reference):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=0)
    # with torch's exact digamma the agreement stops near 1e-9: the approximation must be matched
    exact = rule_lda_run(*args, digamma=torch.digamma)
    assert max(np.abs(a - b).max() / np.abs(b).max() for a, b in zip(exact, reference)) > 1e-11


def test_asymptotic_digamma():
    from scipy.special import digamma as scipy_digamma

    x = torch.tensor([1e-7, 1e-3, 0.3, 1.0, 5.5, 6.0, 40.0], dtype=DTYPE)
    ours = svi.asymptotic_digamma(x)
    np.testing.assert_allclose(ours[1:].numpy(), scipy_digamma(x[1:].numpy()), rtol=1e-7, atol=1e-8)
    assert float(ours[0]) == pytest.approx(-0.5772156649015329 - 1e7, rel=1e-15)
    # the recurrence stops at 6: below it the series is evaluated at x + k
    assert float(ours[5]) == pytest.approx(float(np.log(6.0) - 1 / 12 - 1 / 432 + 1 / 155520 - 1 / 11757312),
                                           rel=1e-14)
    with pytest.raises(ValueError, match="Invalid x dtype"):
        svi.asymptotic_digamma(torch.tensor([1, 2]))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(counts=-torch.ones(2, 64, dtype=DTYPE)), "Invalid counts"),
        (dict(doc_topic_prior=0.0), "Invalid doc_topic_prior"),
        (dict(num_iterations=0), "Invalid num_iterations"),
        (dict(doc_topics_start=torch.ones(3, 4, dtype=DTYPE)), "Invalid doc_topics_start"),
    ],
)
def test_lda_local_step_bad_input(kwargs, match):
    from blrlib.families import Dirichlet

    args = dict(topics=Dirichlet.from_concentration(torch.ones(4, 64, dtype=DTYPE)),
                counts=torch.ones(2, 64, dtype=DTYPE), doc_topic_prior=0.5,
                doc_topics_start=torch.ones(2, 4, dtype=DTYPE), num_iterations=3)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        svi.lda_local_step(**args)
