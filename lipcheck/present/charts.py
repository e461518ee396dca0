"""The charts of the HTML reports, drawn by matplotlib (the optional extra `lipcheck[html]`) as SVG.

Each chart is a function from plain numbers to one `<svg>` element (a string) to place inline in a
page. It draws on a bare `matplotlib.figure.Figure`: no pyplot, no global state, no display needed.
The output is deterministic, so reports can be golden-tested and diffed: text is drawn as paths in
DejaVu Sans (which ships with matplotlib, so no font is looked up on the machine), element ids are
hashed with a fixed salt instead of random ones, and the SVG carries no date. The colours are the
Okabe-Ito palette, which readers with the common colour-vision deficiencies tell apart; lines differ
in dash pattern too. Large data sets are drawn from a subsample of ranks, or as an embedded raster,
so that a report of a million samples stays a few hundred kilobytes.
"""

from __future__ import annotations

import importlib.util
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lipcheck.errors import InputError
from lipcheck.present import escape

EXTRA = 'pip install "lipcheck[html]"'

# Okabe & Ito (2008), "Color Universal Design".
BLUE, ORANGE, GREEN, VERMILLION, PURPLE, SKY, YELLOW, BLACK = (
    "#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000",
)  # fmt: skip
MARK_STYLES = (
    (VERMILLION, "-"), (BLACK, "--"), (PURPLE, "-."), (GREEN, ":"), (ORANGE, (0, (5, 1, 1, 1))),
)  # fmt: skip

SORTED_POINTS = 400  # ranks drawn of the sorted sigmas; more samples are subsampled evenly
RASTER_POINTS = 2000  # a scatter of more points is embedded as a raster image
MAX_LAYERS = 40  # layer factors drawn; a model with more shows its largest ones

_STYLE: dict[Any, Any] = {  # matplotlib's rcParams keys are typed as literals
    "svg.hashsalt": "lipcheck",
    "svg.fonttype": "path",
    "font.family": "DejaVu Sans",
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#dddddd",
    "grid.linewidth": 0.6,
    "axes.axisbelow": True,
    "legend.frameon": False,
    "savefig.dpi": 100,  # of the raster parts
}


def available() -> bool:
    """Whether matplotlib can be imported (checked without importing it)."""
    return importlib.util.find_spec("matplotlib") is not None


def require(flag: str) -> None:
    """InputError naming `flag` and the extra to install when matplotlib is missing."""
    if not available():
        raise InputError(f"{flag}: HTML reports draw their charts with matplotlib, which is missing: {EXTRA}")


@dataclass(frozen=True)
class Mark:
    """A vertical line at `value` on a chart's value axis, named in its legend (`label`)."""

    label: str
    value: float


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _svg(figure: Any, description: str) -> str:
    """The figure as an inline `<svg>` element with `role="img"` and `description` as its label."""
    import matplotlib

    buffer = io.StringIO()
    with matplotlib.rc_context(_STYLE):
        figure.savefig(buffer, format="svg", metadata={"Date": None})
    text = buffer.getvalue()
    text = text[text.index("<svg") :]
    label = escape.html(description)
    return re.sub(r"^<svg ", f'<svg role="img" aria-label="{label}" ', text, count=1)


def _styled(draw: Any) -> Any:
    """Run a drawing function inside the chart style (fonts and grid are read when artists are made).
    matplotlib is imported when a chart is drawn, never with this module: it is an optional extra."""

    def styled(*args: Any, **kwargs: Any) -> str:
        import matplotlib

        with matplotlib.rc_context(_STYLE):
            result: str = draw(*args, **kwargs)
        return result

    styled.__doc__ = draw.__doc__
    styled.__name__ = draw.__name__
    return styled


