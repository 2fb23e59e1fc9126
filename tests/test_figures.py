"""A run's loss curves: each validation set in its colour where its losses are, gaps
where a loss cannot be drawn, stages one after another, a labelled loss axis."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from zoo._chart import TAB10, Line, _frame, _y_ticks
from zoo.figures import loss_curves


def _history(val: dict[str, list[float]], train: list[float]) -> list[dict]:
    return [
        {"train_loss": loss, "val": {name: {"loss_adj": v[i]} for name, v in val.items()}}
        for i, loss in enumerate(train)
    ]


def _outside_legend(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``mask`` with the legend's box (outlined in light grey) cleared."""
    rgb = image[..., :3].astype(int)
    outline = np.abs(rgb - (200, 200, 200)).max(axis=2) <= 2
    rows = np.nonzero(outline.sum(axis=1) >= 60)[0]  # its top and bottom edges
    columns = np.nonzero(outline.sum(axis=0) >= 30)[0]  # its sides
    mask = mask.copy()
    mask[rows.min() : rows.max() + 1, columns.min() : columns.max() + 1] = False
    return mask


def _pixels_of(image: np.ndarray, colour: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of the plot's pixels within a few levels of ``colour``."""
    close = np.abs(image[..., :3].astype(int) - colour).max(axis=2) <= 6
    return np.nonzero(_outside_legend(image, close))


def _blueish(image: np.ndarray) -> np.ndarray:
    """Where set a's blue (TAB10[0]) is drawn in the plot, smoothed edges included."""
    rgb = image[..., :3].astype(int)
    return _outside_legend(image, rgb[..., 2] - rgb[..., 0] > 40)


def test_loss_curves_draw_each_set_where_its_losses_are(tmp_path):
    """Set a falls tenfold, set b rises: a's points go down to the right, b's up, and
    a's last point lies below b's (log axis, lower is better); a stage's points are
    joined by a line, the next stage's are not joined to them."""
    falling, rising = [0.5, 0.2, 0.05], [0.1, 0.2, 0.4]
    stages = [
        ("pretrain", _history({"a": falling[:2], "b": rising[:2]}, [0.6, 0.4])),
        ("transfer", _history({"a": falling[2:], "b": rising[2:]}, [0.3])),
    ]
    image = np.asarray(Image.open(loss_curves(stages, tmp_path / "curves.png")))
    assert ndimage.label(_blueish(image))[1] == 2  # pretrain's line, transfer's point
    ends = {}
    for name, colour in (("a", TAB10[0]), ("b", TAB10[1])):
        rows, columns = _pixels_of(image, colour)
        assert len(rows), f"no pixel of set {name}'s colour"
        left, right = columns <= columns.min() + 3, columns >= columns.max() - 3
        ends[name] = rows[left].mean(), rows[right].mean()  # image rows grow downwards
    assert ends["a"][0] < ends["a"][1] and ends["b"][0] > ends["b"][1]
    assert ends["a"][1] > ends["b"][1]


def test_loss_curves_survive_a_diverged_epoch(tmp_path):
    """NaN, infinite and zero losses are left out, and no line bridges them: set a's
    three finite points stand alone; a one-epoch stage's train loss is a visible dot."""
    nan, inf = float("nan"), float("inf")
    stages = [
        ("only", _history({"a": [0.3, nan, inf, 0.0, 0.1]}, [0.5, nan, 0.4, 0.3, 0.2])),
        ("one", _history({"a": [0.09]}, [0.15])),
    ]
    image = np.asarray(Image.open(loss_curves(stages, tmp_path / "curves.png")))
    blobs, count = ndimage.label(_blueish(image))
    assert count == 3  # epochs 1, 5 and 6, unconnected
    last = max(range(1, count + 1), key=lambda i: np.nonzero(blobs == i)[1].mean())
    column = np.nonzero(blobs == last)[1].mean()
    row = np.nonzero(blobs == last)[0].mean()
    rows, columns = _pixels_of(image, (128, 128, 128))
    above = (rows < row - 3) & (rows > row - 150)  # 0.15 over 0.09: drawn above it
    assert np.any(np.abs(columns[above] - column) <= 2)  # epoch 6's lone train loss


@pytest.mark.parametrize(
    "losses", [[0.31, 0.38], [0.0211, 0.0214], [0.2, 0.2], [0.07, 0.5], [1e-30, 1e10]]
)
def test_the_loss_axis_has_two_to_ten_labels_whatever_the_range(losses):
    """A plateau narrower than one digit's step (0.31 to 0.38) is labelled too."""
    frame = _frame([Line(losses, TAB10[0])], (700, 400), fonts={})
    ticks = _y_ticks(frame)
    low, high = (10.0**v for v in frame.y_range)
    assert 2 <= len(ticks) <= 10 and all(low <= t <= high for t in ticks)
