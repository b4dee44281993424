r"""The book's one figure style, and the plots that several chapters share.

Call :func:`use_book_style` once, after ``import matplotlib.pyplot as plt``, at the top of a
chapter. It sets one set of ``matplotlib.rcParams``: a resolution of :data:`DPI` dots per
inch and fonts of at least :data:`MIN_FONT_PT` points. A figure :data:`FULL_WIDTH` inches
wide is then as many pixels wide as the book's text column is at a 1,400 px wide browser
window, so it is shown at its natural size (a ratio of 1, not scaled down) and a 10 pt
label is about 14 px tall on the screen. Never make a figure wider than
:data:`FULL_WIDTH`; put at most two panels in a row.

:func:`reliability_diagram` draws the per-bin accuracy against the per-bin confidence of
:func:`blrlib.metrics.reliability_bins` on a given axis.
"""

from __future__ import annotations

import numpy as np
import torch

from blrlib import metrics

__all__ = [
    "DPI",
    "FULL_WIDTH",
    "MIN_FONT_PT",
    "BOOK_STYLE",
    "use_book_style",
    "reliability_diagram",
]

#: Dots per inch of every figure (on the screen and in the saved PNG).
DPI = 100

#: Width in inches of a figure that fills the text column. At a 1,400 px browser window
#: the article of sphinx-book-theme 1.3 is 848 CSS px wide (the window less the 20 %
#: primary sidebar and the 17 rem secondary one), 784 px inside its 2 rem padding; a
#: captioned (numbered) figure has 768 px of it (measured in Chromium).
#: ``FULL_WIDTH * DPI`` = 740 px fits inside with the few pixels that matplotlib's
#: tight bounding box may add around the axes labels, so the figure is shown at 100 %.
FULL_WIDTH = 7.4

#: The smallest font size, in points, that the book style uses (tick labels, legends).
MIN_FONT_PT = 10

#: The rcParams that :func:`use_book_style` sets.
BOOK_STYLE = {
    "figure.dpi": DPI,
    "savefig.dpi": DPI,
    "figure.figsize": (FULL_WIDTH, 3.4),
    "figure.facecolor": "white",
    "savefig.facecolor": "white",
    "font.size": 11,
    "axes.titlesize": 12,
    "axes.labelsize": 11,
    "xtick.labelsize": MIN_FONT_PT,
    "ytick.labelsize": MIN_FONT_PT,
    "legend.fontsize": MIN_FONT_PT,
    "legend.title_fontsize": MIN_FONT_PT,
    "figure.titlesize": 12,
    "figure.labelsize": 11,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "lines.linewidth": 1.8,
    "lines.markersize": 6,
    "legend.framealpha": 0.9,
    "image.cmap": "viridis",
}


def use_book_style() -> None:
    r"""Set the book's figure style (:data:`BOOK_STYLE`) in ``matplotlib.rcParams``.

    Idempotent. Fonts are at least :data:`MIN_FONT_PT` points; at :data:`DPI` dots per
    inch a :math:`p`-point font is :math:`p \cdot \mathrm{DPI} / 72` pixels tall, so
    10 pt is about 14 px when the figure is shown at its natural size.
    """
    import matplotlib
    import matplotlib.pyplot  # noqa: F401  (loads the notebook backend before the style)

    matplotlib.rcParams.update(BOOK_STYLE)


def _to_tensor(x, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach()
    if isinstance(x, (np.ndarray, list, tuple)):
        return torch.as_tensor(np.asarray(x))
    raise ValueError(f"Invalid {name}: {type(x).__name__} (must be a tensor or an array)")


def reliability_diagram(ax, probs, labels, n_bins: int = 10, label: str | None = None,
                        **plot_kwargs) -> dict:
    r"""Draw a reliability diagram on the axis ``ax`` and return its bins.

    For bin :math:`b` of :func:`blrlib.metrics.reliability_bins` (equal-width confidence
    bins on :math:`[0, 1]`), a marker at :math:`(\mathrm{conf}_b, \mathrm{acc}_b)` whose
    area grows with the fraction :math:`n_b / N` of examples in the bin; consecutive
    non-empty bins are joined by a line, and the diagonal
    :math:`\mathrm{acc} = \mathrm{conf}` (perfect calibration) is drawn once per axis.
    Points below the diagonal are overconfident. The legend entry is ``label`` followed by
    the expected calibration error
    :math:`\mathrm{ECE} = \sum_b \frac{n_b}{N} |\mathrm{acc}_b - \mathrm{conf}_b|`.

    Parameters
    ----------
    ax : matplotlib.axes.Axes
        The axis to draw on.
    probs : Tensor or array, shape ``(N, C)``
        Predicted class probabilities (rows sum to 1), on any device.
    labels : Tensor or array, shape ``(N,)``
        The true classes.
    n_bins : int
        The number of bins :math:`B`.
    label : str or None
        The legend label; ``None`` for no legend entry.
    **plot_kwargs
        Passed to ``ax.plot`` (for example ``color`` or ``marker``).

    Returns
    -------
    dict
        The bins of :func:`blrlib.metrics.reliability_bins` as NumPy arrays on the CPU
        (``edges``, ``count``, ``confidence``, ``accuracy``) and ``ece`` (a float).
    """
    if label is not None and not isinstance(label, str):
        raise ValueError(f"Invalid label: {label!r} (must be a string or None)")
    probs_t, labels_t = _to_tensor(probs, "probs"), _to_tensor(labels, "labels")
    bins = metrics.reliability_bins(probs_t, labels_t, n_bins=n_bins)
    bins = {k: v.detach().cpu().numpy() for k, v in bins.items()}
    filled = bins["count"] > 0
    total = bins["count"].sum()
    weights = bins["count"][filled] / total
    ece = float(np.sum(weights * np.abs(bins["accuracy"][filled] - bins["confidence"][filled])))
    bins["ece"] = ece

    if not any(line.get_gid() == "reliability-diagonal" for line in ax.get_lines()):
        ax.plot([0, 1], [0, 1], ":", color="black", lw=1, gid="reliability-diagonal")
    kwargs = dict(plot_kwargs)  # never mutate what the caller passed
    marker = kwargs.pop("marker", "o")
    full_label = None if label is None else f"{label} (ECE {ece:.3f})"
    (line,) = ax.plot(bins["confidence"][filled], bins["accuracy"][filled], "-",
                      label=full_label, **kwargs)
    # marker area (pt^2) from 15 for an almost empty bin to 15 + 250 for all examples
    sizes = 15 + 250 * weights
    ax.scatter(bins["confidence"][filled], bins["accuracy"][filled], s=sizes, marker=marker,
               color=line.get_color(), alpha=line.get_alpha(), zorder=line.get_zorder() + 0.1)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("confidence (mean in the bin)")
    ax.set_ylabel("accuracy in the bin")
    return bins