def _value_limits(low: float, high: float, marks: Sequence[Mark]) -> tuple[float, float, list[Mark]]:
    """Axis limits that show the data [low, high] and the marks near it; the marks too far beyond."""
    span = high - low if high > low else max(abs(high), 1.0) * 0.1
    reach_low, reach_high = low - 1.5 * span, high + 1.5 * span
    near = [m.value for m in marks if reach_low <= m.value <= reach_high]
    far = [m for m in marks if not reach_low <= m.value <= reach_high]
    left, right = min([low, *near]), max([high, *near])
    pad = 0.04 * (right - left if right > left else span)
    return left - pad, right + pad, far


def _draw_marks(axes: Any, marks: Sequence[Mark], far: Sequence[Mark]) -> None:
    for number, mark in enumerate(marks):
        colour, dashes = MARK_STYLES[number % len(MARK_STYLES)]
        beyond = " (off the axis)" if mark in far else ""
        label = f"{mark.label} = {mark.value:.4g}{beyond}"
        if mark in far:
            axes.plot([], [], color=colour, linestyle=dashes, linewidth=1.6, label=label)
        else:
            axes.axvline(mark.value, color=colour, linestyle=dashes, linewidth=1.6, label=label)


@_styled
def histogram(edges: np.ndarray, counts: np.ndarray, marks: Sequence[Mark], description: str) -> str:
    """Bars of `counts` (K,) between `edges` (K + 1,) of sigma, with the thresholds `marks`."""
    figure = _figure(7.5, 3.0)
    axes = figure.add_subplot()
    axes.stairs(counts, edges, fill=True, color=SKY, edgecolor=BLUE, linewidth=0.8)
    left, right, far = _value_limits(float(edges[0]), float(edges[-1]), marks)
    axes.set_xlim(left, right)
    _draw_marks(axes, marks, far)
    axes.set_xlabel("sigma = ||J(x)||_2")
    axes.set_ylabel("samples")
    if marks:
        axes.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    return _svg(figure, description)


@_styled
def sorted_sigmas(
    ranks: np.ndarray, sigma: np.ndarray, upper: np.ndarray, marks: Sequence[Mark], description: str
) -> str:
    """sigma (R,) at `ranks` (R,) of the samples sorted largest first, with `upper` (R,) as error bars
    (NaN where a sample has no sigma_upper), and the thresholds `marks` as horizontal lines."""
    figure = _figure(7.5, 3.0)
    axes = figure.add_subplot()
    has_upper = np.isfinite(upper)
    if has_upper.any():
        above = np.where(has_upper, upper - sigma, 0.0)
        axes.errorbar(
            ranks, sigma, yerr=[np.zeros_like(above), above], fmt="none", ecolor=ORANGE, elinewidth=0.8,
            capsize=0, label="sigma_upper",
        )  # fmt: skip
    axes.plot(ranks, sigma, color=BLUE, marker="." if len(ranks) <= 100 else None, linewidth=1.2,
              label="sigma")  # fmt: skip
    top = float(np.nanmax(np.where(has_upper, upper, sigma))) if len(sigma) else 1.0
    shown = [m for m in marks if m.value <= 1.5 * top]
    for number, mark in enumerate(shown):
        colour, dashes = MARK_STYLES[number % len(MARK_STYLES)]
        axes.axhline(mark.value, color=colour, linestyle=dashes, linewidth=1.2,
                     label=f"{mark.label} = {mark.value:.4g}")  # fmt: skip
    axes.set_xlabel("rank (1 = largest sigma)")
    axes.set_ylabel("sigma")
    axes.set_xlim(0.5, max(float(ranks[-1]) if len(ranks) else 1.0, 1.0) + 0.5)
    axes.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    return _svg(figure, description)


