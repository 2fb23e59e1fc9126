"""A run's loss curves: each validation set in its colour where its losses are, gaps
where a loss cannot be drawn, stages one after another."""

from __future__ import annotations

import numpy as np
from PIL import Image

from zoo._chart import TAB10
from zoo.figures import loss_curves


def _history(val: dict[str, list[float]], train: list[float]) -> list[dict]:
    return [
        {"train_loss": loss, "val": {name: {"loss_adj": v[i]} for name, v in val.items()}}
        for i, loss in enumerate(train)
    ]


def _pixels_of(image: np.ndarray, colour: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of the plot's pixels within a few levels of ``colour``, the
    legend's box (outlined in light grey) left out."""
    rgb = image[..., :3].astype(int)
    close = np.abs(rgb - colour).max(axis=2) <= 6
    outline = np.abs(rgb - (200, 200, 200)).max(axis=2) <= 2
    rows = np.nonzero(outline.sum(axis=1) >= 60)[0]  # its top and bottom edges
    columns = np.nonzero(outline.sum(axis=0) >= 30)[0]  # its sides
    close[rows.min() : rows.max() + 1, columns.min() : columns.max() + 1] = False
    return np.nonzero(close)


def test_loss_curves_draw_each_set_where_its_losses_are(tmp_path):
    """Set a falls tenfold, set b rises: a's points go down to the right, b's up, and
    a's last point lies below b's (log axis, lower is better)."""
    falling, rising = [0.5, 0.2, 0.05], [0.1, 0.2, 0.4]
    stages = [
        ("pretrain", _history({"a": falling[:2], "b": rising[:2]}, [0.6, 0.4])),
        ("transfer", _history({"a": falling[2:], "b": rising[2:]}, [0.3])),
    ]
    image = np.asarray(Image.open(loss_curves(stages, tmp_path / "curves.png")))
    ends = {}
    for name, colour in (("a", TAB10[0]), ("b", TAB10[1])):
        rows, columns = _pixels_of(image, colour)
        assert len(rows), f"no pixel of set {name}'s colour"
        left, right = columns <= columns.min() + 3, columns >= columns.max() - 3
        ends[name] = rows[left].mean(), rows[right].mean()  # image rows grow downwards
    assert ends["a"][0] < ends["a"][1] and ends["b"][0] > ends["b"][1]
    assert ends["a"][1] > ends["b"][1]


def test_loss_curves_survive_a_diverged_epoch(tmp_path):
    """NaN, infinite and zero losses are left out (a gap in their line); the others are
    still drawn, and a one-epoch stage's train loss is a visible dot."""
    nan, inf = float("nan"), float("inf")
    stages = [
        ("only", _history({"a": [0.3, nan, inf, 0.0, 0.1]}, [0.5, nan, 0.4, 0.3, 0.2])),
        ("one", _history({"a": [0.09]}, [0.15])),
    ]
    image = np.asarray(Image.open(loss_curves(stages, tmp_path / "curves.png")))
    rows, columns = _pixels_of(image, TAB10[0])
    assert len(rows)
    grey_rows, grey_columns = _pixels_of(image, (128, 128, 128))
    assert grey_columns.max() > columns.max() - 20  # the last stage's lone train point
