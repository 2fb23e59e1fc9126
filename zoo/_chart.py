"""A line chart drawn straight with Pillow: a run's loss curves in a few milliseconds.

matplotlib spends about 60 ms of CPU on any figure, however small (its artists lay out
ticks and text in Python); a sweep draws one chart per run. This draws what those
charts need and nothing more: lines with optional markers on a linear x axis and a
logarithmic y axis, integer x ticks, dotted vertical markers with a caption above the
plot, axis labels and a legend. Points that cannot be drawn (not finite, or not
positive) break their line and are left out; a line with none keeps its legend entry.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["TAB10", "Line", "Marker", "line_chart"]

TAB10 = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
)  # fmt: skip
_SCALE = 2  # drawn at twice the size, then averaged down: smooth lines and text
_MARGIN = {"left": 64, "right": 16, "top": 26, "bottom": 42}


@dataclass(frozen=True)
class Line:
    """One series: y at x = 1, 2, ... ``len(y)`` shifted by ``start - 1``."""

    y: list[float]
    color: tuple[int, int, int]
    start: int = 1
    label: str | None = None
    markers: bool = False


@dataclass(frozen=True)
class Marker:
    """A dotted vertical line at ``x`` (none when None) with ``caption`` above the plot,
    starting at ``caption_x``."""

    x: float | None
    caption: str
    caption_x: float


@dataclass
class _Frame:
    width: int
    height: int
    x_range: tuple[float, float]
    y_range: tuple[float, float]  # log10 of y
    fonts: dict  # "tick", "small": PIL fonts at the drawing scale

    def px(self, x: float, v: float) -> tuple[float, float]:
        """Pixel (at the drawing scale) of x and ``v``, the log10 of a y."""
        left, top = _MARGIN["left"] * _SCALE, _MARGIN["top"] * _SCALE
        right = (self.width - _MARGIN["right"]) * _SCALE
        bottom = (self.height - _MARGIN["bottom"]) * _SCALE
        (x0, x1), (v0, v1) = self.x_range, self.y_range
        return (
            left + (x - x0) / (x1 - x0) * (right - left),
            bottom - (v - v0) / (v1 - v0) * (bottom - top),
        )

    def corners(self) -> tuple[tuple[float, float], tuple[float, float]]:
        """Top-left and bottom-right pixels of the plot area."""
        return self.px(self.x_range[0], self.y_range[1]), self.px(self.x_range[1], self.y_range[0])


def line_chart(
    lines: list[Line],
    out: Path,
    *,
    markers: Sequence[Marker] = (),
    xlabel: str = "",
    ylabel: str = "",
    size: tuple[int, int] = (700, 400),
) -> Path:
    """Draw ``lines`` into the PNG ``out`` (``size`` pixels) and return ``out``."""
    from PIL import Image, ImageDraw, ImageFont

    fonts = {k: ImageFont.load_default(s * _SCALE) for k, s in [("tick", 11), ("small", 10)]}
    frame = _frame(lines, size, fonts)
    image = Image.new("RGB", (size[0] * _SCALE, size[1] * _SCALE), "white")
    draw = ImageDraw.Draw(image)
    _axes(draw, image, frame, xlabel, ylabel)
    for marker in markers:
        _marker(draw, frame, marker)
    points = [_points(frame, line) for line in lines]
    for line, where in zip(lines, points, strict=True):
        _line(draw, frame, line, where)
    _legend(draw, frame, lines, [p for where in points for p in where if p is not None])
    image.reduce(_SCALE).save(out, compress_level=1)
    return out


def _drawable(values: list[float]) -> np.ndarray:
    """log10 of ``values``, NaN where a value is not finite or not positive (below
    1e-300: its ticks would underflow)."""
    y = np.asarray(values, dtype=float)
    keep = np.isfinite(y) & (y > 1e-300)
    return np.where(keep, np.log10(np.where(keep, y, 1.0)), np.nan)


def _frame(lines: list[Line], size: tuple[int, int], fonts: dict) -> _Frame:
    last = max([1, *(line.start + len(line.y) - 1 for line in lines)])  # lines may be []
    drawable = [v for line in lines for v in _drawable(line.y) if not np.isnan(v)]
    low, high = (min(drawable), max(drawable)) if drawable else (-1.0, 0.0)
    if high - low < 1e-9:
        low, high = low - 0.5, high + 0.5
    pad = 0.05 * (high - low)
    return _Frame(*size, (0.5, last + 0.5), (low - pad, high + pad), fonts)


def _y_ticks(frame: _Frame) -> list[float]:
    """The y ticks: every digit of each decade in view, else 1-2-5, else decades
    (every k-th when more than ten), at most ten of them; a range narrower than one
    digit's step gets evenly spaced ticks."""
    low, high = frame.y_range
    decades = range(math.floor(low), math.ceil(high) + 1)
    for digits in ((1, 2, 3, 4, 5, 6, 7, 8, 9), (1, 2, 5), (1,)):
        ticks = [d * 10.0**k for k in decades for d in digits if low <= math.log10(d) + k <= high]
        if len(ticks) < 2 and digits[-1] == 9:
            bottom, top = 10.0**low, 10.0**high
            step = _nice_step((top - bottom) / 4)
            return [k * step for k in range(math.ceil(bottom / step), math.floor(top / step) + 1)]
        if len(ticks) <= 10:
            return ticks
    step = math.ceil(len(decades) / 10)
    return [10.0**k for k in decades if k % step == 0 and low <= k <= high]


def _nice_step(rough: float) -> float:
    power = 10.0 ** math.floor(math.log10(rough))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= rough)


