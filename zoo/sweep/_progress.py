"""A local sweep's progress: one line per event (plain, off a terminal) or one line redrawn
in place with a bar (on a terminal): done, running, failed, skipped, remaining and an ETA.

The ETA prices each remaining job by the plan's price of it (``priced``: job key -> seconds
on a throughput profile, zoo.sweep._cost.job_seconds), scaled by how the finished jobs'
times compared with theirs; without a price, by the mean time of the finished jobs of its
kind (shared stages and runs take different times); divided among the workers. The count
of running jobs is taken after the freed workers got their next jobs, so it reads as busy
workers.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from zoo.sweep._executor import SweepReport
    from zoo.sweep._job import Job

__all__ = ["SweepProgress", "describe"]

_BAR = 20  # characters of the bar on a terminal


def describe(job: Job) -> str:
    """A job as people name it: its run's readable name (as `zoo models list` and the MLflow
    UI show it) and its config-hash prefix, which `zoo sweep logs` and `zoo models show`
    take."""
    if job.kind == "search":
        return job.key
    name = job.tags.get("mlflow.runName")
    if name is None:
        values = ", ".join(f"{k[9:]}={v}" for k, v in job.tags.items() if k.startswith("zoo.axis."))
        name = f"{job.name} ({values})" if values else job.name
    return f"{name} [{job.key[:8]}]"


class SweepProgress:
    """Counts of a sweep's ``jobs`` shown after each event with ``echo`` (redrawn in place
    when ``echo`` is print to a terminal), with ``workers`` sharing the remaining work."""

    def __init__(
        self,
        jobs: Sequence[Job],
        workers: int,
        echo: Callable[[str], None],
        priced: dict[str, float] | None = None,
    ):
        self.total, self.workers, self.echo = len(jobs), max(1, workers), echo
        self.left = Counter(job.kind for job in jobs)  # kind -> jobs not yet settled
        self.seconds: dict[str, list[float]] = {}  # kind -> times of its finished jobs
        self.priced = priced or {}
        self.unsettled = {job.key for job in jobs}
        self.ratio = [0.0, 0.0]  # measured and priced seconds of the finished priced jobs
        self.tty = echo is print and sys.stdout.isatty()
        self.started = time.monotonic()

    def settle(self, job: Job, seconds: float | None = None) -> None:
        """``job`` ended (finished, failed or skipped), after ``seconds`` when it ran."""
        self.left[job.kind] -= 1
        self.unsettled.discard(job.key)
        if seconds:
            self.seconds.setdefault(job.kind, []).append(seconds)
            if job.key in self.priced:
                self.ratio[0] += seconds
                self.ratio[1] += self.priced[job.key]

    def eta_s(self) -> float | None:
        """Seconds until every job has settled: from the plan's price when there is one,
        else from the mean time of each kind; None when neither is known yet."""
        if self.priced and self.unsettled <= set(self.priced):
            scale = self.ratio[0] / self.ratio[1] if self.ratio[1] else 1.0
            return sum(self.priced[k] for k in self.unsettled) * scale / self.workers
        means = {k: sum(v) / len(v) for k, v in self.seconds.items() if v}
        if not means:
            return None
        fallback = sum(means.values()) / len(means)
        work = sum(count * means.get(kind, fallback) for kind, count in self.left.items())
        return work / self.workers

    def show(self, report: SweepReport, running: int, event: str) -> None:
        done, failed, skipped = len(report.finished), len(report.failed), len(report.skipped)
        settled = done + failed + skipped
        eta = self.eta_s()
        counts = (
            f"done {done} running {running} failed {failed} skipped {skipped} "
            f"remaining {self.total - settled}"
            + (f" ETA {int(eta // 60)}m{int(eta % 60):02d}s" if eta is not None else "")
        )
        if self.tty:
            filled = round(_BAR * settled / max(1, self.total))
            bar = "#" * filled + "." * (_BAR - filled)
            print(f"\r\033[K[{bar}] {settled}/{self.total} {counts}  {event}", end="", flush=True)
        else:
            self.echo(f"[{settled}/{self.total}] {counts}  {event}")
