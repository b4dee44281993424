r"""Binary neural networks from the Bayesian learning rule: the straight-through estimator and BayesBiNN.

Every binary weight :math:`\theta_i \in \{-1, +1\}` gets a Bernoulli candidate on the support
:math:`\{-1, +1\}` (:class:`blrlib.families.Bernoulli` with ``support=(-1, 1)``),

.. math::

    q_\lambda(\theta_i) = \exp\big(\lambda_i\theta_i - \log(e^{\lambda_i} + e^{-\lambda_i})\big), \qquad
    p_i = q(\theta_i = +1) = \sigma(2\lambda_i), \qquad \mu_i = \E_q[\theta_i] = \tanh(\lambda_i).

The model's parameter tensors hold the natural parameters :math:`\lambda` (the "latent weights"); the
weights the network computes with are written into them only inside :meth:`_BinaryRule.sampled_params`
blocks. With the loss of the whole data set written as :math:`\bar\ell(\theta) = N\,\hat\ell(\theta) -
\lambda_0^\top\theta`, where :math:`\hat\ell` is the *mean* loss of a minibatch (what ``loss.backward()``
differentiates), :math:`N` the number of training examples (``ess``) and :math:`\lambda_0` the natural
parameter of a Bernoulli prior (``prior_lambda``; 0 is the uniform prior), the rule is

.. math::

    \lambda \leftarrow (1-\rho)\,\lambda - \rho\,\big(\hat\gv_\mu - \lambda_0\big), \qquad
    \hat\gv_\mu \approx \nabla_\mu \E_q[N\hat\ell(\theta)],

and the two optimizers differ only in the estimate :math:`\hat\gv_\mu`:

* :class:`STE` -- the delta method, :math:`\E_q[\hat\ell(\theta)] \approx \hat\ell(w)`, so
  :math:`\hat\gv_\mu = N\nabla\hat\ell(w)`: the gradient with respect to the weights the network used is
  applied to the latent weights unchanged (straight through). ``forward="mean"`` takes
  :math:`w = \mu = \tanh\lambda` (the delta method at the mean, the rule exactly as in
  :func:`blrlib.rule.blr_step`); ``forward="sign"`` takes :math:`w = \mathrm{sign}(\lambda)`, the mode of
  :math:`q` (a binary network, the straight-through estimator practitioners use). With
  :math:`\eta = \rho N` the update is SGD with weight decay :math:`1/N` on the latent weights:
  :math:`\lambda \leftarrow \lambda - \eta(\nabla\hat\ell(w) + \lambda/N) + \rho\lambda_0`.
* :class:`BayesBiNN` -- the Gumbel-softmax (concrete) relaxation of Meng, Bachmann & Khan (2020):
  with :math:`\epsilon \sim \mathcal U(0, 1)`, :math:`\delta = \tfrac12\log\frac{\epsilon}{1-\epsilon}`
  and temperature :math:`\tau`, the network computes with the relaxed sample
  :math:`w_r = \tanh((\lambda + \delta)/\tau)` and

  .. math::

      \hat\gv_\mu = \frac1M\sum_{j=1}^M \sv^{(j)}\odot\gv^{(j)}, \qquad
      \gv^{(j)} = \nabla\hat\ell(w_r^{(j)}), \qquad
      \sv^{(j)} = \frac{N\,(1 - (w_r^{(j)})^2)}{\tau\,(1 - \tanh^2\lambda)},

  the reparameterised gradient :math:`\partial\hat\ell(w_r)/\partial\mu` of the relaxed loss
  (:math:`\partial w_r/\partial\lambda = (1-w_r^2)/\tau` and :math:`\partial\mu/\partial\lambda = 1 -
  \tanh^2\lambda`). This is Algorithm 1 of the paper. The ratio :math:`(1-w_r^2)/(1-\tanh^2\lambda) =
  \cosh^2\lambda/\cosh^2((\lambda+\delta)/\tau)` is computed in log space, so it stays finite when both
  hyperbolic tangents round to :math:`\pm 1`.

Learning-rate schedulers: ``torch.optim.lr_scheduler.OneCycleLR`` cycles a group's ``momentum`` by
default, which here is the averaging :math:`\beta` below (0 would become 0.95): pass
``cycle_momentum=False`` (the same recipe holds for every blrlib optimizer; the others have no
``momentum``/``betas`` key, so OneCycleLR refuses them without it).

Both optimizers optionally average the natural-gradient direction with momentum :math:`\beta`
(``momentum``; the paper's released code does this), with Adam's bias correction:

.. math::

    \mathbf{d} = \hat\gv_\mu + \lambda - \lambda_0, \qquad
    \mathbf{u} \leftarrow \beta\mathbf{u} + (1-\beta)\,\mathbf{d}, \qquad
    \lambda \leftarrow \lambda - \rho\,\mathbf{u}/(1-\beta^t);

:math:`\beta = 0` (the default) is the rule itself, :math:`\lambda \leftarrow \lambda - \rho\mathbf{d}`.

Protocol (both classes)::

    import torch
    from blrlib.optim.bayesbinn import BayesBiNN
    model = torch.nn.Linear(4, 3, bias=False)          # its weight holds lambda
    X, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
    opt = BayesBiNN(model.parameters(), lr=1e-2, ess=32, generator=torch.Generator().manual_seed(0))
    for _ in range(5):
        with opt.sampled_params(train=True):           # weights hold w_r here
            loss = torch.nn.functional.cross_entropy(model(X), y)
            loss.backward()                             # p.grad = gradient w.r.t. w_r
        opt.step()                                      # weights hold lambda again, now updated
    with torch.no_grad(), opt.binary_params():          # weights hold sign(lambda): a binary network
        pred = model(X).argmax(-1)

Entering ``sampled_params(train=True)`` clears the managed parameters' gradients (each sample has its
own gradient), and leaving it reads ``p.grad`` -- so ``backward`` must be called inside the block, as the
weights change on exit -- and adds its term to a running sum; the gradient stays in ``p.grad`` for
inspection. ``M`` blocks before :meth:`step` average ``M`` samples (``mc_samples`` is how many
``step(closure)`` draws); for :class:`STE` several blocks are gradient accumulation. The latent
:math:`\lambda` is restored in a ``finally`` clause, so an exception inside a block leaves no sampled
weights behind (and the failed sample is discarded). A NaN or infinite gradient raises
:class:`ValueError` on leaving the block; :math:`\lambda` and the optimizer state are left unchanged and
the samples of the current step are discarded.

With ``skip_nonfinite=True`` (both classes, default False) a NaN or infinite gradient does not raise:
the samples of the current step are discarded and the next :meth:`step` is skipped (``skipped_steps``
counts them), with :math:`\lambda` and the optimizer state unchanged.

Mixed precision: ``torch.autocast`` needs nothing special. ``torch.amp.GradScaler`` is supported through
the ``_step_supports_amp_scaling`` protocol: ``scaler.scale(loss).backward()`` inside the block,
``scaler.step(opt)`` and ``scaler.update()`` after it; :meth:`step` divides the sums (formed from the
scaled gradients) by the scale, and skips the update, discarding the samples, when the scaler found an
overflow. Pass ``skip_nonfinite=True`` with a scaler, or an overflowing gradient raises on leaving the
block. Do not call ``scaler.unscale_(opt)`` (the gradients were already read; this raises). Only the
last sample's ``p.grad`` is visible to the scaler: an overflow in an earlier sample of the same step
skips the step, but does not lower the scale.

Pass only the parameters that should be binary; real-valued ones (biases, normalisation layers) belong to
another optimizer, whose ``step`` can run beside this one.

References: M. E. Khan and H. Rue, "The Bayesian Learning Rule", JMLR 2023, Sec. 4.5;
X. Meng, R. Bachmann and M. E. Khan, "Training Binary Neural Networks using the Bayesian Learning Rule",
ICML 2020; Y. Bengio, N. Léonard and A. Courville, "Estimating or Propagating Gradients Through
Stochastic Neurons", 2013; M. Courbariaux, Y. Bengio and J.-P. David, "BinaryConnect", NeurIPS 2015;
C. J. Maddison, A. Mnih and Y. W. Teh, "The Concrete Distribution", ICLR 2017; E. Jang, S. Gu and
B. Poole, "Categorical Reparameterization with Gumbel-Softmax", ICLR 2017.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Callable, Iterator, Optional

import torch
from torch import Tensor

from .. import _validation as _v
from .._validation import Range, check_hyperparameters, document_ranges
from ._base import RuleOptimizer, state_dtype
from .kernels import bernoulli_step

#: The hyperparameters' ranges, declared once (validator, docstrings and tests read them).
BINARY_RANGES = {
    "lr": Range(low=0.0, high=1.0),
    "ess": Range(low=0.0, low_open=True),
    "prior_lambda": Range(),
    "momentum": Range(low=0.0, high=1.0, high_open=True),
    "mc_samples": Range(kind="int", low=1),
}

__all__ = [
    "STE",
    "BayesBiNN",
    "sign_weights",
    "relaxed_sample",
    "relaxation_scale",
    "binary_rule_step",
]

_LOG2 = math.log(2.0)


# ---------------------------------------------------------------- functional forms
def sign_weights(lam: Tensor) -> Tensor:
    r"""The mode of :math:`q`: :math:`+1` where :math:`\lambda \ge 0`, :math:`-1` elsewhere (never 0)."""
    one = torch.ones((), dtype=lam.dtype, device=lam.device)
    return torch.where(lam >= 0, one, -one)


def relaxed_sample(lam: Tensor, uniform: Tensor, temperature: float) -> Tensor:
    r"""The concrete (Gumbel-softmax) relaxation of a :math:`\{-1, +1\}` Bernoulli sample.

    :math:`w_r = \tanh\big((\lambda + \delta)/\tau\big)` with :math:`\delta = \tfrac12\log\frac{\epsilon}{1-\epsilon}`,
    :math:`\epsilon` = ``uniform`` in :math:`[0, 1)` and :math:`\tau` = ``temperature``. As
    :math:`\tau \to 0`, :math:`w_r \to \mathrm{sign}(\lambda + \delta)`, which is :math:`+1` with
    probability :math:`\sigma(2\lambda)`: an exact sample of :math:`q`.
    """
    delta = 0.5 * torch.log(uniform / (1.0 - uniform))
    return torch.tanh((lam + delta) / temperature)


def _log_cosh(z: Tensor) -> Tensor:
    a = z.abs()
    return a + torch.log1p(torch.exp(-2.0 * a)) - _LOG2


def relaxation_scale(lam: Tensor, uniform: Tensor, temperature: float) -> Tensor:
    r"""The factor :math:`\partial w_r/\partial\mu = (1 - w_r^2)/\big(\tau(1 - \tanh^2\lambda)\big)` (without :math:`N`).

    Computed as :math:`\exp\big(2\log\cosh\lambda - 2\log\cosh((\lambda+\delta)/\tau)\big)/\tau`, which equals
    the quotient but never forms :math:`0/0` when :math:`|\lambda|` is large.
    """
    delta = 0.5 * torch.log(uniform / (1.0 - uniform))
    x = (lam + delta) / temperature
    return torch.exp(2.0 * (_log_cosh(lam) - _log_cosh(x))) / temperature


def binary_rule_step(
    lam: Tensor,
    grad_mu: Tensor,
    *,
    lr: float,
    prior_lambda: float | Tensor = 0.0,
) -> Tensor:
    r"""One step of the rule for a :math:`\{-1,+1\}` Bernoulli candidate; pure (returns a new tensor).

    .. math::

        \lambda' = (1-\rho)\,\lambda - \rho\,(\hat\gv_\mu - \lambda_0)

    Symbols: :math:`\rho` = ``lr``, :math:`\hat\gv_\mu` = ``grad_mu`` (an estimate of
    :math:`\nabla_\mu\E_q[N\hat\ell]`), :math:`\lambda_0` = ``prior_lambda``.
    """
    lr = BINARY_RANGES["lr"].check("lr", lr)
    if not isinstance(prior_lambda, Tensor):
        prior_lambda = BINARY_RANGES["prior_lambda"].check("prior_lambda", prior_lambda)
    return bernoulli_step(lam, grad_mu, rho=lr, prior_lambda=prior_lambda)[0]


# ---------------------------------------------------------------- the optimizers
class _BinaryRule(RuleOptimizer):
    """Shared machinery of :class:`STE` and :class:`BayesBiNN` (see the module docstring)."""

    # torch.amp.GradScaler: scaler.step(opt) calls step() directly and sets ``grad_scale`` / ``found_inf``
    # on the optimizer; step() unscales the sums itself (they were folded from scaled gradients).
    _step_supports_amp_scaling = True

    def __init__(self, params, defaults: dict, generator: Optional[torch.Generator], skip_nonfinite: bool = False,
                 noise_fn=None):
        self._validate_group(defaults)
        self._init_sampling(generator, skip_nonfinite, noise_fn)
        super().__init__(params, defaults)

    # -------------------------------------------------------------- arguments
    RANGES = BINARY_RANGES
    OPTIONAL_STATE_KEYS = ("momentum_buffer",)

    def _required_state_keys(self, group: dict) -> tuple:
        return ("momentum_buffer",) if float(group["momentum"]) > 0.0 else ()

    def rule_parameters(self) -> list:
        r"""Per group, the rule's :math:`\rho` (``lr``), :math:`N` (``ess``) and the prior's natural
        parameter :math:`\lambda_0` (``prior_lambda``)."""
        return [dict(rho=float(g["lr"]), ess=float(g["ess"]), prior_lambda=float(g["prior_lambda"]))
                for g in self.param_groups]

    # -------------------------------------------------------------- hooks for the subclasses
    def _train_weights_(self, p: Tensor, lam: Tensor, group: dict, noise: Optional[Tensor]) -> None:
        """Write the weights the network computes with into ``p`` (which holds ``lam`` on entry);
        ``noise`` is this sample's draw for ``p`` (``None`` when the estimator draws none)."""
        raise NotImplementedError

    def _sample_noise(self, ps: list, group: dict) -> Optional[list]:
        """The noise of one sample for the parameters ``ps`` of ``group`` (``None``: no noise)."""
        return None

    def _grad_mu(self, p: Tensor, grad: Tensor, group: dict) -> Tensor:
        """This sample's estimate of the gradient with respect to mu (the N factor included)."""
        raise NotImplementedError

    def _overflow_hint(self, group: dict) -> str:
        return "ess times the gradient is too large for the parameter's dtype"

    # -------------------------------------------------------------- helpers
    def _managed(self, group: dict) -> list:
        return self._sampled(group)

    def _uniform(self, p: Tensor, generator: Optional[torch.Generator]) -> Tensor:
        """Uniform draws shaped like ``p`` from ``generator`` (``None``: the optimizer's, on p's device)."""
        if generator is None:
            generator = self._generator_on(p.device)
        elif generator.device.type != p.device.type:
            raise ValueError(f"Invalid generator: on {generator.device}, but parameters are on {p.device}")
        return torch.rand(p.shape, generator=generator, dtype=p.dtype, device=p.device)

    def _saved_lambda(self, p: Tensor) -> Tensor:
        w = self._work.setdefault(p, {})
        buf = w.get("lam")
        if buf is None or buf.shape != p.shape or buf.dtype != p.dtype or buf.device != p.device:
            buf = w["lam"] = torch.empty_like(p, memory_format=torch.preserve_format)
        buf.copy_(p)
        return buf

    # -------------------------------------------------------------- the protocol (the base's)
    # RuleOptimizer.sampled_params(train) calls _write_sample_/_restore_; a train sample is folded
    # when its block exits (FOLD_ON_EXIT): the gradient is with respect to the weights written here.
    def sampled_params(self, train: bool = False):
        r"""Inside the block the parameters hold the weights the network computes with.

        :class:`STE`: :math:`\tanh\lambda` (``forward="mean"``) or :math:`\mathrm{sign}\lambda`
        (``forward="sign"``); :class:`BayesBiNN`: a fresh relaxed sample :math:`w_r`. On exit
        :math:`\lambda` is restored (also when the block raises). With ``train=True`` the gradients
        are cleared on entry and, on a normal exit, this sample's :math:`\hat\gv_\mu` is added to the
        sums that the next :meth:`step` averages; with ``train=False`` nothing is recorded.
        """
        return super().sampled_params(train)

    def _write_sample_(self, train: bool) -> list:
        touched = []
        for group in self.param_groups:
            ps = self._managed(group)
            if not ps:
                continue
            lams = [self._saved_lambda(p) for p in ps]
            if train:
                for p in ps:
                    p.grad = None
            noises = self._sample_noise(ps, group)
            for i, (p, lam) in enumerate(zip(ps, lams)):
                self._train_weights_(p, lam, group, None if noises is None else noises[i])
                touched.append((p, lam))
        return touched

    def _restore_(self, touched: list) -> None:
        for p, lam in touched:
            p.copy_(lam)

    def _sample_terms(self, items: list):
        r"""This sample's :math:`\hat\gv_\mu` per parameter, or what is not finite."""
        terms = []
        for group, p, g in items:
            if not bool(torch.isfinite(g).all()):
                return (f"Invalid gradient: a parameter of shape {tuple(p.shape)} has a NaN or infinite gradient; "
                        "the sample was discarded (lambda and the optimizer state are unchanged)")
            term = self._grad_mu(p, g, group)
            if not bool(torch.isfinite(term).all()):
                return (f"Invalid gradient estimate: the gradient with respect to mu of a parameter of shape "
                        f"{tuple(p.shape)} overflowed ({self._overflow_hint(group)}); the sample was discarded "
                        "(lambda and the optimizer state are unchanged)")
            terms.append((p, term))
        return terms

    def _accumulate_(self, p: Tensor, term: Tensor) -> None:
        acc = self._acc.get(p)
        if acc is None:
            self._acc[p] = term.clone()
        else:
            acc.add_(term)

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Tensor]] = None) -> Optional[Tensor]:
        r"""Update :math:`\lambda` from the samples taken since the last step (see the class docstring).

        With a ``closure`` (which computes the loss, calls ``backward`` and returns the loss), it is
        called ``mc_samples`` times (of the first group), each inside ``sampled_params(train=True)``; the
        mean of the returned losses is returned.
        """
        loss = None
        if closure is not None:
            losses = self._closure_losses(closure)
            loss = torch.stack([torch.as_tensor(v).detach().float() for v in losses]).mean()
        # the GradScaler protocol (the base's): skip on an overflow or a non-finite sample
        skip, grad_scale, _, _ = self._begin_step()
        if skip:
            return loss
        m = float(self._folded)
        for group in self.param_groups:
            rho, lam0, beta = group["lr"], group["prior_lambda"], group["momentum"]
            for p in self._managed(group):
                acc = self._acc.get(p)
                if acc is None:
                    continue
                st = self.state[p]
                if len(st) == 0:
                    st["step"] = torch.zeros((), dtype=torch.float32)
                    if beta > 0:
                        st["momentum_buffer"] = torch.zeros_like(p, dtype=state_dtype(p),
                                                                 memory_format=torch.preserve_format)
                st["step"] += 1
                if grad_scale is not None:
                    acc.div_(grad_scale.to(device=acc.device, dtype=acc.dtype))
                buf = None
                if beta > 0:
                    buf = st.get("momentum_buffer")
                    if buf is None:
                        buf = st["momentum_buffer"] = torch.zeros_like(p, dtype=state_dtype(p),
                                                                       memory_format=torch.preserve_format)
                lam = p if p.dtype == state_dtype(p) else p.to(state_dtype(p))
                new, new_buf = bernoulli_step(lam, acc.div_(m).to(lam.dtype), rho=rho, prior_lambda=float(lam0), momentum=buf,
                                              beta=float(beta), step=int(st["step"]))
                p.copy_(new)
                if buf is not None:
                    buf.copy_(new_buf)
        self._reset_samples()
        return loss

    # -------------------------------------------------------------- read-outs and prediction
    @torch.no_grad()
    def probs(self) -> list:
        r""":math:`p = q(\theta = +1) = \sigma(2\lambda)` for every managed parameter (new tensors, group order)."""
        return [torch.sigmoid(2.0 * p.detach()) for g in self.param_groups for p in self._managed(g)]

    @contextmanager
    def binary_params(self, mode: str = "mode", generator: Optional[torch.Generator] = None) -> Iterator[None]:
        r"""Inside the block the parameters hold binary weights; :math:`\lambda` is restored on exit.

        ``mode="mode"``: :math:`\mathrm{sign}(\lambda)`, the most probable network under :math:`q`
        (:math:`+1` where :math:`\lambda \ge 0`). ``mode="sample"``: a draw :math:`\theta \sim q`
        (:math:`+1` with probability :math:`\sigma(2\lambda)`), from ``generator`` (default: the
        optimizer's). Average predictions over several ``"sample"`` blocks for a Bayesian ensemble.
        """
        _v.check_choice("mode", mode, ("mode", "sample"))
        if self._sampling:
            raise RuntimeError(f"{type(self).__name__}.binary_params() cannot be nested in a sampling block")
        gen = self.generator if generator is None else generator
        touched = []
        with torch.no_grad():
            for group in self.param_groups:
                for p in self._managed(group):
                    lam = self._saved_lambda(p)
                    if mode == "mode":
                        p.copy_(sign_weights(lam))
                    else:
                        u = self._uniform(p, gen)
                        p.copy_(torch.where(u < torch.sigmoid(2.0 * lam), 1.0, -1.0).to(p.dtype))
                    touched.append((p, lam))
        self._sampling = True
        try:
            yield
        finally:
            with torch.no_grad():
                for p, lam in touched:
                    p.copy_(lam)
            self._sampling = False