def _axes(draw, image, frame: _Frame, xlabel: str, ylabel: str) -> None:
    s, font = _SCALE, frame.fonts["tick"]
    (left, top), (right, bottom) = frame.corners()
    draw.rectangle((left, top, right, bottom), outline="black", width=s)
    for x in _x_ticks(int(frame.x_range[1] - 0.5)):
        px, _ = frame.px(x, 0.0)
        draw.line((px, bottom, px, bottom + 4 * s), fill="black", width=s)
        draw.text((px, bottom + 6 * s), str(x), fill="black", font=font, anchor="mt")
    for y in _y_ticks(frame):
        _, py = frame.px(0.0, math.log10(y))
        draw.line((left - 4 * s, py, left, py), fill="black", width=s)
        draw.text((left - 6 * s, py), f"{y:g}", fill="black", font=font, anchor="rm")
    draw.text(((left + right) / 2, bottom + 22 * s), xlabel, fill="black", font=font, anchor="mt")
    _vertical_text(image, frame, ylabel, (8 * s, (top + bottom) / 2))


def _x_ticks(last: int) -> list[int]:
    """1 to ``last`` when that is at most 12 ticks, else the multiples of a 1-2-5 step."""
    if last <= 12:
        return list(range(1, last + 1))
    step = round(_nice_step(last / 10))
    return list(range(step, last + 1, step))


def _vertical_text(image, frame: _Frame, text: str, at: tuple[float, float]) -> None:
    from PIL import Image, ImageDraw

    font = frame.fonts["tick"]
    box = font.getbbox(text)
    label = Image.new("L", (box[2] + 2, box[3] + 2), 0)
    ImageDraw.Draw(label).text((0, 0), text, fill=255, font=font)
    rotated = label.rotate(90, expand=True)
    x, y = int(at[0]), int(at[1] - rotated.height / 2)
    image.paste((0, 0, 0), (x, y), rotated)


def _marker(draw, frame: _Frame, marker: Marker) -> None:
    s = _SCALE
    (_, top), (_, bottom) = frame.corners()
    if marker.x is not None:
        x, _ = frame.px(marker.x, 0.0)
        for y in np.arange(top, bottom, 6 * s):
            draw.line((x, y, x, min(y + 3 * s, bottom)), fill=(128, 128, 128), width=s)
    x, _ = frame.px(marker.caption_x, 0.0)
    draw.text((x, top - 4 * s), marker.caption, fill="black", font=frame.fonts["tick"], anchor="lb")


def _points(frame: _Frame, line: Line) -> list[tuple[float, float] | None]:
    """The pixel of each of the line's values; None where it cannot be drawn."""
    values = _drawable(line.y)
    return [None if np.isnan(v) else frame.px(line.start + i, v) for i, v in enumerate(values)]


def _line(draw, frame: _Frame, line: Line, points: list[tuple[float, float] | None]) -> None:
    s = _SCALE
    run: list[tuple[float, float]] = []
    for point in [*points, None]:
        if point is not None:
            run.append(point)
            continue
        if len(run) > 1:
            draw.line(run, fill=line.color, width=2 * s, joint="curve")
        elif run:  # a point alone (one epoch, or between gaps): a dot the line's width
            x, y = run[0]
            draw.ellipse((x - s, y - s, x + s, y + s), fill=line.color)
        run = []
    plot_width = (frame.width - _MARGIN["left"] - _MARGIN["right"]) * s
    if line.markers and len(points) * 8 * s <= plot_width:  # dense points: the line alone
        for point in filter(None, points):
            x, y = point
            draw.ellipse((x - 3 * s, y - 3 * s, x + 3 * s, y + 3 * s), fill=line.color)


def _legend(draw, frame: _Frame, lines: list[Line], points: list[tuple[float, float]]) -> None:
    """The labelled lines' legend, in the plot's corner holding fewest of ``points``."""
    labelled = [line for line in lines if line.label]
    if not labelled:
        return
    s, font = _SCALE, frame.fonts["small"]
    width = max(draw.textlength(line.label, font=font) for line in labelled) + 40 * s
    height = 4 * s + 16 * s * len(labelled)
    box = min(_corners(frame, width, height), key=lambda b: sum(map(_inside(b), points)))
    box = tuple(round(v / s) * s for v in box)  # on whole output pixels: a crisp outline
    draw.rectangle(
        (*box[:2], box[2] - 1, box[3] - 1), fill="white", outline=(200, 200, 200), width=s
    )
    for i, line in enumerate(labelled):
        y = box[1] + 2 * s + 16 * s * (i + 0.5)
        x = box[0] + 6 * s
        draw.line((x, y, x + 22 * s, y), fill=line.color, width=2 * s)
        if line.markers:
            draw.ellipse((x + 8 * s, y - 3 * s, x + 14 * s, y + 3 * s), fill=line.color)
        draw.text((x + 28 * s, y), line.label, fill="black", font=font, anchor="lm")


def _corners(frame: _Frame, width: float, height: float) -> list[tuple[float, ...]]:
    """Boxes of ``width`` × ``height`` in the plot's corners: upper right, upper left,
    lower left, lower right (matplotlib's order)."""
    (left, top), (right, bottom) = frame.corners()
    inset = 8 * _SCALE
    xs = (right - inset - width, left + inset, left + inset, right - inset - width)
    ys = (top + inset, top + inset, bottom - inset - height, bottom - inset - height)
    return [(x, y, x + width, y + height) for x, y in zip(xs, ys, strict=True)]


def _inside(box: tuple[float, ...]):
    return lambda p: box[0] <= p[0] <= box[2] and box[1] <= p[1] <= box[3]
