r"""Classical reference algorithms, written without any Bayesian-learning-rule code.

They are the baselines the book's verifications compare against: plain loops as found in
optimisation textbooks (Nocedal & Wright, 2006; Boyd & Vandenberghe, 2004). They work on NumPy
arrays and PyTorch tensors alike; ``grad_fn`` and ``hess_fn`` are whatever the caller provides.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from ._validation import POSITIVE, check_with_phrase

__all__ = ["gradient_descent", "newton", "kalman_filter", "rts_smoother"]


def _check_steps(num_steps: int) -> int:
    if int(num_steps) != num_steps or num_steps < 0:
        raise ValueError(f"Invalid num_steps: {num_steps} (num_steps must be a non-negative integer)")
    return int(num_steps)


def _stack(iterates: list) -> Any:
    return torch.stack(iterates) if isinstance(iterates[0], torch.Tensor) else np.stack(iterates)


def _copy(x: Any) -> Any:
    return x.clone() if isinstance(x, torch.Tensor) else np.array(x, dtype=float, copy=True)


def gradient_descent(grad_fn: Callable, x0: Any, lr: float, num_steps: int) -> Any:
    r"""Gradient descent, :math:`x_{t+1} = x_t - \alpha\nabla f(x_t)`.

    Returns the iterates :math:`x_0, \dots, x_T` stacked along the first dimension.
    """
    lr = check_with_phrase("lr", lr, POSITIVE, "lr must be positive")
    x = _copy(x0)
    iterates = [x]
    for _ in range(_check_steps(num_steps)):
        x = x - lr * grad_fn(x)
        iterates.append(x)
    return _stack(iterates)


def newton(grad_fn: Callable, hess_fn: Callable, x0: Any, num_steps: int, step_size: float = 1.0) -> Any:
    r"""Newton's method, :math:`x_{t+1} = x_t - \alpha\,[\nabla^2 f(x_t)]^{-1}\nabla f(x_t)`.

    ``step_size`` :math:`\alpha = 1` is the pure Newton step. Returns the stacked iterates.
    """
    step_size = check_with_phrase("step_size", step_size, POSITIVE, "step_size must be positive")
    x = _copy(x0)
    iterates = [x]
    for _ in range(_check_steps(num_steps)):
        g, h = grad_fn(x), hess_fn(x)
        direction = torch.linalg.solve(h, g) if isinstance(x, torch.Tensor) else np.linalg.solve(h, g)
        x = x - step_size * direction
        iterates.append(x)
    return _stack(iterates)


def _as_float64(name: str, value: Any, ndim: int) -> torch.Tensor:
    tensor = torch.as_tensor(value).detach().clone().to(torch.float64)
    if tensor.ndim != ndim:
        raise ValueError(f"Invalid {name}: shape {tuple(tensor.shape)} (must be a {ndim}-D array)")
    return tensor


def kalman_filter(transition, transition_noise, observation, observation_noise, initial_mean, initial_covariance,
                  observations) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""The Kalman filter in its textbook gain form (Kalman, 1960; Särkkä, 2013, Ch. 4), in float64.

    Model: :math:`x_1 \sim \mathcal{N}(m_1, P_1)`, :math:`x_{t+1} = F x_t + w_t`, :math:`w_t\sim\mathcal{N}(0, Q)`,
    :math:`z_t = H x_t + v_t`, :math:`v_t \sim \mathcal{N}(0, R)`. Timing: the first observation :math:`z_1`
    updates the initial state directly (no predict before it); every later :math:`z_t` follows a predict

    .. math::

        m^-_t = F m_{t-1},\quad P^-_t = F P_{t-1} F^\top + Q,

    and the update is

    .. math::

        v = z_t - H m^-_t,\quad C = H P^-_t H^\top + R,\quad K = P^-_t H^\top C^{-1},\quad
        m_t = m^-_t + K v,\quad P_t = (I - K H) P^-_t (I - K H)^\top + K R K^\top

    (the Joseph form). The log evidence is :math:`\sum_t \log\mathcal{N}(z_t\mid H m^-_t, C_t)`.

    Returns:
        ``(means, covariances, log_evidence)``: filtered means ``(T, d)``, covariances ``(T, d, d)`` and the
        total log evidence :math:`\log p(z_{1:T})` (a scalar tensor).
    """
    F = _as_float64("transition", transition, 2)
    Q = _as_float64("transition_noise", transition_noise, 2)
    H = _as_float64("observation", observation, 2)
    R = _as_float64("observation_noise", observation_noise, 2)
    m = _as_float64("initial_mean", initial_mean, 1)
    P = _as_float64("initial_covariance", initial_covariance, 2)
    zs = _as_float64("observations", observations, 2)
    d, k = m.numel(), H.shape[0]
    if F.shape != (d, d) or Q.shape != (d, d) or P.shape != (d, d) or H.shape != (k, d) or R.shape != (k, k):
        raise ValueError(f"Invalid shapes: F {tuple(F.shape)}, Q {tuple(Q.shape)}, H {tuple(H.shape)}, "
                         f"R {tuple(R.shape)}, P_1 {tuple(P.shape)} (must fit a state of size {d})")
    if zs.shape[1] != k:
        raise ValueError(f"Invalid observations: shape {tuple(zs.shape)} (must be (T, {k}))")
    eye = torch.eye(d, dtype=torch.float64)
    means, covariances, log_evidence = [], [], torch.zeros((), dtype=torch.float64)
    for t, z in enumerate(zs):
        if t > 0:
            m = F @ m
            P = F @ P @ F.T + Q
        innovation = z - H @ m
        C = H @ P @ H.T + R
        K = torch.linalg.solve(C, H @ P).T  # P H^T C^{-1}, with C and P symmetric
        m = m + K @ innovation
        P = (eye - K @ H) @ P @ (eye - K @ H).T + K @ R @ K.T
        log_evidence = log_evidence - 0.5 * (
            innovation @ torch.linalg.solve(C, innovation) + torch.linalg.slogdet(2 * np.pi * C)[1]
        )
        means.append(m)
        covariances.append(P)
    return torch.stack(means), torch.stack(covariances), log_evidence


