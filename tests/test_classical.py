"""The classical baselines, checked against closed forms (no BLR code involved)."""

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose

from blrlib.classical import gradient_descent, newton


def test_gradient_descent_on_quadratic_matches_closed_form():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((3, 3))
    hess = a @ a.T + 3 * np.eye(3)
    b = rng.standard_normal(3)
    lr, steps = 0.05, 30
    iterates = gradient_descent(lambda x: hess @ x - b, np.zeros(3), lr, steps)
    x_star = np.linalg.solve(hess, b)
    # x_t − x* = (I − αH)^t (x_0 − x*)
    expected = x_star + np.linalg.matrix_power(np.eye(3) - lr * hess, steps) @ (np.zeros(3) - x_star)
    assert iterates.shape == (steps + 1, 3)
    assert_allclose(iterates[-1], expected, rtol=1e-12, atol=1e-12)


def test_newton_solves_quadratic_in_one_step_and_works_with_torch():
    hess = torch.tensor([[3.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
    b = torch.tensor([1.0, -1.0], dtype=torch.float64)
    it = newton(lambda x: hess @ x - b, lambda x: hess, torch.zeros(2, dtype=torch.float64), 1)
    torch.testing.assert_close(it[1], torch.linalg.solve(hess, b), rtol=1e-12, atol=1e-12)


def test_newton_converges_quadratically_on_1d_function():
    f_grad = lambda x: np.array([np.exp(x[0]) - 2.0])  # minimise e^x − 2x  # noqa: E731
    f_hess = lambda x: np.array([[np.exp(x[0])]])  # noqa: E731
    it = newton(f_grad, f_hess, np.array([1.0]), 6)
    errors = np.abs(it[:, 0] - np.log(2.0))
    assert errors[-1] < 1e-14
    assert errors[3] < 10 * errors[2] ** 2


def test_inputs_are_not_mutated_and_bad_arguments_raise():
    x0 = np.array([1.0, 2.0])
    gradient_descent(lambda x: x, x0, 0.1, 3)
    assert_allclose(x0, [1.0, 2.0])
    with pytest.raises(ValueError, match="lr must be positive"):
        gradient_descent(lambda x: x, x0, -0.1, 3)
    with pytest.raises(ValueError, match="num_steps must be a non-negative integer"):
        gradient_descent(lambda x: x, x0, 0.1, 2.5)
    with pytest.raises(ValueError, match="step_size must be positive"):
        newton(lambda x: x, lambda x: np.eye(2), x0, 1, step_size=0.0)


@pytest.mark.parametrize("step_size", [0.3, 0.7])
def test_damped_newton_contracts_by_one_minus_step_size_on_a_quadratic(step_size):
    # x_t − x* = (1 − α)^t (x_0 − x*) for any positive-definite H.
    hess = np.array([[3.0, 1.0], [1.0, 2.0]])
    b = np.array([1.0, -1.0])
    x0 = np.array([2.0, -3.0])
    it = newton(lambda x: hess @ x - b, lambda x: hess, x0, 5, step_size=step_size)
    x_star = np.linalg.solve(hess, b)
    assert_allclose(it[-1] - x_star, (1 - step_size) ** 5 * (x0 - x_star), rtol=1e-12, atol=1e-14)
