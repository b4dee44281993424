r"""Symbolic exponential families: derive, rather than restate, what the rule needs.

A family is given by its natural parameters :math:`\lambda` (SymPy symbols), its sufficient
statistics :math:`T(\theta)`, its log base measure and its log-partition :math:`A(\lambda)`. From these,
:class:`SymbolicFamily` derives

* the expectation parameters :math:`\mu = \nabla A(\lambda)`,
* the Fisher information :math:`F = \nabla^2 A(\lambda)`,
* the KL divergence as a Bregman divergence, and its second-order expansion
  :math:`\mathrm{KL}(q_\lambda\|q_{\lambda + d\lambda}) = \tfrac12 d\lambda^\top F d\lambda + O(\|d\lambda\|^3)`,
* the natural-gradient identity :math:`F^{-1}\nabla_\lambda f(\mu(\lambda)) = \nabla_\mu f(\mu)` for a
  generic differentiable :math:`f` (checked as :math:`\nabla_\lambda f = F\nabla_\mu f`),
* the entropy term of the rule, :math:`\nabla_\mu\mathcal{H} = -\lambda` for a constant base measure.

Ready-made families: :func:`bernoulli`, :func:`poisson`, :func:`gamma`, :func:`gaussian_fixed_variance`,
:func:`gaussian_1d` and :func:`gaussian_2d`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import sympy as sp

__all__ = [
    "SymbolicFamily",
    "bernoulli",
    "poisson",
    "gamma",
    "gaussian_fixed_variance",
    "gaussian_1d",
    "gaussian_2d",
    "is_zero",
]


def _tidy(expr):
    """Cheap canonical form: rational functions are cancelled, anything else is simplified."""
    expr = sp.sympify(expr)
    cancelled = sp.cancel(sp.together(expr))
    return cancelled if cancelled.is_rational_function() else sp.simplify(cancelled)


def is_zero(expr) -> bool:
    """True when SymPy reduces ``expr`` (a scalar or a matrix) to exactly zero."""
    if isinstance(expr, sp.MatrixBase):
        return all(is_zero(e) for e in expr)
    expr = sp.sympify(expr)
    return _tidy(expr) == 0 or sp.simplify(expr) == 0


@dataclass(frozen=True)
class SymbolicFamily:
    """An exponential family :math:`q(\\theta) = h(\\theta)\\exp(\\lambda^\\top T(\\theta) - A(\\lambda))` in SymPy."""

    name: str
    theta: tuple
    natural: sp.Matrix
    sufficient_statistics: sp.Matrix
    log_base_measure: sp.Expr
    log_partition: sp.Expr

    def __post_init__(self):
        if self.natural.shape != self.sufficient_statistics.shape:
            raise ValueError(
                f"natural has shape {self.natural.shape} but sufficient_statistics has shape "
                f"{self.sufficient_statistics.shape}; they must match"
            )

    # ------------------------------------------------------------------ derived quantities
    @cached_property
    def expectation_params(self) -> sp.Matrix:
        """:math:`\\mu = \\nabla_\\lambda A(\\lambda)`."""
        return sp.Matrix([_tidy(sp.diff(self.log_partition, lam)) for lam in self.natural])

    @cached_property
    def fisher(self) -> sp.Matrix:
        """:math:`F(\\lambda) = \\nabla^2_\\lambda A(\\lambda)`."""
        return sp.hessian(self.log_partition, list(self.natural)).applyfunc(_tidy)

    @property
    def log_density(self) -> sp.Expr:
        """:math:`\\log q(\\theta) = \\log h(\\theta) + \\lambda^\\top T(\\theta) - A(\\lambda)`."""
        return self.log_base_measure + (self.natural.T * self.sufficient_statistics)[0, 0] - self.log_partition

    def at(self, natural_values) -> dict:
        """A substitution dictionary that sets the natural parameters to ``natural_values``."""
        return dict(zip(self.natural, natural_values))

    def kl_divergence(self, natural_from, natural_to) -> sp.Expr:
        """:math:`\\mathrm{KL}(q_{\\lambda}\\|q_{\\lambda'}) = A(\\lambda') - A(\\lambda) - (\\lambda'-\\lambda)^\\top\\mu(\\lambda)`."""
        lam, lam_new = sp.Matrix(natural_from), sp.Matrix(natural_to)
        a_from = self.log_partition.subs(self.at(lam), simultaneous=True)
        a_to = self.log_partition.subs(self.at(lam_new), simultaneous=True)
        mu = self.expectation_params.subs(self.at(lam), simultaneous=True)
        return a_to - a_from - ((lam_new - lam).T * mu)[0, 0]

    def kl_hessian_at_zero(self) -> sp.Matrix:
        """The Hessian of :math:`d\\lambda \\mapsto \\mathrm{KL}(q_\\lambda\\|q_{\\lambda+d\\lambda})` at :math:`d\\lambda = 0`.

        Equal to :math:`F(\\lambda)`: the Fisher is the local metric of the KL divergence."""
        steps = sp.Matrix(sp.symbols(f"d0:{len(self.natural)}", real=True))
        kl = self.kl_divergence(self.natural, self.natural + steps)
        hess = sp.hessian(kl, list(steps))
        return hess.subs({s: 0 for s in steps}).applyfunc(_tidy)

    def natural_gradient_residual(self) -> sp.Matrix:
        """:math:`\\nabla_\\lambda f(\\mu(\\lambda)) - F(\\lambda)\\,[\\nabla_\\mu f](\\mu(\\lambda))` for a generic :math:`f`.

        Because :math:`F` is invertible (minimality), :func:`is_zero` of the result is the
        natural-gradient identity :math:`F^{-1}\\nabla_\\lambda f = \\nabla_\\mu f`; the form without the
        inverse keeps SymPy fast on larger families."""
        mus = sp.symbols(f"mu0:{len(self.natural)}", real=True)
        f = sp.Function("f")(*mus)
        mu_of_lambda = dict(zip(mus, self.expectation_params))
        composed = f.subs(mu_of_lambda, simultaneous=True)
        grad_lambda = sp.Matrix([sp.diff(composed, lam) for lam in self.natural])
        grad_mu = sp.Matrix([sp.diff(f, m) for m in mus]).subs(mu_of_lambda, simultaneous=True)
        return (grad_lambda - self.fisher * grad_mu).applyfunc(_tidy)

    def entropy_gradient_expectation(self) -> sp.Matrix:
        """:math:`\\nabla_\\mu\\mathcal{H}` for a constant base measure, derived through the chain rule.

        With :math:`\\mathcal{H}(\\lambda) = A(\\lambda) - \\lambda^\\top\\mu(\\lambda) - \\mathbb{E}[\\log h]` and
        :math:`\\log h` constant, :math:`\\nabla_\\mu\\mathcal{H} = F^{-1}\\nabla_\\lambda\\mathcal{H}`, which simplifies to
        :math:`-\\lambda`. Raises for a non-constant base measure."""
        if any(self.log_base_measure.has(t) for t in self.theta):
            raise ValueError(f"{self.name} has a base measure that depends on theta; the entropy gradient is not -lambda")
        entropy = self.log_partition - (self.natural.T * self.expectation_params)[0, 0]
        grad_lambda = sp.Matrix([sp.diff(entropy, lam) for lam in self.natural])
        return self.fisher.LUsolve(grad_lambda).applyfunc(_tidy)


# ====================================================================== catalogue
def bernoulli() -> SymbolicFamily:
    """Bernoulli on {0, 1}: :math:`T = \\theta`, :math:`A = \\log(1 + e^{\\lambda})`, :math:`\\mu = \\sigma(\\lambda)`."""
    lam = sp.Symbol("lambda", real=True)
    theta = sp.Symbol("theta", real=True)
    return SymbolicFamily("Bernoulli", (theta,), sp.Matrix([lam]), sp.Matrix([theta]), sp.Integer(0), sp.log(1 + sp.exp(lam)))


def poisson() -> SymbolicFamily:
    """Poisson: :math:`T = \\theta`, :math:`h = 1/\\theta!`, :math:`A = e^{\\lambda}` with :math:`\\lambda = \\log(\\text{rate})`."""
    lam = sp.Symbol("lambda", real=True)
    theta = sp.Symbol("theta", nonnegative=True, integer=True)
    return SymbolicFamily("Poisson", (theta,), sp.Matrix([lam]), sp.Matrix([theta]), -sp.log(sp.factorial(theta)), sp.exp(lam))


def gamma() -> SymbolicFamily:
    """Gamma(shape α, rate β): :math:`T = (\\log\\theta, \\theta)`, :math:`\\lambda = (\\alpha - 1, -\\beta)`,
    :math:`A = \\log\\Gamma(\\lambda_1 + 1) - (\\lambda_1 + 1)\\log(-\\lambda_2)`."""
    l1 = sp.Symbol("lambda1", real=True, positive=True)  # α - 1 > 0 keeps SymPy's simplifications clean
    l2 = sp.Symbol("lambda2", negative=True)
    theta = sp.Symbol("theta", positive=True)
    log_partition = sp.loggamma(l1 + 1) - (l1 + 1) * sp.log(-l2)
    return SymbolicFamily("Gamma", (theta,), sp.Matrix([l1, l2]), sp.Matrix([sp.log(theta), theta]), sp.Integer(0), log_partition)


def gaussian_fixed_variance(variance=None) -> SymbolicFamily:
    """:math:`\\mathcal{N}(m, \\sigma^2)` with :math:`\\sigma^2` fixed: :math:`\\lambda = m/\\sigma^2`,
    :math:`A = \\sigma^2\\lambda^2/2 + \\tfrac12\\log 2\\pi\\sigma^2`, :math:`h = e^{-\\theta^2/2\\sigma^2}`."""
    sigma2 = sp.Symbol("sigma2", positive=True) if variance is None else sp.sympify(variance)
    lam = sp.Symbol("lambda", real=True)
    theta = sp.Symbol("theta", real=True)
    log_partition = sigma2 * lam**2 / 2 + sp.log(2 * sp.pi * sigma2) / 2
    return SymbolicFamily("Gaussian (fixed variance)", (theta,), sp.Matrix([lam]), sp.Matrix([theta]), -(theta**2) / (2 * sigma2), log_partition)


def gaussian_1d() -> SymbolicFamily:
    """:math:`\\mathcal{N}(m, 1/s)`: :math:`T = (\\theta, \\theta^2)`, :math:`\\lambda = (s m, -s/2)`,
    :math:`A = -\\lambda_1^2/(4\\lambda_2) - \\tfrac12\\log(-2\\lambda_2) + \\tfrac12\\log 2\\pi`."""
    l1 = sp.Symbol("lambda1", real=True)
    l2 = sp.Symbol("lambda2", negative=True)
    theta = sp.Symbol("theta", real=True)
    log_partition = -(l1**2) / (4 * l2) - sp.log(-2 * l2) / 2 + sp.log(2 * sp.pi) / 2
    return SymbolicFamily("Gaussian", (theta,), sp.Matrix([l1, l2]), sp.Matrix([theta, theta**2]), sp.Integer(0), log_partition)


def gaussian_2d() -> SymbolicFamily:
    r"""The 2-D Gaussian :math:`\mathcal{N}(m, S^{-1})` in minimal form.

    :math:`T = (\theta_1, \theta_2, \theta_1^2, \theta_1\theta_2, \theta_2^2)` and
    :math:`\lambda = (Sm, -S_{11}/2, -S_{12}, -S_{22}/2)`; the log-partition is written through
    :math:`\Lambda = \begin{pmatrix}\lambda_3 & \lambda_4/2\\ \lambda_4/2 & \lambda_5\end{pmatrix} = -S/2`.
    """
    a1, a2, b12 = sp.symbols("lambda1 lambda2 lambda4", real=True)
    b11, b22 = sp.symbols("lambda3 lambda5", negative=True)
    t1, t2 = sp.symbols("theta1 theta2", real=True)
    big_lambda = sp.Matrix([[b11, b12 / 2], [b12 / 2, b22]])
    a = sp.Matrix([a1, a2])
    log_partition = -(a.T * big_lambda.inv() * a)[0, 0] / 4 - sp.log((-2 * big_lambda).det()) / 2 + sp.log(2 * sp.pi)
    stats = sp.Matrix([t1, t2, t1**2, t1 * t2, t2**2])
    return SymbolicFamily("Gaussian (2-D)", (t1, t2), sp.Matrix([a1, a2, b11, b12, b22]), stats, sp.Integer(0), sp.simplify(log_partition))