def rts_smoother(transition, transition_noise, filtered_means, filtered_covariances) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The Rauch–Tung–Striebel smoother (Rauch, Tung & Striebel, 1965; Särkkä, 2013, Ch. 8), in float64.

    From the filtered :math:`(m_t, P_t)` of :func:`kalman_filter`, backwards for :math:`t = T-1, \dots, 1`:

    .. math::

        m^-_{t+1} = F m_t,\quad P^-_{t+1} = F P_t F^\top + Q,\quad G_t = P_t F^\top (P^-_{t+1})^{-1},

        m^s_t = m_t + G_t (m^s_{t+1} - m^-_{t+1}),\quad P^s_t = P_t + G_t (P^s_{t+1} - P^-_{t+1}) G_t^\top,

    starting from :math:`(m^s_T, P^s_T) = (m_T, P_T)`. Returns the smoothed means ``(T, d)`` and covariances
    ``(T, d, d)``.
    """
    F = _as_float64("transition", transition, 2)
    Q = _as_float64("transition_noise", transition_noise, 2)
    ms = _as_float64("filtered_means", filtered_means, 2)
    Ps = _as_float64("filtered_covariances", filtered_covariances, 3)
    if Ps.shape[0] != ms.shape[0]:
        raise ValueError(f"Invalid filtered_covariances: {Ps.shape[0]} time steps (must match the {ms.shape[0]} means)")
    means, covariances = [ms[-1]], [Ps[-1]]
    for t in range(ms.shape[0] - 2, -1, -1):
        m_pred = F @ ms[t]
        P_pred = F @ Ps[t] @ F.T + Q
        G = torch.linalg.solve(P_pred, F @ Ps[t]).T  # P_t F^T (P^-)^{-1}
        means.append(ms[t] + G @ (means[-1] - m_pred))
        covariances.append(Ps[t] + G @ (covariances[-1] - P_pred) @ G.T)
    return torch.stack(means[::-1]), torch.stack(covariances[::-1])
