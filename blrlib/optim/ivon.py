r"""IVON: improved variational online Newton (Shen et al., ICML 2024).

Written from the update equations of the paper and of the Bayesian learning rule
(Khan & Rue, JMLR 2023); it shares no code with the GPL-licensed ``ivon-opt``.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, Optional

import torch
from torch import Tensor
from torch.optim import Optimizer

from .. import _validation as _v
from .._validation import document_ranges
from ._base import LOW_PRECISION, RuleOptimizer, state_dtype
from .functional import IVON_RANGES
from .kernels import DiagGaussianConfig, DiagGaussianState, diag_gaussian_step_compiled, diag_gaussian_step_foreach_

__all__ = ["IVON", "flat_group_noise"]

NoiseFn = Callable[[list, dict], None]

_LOW_PRECISION = LOW_PRECISION
_state_dtype = state_dtype


class FlatGroupNoise:
    """The noise hook of :func:`flat_group_noise` (a class, so that optimizers using it can be pickled)."""

    def __init__(self, generator: Optional[torch.Generator] = None):
        self.generator = generator

    def __call__(self, noises: list, group: dict) -> None:
        if not noises:
            return
        total = sum(n.numel() for n in noises)
        flat = torch.randn(total, generator=self.generator, device=noises[0].device, dtype=noises[0].dtype)
        offset = 0
        for n in noises:
            k = n.numel()
            n.copy_(flat[offset : offset + k].view_as(n))
            offset += k


def flat_group_noise(generator: Optional[torch.Generator] = None) -> NoiseFn:
    """A ``noise_fn`` that draws one flat ``torch.randn`` per param group.

    The default noise of :class:`IVON` is one ``normal_`` per parameter tensor. This
    hook instead draws a single vector of standard normals for all sampled parameters
    of a group, in the order of ``group["params"]``, and splits it; with the same seed
    it reproduces the draw layout of the ``ivon-opt`` package (when every parameter of
    the group is sampled), which is how the tests compare the two trajectories.
    """
    return FlatGroupNoise(generator)


class IVON(RuleOptimizer):
    r"""Improved Variational Online Newton (IVON), a drop-in replacement for ``ivon.IVON``.

    IVON learns a diagonal Gaussian posterior :math:`q(\theta) = \mathcal N(m, \mathrm{diag}(\sigma^2))`
    over the weights with the Bayesian learning rule. Per parameter entry, with mean
    :math:`m` (the model's weights), Hessian estimate :math:`h`, momentum :math:`\bar g`,
    prior precision :math:`\delta`, effective sample size :math:`N` (:math:`N_e`) and step
    :math:`t`, one iteration is

    .. math::

        \sigma &= 1/\sqrt{N\,(h + \delta)}, \qquad
        \theta_k = m + \sigma\,\epsilon_k,\quad \epsilon_k \sim \mathcal N(0, I),\quad k = 1..K \\
        \hat g &= \tfrac1K \textstyle\sum_k \nabla\ell(\theta_k), \qquad
        \hat h = \tfrac1K \textstyle\sum_k \nabla\ell(\theta_k)\,\epsilon_k / \sigma
            \quad(\text{Price/Stein};\ \texttt{"gradsq"}:\ \hat h = N\,\tfrac1K\textstyle\sum_k \nabla\ell(\theta_k)^2) \\
        \bar g &\leftarrow \beta_1 \bar g + (1-\beta_1)\,\hat g \\
        h &\leftarrow \beta_2 h + (1-\beta_2)\,\hat h
              + \tfrac12 (1-\beta_2)^2\,(h - \hat h)^2 / (h + \delta) \\
        m &\leftarrow m - \alpha\,\mathrm{clip}\!\Big(\frac{\bar g/(1-\beta_1^t) + \delta\, m}{h + \delta},
              \pm r\Big), \qquad \alpha = \eta\,(h_0 + \delta)

    Here :math:`\ell` is the *average* per-example loss of a minibatch (what ``loss.backward()``
    normally differentiates), so :math:`N\hat h` estimates the Hessian of the
    summed loss; the last term of the :math:`h` update is the positivity-preserving
    correction of Lin, Schmidt & Khan (2020), which keeps the posterior precision
    :math:`N(h + \delta)` positive whatever the sign of :math:`\hat h`: the new value obeys
    :math:`h' + \delta \ge \tfrac12 (h + \delta)` (so :math:`h` itself stays positive when :math:`\delta = 0`,
    and can dip to :math:`(h-\delta)/2` otherwise).

    Symbols and arguments:

    ============================  ==========================================================
    :math:`\eta`                   ``lr``
    :math:`N`                      ``ess``: effective sample size, usually the number of
                                   training examples; the posterior is the one of a data set
                                   of this size, so :math:`\sigma^2 \approx 1/(N(h+\delta))`
    :math:`h_0`                    ``hess_init``: initial :math:`h` (the prior's curvature
                                   guess); with ``rescale_lr`` also sets :math:`\alpha`
    :math:`\beta_1, \beta_2`       ``beta1``, ``beta2``
    :math:`\delta`                 ``weight_decay``: prior precision per example (so the prior
                                   precision of the whole data set is :math:`N\delta`); the prior
                                   is :math:`\mathcal N(0, 1/(N\delta))`
    :math:`K`                      the number of ``sampled_params(train=True)`` blocks before
                                   ``step()`` (``mc_samples`` says how many to expect)
    :math:`r`                      ``clip_radius``
    ============================  ==========================================================

    ``debias=False`` drops :math:`1-\beta_1^t`; ``rescale_lr=False`` uses :math:`\alpha=\eta`.
    Which :math:`\delta`: IVON's is per example (``ivon-opt``'s convention), the other optimizers'
    ``prior_precision`` is the whole data set's, :math:`N\delta`; :meth:`rule_parameters` reports
    :math:`(\rho, N, N\delta)` like theirs. The update is the one diagonal-Gaussian kernel
    (:func:`blrlib.optim.kernels.diag_gaussian_step`: Price or Gauss-Newton curvature, the positivity
    correction, momentum on the data gradient, clipping), run with ``torch._foreach_*`` kernels.

    Protocol (the same as ``ivon-opt``)::

        import torch
        from blrlib.optim import IVON
        model = torch.nn.Linear(3, 1)
        X, y = torch.randn(64, 3), torch.randn(64, 1)
        opt = IVON(model.parameters(), lr=0.1, ess=64)
        for _ in range(5):
            with opt.sampled_params(train=True):   # weights are theta = m + sigma * eps here
                opt.zero_grad()
                loss = torch.nn.functional.mse_loss(model(X), y)
                loss.backward()
            opt.step()                              # weights are back to m, then updated
        # prediction with posterior samples:
        with torch.no_grad(), opt.sampled_params():
            pred = model(X)

    ``sampled_params`` restores the mean in a ``finally`` block, so an exception inside
    leaves the model at :math:`m`, and the failed sample is discarded. With
    ``mc_samples=K`` call it :math:`K` times (each with its own ``backward``) before
    ``step()``; inside one block several ``backward`` calls accumulate (gradient
    accumulation) as usual. ``step(closure)`` calls the closure ``mc_samples`` times, each
    under a fresh sample; the closure must zero the gradients, compute the loss, call
    ``backward`` and return the loss.

    When gradients are read: the gradient of the *last* sample before ``step()`` is read
    from ``p.grad`` inside ``step()``, so gradient clipping or unscaling applied to
    ``p.grad`` after the block is taken into account. Earlier samples (``K > 1``) are
    folded into running sums when the next sample starts or when
    :meth:`zero_grad` is called, whichever comes first; do not zero gradients with
    ``model.zero_grad(set_to_none=False)`` between samples (use ``optimizer.zero_grad()``
    or zero them inside the block).

    Mixed precision: ``IVON`` supports ``torch.amp.GradScaler`` through the
    ``_step_supports_amp_scaling`` protocol: ``scaler.step(opt)`` always calls ``step()``,
    which divides the gradient *and* the Price product by the scale (both were formed
    from scaled gradients) and skips the update, discarding the samples, when the scaler
    found an overflow. With ``K > 1`` samples do not call ``scaler.unscale_(opt)``
    (earlier samples were already folded with scaled gradients; this raises).

    Statistics of float16/bfloat16 parameters (:math:`\bar g`, :math:`h`, :math:`\sigma`, the
    noise) are kept in float32; float64 parameters keep float64 statistics.

    Keyword-only engineering arguments:

    * ``generator``: a :class:`torch.Generator` for the noise (default: the global RNG
      of each parameter's device). For parameters on another device than the generator's, a
      generator on their device is created on first use, seeded by one draw from this one, and
      carried in ``state_dict()`` (see :class:`~blrlib.optim.RuleOptimizer`).
    * ``noise_fn``: ``noise_fn(noises, group)`` fills the list of noise buffers (one per
      sampled parameter of ``group``) in place with standard normal draws; overrides
      ``generator``. See :func:`flat_group_noise`.
    * ``skip_nonfinite``: if False (default) a NaN or infinite gradient makes ``step()``
      raise :class:`ValueError`; if True the step is skipped (the samples are discarded and
      ``self.skipped_steps`` is incremented). Either way :math:`m`, :math:`h` and
      :math:`\bar g` are left untouched.
    * ``process_group``: the group used when ``sync=True`` (default: the world).
    * ``fused``: if True, the common step (``"price"``, one sample, no clipping, no
      ``sync``, no pending GradScaler scale) runs the shared kernel through ``torch.compile``
      (:func:`blrlib.optim.kernels.diag_gaussian_step_compiled`, one call per tensor of at least
      ``IVON.FUSED_MIN_NUMEL`` entries) instead of ~10 ``torch._foreach_*`` passes. Needs a working
      ``torch.compile`` (a C++ compiler on CPU); the first step compiles (seconds to minutes), and a
      scheduler that changes ``lr`` every step makes it recompile (the scalars are specialised).
      Results agree with the default path to rounding, not bit for bit.

    * ``cache_sigma``: if True (default) a buffer per parameter caches :math:`1/\sqrt{h+\delta}`
      between steps, so that sampling is one fused pass (speed); with False it is recomputed while
      sampling, with the parameter itself as work space, and the step uses the saved-mean buffer as
      its second work buffer: one parameter-sized buffer less (memory), a few more passes per step.

    ``sync=True``: in data-parallel training each rank samples its own
    :math:`\theta_k`; ``step()`` averages :math:`\hat g` and the per-rank Price product
    :math:`\nabla\ell(\theta_k)\epsilon_k` (or the squared gradient) over ranks with
    ``all_reduce`` before the update. See :mod:`blrlib.optim.distributed`.

    Read-outs: :meth:`posterior_std` gives :math:`\sigma` per parameter and
    :meth:`posterior_summary` a per-tensor table (mean/min/max :math:`\sigma`, and how far
    :math:`h` moved from ``hess_init``).

    Reference: Y. Shen, N. Daheim, B. Cong, P. Nickl, G. M. Marconi, C. Bazan, R. Yokota,
    I. Gurevych, D. Cremers, M. E. Khan, T. Möllenhoff, "Variational Learning is Effective
    for Large Deep Networks", ICML 2024 (arXiv 2402.17641).
    """

    _step_supports_amp_scaling = True
    #: with ``fused=True``, tensors with fewer entries stay on the foreach path
    FUSED_MIN_NUMEL = 1 << 18
    hessian_approx_methods = ("price", "gradsq")

    def __init__(
        self,
        params,
        lr: float,
        ess: float,
        hess_init: float = 1.0,
        beta1: float = 0.9,
        beta2: float = 0.99999,
        weight_decay: float = 1e-4,
        mc_samples: int = 1,
        hess_approx: str = "price",
        clip_radius: float = float("inf"),
        sync: bool = False,
        debias: bool = True,
        rescale_lr: bool = True,
        *,
        generator: Optional[torch.Generator] = None,
        noise_fn: Optional[NoiseFn] = None,
        skip_nonfinite: bool = False,
        process_group=None,
        fused: bool = False,
        cache_sigma: bool = True,
    ):
        defaults = dict(
            lr=lr,
            ess=ess,
            hess_init=hess_init,
            beta1=beta1,
            beta2=beta2,
            weight_decay=weight_decay,
            mc_samples=mc_samples,
            hess_approx=hess_approx,
            clip_radius=clip_radius,
            debias=debias,
            rescale_lr=rescale_lr,
        )
        self._validate_group(defaults)
        self._init_sampling(generator, skip_nonfinite, noise_fn)
        self.sync = bool(sync)
        if not isinstance(fused, bool):
            raise ValueError(f"Invalid fused: {fused!r} (must be True or False)")
        self.fused = fused
        self.cache_sigma = self._check_flag("cache_sigma", cache_sigma)
        self.process_group = process_group
        # Work buffers (never saved): noise, saved mean, cached r = 1/sqrt(h + delta), MC sums; the
        # sample bookkeeping is the base's (RuleOptimizer._reset_transient).
        self._h_bounds: dict = {}  # carried bounds on h per plan (see _check_statistics)
        self._stat_plans: dict = {}  # h's buffers per plan (see _check_statistics)
        self._representable: set = set()  # hyperparameter tuples already checked by _check_representable
        super().__init__(params, defaults)

    # ------------------------------------------------------------------ arguments, copies
    RANGES = IVON_RANGES
    STATE_KEYS = ("momentum", "hess")
    ENGINEERING_DEFAULTS = dict(RuleOptimizer.ENGINEERING_DEFAULTS, noise_fn=None, sync=False, fused=False,
                                process_group=None, cache_sigma=True)

    def _transient_attributes(self) -> tuple:
        # a process group cannot be pickled: a copy uses the default group (pass it again if needed)
        return ("_work", "_acc", "_h_bounds", "_stat_plans", "_representable", "process_group")

    def _reset_transient(self) -> None:
        super()._reset_transient()
        self._representable = set()
        self._h_bounds = {}
        self._stat_plans = {}

    def rule_parameters(self) -> list:
        r"""Per group, the rule's :math:`\rho = 1-\beta_2`, :math:`N` (``ess``) and the prior precision of
        the whole data set, :math:`N\delta` (IVON's ``weight_decay`` :math:`\delta` is per example)."""
        return [dict(rho=1.0 - float(g["beta2"]), ess=float(g["ess"]),
                     prior_precision=float(g["ess"]) * float(g["weight_decay"])) for g in self.param_groups]

    # ------------------------------------------------------------------ state
    def _init_state(self, p: Tensor, group: dict) -> dict:
        st = self.state[p]
        if len(st) == 0:
            dt = _state_dtype(p)
            st["step"] = torch.zeros((), dtype=torch.float32)
            st["momentum"] = torch.zeros_like(p, dtype=dt, memory_format=torch.preserve_format)
            st["hess"] = torch.full_like(p, group["hess_init"], dtype=dt, memory_format=torch.preserve_format)
        return st

    def _work_for(self, p: Tensor, group: dict) -> dict:
        r"""Noise, saved-mean and ``rsd`` buffers of ``p``, allocated once.

        ``rsd`` caches :math:`r = 1/\sqrt{h+\delta}` (so :math:`\sigma = r/\sqrt{N}`); it only
        changes in ``step()``, so sampling costs no extra pass. ``ess`` enters as a scalar.
        """
        w = self._work.get(p)
        st = self.state.get(p)  # no state before the parameter's first gradient (as torch)
        if w is None:
            dt = _state_dtype(p)
            w = {
                "noise": torch.empty_like(p, dtype=dt, memory_format=torch.preserve_format),
                "mean": torch.empty_like(p, memory_format=torch.preserve_format),
                "rsd": torch.empty_like(p, dtype=dt, memory_format=torch.preserve_format) if self.cache_sigma else None,
                "key": None,
            }
            self._work[p] = w
        if w["rsd"] is None:
            return w
        key = float(group["weight_decay"])
        if w["key"] != key:  # recomputed if delta changed since the last step
            if st and "hess" in st:
                torch.add(st["hess"], key, out=w["rsd"]).rsqrt_()
            else:
                w["rsd"].fill_((float(group["hess_init"]) + key) ** -0.5)
            w["key"] = key
        return w

    @staticmethod
    def _sigma_from_hess_(out: Tensor, hess: Tensor, ess: float, wd: float) -> None:
        torch.add(hess, wd, out=out)
        out.mul_(ess).rsqrt_()

    # ------------------------------------------------------------------ sampling (the base's protocol)
    # RuleOptimizer.sampled_params(train) calls these two: theta = m + sigma * eps in every sampled
    # parameter; the last train sample's gradient stays in p.grad (step() reads it), earlier ones are
    # folded into the sums when the next sample starts or zero_grad() is called.
    FOLD_ON_EXIT = False

    def _write_sample_(self, train: bool) -> list:
        transient = (not train) and self._pending  # keep the pending sample's noise
        touched = []
        for group in self.param_groups:
            ps = self._sampled(group)
            if not ps:
                continue
            ws = [self._work_for(p, group) for p in ps]
            if transient:
                noises = [torch.empty_like(w["noise"]) for w in ws]
            else:
                noises = [w["noise"] for w in ws]
            means = [w["mean"] for w in ws]
            self._draw_noise_(noises, group)
            torch._foreach_copy_(means, ps)
            touched.append((ps, means))
            inv_sq = 1.0 / math.sqrt(float(group["ess"]))
            if self.cache_sigma:
                # theta = m + sigma eps, sigma = r / sqrt(ess)
                torch._foreach_addcmul_(ps, noises, [w["rsd"] for w in ws], value=inv_sq)
            else:
                self._sample_without_cache_(ps, means, noises, group, inv_sq)
        return touched

    def _restore_(self, touched: list) -> None:
        for ps, means in touched:
            torch._foreach_copy_(ps, means)

    def _sample_without_cache_(self, ps, means, noises, group, inv_sq) -> None:
        """theta = m + eps / sqrt(N (h + delta)), with sigma recomputed in the parameter's own storage."""
        wd, h0 = float(group["weight_decay"]), float(group["hess_init"])
        for p, n in zip(ps, noises):
            st = self.state.get(p)
            h = st.get("hess") if st else None
            if p.dtype != n.dtype:  # 16-bit parameter, float32 statistics: a transient in float32
                r = torch.add(h, wd) if h is not None else torch.full_like(n, h0 + wd)
                p.add_(r.rsqrt_().mul_(n), alpha=inv_sq)
                continue
            if h is not None:
                torch.add(h, wd, out=p)
            else:
                p.fill_(h0 + wd)
        same = [(p, n, m) for p, n, m in zip(ps, noises, means) if p.dtype == n.dtype]
        if same:
            qs, ns, ms = (list(x) for x in zip(*same))
            torch._foreach_rsqrt_(qs)  # r = 1/sqrt(h + delta)
            torch._foreach_mul_(qs, ns)  # r eps
            torch._foreach_mul_(qs, inv_sq)  # sigma eps
            torch._foreach_add_(qs, ms)  # m + sigma eps

    def _new_sums(self, p: Tensor) -> dict:
        dt = _state_dtype(p)
        acc = self._acc[p] = {"grad": torch.zeros_like(p, dtype=dt), "hsum": torch.zeros_like(p, dtype=dt)}
        return acc

    def _accumulate_(self, p: Tensor, term) -> None:
        """IVON's statistics of one sample: g, and the Price product eps * g (or g * g)."""
        g, group = term
        acc = self._acc.get(p)
        if acc is None:
            acc = self._new_sums(p)
        acc["grad"].add_(g)
        if group["hess_approx"] == "price":
            acc["hsum"].addcmul_(self._work[p]["noise"], g)
        else:
            acc["hsum"].addcmul_(g, g)

    def _reset_samples(self) -> None:
        # the sum buffers are kept (zeroed) for the next step; _gather treats them as empty while
        # no sample was folded
        self._pending = False
        self._folded = 0
        self._poisoned = False
        for acc in self._acc.values():
            acc["grad"].zero_()
            acc["hsum"].zero_()

    # ------------------------------------------------------------------ step
    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Tensor]] = None) -> Optional[Tensor]:
        """Update ``m``, ``h`` and the momentum from the samples taken since the last step.

        With a ``closure``, it is called ``mc_samples`` times, each inside
        ``sampled_params(train=True)``; the mean of the returned losses is returned.
        """
        loss = None
        if closure is not None:
            losses = self._closure_losses(closure)
            loss = sum(losses) / len(losses)
        if self._sampling:
            raise RuntimeError("IVON.step() called inside a sampled_params() block")
        n_samples = self._folded + (1 if self._pending else 0)
        skip, _, inv_scale, under_scaler = self._begin_step()  # GradScaler protocol (the base's)
        if skip:
            return loss

        # Phase 1: gather g and the Hessian statistic for each group (nothing of m, h touched).
        plans = []
        for group in self.param_groups:
            plans.extend((group, plan) for plan in self._gather(group))
        if self.sync:
            from .distributed import all_reduce_mean_

            all_reduce_mean_([t for _, pl in plans for t in pl["grads"] + pl["hstats"]], self.process_group)
        scale = inv_scale / n_samples
        try:
            for group, plan in plans:
                self._check_representable(group, plan["params"][0])
        except ValueError:
            self._reset_samples()
            raise
        what = self._check_statistics(plans, scale, inv_scale, n_samples)
        if what is not None:
            self._skip_or_raise(
                f"IVON.step(): {what}; the step was not taken and m, h "
                "are unchanged (pass skip_nonfinite=True to skip such steps instead)", skip=under_scaler)
            return loss
        # Phase 2: update. The Price statistic eps*g was formed from scaled gradients (one factor of the
        # loss scale S); the squared gradient from two (S^2).
        for group, plan in plans:
            stat_scale = scale if group["hess_approx"] == "price" else inv_scale * inv_scale / n_samples
            self._update_group(group, plan, scale, stat_scale)
        self._reset_samples()
        return loss

    def _gather(self, group: dict) -> list:
        price = group["hess_approx"] == "price"
        params, grads, hstats, works, checks = [], [], [], [], []
        use_acc = self._folded > 0 or self.sync
        for p in self._sampled(group):
            g = p.grad if self._pending else None
            if g is not None:
                if g.is_sparse:
                    raise ValueError("Invalid gradient: sparse (IVON needs dense gradients)")
                if g.dtype != _state_dtype(p):
                    g = g.to(_state_dtype(p))
            acc = self._acc.get(p)
            if g is None and (acc is None or self._folded == 0) and not self.sync:
                continue  # no gradient for this parameter in any sample: skip it (no state, as torch)
            if p not in self._work:  # sync: every rank reduces every parameter, in the same order
                self._work_for(p, group)
            w = self._work[p]
            if use_acc:
                if acc is None:
                    acc = self._new_sums(p)
                if g is not None:
                    self._accumulate_(p, (g, group))
                grads.append(acc["grad"])
                hstats.append(acc["hsum"])
            else:
                # one sample: the Price product is formed in the noise buffer, g stays in p.grad
                grads.append(g)
                if price:
                    hstats.append(w["noise"])
                else:
                    hstats.append(torch.mul(g, g, out=w["noise"]))
            if not price:
                checks.append(grads[-1])
            params.append(p)
            works.append(w)
        if not params:
            return []
        fused = (
            self.fused and price and not use_acc and math.isinf(group["clip_radius"])
            and getattr(self, "grad_scale", None) is None
            and all(t.is_contiguous() for t in params + grads)
        )
        plans = []
        if fused:
            # large tensors: one compiled pass (g is checked; eps * g is formed inside the kernel);
            # small ones stay on the foreach path, where a compiled call's fixed cost would dominate
            big = [i for i, p in enumerate(params) if p.numel() >= self.FUSED_MIN_NUMEL]
            if big:
                pick = lambda xs, idx: [xs[i] for i in idx]  # noqa: E731
                plans.append(dict(params=pick(params, big), grads=pick(grads, big), hstats=[],
                                  works=pick(works, big), grads_check=pick(grads, big), fused=True))
                small = [i for i in range(len(params)) if i not in set(big)]
                params, grads, hstats, works = (pick(x, small) for x in (params, grads, hstats, works))
                checks = []
        if params:
            if price and not use_acc:
                torch._foreach_mul_(hstats, grads)
            plans.append(dict(params=params, grads=grads, hstats=hstats, works=works, grads_check=checks,
                              price_only=price and not use_acc))
        return plans

    def _check_representable(self, group: dict, p: Tensor) -> None:
        """The scalars a step multiplies by must be finite in the statistics' dtype (else the step would
        fail half way or silently produce inf): checked before anything changes."""
        key = (_state_dtype(p), group["ess"], group["weight_decay"], group["beta2"], group["lr"], group["hess_init"],
               group["rescale_lr"])
        if key in self._representable:
            return
        fmax = torch.finfo(_state_dtype(p)).max
        ess, wd, b2 = float(group["ess"]), float(group["weight_decay"]), float(group["beta2"])
        alpha = group["lr"] * (group["hess_init"] + wd) if group["rescale_lr"] else group["lr"]
        for name, value in (("ess", ess), ("ess", (1.0 - b2) * math.sqrt(ess)),
                            ("ess", 0.5 * (1.0 - b2) ** 2 * ess), ("lr", alpha), ("weight_decay", wd),
                            ("hess_init", float(group["hess_init"]))):
            if not value < fmax:
                raise ValueError(
                    f"Invalid {name}: {group[name]} (must keep the step's scalars finite in "
                    f"{_state_dtype(p)}, whose largest value is {fmax:.3g}); the step was not taken"
                )
        if len(self._representable) > 64:  # a scheduler changing lr every step: keep it small
            self._representable.clear()
        self._representable.add(key)

    def _check_statistics(self, plans: list, scale: float, inv_scale: float, n_samples: int) -> Optional[str]:
        """The non-finite policy, applied to the gradients *and* the statistics, before anything changes.

        One L2 norm per gradient and statistic (an upper bound on its largest entry, in which NaN/inf
        show up) and one min/max of h give, in double precision, a bound on the new h and on the mean's
        move; ``None`` if the step is safe, else what is wrong."""
        new_bounds = []
        for group, plan in plans:
            params = plan["params"]
            if not params:
                continue
            # per plan, cached until the state is replaced (load_state_dict, a copy): h's buffers and
            # the largest value a statistic may reach (a quarter of the dtype's largest)
            key = (id(group), *map(id, params))
            cached = self._stat_plans.get(key)
            if cached is None:
                sts = [self.state.get(p) for p in params]
                hs = [st["hess"] for st in sts if st and "hess" in st]
                cached = (hs, torch.finfo(_state_dtype(params[0])).max / 4, len(hs) < len(params))
                if not cached[2]:
                    self._stat_plans[key] = cached
            hs, fmax, some_new = cached
            ess, wd = float(group["ess"]), float(group["weight_decay"])
            b1, b2 = float(group["beta1"]), float(group["beta2"])
            # one reduction per tensor and one host sync: L2 norms bound the max-abs values from above
            # (and show NaN/inf). The extremes of h are read every 16th step; in between they are
            # carried forward as bounds (h + delta at least halves per step; h grows by at most dh).
            carried = self._h_bounds.get(key)
            exact = carried is None or carried[2] >= 16
            # Price statistic of one sample (eps * g, formed in place, plan["price_only"]): it carries g's
            # NaN/inf and size (|eps| is never tiny for every draw), so g itself is not read again
            hstats = plan["hstats"]
            grads_read = [] if plan.get("price_only") else plan["grads"]
            read = grads_read + hstats if grads_read else hstats
            norms = torch._foreach_norm(read)
            if exact:
                norms = list(norms)
                for h in hs:
                    norms.extend(torch.aminmax(h))
            try:
                vals = torch.stack(norms).tolist()
            except RuntimeError:  # tensors of several dtypes or devices in one group
                vals = [float(v) for v in norms]
            ng, nn_ = len(grads_read), len(read)
            if not exact:
                for _ in hs:
                    vals += carried[:2]
            overflow = "gradient statistics so large that h or m would overflow their dtype"
            if not math.isfinite(sum(vals[:nn_])):
                if all(bool(torch.isfinite(t).all()) for t in read):
                    return overflow  # finite entries whose squares overflow the norm
                return "non-finite (NaN or inf) gradient"
            h0 = float(group["hess_init"])
            if hs:
                hmin, hmax = min(vals[nn_::2]), max(vals[nn_ + 1 :: 2])
                if some_new:  # parameters without state yet start at h0
                    hmin, hmax = min(hmin, h0), max(hmax, h0)
            else:
                hmin = hmax = h0
            gmax = max(vals[:ng]) * scale if ng else 0.0
            if hstats:
                smax = max(vals[ng:nn_])
            else:  # compiled path: eps * g is formed in the kernel; |eps| < 8 in practice
                smax = 8.0 * gmax / scale
            den = hmin + wd
            if not den > 0:
                return overflow
            if group["hess_approx"] == "price":
                smax *= scale
                w = smax + hmax / math.sqrt(den * ess)
                dh = (1 - b2) * math.sqrt(ess) * w * math.sqrt(hmax + wd) + 0.5 * (1 - b2) ** 2 * ess * w * w
            else:
                e = ess * smax * inv_scale * inv_scale / n_samples + hmax
                dh = (1 - b2) * e + 0.5 * (1 - b2) ** 2 * e * e / den
            alpha = group["lr"] * (group["hess_init"] + wd) if group["rescale_lr"] else group["lr"]
            dm = alpha * gmax / ((1 - b1) if b1 > 0 and group["debias"] else 1.0) / (0.5 * den)
            if not (hmax + dh < fmax and dm < fmax and math.isfinite(gmax)):
                if not exact:  # the carried bounds may be loose: decide on the exact extremes
                    self._h_bounds.pop(key, None)
                    return self._check_statistics([(group, plan)], scale, inv_scale, n_samples)
                return overflow
            new_bounds.append((key, ((hmin + wd) / 2 - wd, hmax + dh, 0 if exact else carried[2] + 1)))
        for key, bounds in new_bounds:
            self._h_bounds[key] = bounds
        return None

    @staticmethod
    def _config(group: dict, grad_scale: float) -> DiagGaussianConfig:
        """IVON as a setting of the diagonal-Gaussian kernel: h holds the data part (o = delta), Price or
        Gauss-Newton curvature, the positivity correction, momentum on the data gradient, clipping."""
        wd = float(group["weight_decay"])
        alpha = group["lr"] * (group["hess_init"] + wd) if group["rescale_lr"] else group["lr"]
        return DiagGaussianConfig(
            lr=float(alpha), beta2=float(group["beta2"]),
            curvature="price" if group["hess_approx"] == "price" else "gauss_newton",
            ess=float(group["ess"]), grad_scale=grad_scale, prior_precision=wd, prior_in_state=False,
            correction=True, beta1=float(group["beta1"]), momentum_on="data", debias=bool(group["debias"]),
            clip_radius=float(group["clip_radius"]),
        )

    def _update_group(self, group: dict, plan: dict, scale: float, stat_scale: float) -> None:
        params, grads, hstats, works = plan["params"], plan["grads"], plan["hstats"], plan["works"]
        states = [self._init_state(p, group) for p in params]
        steps = [s["step"] for s in states]
        torch._foreach_add_(steps, 1.0)
        cfg = self._config(group, scale)
        if plan.get("fused"):
            self._compiled_update(cfg, params, grads, works, states)
            return
        if stat_scale != 1.0:
            torch._foreach_mul_(hstats, stat_scale)
        # the r = 1/sqrt(h + delta) cache is the kernel's second work buffer: it enters holding r of the
        # sample and leaves holding h' + delta, whose rsqrt is the cache for the next sample
        means = [p if p.dtype == s["hess"].dtype else p.to(s["hess"].dtype) for p, s in zip(params, states)]
        if self.cache_sigma:
            rsds = [w["rsd"] for w in works]
        else:  # the saved-mean buffer is free between the restore and the next sample
            rsds = [w["mean"] if w["mean"].dtype == s["hess"].dtype else None for w, s in zip(works, states)]
            rsds = [r if r is not None else torch.empty_like(s["hess"]) for r, s in zip(rsds, states)]
        diag_gaussian_step_foreach_(
            means, [s["hess"] for s in states], [s["momentum"] for s in states], grads, hstats,
            [float(t) for t in steps], cfg, scratch=hstats, scratch2=rsds, scratch2_holds_rsqrt=self.cache_sigma,
        )
        for p, m in zip(params, means):
            if m is not p:
                p.copy_(m)
        if self.cache_sigma:
            torch._foreach_rsqrt_(rsds)
            for w in works:
                w["key"] = cfg.prior_precision

    def _compiled_update(self, cfg, params, grads, works, states) -> None:
        """``fused=True``: the same kernel through ``torch.compile``, one call per large tensor."""
        for p, g, w, st in zip(params, grads, works, states):
            stat = w["noise"].mul_(g)  # Price statistic eps * g of the one sample
            old = DiagGaussianState(p, st["hess"], st["momentum"], int(st["step"].item()) - 1)
            new = diag_gaussian_step_compiled(old, g, stat, cfg=cfg)
            p.copy_(new.mean)
            st["hess"].copy_(new.precision)
            st["momentum"].copy_(new.momentum)
            if w["rsd"] is not None:
                torch.add(st["hess"], cfg.prior_precision, out=w["rsd"]).rsqrt_()
                w["key"] = cfg.prior_precision

    # ------------------------------------------------------------------ read-outs
    @torch.no_grad()
    def posterior_std(self) -> list:
        r"""Posterior standard deviation :math:`\sigma = 1/\sqrt{N(h+\delta)}` per parameter.

        Returns a list of tensors aligned with ``[p for g in opt.param_groups for p in g["params"]]``
        (for a single group: with ``list(model.parameters())``). Parameters that were never
        updated report the prior-initialised value :math:`1/\sqrt{N(h_0+\delta)}`.
        """
        out = []
        for group in self.param_groups:
            for p in group["params"]:
                st = self.state.get(p, {})
                if "hess" in st:
                    h = st["hess"]
                else:
                    h = torch.full_like(p, group["hess_init"], dtype=_state_dtype(p))
                s = torch.empty_like(h)
                self._sigma_from_hess_(s, h, float(group["ess"]), float(group["weight_decay"]))
                out.append(s)
        return out

    @torch.no_grad()
    def posterior_summary(self, names: Optional[Iterable] = None) -> list:
        r"""One row (a dict) per parameter tensor: is the posterior being learned?

        Keys: ``name`` (from ``names``, e.g. ``[n for n, _ in model.named_parameters()]``,
        else ``"group{i}.param{j}"``), ``group``, ``numel``, ``steps``, ``sigma_mean``,
        ``sigma_min``, ``sigma_max``, ``sigma_init`` (the starting :math:`1/\sqrt{N(h_0+\delta)}`),
        ``sigma_prior`` (the prior's :math:`1/\sqrt{N\delta}`, infinite when :math:`\delta = 0`),
        ``hess_mean``, ``hess_rel_change`` (mean of :math:`|h-h_0|/h_0`) and
        ``frac_moved`` (fraction of entries whose :math:`h` moved more than 10 % from
        :math:`h_0`), ``hess_drift`` (:math:`h^{\mathrm{drift}}_t`, what :math:`h` would be after
        :math:`t` steps in which every :math:`\hat h = 0`: the decay plus the positivity correction,
        :math:`h^{\mathrm{drift}} \leftarrow \beta_2 h^{\mathrm{drift}} + \tfrac12(1-\beta_2)^2
        (h^{\mathrm{drift}})^2/(h^{\mathrm{drift}}+\delta)` from :math:`h_0`) and ``hess_from_data``: the
        mean over entries of :math:`(h - h^{\mathrm{drift}}_t)/h`, the share of :math:`h` that the data
        put there (exactly 0 when every :math:`\hat h` was 0). The correction term is not counted as data.
        ``hess_rel_change`` alone can mislead, because :math:`h` drifts from :math:`h_0` without any
        data; a ``hess_from_data`` near 0 after many steps
        means the posterior variance has not been learned from the data: typically ``beta2`` is
        too close to 1 for the number of steps, or ``ess`` is off.
        """
        names = list(names) if names is not None else None
        stds = self.posterior_std()
        rows, k = [], 0
        for gi, group in enumerate(self.param_groups):
            h0 = float(group["hess_init"])
            for j, p in enumerate(group["params"]):
                s = stds[k].double()
                st = self.state.get(p, {})
                h = st["hess"].double() if "hess" in st else torch.full_like(s, h0)
                rel = (h - h0).abs() / h0
                steps = int(st["step"].item()) if "step" in st else 0
                decayed = self._drift(h0, float(group["beta2"]), float(group["weight_decay"]), steps)
                rows.append(
                    dict(
                        name=names[k] if names is not None else f"group{gi}.param{j}",
                        group=gi,
                        numel=p.numel(),
                        steps=steps,
                        sigma_mean=s.mean().item(),
                        sigma_min=s.min().item(),
                        sigma_max=s.max().item(),
                        sigma_init=1.0 / math.sqrt(float(group["ess"]) * (h0 + float(group["weight_decay"]))),
                        sigma_prior=(
                            1.0 / math.sqrt(float(group["ess"]) * float(group["weight_decay"]))
                            if float(group["weight_decay"]) > 0
                            else math.inf
                        ),
                        hess_mean=h.mean().item(),
                        hess_rel_change=rel.mean().item(),
                        frac_moved=(rel > 0.1).double().mean().item(),
                        hess_from_data=((h - decayed) / h).mean().item(),
                        hess_drift=decayed,
                    )
                )
                k += 1
        return rows

    @staticmethod
    def _drift(h0: float, beta2: float, delta: float, steps: int) -> float:
        """h after ``steps`` steps with every hhat = 0 (decay and correction only), from h0."""
        h, c = h0, 0.5 * (1.0 - beta2) ** 2
        for _ in range(steps):
            h = beta2 * h + c * h * h / (h + delta)
            if h == 0.0:
                break
        return h

    # ------------------------------------------------------------------ checkpoints


def _append_ranges(cls, ranges, defaults) -> None:
    """Append the declared ranges (the ones the validator checks) to a class docstring."""
    table = document_ranges(ranges, defaults)
    cls.__doc__ = (cls.__doc__ or "") + (
        "\n    Hyperparameter ranges (declared once in ``RANGES``; checked on construction, for every param\n"
        "    group and on ``load_state_dict``):\n\n" + "\n".join("    " + line for line in table.splitlines()) + "\n"
    )


_append_ranges(IVON, IVON_RANGES, dict(hess_init=1.0, beta1=0.9, beta2=0.99999, weight_decay=1e-4, mc_samples=1,
                                       hess_approx="price", clip_radius=math.inf, debias=True, rescale_lr=True))