@_styled
def bracket(found: float, certified: float, threshold: float | None, description: str) -> str:
    """The bracket [largest sigma found, certified bound] on one axis (log scale when it is wide)."""
    figure = _figure(7.5, 1.5)
    axes = figure.add_subplot()
    axes.grid(False, axis="y")
    axes.set_yticks([])
    axes.spines["left"].set_visible(False)
    axes.plot([found, certified], [0, 0], color=GREEN, linewidth=6, solid_capstyle="butt", alpha=0.5)
    axes.plot([found], [0], marker="o", markersize=9, color=BLUE, linestyle="none",
              label=f"largest sigma found = {found:.4g}")  # fmt: skip
    axes.plot([certified], [0], marker="s", markersize=9, color=VERMILLION, linestyle="none",
              label=f"certified upper bound = {certified:.4g}")  # fmt: skip
    values = [v for v in (found, certified, threshold) if v is not None]
    if threshold is not None:
        axes.axvline(threshold, color=BLACK, linestyle="--", linewidth=1.2,
                     label=f"--fail-above-bound = {threshold:.4g}")  # fmt: skip
    if min(values) > 0 and max(values) / min(values) > 10:
        axes.set_xscale("log")
        axes.set_xlim(min(values) / 1.5, max(values) * 1.5)
    else:
        span = max(values) - min(values) or max(abs(max(values)), 1.0) * 0.1
        axes.set_xlim(min(values) - 0.1 * span, max(values) + 0.1 * span)
    axes.set_ylim(-1, 1)
    axes.set_xlabel("Lipschitz constant (l2)")
    axes.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    return _svg(figure, description)


@_styled
def layer_factors(names: Sequence[str], bounds: Sequence[float], description: str) -> str:
    """Horizontal bars of the layer factors, in graph order top to bottom (log scale when they span
    more than a factor 100)."""
    figure = _figure(7.5, 0.9 + 0.22 * len(names))
    axes = figure.add_subplot()
    positions = np.arange(len(names))
    values = np.asarray(bounds, dtype=np.float64)
    axes.barh(positions, values, color=BLUE, height=0.6)
    axes.set_yticks(positions, [_short(name) for name in names], fontsize=8)
    axes.invert_yaxis()
    positive = values[values > 0]
    if len(positive) == len(values) and len(values) and values.max() / values.min() > 100:
        axes.set_xscale("log")
    axes.axvline(1.0, color=BLACK, linestyle=":", linewidth=1.0)
    axes.set_xlabel("factor (Lipschitz constant of the layer); dotted: 1")
    axes.grid(False, axis="y")
    return _svg(figure, description)


def _short(name: str, width: int = 32) -> str:
    return name if len(name) <= width else "..." + name[-(width - 3) :]


@_styled
def scatter(base: np.ndarray, new: np.ndarray, max_increase: float | None, description: str) -> str:
    """New against base sigma (N,) per sample, the line y = x, and the band up to `max_increase`
    percent above it; points above the band in vermillion."""
    figure = _figure(5.0, 4.2)
    axes = figure.add_subplot()
    low = float(min(base.min(), new.min()))
    high = float(max(base.max(), new.max()))
    pad = 0.05 * (high - low or max(abs(high), 1.0))
    line = np.array([low - pad, high + pad])
    raster = len(base) > RASTER_POINTS
    if max_increase is not None:
        axes.fill_between(line, line, line * (1 + max_increase / 100), color=ORANGE, alpha=0.25, linewidth=0,
                          label=f"within --max-increase {max_increase:g}%")  # fmt: skip
        over = new > base * (1 + max_increase / 100)
    else:
        over = np.zeros(len(base), dtype=bool)
    axes.plot(line, line, color=BLACK, linestyle="--", linewidth=1.0, label="new = base")
    axes.scatter(base[~over], new[~over], s=10, color=BLUE, label="sample", rasterized=raster)
    if over.any():
        axes.scatter(base[over], new[over], s=14, color=VERMILLION, marker="^", rasterized=raster,
                     label="rose past the band")  # fmt: skip
    axes.set_xlim(*line)
    axes.set_ylim(*line)
    axes.set_aspect("equal")
    axes.set_xlabel("base sigma")
    axes.set_ylabel("new sigma")
    axes.legend(loc="upper left", fontsize=8)
    return _svg(figure, description)


