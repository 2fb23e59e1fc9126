"""A run's artifacts: weights without a second copy on disk, figures off the critical path.

When a run's artifact store is a local folder (the embedded store, or any
``file:`` artifact location), a weights file is hard-linked into it: the stage
folder and the run's artifacts then share one copy, and removing either leaves
the other intact. Elsewhere (a tracking server, S3...) it is uploaded as usual.

Figures (loss curves, predictions) are drawn from data the run already logged
(its metrics and best weights). A sweep worker hands them to a background
thread (``figures_in_background``) and starts its next run at once; the drawer
is drained before the worker exits, after a SIGTERM too. A run is
FINISHED once its metrics, config, history and weights are logged; its figures
follow within seconds (a worker killed with SIGKILL may leave a finished run
without them). Elsewhere (``zoo run``, searches) figures are drawn before the
run ends.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zoo.store import Tracker

__all__ = [
    "FigureJob",
    "drain_figures",
    "draw",
    "draw_later",
    "figures_in_background",
    "log_linked",
]


def log_linked(tracker: Tracker, run_id: str, path: Path, folder: str) -> None:
    """Log ``path`` as artifact ``folder/<name>``, by hard link where the store is local."""
    root = tracker.local_artifacts(run_id)
    if root is not None:
        target = root / folder / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.unlink(missing_ok=True)
        try:
            os.link(path, target)
            return
        except OSError:  # another filesystem: copy instead
            pass
    tracker.log_artifact(run_id, path, folder)


@dataclass(frozen=True)
class FigureJob:
    """The figures of one finished run: its loss curves and, for segmentation, the
    predictions of its best weights on a few validation images."""

    run_id: str
    curves: list[tuple[str, list[dict[str, Any]]]]  # (stage name, epoch history)
    model: Any = None  # zoo.config.ModelConfig, when predictions are drawn
    template: Any = None  # its zoo.models.meta_template, built by the caller's thread
    weights: str = ""  # the best weights file
    inputs: Any = None  # float32 (n, c, h, w) validation inputs, scaled as in training
    masks: Any = None
    predicted: Any = None  # the classes the best weights predicted, if training kept them


def draw(job: FigureJob, tracker: Tracker, models: dict[Any, Any] | None = None) -> None:
    """Render ``job``'s figures and log them as artifacts ``figures/*.png``. ``models``:
    the module the previous job loaded weights into, by model config, reused when the
    model is the same (kept here: one at most)."""
    import tempfile

    from zoo.figures import loss_curves, predictions

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        tracker.log_artifact(
            job.run_id, loss_curves(job.curves, folder / "loss_curves.png"), "figures"
        )
        if job.model is not None:
            predicted = job.predicted
            if predicted is None:
                predicted = _predict(job, {} if models is None else models)
            figure = predictions(job.inputs[:, 0], job.masks, predicted, folder / "predictions.png")
            tracker.log_artifact(job.run_id, figure, "figures")


def _predict(job: FigureJob, models: dict[Any, Any]) -> Any:
    import copy

    import torch

    from zoo.checkpoint import load_weights
    from zoo.losses import apply_head

    if job.model not in models:  # one copy of the template kept; its weights are replaced
        models.clear()
        models[job.model] = copy.deepcopy(job.template)
    model = models[job.model]
    model.load_state_dict(load_weights(Path(job.weights)), assign=True)
    model.eval()
    with torch.inference_mode():
        x = torch.from_numpy(job.inputs)
        return apply_head(model(x), job.model.head).argmax(dim=1).numpy()


class _Drawer:
    """A thread drawing this process's figures in order, while the process trains on
    (rendering and logging release the interpreter much of the time; training spends
    it in torch kernels, which release it too)."""

    def __init__(self, tracker: Tracker) -> None:
        import queue
        import threading

        self.tracker, self.queue, self.models = tracker, queue.Queue(), {}
        self.thread = threading.Thread(target=self._loop, name="zoo-figures", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        import sys

        while (job := self.queue.get()) is not None:
            try:
                draw(job, self.tracker, self.models)
            except Exception as error:  # a figure must never stop the sweep
                reason = f"{type(error).__name__}: {error}"
                print(f"figures of run {job.run_id}: {reason}", file=sys.stderr)

    def drain(self) -> None:
        self.queue.put(None)
        self.thread.join()


_STATE: dict[str, Any] = {"background": False, "drawer": None}


def draw_later(job: FigureJob, tracker: Tracker) -> None:
    """Draw ``job``'s figures: in this process's background drawer after
    ``figures_in_background()``, else now."""
    if not _STATE["background"]:
        draw(job, tracker)
        return
    if _STATE["drawer"] is None or _STATE["drawer"].tracker is not tracker:
        drain_figures()
        _STATE["drawer"] = _Drawer(tracker)
    _STATE["drawer"].queue.put(job)


def drain_figures() -> None:
    """Wait until every figure handed to the background drawer is logged."""
    drawer, _STATE["drawer"] = _STATE["drawer"], None
    if drawer is not None:
        drawer.drain()


def figures_in_background() -> None:
    """From now on this process (a sweep worker) hands its runs' figures to a background
    drawer, so the next run starts at once. SIGTERM, SIGINT or SIGHUP stops the current
    run as Ctrl-C does (it ends KILLED and resumes from its checkpoint); the drawer is
    drained when this process exits, after such a signal too (zoo._signals.stop_as_worker:
    never inside a store call, and the handler waits for nothing)."""
    import atexit
    from multiprocessing import util

    from zoo._signals import stop_as_worker

    if _STATE["background"]:
        return
    _STATE["background"] = True
    util.Finalize(None, drain_figures, exitpriority=100)  # pool workers skip atexit
    atexit.register(drain_figures)
    stop_as_worker()
