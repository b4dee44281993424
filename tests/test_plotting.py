"""blrlib.plotting: the book style and the reliability diagram."""

import io

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from blrlib import metrics, plotting  # noqa: E402

# The width, in CSS px, that a captioned figure has in the built book at a 1,400 px window
# (measured in Chromium; tests/test_site.py checks every figure of the built pages).
COLUMN_PX = 768


@pytest.fixture(autouse=True)
def _restore_rc():
    with matplotlib.rc_context():
        yield
    plt.close("all")


def test_style_sets_every_key():
    matplotlib.rcParams["font.size"] = 5.0
    plotting.use_book_style()
    for key, value in plotting.BOOK_STYLE.items():
        got = matplotlib.rcParams[key]
        if isinstance(value, tuple):
            assert tuple(got) == pytest.approx(value), key
        else:
            assert got == value, key
    plotting.use_book_style()  # idempotent
    assert matplotlib.rcParams["font.size"] == plotting.BOOK_STYLE["font.size"]


@pytest.mark.parametrize("key", ["font.size", "axes.titlesize", "axes.labelsize", "xtick.labelsize",
                                 "ytick.labelsize", "legend.fontsize", "figure.titlesize"])
def test_fonts_at_least_min_and_readable(key):
    size = plotting.BOOK_STYLE[key]
    assert size >= plotting.MIN_FONT_PT
    # rendered at 85 % of natural size (the site test's floor), still >= 10 px tall
    assert size * plotting.DPI / 72 * 0.85 >= 10


def _png_width(fig, bbox="tight"):
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches=bbox)  # what the notebook backend does
    buf.seek(0)
    return plt.imread(buf).shape[1]


@pytest.mark.parametrize("ncols", [1, 2])
def test_full_width_figure_fits_the_column(ncols):
    plotting.use_book_style()
    fig, axes = plt.subplots(1, ncols, figsize=(plotting.FULL_WIDTH, 3))
    for ax in np.atleast_1d(axes):
        ax.plot([0, 1000], [0, 1e5], label="a long legend label")
        ax.set_xlabel("a label")
        ax.set_ylabel("another label")
        ax.legend()
    fig.tight_layout()
    width = _png_width(fig)
    # natural width within the column (shown at 100 %), and not much narrower than asked
    assert width <= COLUMN_PX
    assert width >= 0.9 * plotting.FULL_WIDTH * plotting.DPI


def test_wider_figure_would_be_scaled_down():
    # the check above can fail: a figure 1.3x wider than FULL_WIDTH does not fit
    plotting.use_book_style()
    fig, ax = plt.subplots(figsize=(1.3 * plotting.FULL_WIDTH, 3))
    ax.plot([0, 1])
    fig.tight_layout()
    assert _png_width(fig) > COLUMN_PX


def _toy(n=400, c=3, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    logits = 2.0 * torch.randn(n, c, generator=g, dtype=torch.float64)
    probs = torch.softmax(logits, -1)
    labels = torch.multinomial(probs, 1, generator=g).squeeze(1)
    return probs.to(device), labels.to(device)


@pytest.mark.parametrize("n_bins", [3, 10, 15])
def test_reliability_diagram_matches_metrics(n_bins):
    probs, labels = _toy()
    before = probs.clone()
    fig, ax = plt.subplots()
    bins = plotting.reliability_diagram(ax, probs, labels, n_bins=n_bins, label="model", color="C3")
    ref = metrics.reliability_bins(probs, labels, n_bins=n_bins)
    for key in ("edges", "count", "confidence", "accuracy"):
        np.testing.assert_allclose(bins[key], ref[key].numpy(), rtol=0, atol=0, equal_nan=True)
    assert bins["ece"] == pytest.approx(metrics.expected_calibration_error(probs, labels, n_bins=n_bins),
                                        rel=1e-12)
    assert torch.equal(probs, before)  # the input is not mutated
    # what is drawn: the diagonal, and the curve through the non-empty bins
    lines = ax.get_lines()
    assert [ln.get_gid() for ln in lines].count("reliability-diagonal") == 1
    filled = bins["count"] > 0
    np.testing.assert_allclose(lines[1].get_xdata(), bins["confidence"][filled])
    np.testing.assert_allclose(lines[1].get_ydata(), bins["accuracy"][filled])
    assert lines[1].get_label() == f"model (ECE {bins['ece']:.3f})"
    assert matplotlib.colors.same_color(lines[1].get_color(), "C3")
    assert ax.get_xlim() == (0, 1)


def test_reliability_diagram_twice_on_one_axis_and_numpy_input():
    probs, labels = _toy(seed=1)
    fig, ax = plt.subplots()
    plotting.reliability_diagram(ax, probs.numpy(), labels.numpy(), n_bins=5, marker="s")
    plotting.reliability_diagram(ax, probs, labels, n_bins=5)
    gids = [ln.get_gid() for ln in ax.get_lines()]
    assert gids.count("reliability-diagonal") == 1 and len(gids) == 3
    assert ax.get_legend_handles_labels() == ([], [])  # label=None: no legend entries


def test_perfectly_calibrated_predictor_has_zero_ece():
    # every prediction has confidence 1 and is right
    probs = torch.eye(4, dtype=torch.float64).repeat(5, 1)
    labels = torch.arange(4).repeat(5)
    fig, ax = plt.subplots()
    assert plotting.reliability_diagram(ax, probs, labels)["ece"] == 0.0
    wrong = (labels + 1) % 4
    assert plotting.reliability_diagram(ax, probs, wrong)["ece"] == 1.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_reliability_diagram_from_cuda():
    probs, labels = _toy(device="cuda")
    fig, ax = plt.subplots()
    bins = plotting.reliability_diagram(ax, probs, labels)
    assert isinstance(bins["count"], np.ndarray)


@pytest.mark.parametrize("kwargs, match", [
    (dict(n_bins=0), "Invalid n_bins"),
    (dict(label=3), "Invalid label"),
])
def test_reliability_diagram_bad_arguments(kwargs, match):
    probs, labels = _toy()
    fig, ax = plt.subplots()
    with pytest.raises(ValueError, match=match):
        plotting.reliability_diagram(ax, probs, labels, **kwargs)


def test_reliability_diagram_bad_input_types():
    fig, ax = plt.subplots()
    with pytest.raises(ValueError, match="Invalid probs"):
        plotting.reliability_diagram(ax, "not probs", torch.zeros(3, dtype=torch.long))
