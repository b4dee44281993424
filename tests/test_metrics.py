"""blrlib.metrics against hand-computed cases."""

import math

import pytest
import torch

from blrlib import metrics as M

P = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.5, 0.5]], dtype=torch.float64)
Y = torch.tensor([0, 1, 1, 0])


def test_nll_by_hand():
    expected = -(math.log(0.9) + math.log(0.4) + math.log(0.7) + math.log(0.5)) / 4
    assert M.nll(P, Y) == pytest.approx(expected, rel=1e-12)
    # a zero probability on the label: clamped at eps, finite
    assert M.nll(torch.tensor([[1.0, 0.0]]), torch.tensor([1])) == pytest.approx(-math.log(1e-12))


def test_accuracy_by_hand():
    # predictions 0, 0, 1, 0 (tie -> first); correct: yes, no, yes, yes
    assert M.accuracy(P, Y) == 0.75


def test_reliability_bins_and_ece_by_hand():
    # confidences 0.9, 0.6, 0.7, 0.5; with 2 bins: (0, .5] holds 0.5, (.5, 1] holds 0.9, 0.6, 0.7
    b = M.reliability_bins(P, Y, n_bins=2)
    assert b["count"].tolist() == [1.0, 3.0]
    assert b["confidence"].tolist() == pytest.approx([0.5, (0.9 + 0.6 + 0.7) / 3])
    assert b["accuracy"].tolist() == pytest.approx([1.0, 2 / 3])
    ece = 0.25 * abs(1.0 - 0.5) + 0.75 * abs(2 / 3 - 2.2 / 3)
    assert M.expected_calibration_error(P, Y, n_bins=2) == pytest.approx(ece, rel=1e-12)
    # 10 bins: every example alone in its bin (0.5 -> bin 5, 0.6 -> 6, 0.7 -> 7, 0.9 -> 9)
    b10 = M.reliability_bins(P, Y, n_bins=10)
    assert b10["count"].nonzero().flatten().tolist() == [4, 5, 6, 8]
    assert torch.isnan(b10["accuracy"][0])
    ece10 = (abs(1 - 0.9) + abs(0 - 0.6) + abs(1 - 0.7) + abs(1 - 0.5)) / 4
    assert M.expected_calibration_error(P, Y, n_bins=10) == pytest.approx(ece10)


def test_perfectly_calibrated_and_overconfident():
    # 10 examples at confidence 0.8, 8 right: ECE 0
    probs = torch.tensor([[0.8, 0.2]] * 10)
    y = torch.tensor([0] * 8 + [1] * 2)
    assert M.expected_calibration_error(probs, y) == pytest.approx(0.0, abs=1e-7)
    # all wrong with confidence 1: ECE 1
    assert M.expected_calibration_error(torch.tensor([[1.0, 0.0]] * 3), torch.tensor([1, 1, 1])) == pytest.approx(1.0)


def test_predictive_entropy_by_hand():
    h = M.predictive_entropy(torch.tensor([[0.5, 0.5], [1.0, 0.0], [0.25, 0.75]]))
    assert h[0].item() == pytest.approx(math.log(2))
    assert h[1].item() == 0.0
    assert h[2].item() == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)))
    assert M.predictive_entropy(torch.full((2, 4), 0.25)).tolist() == pytest.approx([math.log(4)] * 2)


def test_probs_from_logits_averages_probabilities_not_logits():
    z = torch.tensor([[[10.0, 0.0]], [[0.0, 10.0]]])  # two samples, one example
    p = M.probs_from_logits(z)
    assert p[0].tolist() == pytest.approx([0.5, 0.5], abs=1e-4)
    assert M.probs_from_logits(z[0]).shape == (1, 2)


@pytest.mark.parametrize(
    "probs, targets, msg",
    [
        (torch.tensor([[2.0, -1.0]]), torch.tensor([0]), "finite and >= 0"),
        (torch.tensor([[0.2, 0.2]]), torch.tensor([0]), "sum to 1"),
        (torch.tensor([0.5, 0.5]), torch.tensor([0]), r"shape \(N, C\)"),
        (torch.tensor([[0.5, 0.5]]), torch.tensor([2]), r"labels must lie in \[0, 1\]"),
        (torch.tensor([[0.5, 0.5]]), torch.tensor([0.0]), "integer labels"),
    ],
)
def test_bad_input(probs, targets, msg):
    with pytest.raises(ValueError, match=msg):
        M.nll(probs, targets)


def test_bad_bins():
    with pytest.raises(ValueError, match=r"Invalid n_bins: 0"):
        M.expected_calibration_error(P, Y, n_bins=0)


def test_reliability_bins_are_all_on_the_device_of_probs():
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        probs = torch.tensor([[0.9, 0.1], [0.3, 0.7]], device=device)
        targets = torch.tensor([0, 0], device=device)
        bins = M.reliability_bins(probs, targets, n_bins=4)
        assert {t.device.type for t in bins.values()} == {torch.device(device).type}