class STE(_BinaryRule):
    r"""The straight-through estimator as the Bayesian learning rule with the delta method.

    Per binary weight, with latent weight (natural parameter) :math:`\lambda` held by the parameter:

    .. math::

        w &= \tanh\lambda \ (\texttt{forward="mean"}) \quad\text{or}\quad
             w = \mathrm{sign}\,\lambda \ (\texttt{forward="sign"}), \\
        \hat\gv_\mu &= N\,\nabla\hat\ell(w) \qquad\text{(straight through: no } \partial w/\partial\lambda\text{ factor)}, \\
        \lambda &\leftarrow (1-\rho)\,\lambda - \rho\,(\hat\gv_\mu - \lambda_0).

    ``forward="mean"`` is the rule with the delta method at the mean and equals
    :func:`blrlib.rule.blr_step` for ``Bernoulli(..., support=(-1, 1))`` with
    ``expectation_gradient(..., method="delta")``. ``forward="sign"`` evaluates the gradient at the mode
    of :math:`q` instead, so the network is binary during training; it is SGD on the latent weights with
    learning rate :math:`\rho N`, weight decay :math:`1/N` and an identity backward through
    :math:`\mathrm{sign}`. (BinaryConnect clips the latent weights to :math:`[-1, 1]` instead of decaying
    them.)

    ============================  ==========================================================
    :math:`\rho`                   ``lr`` in :math:`[0, 1]` (default 1e-3)
    :math:`N`                      ``ess``: number of training examples (required)
    :math:`\lambda_0`              ``prior_lambda``: natural parameter of the Bernoulli prior
                                   (default 0, the uniform prior)
    :math:`\beta`                  ``momentum`` in :math:`[0, 1)` (default 0: the rule)
    ============================  ==========================================================

    ``mc_samples`` (default 1) is the number of closure calls per ``step(closure)``. ``generator`` is
    used by :meth:`binary_params` with ``mode="sample"``. ``skip_nonfinite=True`` skips steps with a
    NaN or infinite gradient instead of raising (use it with ``torch.amp.GradScaler``). See
    :mod:`blrlib.optim.bayesbinn` for the protocol and mixed precision.
    """

    forward_modes = ("mean", "sign")

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        ess: float = None,  # type: ignore[assignment]
        prior_lambda: float = 0.0,
        momentum: float = 0.0,
        forward: str = "sign",
        mc_samples: int = 1,
        *,
        generator: Optional[torch.Generator] = None,
        skip_nonfinite: bool = False,
        noise_fn=None,
    ):
        _v.require_ess(ess)
        defaults = dict(
            lr=lr, ess=ess, prior_lambda=prior_lambda, momentum=momentum, forward=forward, mc_samples=mc_samples
        )
        super().__init__(params, defaults, generator, skip_nonfinite, noise_fn)

    RANGES = dict(BINARY_RANGES, forward=Range(kind="choice", choices=("mean", "sign")))

    def _train_weights_(self, p: Tensor, lam: Tensor, group: dict, noise: Optional[Tensor]) -> None:
        if group["forward"] == "mean":
            torch.tanh(lam, out=p)
        else:
            p.copy_(sign_weights(lam))

    def _grad_mu(self, p: Tensor, grad: Tensor, group: dict) -> Tensor:
        return grad.to(p.dtype) * float(group["ess"])


