r"""Laplace's method from the Bayesian learning rule, for loss functions and for ``torch.nn.Module`` s.

With the delta method, :math:`\mathbb{E}_q[\nabla\bar\ell] \approx \nabla\bar\ell(m)` and
:math:`\mathbb{E}_q[\nabla^2\bar\ell] \approx \nabla^2\bar\ell(m)`, the rule for a Gaussian
:math:`q = \mathcal{N}(m, S^{-1})` reads

.. math::

    S \leftarrow (1-\rho)\,S + \rho\,\nabla^2\bar\ell(m), \qquad m \leftarrow m - \rho\,S^{-1}\nabla\bar\ell(m),

whose fixed points are :math:`\nabla\bar\ell(m_\star) = 0` and :math:`S_\star = \nabla^2\bar\ell(m_\star)`: the
Laplace approximation :math:`\mathcal{N}(m_\star, S_\star^{-1})`. With expectations taken by quadrature instead,
the fixed point is :math:`\mathbb{E}_q[\nabla\bar\ell] = 0`, :math:`S = \mathbb{E}_q[\nabla^2\bar\ell]`: the
Gaussian variational approximation. :func:`gaussian_fixed_point` iterates the rule to either.

:class:`Laplace` fits a Laplace approximation to the weights of a ``torch.nn.Module`` trained to a minimum of
:math:`\bar\ell(w) = L(f_w(X), y) + \tfrac{\delta}{2}\|w\|^2` (``loss_fn`` is :math:`L`, a sum over examples of
negative log-likelihoods; ``prior_precision`` is :math:`\delta`): over all weights with a full or diagonal
precision, or over the last linear layer only. Its ``fit`` is the delta-method rule started at the trained
weights; ``sample`` draws weights; ``predictive`` gives the mean and variance of the network's output.
"""

from __future__ import annotations

import math
import warnings
from typing import Callable

import torch
from torch.func import functional_call, jacrev

from ._validation import check_rho
from .estimators import delta_method
from .families import DiagonalGaussian, FullGaussian
from .rule import blr_step, improved_blr_step

__all__ = ["gaussian_fixed_point", "Laplace", "FixedPointResult"]


class FixedPointResult:
    """What :func:`gaussian_fixed_point` returns: the Gaussian, the steps taken and the last change in the mean."""

    def __init__(self, q, num_steps: int, mean_change: float):
        self.q, self.num_steps, self.mean_change = q, num_steps, mean_change

    def __iter__(self):
        return iter((self.q, self.num_steps, self.mean_change))

    def __repr__(self) -> str:
        return f"FixedPointResult(q={self.q!r}, num_steps={self.num_steps}, mean_change={self.mean_change:.3g})"


