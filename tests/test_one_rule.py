r"""The book's thesis in one table: every algorithm is the Bayesian learning rule.

One row per algorithm of the book: (candidate family, estimator of :math:`\nabla_\mu\E_q[\bar\ell]`,
settings) -> the optimizer or function that implements it. Each row runs a few steps of that
implementation and of the rule with the same estimates, and the two must agree in float64 to 1e-12.
The rule's side is :func:`blrlib.blr_step` (or :func:`blrlib.improved_blr_step`), itself checked at
every step against the natural-parameter definition written in this file (``natural_step``), which
does not use the step kernels that ``blr_step`` shares with the optimizers. A row that used a wrong
mapping (rho for lr, N missing, the prior in the wrong place) fails: ``test_a_planted_error_fails``
checks that the comparison can fail.

The problem: logistic regression with N = 24 examples in 5 dimensions, labels in {-1, +1},
per-example loss :math:`\ell_i(\theta) = \log(1 + e^{-y_i x_i^\top\theta})`, prior precision
:math:`\delta`, :math:`\bar\ell(\theta) = \sum_i \ell_i(\theta) + \tfrac\delta2\|\theta\|^2`.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import grad, hessian, vmap

import blrlib
from blrlib import classical
from blrlib.dropout import dropout_rule_step
from blrlib.optim import IVON
from blrlib.optim.bayesbinn import STE, BayesBiNN, binary_rule_step, relaxation_scale, relaxed_sample
from blrlib.optim.teaching import (
    RuleRMSprop,
    RuleSGD,
    modified_rule,
    modified_rule_init,
    rule_rmsprop,
    rule_rmsprop_init,
    rule_sgd,
    rule_sgd_init,
)
from blrlib.optim.vogn import OGN, VOGN

TOL = dict(rtol=1e-12, atol=1e-12)
N, D, DELTA, RHO, STEPS = 24, 5, 0.7, 0.3, 3
DT = torch.float64


def data():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(N, D, generator=g, dtype=DT)
    y = torch.where(torch.rand(N, generator=g, dtype=DT) < 0.5, -1.0, 1.0).to(DT)
    return X, y


X, Y = data()
THETA0 = 0.1 * torch.arange(1, D + 1, dtype=DT)


def per_example(theta, X=X, Y=Y):
    return F.softplus(-Y * (X @ theta))


def mean_loss(theta):  # the minibatch-mean loss that loss.backward() differentiates
    return per_example(theta).mean()


def total(theta):  # sum of the per-example losses plus the prior
    return per_example(theta).sum() + 0.5 * DELTA * (theta * theta).sum()


def param():
    return torch.nn.Parameter(THETA0.clone())


# ----------------------------------------------------------------------------------- the rule
def natural_step(q, grads, rho):
    """The rule in natural parameters, written here from its definition and independent of the step
    kernels that blr_step shares with the optimizers: lambda' = lambda - rho (grad - grad_mu H(q))."""
    ent = q.entropy_gradient_expectation()
    return q._replace(q.NaturalParams(*(lam - rho * (g - e) for lam, g, e in zip(q.natural_params, grads, ent))))


def natural_improved_step(q, grads, rho):
    """The improved rule (Lin, Schmidt & Khan 2020) for a diagonal Gaussian, in natural parameters:
    S' = (1 - rho) S + rho H + rho^2/2 (S - H)^2 / S, (S m)' = S' m - rho (g_mu1 + H m), H = 2 g_mu2."""
    s, m = q.precision, q.mean
    h = 2.0 * grads[1]
    s_new = (1 - rho) * s + rho * h + 0.5 * rho**2 * (s - h) ** 2 / s
    return q._replace(q.NaturalParams(s_new * m - rho * (grads[0] + h * m), -0.5 * s_new))


def rule(q, grads, rho, improved=False):
    """One step of the rule: blrlib's blr_step / improved_blr_step, checked against the natural-parameter
    definition above at 1e-12, and the latter returned (so a wrong kernel cannot agree with itself)."""
    ours = (blrlib.improved_blr_step if improved else blrlib.blr_step)(q, grads, rho)
    ref = (natural_improved_step if improved else natural_step)(q, grads, rho)
    for a, b in zip(ours.natural_params, ref.natural_params):
        torch.testing.assert_close(a, b, **TOL)
    return ref