class BayesBiNN(_BinaryRule):
    r"""BayesBiNN (Meng, Bachmann & Khan, ICML 2020): the rule with the concrete relaxation.

    Per binary weight, with natural parameter :math:`\lambda` held by the parameter, and ``M`` samples
    (the ``sampled_params(train=True)`` blocks before :meth:`step`):

    .. math::

        \epsilon^{(j)} &\sim \mathcal U(0, 1), \qquad
        \delta^{(j)} = \tfrac12\log\frac{\epsilon^{(j)}}{1-\epsilon^{(j)}}, \qquad
        w_r^{(j)} = \tanh\big((\lambda + \delta^{(j)})/\tau\big), \\
        \gv^{(j)} &= \nabla\hat\ell(w_r^{(j)}), \qquad
        \sv^{(j)} = \frac{N\,(1 - (w_r^{(j)})^2)}{\tau\,(1 - \tanh^2\lambda)}, \\
        \lambda &\leftarrow (1-\rho)\,\lambda - \rho\Big(\frac1M\sum_j \sv^{(j)}\odot\gv^{(j)} - \lambda_0\Big).

    ============================  ==========================================================
    :math:`\rho`                   ``lr`` in :math:`[0, 1]` (the paper's :math:`\alpha`; default 1e-3)
    :math:`N`                      ``ess``: number of training examples (required)
    :math:`\tau`                   ``temperature`` > 0 (default 1); keep :math:`\tau \le 1`: then
                                   :math:`\sv \le 4N e^{2|\delta|}/\tau`, while for :math:`\tau > 1`
                                   :math:`\sv` grows like :math:`e^{2|\lambda|(1-1/\tau)}`
    :math:`\lambda_0`              ``prior_lambda`` (default 0, the uniform prior)
    :math:`\beta`                  ``momentum`` in :math:`[0, 1)` (default 0: Algorithm 1 of the paper)
    :math:`M`                      the number of ``sampled_params(train=True)`` blocks before
                                   ``step()``; ``mc_samples`` (default 1) for ``step(closure)``
    ============================  ==========================================================

    Noise: each block draws one ``torch.rand(p.shape, generator=generator, dtype=p.dtype,
    device=p.device)`` per managed parameter, in param-group order; with the same ``generator`` seed a
    run is reproducible, and :meth:`state_dict` carries the generator's state so that a resumed run
    continues bit for bit. Prediction: :meth:`binary_params` (``mode="mode"`` for
    :math:`\mathrm{sign}\lambda`, ``mode="sample"`` for ensemble members), :meth:`probs` for
    :math:`p = \sigma(2\lambda)`.

    ``skip_nonfinite=True`` skips steps with a NaN or infinite gradient instead of raising (use it
    with ``torch.amp.GradScaler``; see :mod:`blrlib.optim.bayesbinn`). ``noise_fn(uniforms, group)``,
    if given, fills the list of uniform buffers (one per managed parameter of ``group``) in place
    instead of the generator (the noise hook of :class:`~blrlib.optim.RuleOptimizer`).

    Note: the authors' released code forms :math:`\tanh\lambda` in :math:`\sv` from the previous
    iterate of :math:`\lambda`; this class follows the algorithm as written (the current :math:`\lambda`).
    """

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        ess: float = None,  # type: ignore[assignment]
        temperature: float = 1.0,
        prior_lambda: float = 0.0,
        momentum: float = 0.0,
        mc_samples: int = 1,
        *,
        generator: Optional[torch.Generator] = None,
        skip_nonfinite: bool = False,
        noise_fn=None,
    ):
        _v.require_ess(ess)
        defaults = dict(
            lr=lr,
            ess=ess,
            temperature=temperature,
            prior_lambda=prior_lambda,
            momentum=momentum,
            mc_samples=mc_samples,
        )
        super().__init__(params, defaults, generator, skip_nonfinite, noise_fn)

    RANGES = dict(BINARY_RANGES, temperature=Range(low=0.0, low_open=True))

    NOISE = "uniform"

    def _sample_noise(self, ps: list, group: dict) -> list:
        """One uniform draw per managed parameter, in order, through the base's noise hook."""
        us = [torch.empty(p.shape, dtype=p.dtype, device=p.device) for p in ps]
        self._draw_noise_(us, group)
        return us

    def _train_weights_(self, p: Tensor, lam: Tensor, group: dict, noise: Optional[Tensor]) -> None:
        self._work[p]["uniform"] = noise
        p.copy_(relaxed_sample(lam, noise, float(group["temperature"])))

    def _overflow_hint(self, group: dict) -> str:
        tau = float(group["temperature"])
        hint = "the scale s = N (1 - w_r^2) / (tau (1 - tanh^2 lambda)) is too large for the parameter's dtype"
        if tau > 1.0:
            hint += f"; with temperature={tau:g} > 1 it grows like exp(2 |lambda| (1 - 1/tau)), use temperature <= 1"
        return hint

    def _grad_mu(self, p: Tensor, grad: Tensor, group: dict) -> Tensor:
        w = self._work[p]
        scale = relaxation_scale(w["lam"], w["uniform"], float(group["temperature"]))
        return scale.mul_(grad.to(p.dtype)).mul_(float(group["ess"]))


for _cls, _defaults in ((STE, dict(lr=1e-3, prior_lambda=0.0, momentum=0.0, mc_samples=1)),
                        (BayesBiNN, dict(lr=1e-3, prior_lambda=0.0, momentum=0.0, mc_samples=1))):
    _cls.__doc__ = (_cls.__doc__ or "") + (
        "\n    Hyperparameter ranges (declared once in ``RANGES``; checked on construction, for every\n"
        "    param group and on ``load_state_dict``):\n\n"
        + "\n".join("    " + line for line in document_ranges(_cls.RANGES, _defaults).splitlines()) + "\n"
    )