def gaussian_fixed_point(
    loss: Callable[[torch.Tensor], torch.Tensor],
    q0: FullGaussian,
    *,
    method: str | None = None,
    rho: float = 1.0,
    max_steps: int = 100,
    tol: float = 1e-12,
    num_points: int | None = None,
    improved: bool = False,
    expectations: Callable | None = None,
) -> FixedPointResult:
    r"""Iterate the rule from ``q0`` until the mean moves by less than ``tol`` (max-norm) or ``max_steps``.

    ``method="delta"`` (the default) gives Laplace's method (with ``rho=1``, Newton's method carrying its
    Hessian); ``method="gauss_hermite"`` takes both expectations by tensor-product Gauss–Hermite quadrature with
    ``num_points`` nodes per dimension (default 8) and converges to the Gaussian variational approximation (use
    it for a few parameters only). ``improved=True`` takes the positivity-preserving step of Lin, Schmidt &
    Khan (2020) instead of the plain rule. ``expectations(q)``, when given, replaces both: it returns the
    estimates of :math:`\mathbb{E}_q[\nabla\bar\ell]` and :math:`\mathbb{E}_q[\nabla^2\bar\ell]` (for example
    :func:`blrlib.inference.quadrature.gauss_hermite_glm`); then ``loss`` may be ``None`` and ``method`` and
    ``num_points`` must be left unset.
    """
    if expectations is not None:
        if not callable(expectations):
            raise ValueError(f"Invalid expectations: {expectations!r} (must be callable)")
        for name, value in (("method", method), ("num_points", num_points)):
            if value is not None:
                raise ValueError(f"Invalid {name}: {value!r} (must be left unset when expectations is given)")
    elif not callable(loss):
        raise ValueError(f"Invalid loss: {loss!r} (must be callable unless expectations is given)")
    method = "delta" if method is None else method
    num_points = 8 if num_points is None else num_points
    if method not in ("delta", "gauss_hermite"):
        raise ValueError(f"Invalid method: {method!r} (must be 'delta' or 'gauss_hermite')")
    if not isinstance(q0, FullGaussian):
        raise ValueError(f"Invalid q0: {type(q0).__name__} (must be a FullGaussian)")
    if isinstance(max_steps, bool) or int(max_steps) != max_steps or max_steps < 1:
        raise ValueError(f"Invalid max_steps: {max_steps} (must be a positive integer)")
    if not tol > 0:
        raise ValueError(f"Invalid tol: {tol} (must be positive)")
    rho = check_rho(rho)
    step = improved_blr_step if improved else blr_step
    q, change = q0, math.inf
    for k in range(1, int(max_steps) + 1):
        if expectations is not None:
            derivs = expectations(q)
        elif method == "delta":
            derivs = delta_method(loss, q.mean, hessian_kind="full")
        else:
            from .inference.quadrature import gauss_hermite

            derivs = gauss_hermite(loss, q, num_points)
        new = step(q, q.gradient_wrt_expectation(derivs.gradient, derivs.hessian), rho)
        change = float((new.mean - q.mean).abs().max())
        q = new
        if change < tol:
            return FixedPointResult(q, k, change)
    return FixedPointResult(q, int(max_steps), change)


_SUBSETS = ("all", "last_layer")
_HESSIANS = ("full", "diagonal")
_CURVATURES = ("hessian", "gauss_newton")