# ----------------------------------------------------------------------------------- the rows
def row_gradient_descent():
    """Fixed-covariance Gaussian, delta method, rho sigma^2 = lr: gradient descent."""
    lr = 0.05
    ours = classical.gradient_descent(grad(total), THETA0.clone(), lr, STEPS)[-1]
    q = blrlib.FixedCovarianceGaussian.from_mean(THETA0, variance=lr / RHO)
    for _ in range(STEPS):
        q = rule(q, (grad(total)(q.mean),), RHO)
    return ours, q.mean


def row_newton():
    """Full Gaussian, delta method, rho = 1: Newton's method."""
    ours = classical.newton(grad(total), hessian(total), THETA0.clone(), STEPS)[-1]
    q = blrlib.FullGaussian.from_mean_precision(THETA0, torch.eye(D, dtype=DT))
    for _ in range(STEPS):
        q = rule(q, q.gradient_wrt_expectation(grad(total)(q.mean), hessian(total)(q.mean)), 1.0)
    return ours, q.mean


def _fixed_cov_rule(variance):
    q = blrlib.FixedCovarianceGaussian.from_mean(THETA0, variance=variance)
    for _ in range(STEPS):
        q = rule(q, (N * grad(mean_loss)(q.mean) + DELTA * q.mean,), RHO)
    return q.mean


def row_rule_sgd_class():
    """Fixed-covariance Gaussian, delta method, minibatch gradient: RuleSGD (torch's SGD)."""
    p = param()
    opt = RuleSGD([p], rho=RHO, variance=0.01, ess=N, prior_precision=DELTA)
    for _ in range(STEPS):
        opt.zero_grad()
        mean_loss(p).backward()
        opt.step()
    return p.detach(), _fixed_cov_rule(0.01)


def row_rule_sgd_function():
    """The functional form rule_sgd."""
    st = rule_sgd_init(THETA0)
    for _ in range(STEPS):
        st = rule_sgd(st, grad(mean_loss)(st.mean), rho=RHO, variance=0.01, ess=N, prior_precision=DELTA)
    return st.mean, _fixed_cov_rule(0.01)


def row_dropout():
    """Spike-and-slab slabs, delta method on the masked network: the dropout step (importance weight 1/p)."""
    p_keep = 0.5
    mask = (torch.arange(D) % 2 == 0).to(DT)
    m = THETA0.clone()
    q = blrlib.FixedCovarianceGaussian.from_mean(THETA0, variance=0.01)
    for _ in range(STEPS):
        g_m = mask * grad(mean_loss)(mask * m)
        m = dropout_rule_step(m, g_m, rho=RHO, variance=0.01, keep_prob=p_keep, ess=N, prior_precision=DELTA)
        gq = mask * grad(mean_loss)(mask * q.mean)
        q = rule(q, ((N / p_keep) * gq + DELTA * q.mean,), RHO)
    return m, q.mean


def _diag_rule(s0, curvature, improved=False, sampler=None):
    """blr_step (or improved_blr_step) on a diagonal Gaussian with gradient N g + delta m and the
    given Hessian estimate curvature(m, s) (Bonnet/Price estimates when ``sampler`` gives theta)."""
    q = blrlib.DiagonalGaussian.from_mean_precision(THETA0, torch.full((D,), s0, dtype=DT))
    for t in range(STEPS):
        g, h = curvature(q.mean, q.precision, t)
        q = rule(q, q.gradient_wrt_expectation(g, h), RHO, improved=improved)
    return q


def _gradsq(m, s, t):
    g = grad(mean_loss)(m)
    return N * g + DELTA * m, N * g * g + DELTA


