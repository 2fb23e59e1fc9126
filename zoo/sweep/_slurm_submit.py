"""The submitting side of the SLURM executor: jobs submitted as job arrays, one array
task running K jobs (the task side, what runs inside a task, is zoo.sweep._slurm_task).

Layout of a submission (zoo.paths.SubmissionPaths): ``runs.json`` (every
array's tasks and each job's JSON description, written before anything is
submitted), one script per array rendered from the packaged template
``zoo/resources/array.sbatch``, and per-task logs. The plan's dataset jobs that the
submitted jobs load and the cache lacks go first, as a CPU array of one task per
dataset job (``--data-partition``, ``--data-cpus``, ``--data-time``), which the next
array waits for (``afterany``): that is how this backend honours a job's ``datasets``.

Scheduling without stragglers: shared stages and runs go in ONE array, stage
tasks first, then run tasks grouped by the stage they start from. A run task
waits inside its allocation for its own stage's checkpoint only (see
zoo.sweep._slurm_task), so one slow stage holds only its own runs, never the runs
of other stages. Since SLURM starts array tasks in index order, every stage task
starts before the runs that wait for it. The array throttle ``--max-parallel N``
then bounds the whole sweep exactly.

The trade-off: a waiting run task holds its slot (and GPU) idle until its stage
ends, at most one stage's training time, while the alternatives either wait for
every stage (the old ``afterany`` chain of a stage array and a run array: one
slow stage held every run) or lose the bound (one array per stage group with
``afterok`` on its own stage task runs N tasks per array, N × groups in all).
Arrays longer than the cluster's ``MaxArraySize`` are split and run one after
another (``afterany``): at each split the next array waits for the slowest task
of the one before, so the bound costs stragglers at split points only.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from string import Template
from typing import Any

from zoo._leases import queue_lease
from zoo._typed import CONTROL_CHARACTERS
from zoo.errors import ConfigError
from zoo.paths import ProjectPaths, SubmissionPaths
from zoo.resources import resource
from zoo.store import Tracker
from zoo.sweep._datasets import sweep_folders, to_make
from zoo.sweep._executor import Executor, JobState, SweepReport, already, unfinished
from zoo.sweep._job import Job
from zoo.sweep._packing import cluster_limits
from zoo.sweep._plan import Plan, jobs_from_plan, make_plan
from zoo.sweep._search import open_study, search_jobs
from zoo.sweep._search_block import SearchBlock
from zoo.sweep._slurm import queue_status, sbatch, show_config
from zoo.sweep._slurm_handle import SlurmHandle
from zoo.sweep._spec import SweepSpec, with_execution

__all__ = [
    "SlurmExecutor",
    "SubmitOptions",
    "cluster_max_array_size",
    "render",
    "submit",
    "submit_search",
    "with_options",
]

TEMPLATE = "array.sbatch"
_PATTERNS = {
    "partition": r"[\w.,-]+",
    "account": r"[\w.-]+",
    "qos": r"[\w.-]+",
    "time": r"(\d+-)?\d+(:\d+){0,2}",
    "constraint": r"[\w&|!*\[\](),:.-]+",
    "mem_per_task": r"\d+[KMGT]?",
    "data_partition": r"[\w.,-]+",
    "data_time": r"(\d+-)?\d+(:\d+){0,2}",
}


@dataclass(frozen=True)
class SubmitOptions:
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: str | None = None  # SLURM time limit, e.g. 4:00:00
    constraint: str | None = None
    gpus_per_task: int | None = None  # N > 1: each run trains on N GPUs (config devices: N)
    cpus_per_task: int | None = None
    mem_per_task: str | None = None  # e.g. 16G
    max_parallel: int | None = None  # array throttle %N (per array)
    runs_per_task: int = 1  # runs one task trains
    runs_per_gpu: int = 1  # of a task's runs, this many train at once (processes per GPU)
    gpu_power: int | None = None  # watts: NVML cap in the worker (+ #SBATCH --gpu-power=W)
    site_gpu_power: bool = False  # the site understands #SBATCH --gpu-power
    grace_s: int = 120  # USR1 this long before the time limit: checkpoint and requeue
    max_requeues: int = 3  # preemptions a task is requeued for; then its run ends FAILED
    extra: tuple[str, ...] = ()  # extra #SBATCH lines, e.g. "--mail-type=END"
    resubmit_failed: bool = False
    dry_run: bool = False
    data_partition: str | None = None  # the dataset array's partition (default: partition)
    data_cpus: int | None = None  # CPUs per dataset array task
    data_time: str | None = None  # a dataset array task's time limit (default: time)

    def validate(self) -> None:
        for name, pattern in _PATTERNS.items():
            value = getattr(self, name)
            if value is not None and not re.fullmatch(pattern, value):
                raise ConfigError(
                    f"--{name.replace('_', '-')}: {value!r} is not allowed; "
                    f"expected characters matching {pattern}"
                )
        if self.max_requeues < 0:
            raise ConfigError(f"--max-requeues: {self.max_requeues}; expected an integer >= 0")
        if self.grace_s < 0:
            raise ConfigError(f"--grace: {self.grace_s}; expected seconds >= 0")
        for name in ("gpus_per_task", "cpus_per_task", "max_parallel", "gpu_power", "data_cpus"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(
                    f"--{name.replace('_', '-')}: {value} is not allowed; expected an integer >= 1"
                )
        if (self.gpus_per_task or 1) > 1 and self.runs_per_gpu > 1:
            raise ConfigError(
                f"--runs-per-gpu: {self.runs_per_gpu} is not allowed with --gpus-per-task "
                f"{self.gpus_per_task}; expected 1 (each run trains on all of a task's GPUs)"
            )
        if self.runs_per_task < 1:
            raise ConfigError(f"--runs-per-task: {self.runs_per_task}; expected >= 1")
        if not 1 <= self.runs_per_gpu <= self.runs_per_task:
            raise ConfigError(
                f"--runs-per-gpu: {self.runs_per_gpu} is not allowed; expected 1 to "
                f"--runs-per-task ({self.runs_per_task}), the runs one task trains"
            )
        for line in self.extra:
            if not re.fullmatch(r"--[A-Za-z][\w-]*(=[^\x00-\x1f]*)?", line):
                raise ConfigError(
                    f"--sbatch: {line!r} is not allowed; expected one option "
                    "like --mail-type=END on one line"
                )

    def directives(self) -> list[str]:
        values = {
            "partition": self.partition,
            "account": self.account,
            "qos": self.qos,
            "time": self.time,
            "constraint": self.constraint,
            "gpus-per-task": self.gpus_per_task,
            "cpus-per-task": self.cpus_per_task,
            "mem": self.mem_per_task,
        }
        lines = [f"--{k}={v}" for k, v in values.items() if v is not None]
        if self.gpu_power and self.site_gpu_power:
            lines.append(f"--gpu-power={self.gpu_power}")
        return [f"#SBATCH {line}" for line in [*lines, *self.extra]]

    def for_datasets(self) -> SubmitOptions:
        """The options of the dataset array: CPUs only, its own partition and time; the
        throttle still applies, so --max-parallel bounds the whole sweep."""
        return replace(
            self,
            partition=self.data_partition or self.partition,
            time=self.data_time or self.time,
            cpus_per_task=self.data_cpus,
            gpus_per_task=None,
            gpu_power=None,
        )


@dataclass
class Array:
    name: str
    keys: list[str]  # job keys, runs_per_task consecutive keys per task (unless tasks)
    depends_on: str | None = None  # the array that must end before this one starts
    job_id: str | None = None
    task_count: int = 0
    runs_per_task: int = 1
    runs_per_gpu: int = 1
    kind: str = "jobs"  # "datasets": each key is a dataset job's
    tasks: list[list[str]] | None = None  # the keys of each task, when they differ in count


def cluster_max_array_size() -> int:
    """MaxArraySize of the cluster: the most tasks one array may have."""
    return cluster_limits(show_config()).max_array_size


def _group(selected: list[Job], limit: int, per_task: int, per_gpu: int) -> list[Array]:
    """Shared stages and runs in one array (split at ``limit`` tasks), then search
    workers (one per task).

    Stage tasks come first, one stage each; then the runs, ``per_task`` to a task,
    a task's runs all starting from the same stage. A run task waits inside the task
    for its own stage only (zoo.sweep._slurm_task). Each array waits for the one
    before it to end (``afterany``), so the array throttle %N bounds the whole sweep.
    """
    stages = [[j.key] for j in selected if j.kind == "stage"]
    groups: dict[tuple[str, ...], list[str]] = {}
    for job in (j for j in selected if j.kind == "run"):
        groups.setdefault(job.depends[-1:], []).append(job.key)
    runs = [
        keys[i : i + per_task] for keys in groups.values() for i in range(0, len(keys), per_task)
    ]
    searches = [[j.key] for j in selected if j.kind == "search"]
    arrays = _split("jobs", stages + runs, limit, per_gpu) + _split("search", searches, limit, 1)
    for before, after in itertools.pairwise(arrays):
        after.depends_on = before.name
    return arrays


def _datasets_first(datasets: list[str], arrays: list[Array], limit: int) -> list[Array]:
    """``arrays`` after a CPU array running dataset jobs ``datasets`` (keys, one task
    each), chained like them."""
    first = _split("datasets", [[key] for key in datasets], limit, 1)
    for array in first:
        array.kind = "datasets"
    chain = first + arrays
    for before, after in itertools.pairwise(chain):
        after.depends_on = before.name
    return chain


def _split(name: str, tasks: list[list[str]], limit: int, per_gpu: int) -> list[Array]:
    """Arrays ``name-0``, ``name-1``... of at most ``limit`` tasks each."""
    chunks = [tasks[i : i + limit] for i in range(0, len(tasks), limit)]
    return [
        Array(
            f"{name}-{n}",
            [key for task in chunk for key in task],
            task_count=len(chunk),
            runs_per_task=max(len(task) for task in chunk),
            runs_per_gpu=per_gpu,
            tasks=chunk,
        )
        for n, chunk in enumerate(chunks)
    ]


def render(
    name: str,
    array: Array,
    submission: SubmissionPaths,
    root: Path,
    options: SubmitOptions,
    python: str = sys.executable,
) -> str:
    """The sbatch script of ``array``: every value validated and shell-quoted."""
    throttle = f"%{options.max_parallel}" if options.max_parallel else ""
    values = {
        "sweep": name,
        "array": shlex.quote(array.name),
        "job_name": f"zoo-{name}-{array.name}",
        "array_spec": f"0-{array.task_count - 1}{throttle}",
        "log_pattern": shlex.quote(str(submission.task_log_pattern(array.name))),
        "grace": str(options.grace_s),
        "directives": "\n".join(options.directives()),
        "root": shlex.quote(str(root)),
        "python": shlex.quote(python),
        "submission": shlex.quote(str(submission.folder)),
    }
    for key, value in {**values, "directives": "".join(options.directives())}.items():
        if CONTROL_CHARACTERS.search(value):
            raise ConfigError(
                f"sbatch script of {name}: {key} {value!r} is not allowed; "
                "expected no control characters (a newline would end a script line)"
            )
    return Template(resource(TEMPLATE).read_text()).substitute(values)


class SlurmExecutor(Executor):
    """Job arrays on the cluster ``sbatch`` reaches; ``submit`` returns once they are
    queued (``SweepReport.submitted``, ``.submission``), or on a dry run after
    printing the scripts, having written and submitted nothing."""

    def __init__(self, options: SubmitOptions, echo: Callable[[str], None] = print):
        options.validate()
        self.options, self.echo = options, echo

    def submit(self, name: str, jobs: Sequence[Job], tracker: Tracker) -> SweepReport:
        options, report = self.options, SweepReport()
        todo, finished = unfinished(jobs, tracker, name)
        already(report, jobs, finished)
        queued = self._queued(tracker.paths, name)
        selected = [j for j in todo if j.kind != "dataset" and j.key not in queued]
        if not selected:
            self.echo(
                f"sweep {name}: nothing to submit ({len(finished)} finished, {len(queued)} queued)"
            )
            return report
        limit = _dry_limit() if options.dry_run else cluster_max_array_size()
        datasets, _ = to_make([*selected, *(j for j in todo if j.kind == "dataset")])
        arrays = _datasets_first(
            [j.key for j in datasets],
            _group(selected, limit, options.runs_per_task, options.runs_per_gpu),
            limit,
        )
        submission = tracker.paths.new_submission(name, time.strftime("%Y%m%d-%H%M%S"))
        record = {
            "sweep": name,
            "arrays": [],
            "jobs": self._jobs(selected),
            "datasets": {j.key: j.to_json() for j in datasets},  # dataset jobs
        }
        scripts = {
            a.name: render(
                name,
                a,
                submission,
                tracker.paths.root,
                options.for_datasets() if a.kind == "datasets" else options,
            )
            for a in arrays
        }
        if options.dry_run:
            for array in arrays:
                command = _sbatch(array, arrays, submission)
                self.echo(f"# would run: {shlex.join(command)}\n{scripts[array.name]}")
            self.echo(
                f"dry run: {len(arrays)} arrays, {len(selected)} jobs; nothing written or submitted"
            )
            return report
        submission.logs.mkdir(parents=True)
        for array in arrays:
            submission.script(array.name).write_text(scripts[array.name])
        _write_record(submission, record, arrays)
        for array in arrays:
            command = _sbatch(array, arrays, submission)
            array.job_id = sbatch(command)
            _write_record(submission, record, arrays)
            after = [c[13:] for c in command if c.startswith("--dependency=")]
            self.echo(
                f"submitted {array.name}: job {array.job_id}, {len(array.keys)} jobs in "
                f"{array.task_count} tasks" + (f", after {after[0]}" if after else "")
            )
        report.submitted = [j.key for j in selected]
        report.submission = submission.folder
        report.handles.update(_handles(name, arrays, tracker))
        return report

    def status(self, name: str, tracker: Tracker) -> dict[str, JobState]:
        return {
            key: "running" if state == "RUNNING" else "pending"
            for key, state in queue_status(tracker.paths, name).items()
        }

    def _queued(self, paths: ProjectPaths, name: str) -> dict[str, str]:
        if self.options.dry_run and not paths.submissions(name):
            return {}
        queued = queue_status(paths, name)
        if queued and not self.options.resubmit_failed:
            raise ConfigError(
                f"sweep {name}: {len(queued)} jobs are still queued or "
                "running; use --resubmit-failed to add only failed and missing jobs"
            )
        return queued

    def _jobs(self, selected: list[Job]) -> dict[str, str]:
        """Key -> JSON description, with the requeue limit of these options (the power
        cap is already in each job's config and key: see ``with_options``)."""
        return {
            job.key: replace(job, max_requeues=self.options.max_requeues).to_json()
            for job in selected
        }


def submit(plan: Plan, tracker: Tracker, options: SubmitOptions, echo=print) -> SweepReport:
    """Submit the jobs of sweep ``plan`` (made again ``with_options``) that are neither
    finished nor queued."""
    plan = with_options(plan, options)
    if not options.dry_run:
        tracker.experiment(plan.spec.name, plan.spec.description)
    jobs = jobs_from_plan(plan, tracker.uri, tracker.paths)
    report = SlurmExecutor(options, echo).submit(plan.spec.name, jobs, tracker)
    if report.submission is not None:  # queued: kept from zoo gc until its jobs end
        record = {"sweep": plan.spec.name, "submission": str(report.submission)}
        held, name = sweep_folders(plan, tracker.paths)(), report.submission.name
        queue_lease(tracker.paths, held, f"sweep {plan.spec.name} (SLURM {name})", record)
    return report


def submit_search(
    spec: SweepSpec,
    block: SearchBlock,
    tracker: Tracker,
    options: SubmitOptions,
    workers: int,
    echo=print,
) -> SweepReport:
    """Submit ``workers`` Optuna workers of search ``spec`` as one SLURM array; the
    study is created first (unless a dry run), before the workers race to it."""
    executor = SlurmExecutor(options, echo)
    if not options.dry_run:
        open_study(spec, block, tracker.paths)
    jobs = search_jobs(spec, block, workers, tracker, options.max_requeues)
    return executor.submit(spec.name, jobs, tracker)


def with_options(plan: Plan, options: SubmitOptions) -> Plan:
    """``plan`` with the options that change what its runs compute in its base config
    (``--gpus-per-task`` N > 1: ``devices: N``, zoo.distributed; ``--gpu-power W``:
    ``power_cap_w: W``), made again only when they change it, so its keys are the ones
    the workers compute. A run asking for more devices than a task has is a ConfigError."""
    gpus = options.gpus_per_task
    spec = with_execution(plan.spec, gpus, options.gpu_power)
    if spec is not plan.spec:
        plan = make_plan(spec)
    for run in plan.runs:
        if gpus is not None and run.config.devices > gpus:
            raise ConfigError(
                f"spec run {json.dumps(run.names, default=str)}: config.devices: "
                f"{run.config.devices} is more than --gpus-per-task {gpus}"
            )
    return plan


def _handles(name: str, arrays: list[Array], tracker: Tracker) -> dict[str, SlurmHandle]:
    """Key -> handle of each job queued in ``arrays`` (dataset arrays make no job)."""
    return {
        key: SlurmHandle(key, f"{array.job_id}_{index}", name, tracker)
        for array in arrays
        if array.kind != "datasets"
        for index, keys in enumerate(array.tasks or [])
        for key in keys
    }


def _dry_limit() -> int:
    try:
        return cluster_max_array_size()
    except ConfigError:
        return 1001


def _sbatch(array: Array, arrays: list[Array], submission: SubmissionPaths) -> list[str]:
    """The sbatch command of ``array``: ``--dependency=afterany:<job>`` on the array
    before it in the chain."""
    dependency = []
    if array.depends_on is not None:
        before = next(a for a in arrays if a.name == array.depends_on)
        dependency = [f"--dependency=afterany:{before.job_id or before.name}"]
    return ["sbatch", "--parsable", *dependency, str(submission.script(array.name))]


def _write_record(submission: SubmissionPaths, record: dict[str, Any], arrays: list[Array]) -> None:
    record["arrays"] = [
        {
            "name": a.name,
            "keys": a.keys,
            "tasks": a.tasks,
            "job_id": a.job_id,
            "runs_per_task": a.runs_per_task,
            "runs_per_gpu": a.runs_per_gpu,
            "depends_on": a.depends_on,
            "kind": a.kind,
        }
        for a in arrays
    ]
    tmp = submission.record_staging
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, submission.record)