class Laplace:
    r"""A Laplace approximation :math:`\mathcal{N}(m_\star, S_\star^{-1})` of the weights of a ``torch.nn.Module``.

    Args:
        model: the network :math:`f_w`, trained to (near) a minimum of :math:`\bar\ell`; not modified.
        loss_fn: ``loss_fn(outputs, targets)``, the negative log-likelihood summed over the examples
            (for regression with noise :math:`\sigma`: ``((outputs - targets)**2).sum() / (2 * sigma**2)``).
        prior_precision: :math:`\delta > 0` of the prior :math:`\mathcal{N}(0, \delta^{-1} I)` on the weights
            in ``subset`` (default 1.0).
        subset: ``"all"`` (every parameter) or ``"last_layer"`` (the last ``nn.Linear`` in
            ``model.modules()``; the other weights stay at their trained values).
        hessian: ``"full"`` (a :class:`~blrlib.families.FullGaussian`) or ``"diagonal"``
            (a :class:`~blrlib.families.DiagonalGaussian` with the diagonal of the curvature).
        curvature: ``"hessian"`` (the exact Hessian of :math:`\bar\ell`) or ``"gauss_newton"``
            (:math:`J^\top \nabla^2_f L\, J + \delta I` with :math:`J = \partial f/\partial w`, positive
            semi-definite for a convex :math:`L`).

    Example::

        la = Laplace(net, loss_fn, prior_precision=1.0, subset="last_layer").fit(X, y)
        mean, variance = la.predictive(X_test)   # of the network output f(x)
    """

    def __init__(self, model: torch.nn.Module, loss_fn: Callable, *, prior_precision: float = 1.0,
                 subset: str = "all", hessian: str = "full", curvature: str = "hessian"):
        if not isinstance(model, torch.nn.Module):
            raise ValueError(f"Invalid model: {type(model).__name__} (must be a torch.nn.Module)")
        if not callable(loss_fn):
            raise ValueError(f"Invalid loss_fn: {loss_fn!r} (must be callable)")
        delta = float(prior_precision)
        if not (delta > 0 and math.isfinite(delta)):
            raise ValueError(f"Invalid prior_precision: {prior_precision} (must be a finite positive number)")
        for name, value, allowed in (("subset", subset, _SUBSETS), ("hessian", hessian, _HESSIANS),
                                     ("curvature", curvature, _CURVATURES)):
            if value not in allowed:
                raise ValueError(f"Invalid {name}: {value!r} (must be one of {allowed})")
        self.model, self.loss_fn, self.prior_precision = model, loss_fn, delta
        self.subset, self.hessian, self.curvature = subset, hessian, curvature
        params = dict(model.named_parameters())
        if not params:
            raise ValueError("Invalid model: it has no parameters")
        if subset == "last_layer":
            linear = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
            if not linear:
                raise ValueError("Invalid subset: 'last_layer' needs an nn.Linear layer in the model")
            last = {id(p) for p in linear[-1].parameters()}
            self._names = [n for n, p in params.items() if id(p) in last]
        else:
            self._names = list(params)
        self._shapes = [params[n].shape for n in self._names]
        self._fixed = {n: p.detach() for n, p in params.items() if n not in self._names}
        self._start = torch.cat([params[n].detach().reshape(-1) for n in self._names])
        self.posterior = None

    # ------------------------------------------------------------------ helpers
    @property
    def num_params(self) -> int:
        """The number of weights the approximation covers."""
        return self._start.numel()

    def _unflatten(self, flat: torch.Tensor) -> dict:
        out, start = {}, 0
        for name, shape in zip(self._names, self._shapes):
            n = math.prod(shape)
            out[name] = flat[start:start + n].reshape(shape)
            start += n
        return out

    def forward_with(self, flat_weights: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """:math:`f_w(x)` with the weights in ``subset`` set to ``flat_weights`` (the module is not changed)."""
        return functional_call(self.model, {**self._fixed, **self._unflatten(flat_weights)}, (inputs,))

    def _check_data(self, inputs, targets=None):
        if not isinstance(inputs, torch.Tensor):
            raise ValueError(f"Invalid inputs: {type(inputs).__name__} (must be a tensor)")
        if targets is None:
            return
        if not isinstance(targets, torch.Tensor):
            raise ValueError(f"Invalid targets: {type(targets).__name__} (must be a tensor)")
        if inputs.shape[0] != targets.shape[0]:
            raise ValueError(f"Invalid targets: {targets.shape[0]} examples but inputs has {inputs.shape[0]} "
                             "(must match)")
        with torch.no_grad():
            outputs = self.forward_with(self._start, inputs)
            if targets.is_floating_point() and targets.shape != outputs.shape:
                # real-valued targets (regression, soft labels) pair with the outputs entry by entry; a
                # shape mismatch would broadcast silently, e.g. (n, 1) against (n,) to (n, n)
                raise ValueError(f"Invalid targets: shape {tuple(targets.shape)} (real-valued targets must match "
                                 f"the model output shape {tuple(outputs.shape)})")
            try:  # integer targets (class labels) are checked by the loss itself
                value = self.loss_fn(outputs, targets)
            except Exception as err:
                raise ValueError(f"Invalid targets: loss_fn(outputs, targets) failed for outputs of shape "
                                 f"{tuple(outputs.shape)} and targets of shape {tuple(targets.shape)} "
                                 f"(must be accepted by loss_fn): {err}") from err
        if not (isinstance(value, torch.Tensor) and value.numel() == 1):
            raise ValueError(f"Invalid loss_fn: it returned {value!r} (must return a scalar tensor, the loss "
                             "summed over the examples)")

    def loss(self, inputs: torch.Tensor, targets: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        r""":math:`\bar\ell(w) = L(f_w(X), y) + \tfrac{\delta}{2}\|w\|^2` as a function of the flat weights."""
        self._check_data(inputs, targets)

        def loss_bar(flat):
            return self.loss_fn(self.forward_with(flat, inputs), targets) + 0.5 * self.prior_precision * (flat**2).sum()

        return loss_bar

    def _gauss_newton(self, flat, inputs, targets):
        r"""The Gauss–Newton matrix :math:`\sum_i J_i^\top H_i J_i + \delta I`, or only its diagonal.

        :math:`J_i = \partial f_w(x_i)/\partial w` (:math:`K\times P` for :math:`K` outputs per example) and
        :math:`H_i = \nabla^2_{f_i} L` is the :math:`K\times K` Hessian of the loss in example :math:`i`'s outputs
        (``loss_fn`` is a sum over examples, so the output Hessian is block diagonal). Memory: the Jacobian,
        :math:`O(nKP)`, the per-example blocks, :math:`O(nK^2)`, and the result: :math:`O(P^2)` for the full
        matrix, :math:`O(P)` for the diagonal, which is formed as :math:`\sum_i (J_i \odot H_i J_i)` summed over
        outputs, without a :math:`P\times P` matrix.
        """
        with torch.no_grad():
            outputs = self.forward_with(flat, inputs)
        n, out_shape = outputs.shape[0], outputs.shape[1:]
        jac = jacrev(lambda w: self.forward_with(w, inputs).reshape(n, -1))(flat)  # (n, K, P)

        def example_loss(f, t):
            return self.loss_fn(f.reshape(1, *out_shape), t.unsqueeze(0))

        out_hess = torch.func.vmap(torch.func.hessian(example_loss))(outputs.reshape(n, -1), targets)  # (n, K, K)
        weighted = torch.einsum("ikl,ilp->ikp", out_hess, jac)
        if self.hessian == "diagonal":
            return (jac * weighted).sum((0, 1)) + self.prior_precision
        eye = torch.eye(flat.numel(), dtype=flat.dtype, device=flat.device)
        return torch.einsum("ikp,ikq->pq", jac, weighted) + self.prior_precision * eye

    # ------------------------------------------------------------------ the fit
    def fit(self, inputs: torch.Tensor, targets: torch.Tensor, *, num_steps: int = 1, rho: float = 1.0,
            assume_mode: bool = False) -> "Laplace":
        r"""Run ``num_steps`` delta-method steps of the rule from the module's weights, with step size ``rho``.

        Starting from :math:`m_0` = the trained weights and :math:`S_0 = \delta I`, each step is
        :math:`S \leftarrow (1-\rho)S + \rho C(m)`, :math:`m \leftarrow m - \rho S^{-1}\nabla\bar\ell(m)` with
        :math:`C` the chosen curvature (full or its diagonal). With ``rho=1`` one step already gives
        :math:`S = C(m_0)`; at a minimum the mean hardly moves. Raises ``ValueError`` before a step whose new
        precision :math:`(1-\rho)S + \rho C(m)` is not positive definite (with ``rho=1``: the curvature is not,
        so the weights are not at a minimum). Returns ``self``.

        ``assume_mode=True`` treats the trained weights as the minimiser: the rule's step is taken with the
        gradient set to zero, so the mean stays at the trained weights and only the precision moves (the usual
        post-hoc Laplace approximation). Use it when the weights are a (nearly) converged minimum and a Newton
        step with an approximate curvature (diagonal, Gauss–Newton) would move them far; ``gradient_norm``
        still reports the size of the gradient that was ignored.
        """
        if isinstance(num_steps, bool) or int(num_steps) != num_steps or num_steps < 1:
            raise ValueError(f"Invalid num_steps: {num_steps} (must be a positive integer)")
        rho = check_rho(rho)
        loss_bar = self.loss(inputs, targets)
        m0 = self._start.clone()
        s0 = torch.full_like(m0, self.prior_precision)
        q = (FullGaussian.from_mean_precision(m0, torch.diag(s0)) if self.hessian == "full"
             else DiagonalGaussian.from_mean_precision(m0, s0))
        for _ in range(int(num_steps)):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch.func forward-mode notices
                derivs = delta_method(loss_bar, q.mean, hessian_kind="none" if self.curvature == "gauss_newton"
                                      else self.hessian)
                curv = derivs.hessian
                if self.curvature == "gauss_newton":
                    curv = self._gauss_newton(q.mean, inputs, targets)
            gradient = torch.zeros_like(derivs.gradient) if assume_mode else derivs.gradient
            grad_mu = q.gradient_wrt_expectation(gradient, curv)
            try:
                q = blr_step(q, grad_mu, rho)  # refuses a precision that is not PD
            except ValueError as err:
                raise ValueError(self._not_positive_definite(curv)) from err
        self.posterior = q
        self.gradient_norm = float(torch.linalg.vector_norm(derivs.gradient))
        return self

    def _not_positive_definite(self, curv) -> str:
        """The message of ``fit`` when the rule's step leaves the positive-definite cone."""
        sym = 0.5 * (curv + curv.T) if self.hessian == "full" else curv
        smallest = float(torch.linalg.eigvalsh(sym).min() if self.hessian == "full" else sym.min())
        return (
            f"Invalid curvature at the weights: not positive definite (smallest eigenvalue {smallest:.4g}); "
            "the weights are not at a minimum of the regularised loss. Train further, raise "
            "prior_precision, use curvature='gauss_newton', or subset='last_layer'")

    def _require_fit(self):
        if self.posterior is None:
            raise ValueError("Invalid state: call fit(inputs, targets) before sampling or predicting")

    @property
    def mean(self) -> torch.Tensor:
        """The mean of each weight (shape ``(num_params,)``)."""
        self._require_fit()
        return self.posterior.mean

    @property
    def variance(self) -> torch.Tensor:
        """The marginal variance of each weight (shape ``(num_params,)``)."""
        self._require_fit()
        if isinstance(self.posterior, FullGaussian):
            return torch.diagonal(self.posterior.covariance).clone()
        return 1.0 / self.posterior.precision

    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``num_samples`` flat weight vectors (shape ``(num_samples, num_params)``)."""
        self._require_fit()
        if isinstance(num_samples, bool) or int(num_samples) != num_samples or num_samples < 1:
            raise ValueError(f"Invalid num_samples: {num_samples} (must be a positive integer)")
        return self.posterior.sample(int(num_samples), generator=generator)

    def predictive(self, inputs: torch.Tensor, *, method: str = "linearized", num_samples: int = 200,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        r"""Mean and variance of the network output :math:`f(x)` under the approximation (not of :math:`y`).

        ``method="linearized"``: :math:`f_w(x) \approx f_m(x) + J(x)(w - m)`, so the mean is :math:`f_m(x)` and the
        variance :math:`J(x) S^{-1} J(x)^\top` (per output); exact for ``subset="last_layer"``, where :math:`f` is
        linear in the weights. ``method="samples"``: the average and variance of :math:`f_w(x)` over
        ``num_samples`` draws. Add the observation noise to get the predictive of :math:`y`.
        """
        self._require_fit()
        self._check_data(inputs)
        if method not in ("linearized", "samples"):
            raise ValueError(f"Invalid method: {method!r} (must be 'linearized' or 'samples')")
        m = self.posterior.mean
        if method == "samples":
            draws = self.sample(num_samples, generator=generator)
            outputs = torch.stack([self.forward_with(w, inputs) for w in draws])
            return outputs.mean(0).detach(), outputs.var(0, unbiased=False).detach()
        with torch.no_grad():
            mean = self.forward_with(m, inputs)
        jac = jacrev(lambda w: self.forward_with(w, inputs).reshape(-1))(m).detach()
        if isinstance(self.posterior, FullGaussian):
            chol = torch.linalg.cholesky(self.posterior.precision)
            half = torch.linalg.solve_triangular(chol, jac.T, upper=False)  # L^{-1} J^T
            variance = (half * half).sum(0)
        else:
            variance = (jac * jac / self.posterior.precision).sum(1)
        return mean, variance.reshape(mean.shape)
