"""A search spec's ``search:`` block: its parameters, objective, sampler and pruner, each
field checked before anything runs (one line naming the field, exit 2)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from zoo._typed import build, check
from zoo.errors import ConfigError, did_you_mean

__all__ = ["Objective", "Parameter", "SearchBlock", "check_metric", "check_used", "parse_block"]

_DATABASE = re.compile(r"(postgresql|postgres|mysql|sqlite)(\+\w+)?://")  # Optuna's RDB URLs


@dataclass(frozen=True)
class Parameter:
    type: Literal["float", "int", "categorical"]
    low: float | None = None  # float and int: the range, both ends included
    high: float | None = None
    log: bool = False  # float and int: sample on a log scale
    step: float | None = None  # float and int: quantisation (needed by the grid sampler)
    choices: tuple[Any, ...] = ()  # categorical: the values

    def validate(self, where: str) -> None:
        if self.type == "categorical":
            check(len(self.choices) >= 1, f"{where}.choices", [], "a non-empty list of values")
            return
        check(self.low is not None, f"{where}.low", None, "a number")
        check(self.high is not None, f"{where}.high", None, "a number")
        check(self.high >= self.low, f"{where}.high", self.high, f"a number >= low ({self.low})")
        check(not self.log or self.low > 0, f"{where}.low", self.low, "> 0 with log: true")
        check(not self.choices, f"{where}.choices", list(self.choices), "only for categorical")
        check(self.step is None or self.step > 0, f"{where}.step", self.step, "a number > 0")
        check(
            self.step is None or not self.log,
            f"{where}.step",
            self.step,
            "no step with log: true (Optuna samples a log range continuously)",
        )
        if self.type == "int":
            for name in ("low", "high", "step"):
                value = getattr(self, name)
                check(value is None or value == int(value), f"{where}.{name}", value, "an integer")

    def grid(self) -> list[Any]:
        """Every value the parameter can take (the grid sampler needs finitely many)."""
        if self.type == "categorical":
            return list(self.choices)
        if self.step is None and self.type == "float":
            raise ConfigError("a float parameter needs step: for sampler grid")
        step = self.step or 1
        count = round((self.high - self.low) / step) + 1
        values = [self.low + i * step for i in range(count)]
        return [int(v) for v in values] if self.type == "int" else values

    def suggest(self, trial: Any, name: str) -> Any:
        if self.type == "categorical":
            return trial.suggest_categorical(name, list(self.choices))
        if self.type == "int":
            step = int(self.step or 1)
            return trial.suggest_int(name, int(self.low), int(self.high), step=step, log=self.log)
        return trial.suggest_float(name, self.low, self.high, step=self.step, log=self.log)


@dataclass(frozen=True)
class Objective:
    metric: str = "target_loss_adj"  # any metric a run logs; default the headline adjusted loss
    direction: Literal["minimize", "maximize"] = "minimize"

    def validate(self, where: str) -> None:
        check_metric(self.metric, f"{where}.metric")


# families of metrics every run logs: the summaries of a validation metric and the costs
_LOGGED = re.compile(
    r"(?:pretrain_)?target_(?P<a>\w+)|(?:best_)?val_(?P<b>\w+?)/.+"
    r"|(?:train_seconds|energy_wh|epochs|best_epoch|compile_seconds)/.+|params_total|loss_floor"
)


def check_metric(metric: str, where: str) -> None:
    """Refuse a name no run logs: a search whose every trial would fail after training."""
    from zoo.metrics import METRICS

    known = ("loss", "loss_adj", *METRICS)
    found = _LOGGED.fullmatch(metric)
    name = found and (found.group("a") or found.group("b"))
    if found and (name is None or name in known):
        return
    targets = [f"target_{m}" for m in known]
    raise ConfigError(
        f"{where}: {metric!r} is not logged by any run; expected target_<metric>, "
        f"best_val_<metric>/<stage>/<set> or a cost such as train_seconds/<stage>, with "
        f"<metric> one of {', '.join(known)}" + did_you_mean(metric, targets)
    )


@dataclass(frozen=True)
class SearchBlock:
    parameters: dict[str, Parameter]  # name -> range; used in set: as $name
    budget: int  # trials in all, whatever the number of workers and restarts
    objective: Objective = field(default_factory=Objective)
    sampler: Literal["tpe", "random", "grid", "cmaes"] = "tpe"
    pruner: Literal["median", "hyperband", "none"] = "median"
    prune_on: Literal["loss_adj", "loss", "iou", "acc"] = "loss_adj"  # last stage, every epoch
    startup_trials: int = 4  # trials before TPE models and the median pruner prunes
    warmup_epochs: int = 1  # the median pruner may prune a run only after this many epochs
    seed: int = 0  # sampler seed: trial N is asked for with seed + N
    storage: str = "journal"  # journal: a file beside the sweep; or an RDB URL (postgresql://...)

    @property
    def trials(self) -> int:
        """The budget; with the grid sampler at most the grid's size."""
        if self.sampler != "grid":
            return self.budget
        return min(self.budget, math.prod(len(p.grid()) for p in self.parameters.values()))

    def validate(self, where: str) -> None:
        check(bool(self.parameters), f"{where}.parameters", {}, "at least one parameter")
        check(self.budget >= 1, f"{where}.budget", self.budget, "an integer >= 1")
        check(self.startup_trials >= 0, f"{where}.startup_trials", self.startup_trials, ">= 0")
        check(self.warmup_epochs >= 0, f"{where}.warmup_epochs", self.warmup_epochs, ">= 0")
        check(self.seed >= 0, f"{where}.seed", self.seed, "an integer >= 0")
        check(
            self.storage == "journal" or _DATABASE.match(self.storage) is not None,
            f"{where}.storage",
            self.storage,
            "journal or a database URL such as postgresql://host/db",
        )
        if self.sampler == "grid":
            for name, parameter in self.parameters.items():
                check(
                    parameter.type != "float" or parameter.step is not None,
                    f"{where}.parameters.{name}.step",
                    None,
                    "a step for every float parameter with sampler: grid",
                )


def parse_block(search: Any) -> SearchBlock:
    if search is None:
        raise ConfigError("spec.search: missing; a search spec needs a search: block")
    block = build(SearchBlock, search, "spec.search")
    check(
        "seed" not in block.parameters,
        "spec.search.parameters.seed",
        "seed",
        "a name other than seed (seeds: repeats each trial)",
    )
    return block


def check_used(block: SearchBlock, document: dict[str, Any]) -> None:
    """Refuse a parameter the spec never uses as ``$name``: Optuna would search it while
    every trial trained the same runs."""
    import json

    rest = json.dumps({k: v for k, v in document.items() if k != "search"}, default=str)
    for name in block.parameters:
        check(
            re.search(rf"\${re.escape(name)}\b", rest) is not None,
            f"spec.search.parameters.{name}",
            name,
            f"a parameter the spec uses as ${name} (in set:, derive: or where:)",
        )