def row_rule_rmsprop_class():
    """Diagonal Gaussian, delta method, Hessian ~ N g^2: RuleRMSprop."""
    p = param()
    opt = RuleRMSprop([p], lr=RHO, ess=N, prior_precision=DELTA, init_precision=5.0)
    for _ in range(STEPS):
        opt.zero_grad()
        mean_loss(p).backward()
        opt.step()
    q = _diag_rule(5.0, _gradsq)
    return torch.cat([p.detach(), opt.posterior_precision()[0]]), torch.cat([q.mean, q.precision])


def row_rule_rmsprop_function():
    """The functional form rule_rmsprop."""
    st = rule_rmsprop_init(THETA0, 5.0)
    for _ in range(STEPS):
        st = rule_rmsprop(st, grad(mean_loss)(st.mean), rho=RHO, ess=N, prior_precision=DELTA)
    q = _diag_rule(5.0, _gradsq)
    return torch.cat([st.mean, st.precision]), torch.cat([q.mean, q.precision])


def row_modified_rule_rule_settings():
    """modified_rule with the rule's switches (per-example scaling v = s/N, w = delta/N)."""
    st = modified_rule_init(THETA0, 5.0 / N)
    for _ in range(STEPS):
        st = modified_rule(st, grad(mean_loss)(st.mean), lr=RHO, rho=RHO, weight_decay=DELTA / N, hessian="rule")
    q = _diag_rule(5.0, _gradsq)
    return torch.cat([st.mean, N * st.second_moment]), torch.cat([q.mean, q.precision])


def _per_example_closure(p):
    return lambda: per_example(p)


def _gauss_newton_at(theta, m):
    G = vmap(grad(lambda th, x, y: F.softplus(-y * (x @ th))), in_dims=(None, 0, 0))(theta, X, Y)
    return N * G.mean(0) + DELTA * m, N * (G * G).mean(0) + DELTA


def row_ogn():
    """Diagonal Gaussian, delta method, Gauss-Newton Hessian: OGN."""
    p = param()
    opt = OGN([p], lr=RHO, ess=N, beta2=1 - RHO, prior_precision=DELTA, init_precision=5.0)
    for _ in range(STEPS):
        opt.step(_per_example_closure(p))
    q = _diag_rule(5.0, lambda m, s, t: _gauss_newton_at(m, m))
    return torch.cat([p.detach(), opt.posterior_precision()[0]]), torch.cat([q.mean, q.precision])


def row_vogn():
    """Diagonal Gaussian, Monte Carlo (one sample), Gauss-Newton Hessian: VOGN."""
    p = param()
    opt = VOGN([p], lr=RHO, ess=N, beta2=1 - RHO, prior_precision=DELTA, init_precision=5.0,
               generator=torch.Generator().manual_seed(3))
    for _ in range(STEPS):
        opt.step(_per_example_closure(p))
    gen = torch.Generator().manual_seed(3)

    def estimate(m, s, t):
        eps = torch.randn((D,), generator=gen, dtype=DT)
        return _gauss_newton_at(m + eps * s.rsqrt(), m)

    q = _diag_rule(5.0, estimate)
    return torch.cat([p.detach(), opt.posterior_precision()[0]]), torch.cat([q.mean, q.precision])


def row_ivon():
    """Diagonal Gaussian, Monte Carlo with Price's Hessian, the improved rule: IVON
    (beta1 = 0, alpha = rho: rescale_lr=False; posterior precision N (h + delta/N))."""
    noises = []

    def noise_fn(bufs, group):
        for b in bufs:
            b.normal_(generator=gen_ivon)
            noises.append(b.clone())

    gen_ivon = torch.Generator().manual_seed(4)
    p = param()
    wd = DELTA / N  # IVON's prior precision is per example
    opt = IVON([p], lr=RHO, ess=N, hess_init=0.5, beta1=0.0, beta2=1 - RHO, weight_decay=wd,
               rescale_lr=False, noise_fn=noise_fn)
    for _ in range(STEPS):
        with opt.sampled_params(train=True):
            opt.zero_grad()
            mean_loss(p).backward()
        opt.step()

    def price(m, s, t):
        sigma = s.rsqrt()
        g = grad(mean_loss)(m + sigma * noises[t])
        # IVON's Price estimate of the per-example Hessian: g eps / sigma_ivon with sigma_ivon = sigma
        return N * g + DELTA * m, N * (g * noises[t] / sigma) + DELTA

    q = _diag_rule(N * (0.5 + wd), price, improved=True)
    prec = N * (opt.state[p]["hess"] + wd)
    return torch.cat([p.detach(), prec]), torch.cat([q.mean, q.precision])


