"""A search's plan (budget, an upper bound of training image passes, shared stages) and
its part of the report (optimisation history, parameter importances, best trials)."""

from __future__ import annotations

import base64
import html
import itertools
from pathlib import Path
from typing import Any

from zoo.paths import ProjectPaths
from zoo.sweep._cost import no_price
from zoo.sweep._plan import image_passes
from zoo.sweep._search import SearchBlock, open_study, trial_runs
from zoo.sweep._spec import SweepSpec

__all__ = ["add_to_report", "format_search_plan", "search_plan"]

_MAX_CORNERS = 256


def _corners(block: SearchBlock) -> list[dict[str, Any]]:
    """Parameter assignments at the ends of every range (every choice of a categorical)."""
    values = {
        name: list(p.choices) if p.type == "categorical" else sorted({p.low, p.high})
        for name, p in block.parameters.items()
    }
    if block.sampler == "grid":
        values = {name: p.grid() for name, p in block.parameters.items()}
    points = itertools.islice(itertools.product(*values.values()), _MAX_CORNERS)
    return [
        {
            n: int(v) if block.parameters[n].type == "int" else v
            for n, v in zip(values, p, strict=True)
        }
        for p in points
    ]


def search_plan(spec: SweepSpec, block: SearchBlock, images_per_s: float | None) -> dict[str, Any]:
    """Budget, runs per trial, which stages every trial shares, and an upper bound of
    training image passes (the largest over the parameters' range ends, taken as the
    most expensive; shared stages counted once), as JSON-ready data; priced at
    ``images_per_s`` when given (never measured: else ``no_price`` says how)."""
    per_point = [trial_runs(spec, point) for point in _corners(block)]
    first = per_point[0]
    stages: dict[str, str] = {}
    bound = unshared = 0
    for index, stage in enumerate(first[0].config.stages):
        shared = all(
            len({runs[j].config.stage_digest(index) for runs in per_point}) == 1
            for j in range(len(first))
        )
        most = max(sum(image_passes(r.config, index) for r in runs) for runs in per_point)
        unshared += block.trials * most
        if shared:
            digests = {r.config.stage_digest(index): r.config for r in first}
            stages[stage.name] = f"shared by every trial: {len(digests)} training(s) in all"
            bound += sum(image_passes(c, index) for c in digests.values())
        else:
            stages[stage.name] = "trained per trial"
            bound += block.trials * most
    return {
        "search": spec.name,
        "budget": block.trials,
        "runs_per_trial": len(first),
        "parameters": list(block.parameters),
        "objective": f"{block.objective.direction} {block.objective.metric}",
        "sampler": block.sampler,
        "pruner": block.pruner,
        "stages": stages,
        "image_passes_max": bound,
        "image_passes_max_unshared": unshared,
        **_price(bound, images_per_s),
    }


def _price(image_passes: int, images_per_s: float | None) -> dict[str, Any]:
    """A search plan's price keys: hours at ``images_per_s``, or how to get a price."""
    if images_per_s is None:
        return {"priced_by": None, "no_price": no_price(None)}
    hours = image_passes / images_per_s / 3600
    return {"priced_by": "--images-per-s", "images_per_s": images_per_s, "hours_max": hours}


def format_search_plan(summary: dict[str, Any]) -> str:
    """``search_plan`` as text for a terminal."""
    lines = [
        f"search {summary['search']}: at most {summary['budget']} trials × "
        f"{summary['runs_per_trial']} runs, {summary['sampler']} sampler, "
        f"{summary['pruner']} pruner, {summary['objective']}",
        f"  parameters: {', '.join(summary['parameters'])}",
    ]
    lines += [f"  stage {name}: {text}" for name, text in summary["stages"].items()]
    lines.append(
        f"  training image passes: at most {summary['image_passes_max']:,} "
        f"({summary['image_passes_max_unshared']:,} without sharing; pruning only lowers it)"
    )
    if summary["priced_by"] is None:
        lines.append(f"  {summary['no_price']}")
    else:
        lines.append(
            f"  at most {summary['hours_max']:.2f} h at {summary['images_per_s']:.1f} images/s "
            "(--images-per-s, training passes only)"
        )
    return "\n".join(lines)


def add_to_report(spec: SweepSpec, block: SearchBlock, paths: ProjectPaths, report: Path) -> None:
    """Add the study's optimisation history, parameter importances and best trials to
    ``report`` (report.html), with the figures as PNG beside it."""
    study = open_study(spec, block, paths)
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    parts = ["<h2>Search</h2>", f"<p>{html.escape(_summary(study, block))}</p>"]
    if complete:
        for name, draw in (("optimisation_history", _history), ("importances", _importances)):
            figure = draw(study, block, complete)
            if figure is not None:
                path = report.parent / f"{name}.png"
                figure.savefig(path, dpi=100, bbox_inches="tight")
                encoded = base64.b64encode(path.read_bytes()).decode()
                parts.append(
                    f"<h3>{name.replace('_', ' ')}</h3>"
                    f'<img alt="{name}" src="data:image/png;base64,{encoded}">'
                )
        parts.append("<h3>best trials</h3>" + _best_table(complete, block))
    text = report.read_text()
    report.write_text(text.replace("</body>", "\n".join(parts) + "</body>"))


def _summary(study: Any, block: SearchBlock) -> str:
    from collections import Counter

    counts = Counter(t.state.name.lower() for t in study.trials)
    states = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    return (
        f"{len(study.trials)} of {block.trials} trials ({states}); objective: "
        f"{block.objective.direction} {block.objective.metric}"
    )


def _history(study: Any, block: SearchBlock, complete: list[Any]) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3.5))
    numbers = [t.number for t in complete]
    values = [t.value for t in complete]
    pick = min if block.objective.direction == "minimize" else max
    best = list(itertools.accumulate(values, pick))
    axis.scatter(numbers, values, s=12, label="trial")
    axis.step(numbers, best, where="post", color="C1", label="best so far")
    axis.set_xlabel("trial")
    axis.set_ylabel(block.objective.metric)
    axis.legend()
    return figure


def _importances(study: Any, block: SearchBlock, complete: list[Any]) -> Any:
    import matplotlib.pyplot as plt
    import optuna

    if len(complete) < 2 or len(block.parameters) < 2:
        return None
    try:
        scores = optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError):  # e.g. a parameter that never varied
        return None
    figure, axis = plt.subplots(figsize=(6, 0.5 + 0.4 * len(scores)))
    axis.barh(list(scores)[::-1], list(scores.values())[::-1])
    axis.set_xlabel("importance (fANOVA)")
    return figure


def _best_table(complete: list[Any], block: SearchBlock, count: int = 5) -> str:
    ordered = sorted(
        complete, key=lambda t: t.value, reverse=block.objective.direction != "minimize"
    )
    names = list(block.parameters)
    rows = "".join(
        f"<tr><td>{t.number}</td><td>{t.value:.4g}</td>"
        + "".join(f"<td>{html.escape(_format(t.params.get(n)))}</td>" for n in names)
        + "</tr>"
        for t in ordered[:count]
    )
    header = "".join(f"<th>{html.escape(n)}</th>" for n in ["trial", "value", *names])
    return f"<table class='best'><tr>{header}</tr>{rows}</table>"


def _format(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
