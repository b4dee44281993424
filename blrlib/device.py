"""One place that decides where the book's experiments run, and how they are seeded.

Every notebook calls :func:`pick_device` and :func:`seed_everything`; :func:`large_problems` says
whether the reader asked for the bigger versions of the experiments (``BLR_BOOK_LARGE=1``, meant
for a GPU).
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch

__all__ = ["pick_device", "seed_everything", "large_problems"]


def pick_device(prefer: str | None = None) -> torch.device:
    """CUDA when it is present, otherwise the CPU.

    ``prefer`` (or the environment variable ``BLR_DEVICE``) forces a device such as ``"cpu"``;
    asking for CUDA on a machine without it raises ``ValueError``.
    """
    choice = prefer if prefer is not None else os.environ.get("BLR_DEVICE")
    if choice:
        device = torch.device(choice)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"prefer={choice!r} asks for CUDA, but torch.cuda.is_available() is False")
        return device
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def seed_everything(seed: int, device: torch.device | str | None = None) -> torch.Generator:
    """Seed Python's, NumPy's and PyTorch's global generators (CUDA's too, when present).

    Returns a fresh ``torch.Generator`` seeded with ``seed`` on ``device`` (the CPU by default);
    pass ``device=pick_device()`` for a generator that samplers on the GPU accept.
    """
    if isinstance(seed, bool) or int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer; got {seed}")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    return torch.Generator(device=torch.device(device) if device is not None else "cpu").manual_seed(int(seed))


def large_problems() -> bool:
    """True when ``BLR_BOOK_LARGE`` is set to 1/true/yes: experiments may then enlarge their problems."""
    return os.environ.get("BLR_BOOK_LARGE", "").strip().lower() in {"1", "true", "yes"}