LAM0 = 0.2 * torch.arange(-2, D - 2, dtype=DT)


def _bernoulli_rule(estimate):
    q = blrlib.Bernoulli((LAM0.clone(),), support=(-1.0, 1.0))
    for t in range(STEPS):
        q = rule(q, (estimate(q.natural_params[0], t),), RHO)
    return q.natural_params[0]


def row_binary_rule_step():
    """Bernoulli on {-1, +1}, delta method at the mean tanh(lambda): binary_rule_step."""
    lam = LAM0.clone()
    for _ in range(STEPS):
        lam = binary_rule_step(lam, N * grad(mean_loss)(torch.tanh(lam)), lr=RHO)
    return lam, _bernoulli_rule(lambda lam, t: N * grad(mean_loss)(torch.tanh(lam)))


def row_ste_mean():
    """Bernoulli on {-1, +1}, delta method: STE(forward="mean")."""
    p = torch.nn.Parameter(LAM0.clone())
    opt = STE([p], lr=RHO, ess=N, forward="mean")
    for _ in range(STEPS):
        with opt.sampled_params(train=True):
            mean_loss(p).backward()
        opt.step()
    return p.detach(), _bernoulli_rule(lambda lam, t: N * grad(mean_loss)(torch.tanh(lam)))


def row_bayesbinn():
    """Bernoulli on {-1, +1}, Gumbel-softmax relaxation: BayesBiNN."""
    tau = 0.8
    p = torch.nn.Parameter(LAM0.clone())
    opt = BayesBiNN([p], lr=RHO, ess=N, temperature=tau, generator=torch.Generator().manual_seed(6))
    for _ in range(STEPS):
        with opt.sampled_params(train=True):
            mean_loss(p).backward()
        opt.step()
    gen = torch.Generator().manual_seed(6)

    def estimate(lam, t):
        u = torch.rand((D,), generator=gen, dtype=DT)
        return N * relaxation_scale(lam, u, tau) * grad(mean_loss)(relaxed_sample(lam, u, tau))

    return p.detach(), _bernoulli_rule(estimate)


ROWS = {
    "gradient descent (classical.gradient_descent)": row_gradient_descent,
    "Newton (classical.newton)": row_newton,
    "SGD (RuleSGD)": row_rule_sgd_class,
    "SGD (rule_sgd)": row_rule_sgd_function,
    "dropout (dropout_rule_step)": row_dropout,
    "RMSprop, the rule's (RuleRMSprop)": row_rule_rmsprop_class,
    "RMSprop, the rule's (rule_rmsprop)": row_rule_rmsprop_function,
    "RMSprop, the rule's (modified_rule)": row_modified_rule_rule_settings,
    "OGN": row_ogn,
    "VOGN": row_vogn,
    "IVON (improved rule)": row_ivon,
    "binary rule (binary_rule_step)": row_binary_rule_step,
    "STE (forward='mean')": row_ste_mean,
    "BayesBiNN": row_bayesbinn,
}


@pytest.mark.parametrize("name", list(ROWS))
def test_algorithm_is_the_rule(name):
    ours, rule = ROWS[name]()
    assert torch.isfinite(rule).all()
    torch.testing.assert_close(ours.detach(), rule.detach(), **TOL)


def test_a_planted_error_fails():
    """The comparison can fail: the rule's SGD with rho/2 in place of rho is far from RuleSGD."""
    ours, _ = row_rule_sgd_class()
    q = blrlib.FixedCovarianceGaussian.from_mean(THETA0, variance=0.01)
    for _ in range(STEPS):
        q = natural_step(q, (N * grad(mean_loss)(q.mean) + DELTA * q.mean,), RHO / 2)
    with pytest.raises(AssertionError):
        torch.testing.assert_close(ours.detach(), q.mean, **TOL)
