"""Executor backends by name (timm's model registry is the model): ``--executor NAME``.

A backend is one module with an :class:`~zoo.sweep._executor.Executor` subclass plus
one ``register_executor`` call; tests/test_executors.py runs every registered
backend (and an in-process one it registers itself) through the same suite.
"""

from __future__ import annotations

from collections.abc import Callable

from zoo._leases import Lease
from zoo.errors import ConfigError
from zoo.store import Tracker
from zoo.sweep._datasets import sweep_folders
from zoo.sweep._executor import Executor, SweepReport
from zoo.sweep._local import LocalExecutor
from zoo.sweep._plan import Plan, jobs_from_plan
from zoo.sweep._slurm_submit import SlurmExecutor, SubmitOptions

__all__ = [
    "EXECUTORS",
    "ExecutorFactory",
    "make_executor",
    "register_executor",
    "run_plan",
    "submit_plan",
]

# workers: jobs at once on this machine; echo: where progress lines go
ExecutorFactory = Callable[[int, Callable[[str], None]], Executor]
EXECUTORS: dict[str, ExecutorFactory] = {}


def register_executor(name: str, factory: ExecutorFactory) -> None:
    """Make ``factory(workers, echo)`` the backend ``name`` (replacing one of that name)."""
    EXECUTORS[name] = factory


def make_executor(name: str, workers: int = 1, echo: Callable[[str], None] = print) -> Executor:
    """The backend registered as ``name``; an unknown name is a ConfigError listing them."""
    if name not in EXECUTORS:
        raise ConfigError(
            f"--executor: {name!r} is not a backend; expected one of {', '.join(sorted(EXECUTORS))}"
        )
    return EXECUTORS[name](workers, echo)


def submit_plan(plan: Plan, tracker: Tracker, executor: Executor) -> SweepReport:
    """Hand every job of ``plan`` to ``executor`` (the jobs finished in ``tracker``'s store
    are reported ``already``)."""
    tracker.experiment(plan.spec.name, plan.spec.description)
    jobs = jobs_from_plan(plan, tracker.uri, tracker.paths)
    return executor.submit(plan.spec.name, jobs, tracker)


def run_plan(plan: Plan, tracker: Tracker, executor: Executor) -> SweepReport:
    """``zoo sweep run --executor NAME``: hand every job of ``plan`` to ``executor`` and
    wait until each ended; the report counts them as a local run's does (finished,
    failed with reasons, skipped), whichever backend ran them."""
    held = sweep_folders(plan, tracker.paths)  # kept from zoo gc while the sweep runs
    with Lease(tracker.paths, held, f"sweep {plan.spec.name} (zoo sweep run)"):
        report = submit_plan(plan, tracker, executor)
        for key in report.submitted:  # queued, not yet ended (a scheduler's backend)
            result = report.handles[key].result()
            if result.status == "finished":
                report.finished.append(key)
            elif result.status == "skipped":
                report.skipped.append(key)
            else:
                report.failed[key] = result.reason
    return report


def _slurm(workers: int, echo: Callable[[str], None]) -> Executor:
    """Job arrays with the default options (``zoo sweep submit`` takes them all); a
    scheduler bounds its own parallelism (``--max-parallel``), so ``workers`` is unused."""
    return SlurmExecutor(SubmitOptions(), echo)


register_executor("local", LocalExecutor)
register_executor("slurm", _slurm)
