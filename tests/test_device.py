import numpy as np
import pytest
import torch

import blrlib


def test_pick_device_prefers_cuda_only_when_present(monkeypatch):
    monkeypatch.delenv("BLR_DEVICE", raising=False)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert blrlib.pick_device().type == expected
    assert blrlib.pick_device("cpu").type == "cpu"
    monkeypatch.setenv("BLR_DEVICE", "cpu")
    assert blrlib.pick_device().type == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_asking_for_missing_cuda_raises():
    with pytest.raises(ValueError, match="asks for CUDA"):
        blrlib.pick_device("cuda")


def test_seed_everything_is_deterministic():
    g1 = blrlib.seed_everything(3)
    a = (torch.randn(3), np.random.rand(2), torch.randn(2, generator=g1))
    g2 = blrlib.seed_everything(3)
    b = (torch.randn(3), np.random.rand(2), torch.randn(2, generator=g2))
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and torch.equal(a[2], b[2])
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        blrlib.seed_everything(-1)
    assert blrlib.seed_everything(0, device="cpu").device.type == "cpu"
    if torch.cuda.is_available():
        assert blrlib.seed_everything(0, device="cuda").device.type == "cuda"


def test_large_problems_flag(monkeypatch):
    monkeypatch.setenv("BLR_BOOK_LARGE", "1")
    assert blrlib.large_problems()
    monkeypatch.setenv("BLR_BOOK_LARGE", "0")
    assert not blrlib.large_problems()