@_styled
def thumbnails(
    inputs: Sequence[np.ndarray], directions: Sequence[np.ndarray], titles: Sequence[str], description: str
) -> str:
    """Each input (C, H, W) or (H, W) above its most amplified direction, one column per sample.

    Inputs are scaled to their own range (grey for one channel, RGB for three). Directions are drawn
    on a diverging map centred on 0 (one channel), or as 0.5 + v / (2 max|v|) in RGB (three).
    """
    columns = len(inputs)
    figure = _figure(1.45 * columns + 0.6, 3.3)
    grid = figure.subplots(2, columns, squeeze=False)
    for column, (image, direction, title) in enumerate(zip(inputs, directions, titles, strict=True)):
        top, bottom = grid[0][column], grid[1][column]
        top.imshow(_input_picture(image), cmap="gray", interpolation="nearest")
        picture, scale = _direction_picture(direction)
        bottom.imshow(picture, cmap="PuOr", vmin=-scale, vmax=scale, interpolation="nearest")
        top.set_title(title, fontsize=8)
        for axes in (top, bottom):
            axes.set_xticks([])
            axes.set_yticks([])
            axes.grid(False)
    grid[0][0].set_ylabel("input", fontsize=8)
    grid[1][0].set_ylabel("direction", fontsize=8)
    return _svg(figure, description)


def _channels_last(array: np.ndarray) -> np.ndarray:
    """(H, W) as it is, (1, H, W) as (H, W), (3, H, W) as (H, W, 3)."""
    if array.ndim == 2:
        return array
    if array.shape[0] == 1:
        return array[0]
    return np.moveaxis(array, 0, -1)


def _input_picture(image: np.ndarray) -> np.ndarray:
    picture = _channels_last(np.asarray(image, dtype=np.float64))
    low, high = float(picture.min()), float(picture.max())
    return (picture - low) / (high - low) if high > low else np.zeros_like(picture)


def _direction_picture(direction: np.ndarray) -> tuple[np.ndarray, float]:
    picture = _channels_last(np.asarray(direction, dtype=np.float64))
    scale = float(np.abs(picture).max()) or 1.0
    if picture.ndim == 3:
        return np.clip(0.5 + picture / (2 * scale), 0.0, 1.0), scale
    return picture, scale


def is_image(shape: Sequence[int]) -> bool:
    """Whether samples of `shape` are pictures: (H, W), or (C, H, W) with one or three channels."""
    return (len(shape) == 2 and min(shape) >= 2) or (
        len(shape) == 3 and shape[0] in (1, 3) and min(shape[1:]) >= 2
    )


@_styled
def trend(
    steps: np.ndarray,
    lines: Sequence[tuple[str, np.ndarray]],
    bound: np.ndarray | None,
    worst: int,
    description: str,
) -> str:
    """Figures of sigma (each of `lines`, (S,)) against the training `steps` (S,), the certified `bound`
    (S,) where present (NaN where a checkpoint has none), and the `worst` checkpoint's position ringed."""
    figure = _figure(7.5, 3.4)
    axes = figure.add_subplot()
    styles = ((VERMILLION, "-", "o"), (ORANGE, "--", "s"), (BLUE, "-.", "^"), (GREEN, ":", "v"))
    marker = len(steps) <= 60
    for (label, values), (colour, dashes, symbol) in zip(lines, styles, strict=False):
        axes.plot(steps, values, color=colour, linestyle=dashes, marker=symbol if marker else None,
                  markersize=3.5, linewidth=1.4, label=label)  # fmt: skip
    if bound is not None and np.isfinite(bound).any():
        axes.plot(
            steps, bound, color=BLACK, linestyle=(0, (5, 1, 1, 1)), linewidth=1.2, label="certified bound"
        )
    top = lines[0][1]
    axes.plot([steps[worst]], [top[worst]], linestyle="none", marker="o", markersize=12,
              markerfacecolor="none", markeredgecolor=PURPLE, markeredgewidth=2.0,
              label=f"worst: step {int(steps[worst])}")  # fmt: skip
    axes.set_xlabel("step")
    axes.set_ylabel("sigma")
    axes.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    return _svg(figure, description)
