"""The SLURM executor: jobs submitted as job arrays, one array task running K jobs.

Layout of a submission (zoo.paths.SubmissionPaths): ``runs.json`` (every
array's tasks and each job's JSON description, written before anything is
submitted), one script per array rendered from the packaged template
``zoo/resources/array.sbatch``, and per-task logs. The datasets the jobs need
and the cache lacks go first, as a CPU array of one task per dataset
(``--data-partition``, ``--data-cpus``, ``--data-time``).

Scheduling without stragglers: shared stages and runs go in ONE array, stage
tasks first, then run tasks grouped by the stage they start from. A run task
waits inside its allocation for its own stage's checkpoint only (the stage's
task writes an ``ended`` marker however it ends; a failed stage leaves its runs
skipped), so one slow stage holds only its own runs, never the runs of other
stages. Since SLURM starts array tasks in index order, every stage task starts
before the runs that wait for it. The array throttle ``--max-parallel N`` then
bounds the whole sweep exactly.

The trade-off: a waiting run task holds its slot (and GPU) idle until its stage
ends, at most one stage's training time, while the alternatives either wait for
every stage (the old ``afterany`` chain of a stage array and a run array: one
slow stage held every run) or lose the bound (one array per stage group with
``afterok`` on its own stage task runs N tasks per array, N × groups in all). A
stage task requeued after preemption makes its waiting run tasks requeue too
(so they cannot hold the slots it needs); that counts as one of their restarts.
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
import signal
import subprocess
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
from zoo.sweep._datasets import make_task, missing_sources, sweep_folders
from zoo.sweep._executor import Executor, SweepReport, pending
from zoo.sweep._job import JobSpec, become_worker, jobs_from_plan, requeues_made, run_job
from zoo.sweep._packing import cluster_limits
from zoo.sweep._plan import Plan, make_plan
from zoo.sweep._spec import with_execution
from zoo.tracking import Tracker

__all__ = [
    "SlurmExecutor",
    "SubmitOptions",
    "cluster_max_array_size",
    "queued_keys",
    "render",
    "submit",
    "with_options",
    "worker",
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


_ENDED = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "PREEMPTED",
    "OUT_OF_MEMORY",
    "BOOT_FAIL",
    "DEADLINE",
    "REVOKED",
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
    kind: str = "jobs"  # "datasets": each key names a dataset to make
    tasks: list[list[str]] | None = None  # the keys of each task, when they differ in count


def task_keys(array: dict[str, Any]) -> list[list[str]]:
    """The job keys of each task of a recorded array, in task order."""
    if array.get("tasks") is not None:
        return array["tasks"]
    keys, per_task = array["keys"], array["runs_per_task"]
    return [keys[i : i + per_task] for i in range(0, len(keys), per_task)]


def _slurm(*args: str) -> str:
    try:
        result = subprocess.run(args, capture_output=True, text=True, check=True, timeout=60)
    except FileNotFoundError:
        raise ConfigError(
            f"{args[0]}: not found; is SLURM installed (slurm/local-cluster.sh "
            "start for a local one)?"
        ) from None
    except subprocess.CalledProcessError as error:
        raise ConfigError(f"{' '.join(args[:2])}: {error.stderr.strip()}") from None
    return result.stdout


def cluster_max_array_size() -> int:
    """MaxArraySize of the cluster: the most tasks one array may have."""
    return cluster_limits(_slurm("scontrol", "show", "config")).max_array_size


def scancel(*job_ids: str) -> None:
    """Cancel SLURM jobs (whole arrays by their job id): their tasks get SIGTERM first."""
    _slurm("scancel", *job_ids)


def active_tasks(sweep: str) -> dict[tuple[str, int], str]:
    """(array job id, task id) -> state of this sweep's pending and running tasks."""
    jobs = json.loads(_slurm("squeue", "--json")).get("jobs", [])
    found = {}
    for job in jobs:
        if not str(job.get("name", "")).startswith(f"zoo-{sweep}-"):
            continue
        state = job["job_state"] if isinstance(job["job_state"], str) else job["job_state"][0]
        if state in _ENDED:  # squeue --json also lists jobs that ended recently
            continue
        array_id = str(job.get("array_job_id") or job["job_id"])
        task = job.get("array_task_id")
        if isinstance(task, dict):  # newer squeue: {"set": bool, "number": n}
            task = task["number"] if task.get("set") else None
        if task is not None:
            found[(array_id, int(task))] = state
            continue
        spec = str(job.get("array_task_string") or "").split("%")[0]
        for part in filter(None, spec.split(",")):
            low, _, high = part.partition("-")
            for number in range(int(low), int(high or low) + 1):
                found[(array_id, number)] = state
    return found


def queued_keys(paths: ProjectPaths, sweep: str) -> dict[str, str]:
    """Job key -> SLURM state for the keys of this sweep now pending or running in SLURM."""
    submissions = paths.submissions(sweep)
    if not submissions:
        return {}
    active = active_tasks(sweep)
    queued = {}
    for submission in submissions:
        for array in json.loads(submission.record.read_text())["arrays"]:
            for index, keys in enumerate(task_keys(array)):
                state = active.get((str(array["job_id"]), index))
                if state:
                    queued.update(dict.fromkeys(keys, state))
    return queued


def _group(selected: list[JobSpec], limit: int, per_task: int, per_gpu: int) -> list[Array]:
    """Shared stages and runs in one array (split at ``limit`` tasks), then search
    workers (one per task).

    Stage tasks come first, one stage each; then the runs, ``per_task`` to a task,
    a task's runs all starting from the same stage. A run task waits inside the task
    for its own stage only (see ``_wait_for_stage``). Each array waits for the one
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


def _datasets_first(datasets: dict[str, Any], arrays: list[Array], limit: int) -> list[Array]:
    """``arrays`` after a CPU array making ``datasets`` (one task each), chained like them."""
    first = _split("datasets", [[name] for name in datasets], limit, 1)
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

    def submit(self, name: str, jobs: Sequence[JobSpec], tracker: Tracker) -> SweepReport:
        options, report = self.options, SweepReport()
        todo, finished = pending(jobs, tracker, name)
        report.already = [j.key for j in jobs if j.key in finished]
        queued = self._queued(tracker.paths, name)
        selected = [j for j in todo if j.key not in queued]
        if not selected:
            self.echo(
                f"sweep {name}: nothing to submit ({len(finished)} finished, {len(queued)} queued)"
            )
            return report
        limit = _dry_limit() if options.dry_run else cluster_max_array_size()
        datasets = missing_sources(selected, tracker.paths)
        arrays = _datasets_first(
            datasets, _group(selected, limit, options.runs_per_task, options.runs_per_gpu), limit
        )
        submission = tracker.paths.new_submission(name, time.strftime("%Y%m%d-%H%M%S"))
        record = {"sweep": name, "arrays": [], "jobs": self._jobs(selected), "datasets": datasets}
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
            array.job_id = _slurm(*command).strip().split(";")[0]
            _write_record(submission, record, arrays)
            after = [c[13:] for c in command if c.startswith("--dependency=")]
            self.echo(
                f"submitted {array.name}: job {array.job_id}, {len(array.keys)} jobs in "
                f"{array.task_count} tasks" + (f", after {after[0]}" if after else "")
            )
        report.submitted = [j.key for j in selected]
        report.submission = submission.folder
        return report

    def _queued(self, paths: ProjectPaths, name: str) -> dict[str, str]:
        if self.options.dry_run and not paths.submissions(name):
            return {}
        queued = queued_keys(paths, name)
        if queued and not self.options.resubmit_failed:
            raise ConfigError(
                f"sweep {name}: {len(queued)} jobs are still queued or "
                "running; use --resubmit-failed to add only failed and missing jobs"
            )
        return queued

    def _jobs(self, selected: list[JobSpec]) -> dict[str, str]:
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
    tmp = submission.folder / "runs.json.tmp"
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, submission.record)


PREEMPTED = 3  # exit code of a lane that checkpointed on USR1


def worker(folder: Path, array_name: str, task: int) -> int:
    """Run the jobs of one array task (a dataset array task makes its datasets); on
    USR1, checkpoint and requeue this task only (at most each job's ``max_requeues``
    times: then its run ends FAILED).

    A run whose shared stage is a task of this array first waits for that stage
    (see ``_wait_for_stage``). With ``runs_per_gpu`` N > 1 the task's runs are dealt
    to N processes that train side by side (round-robin over the task's GPUs); USR1
    is passed on to them. Like local workers each trains with one intra-op thread, so
    a run's numbers are the same whichever executor ran it and whatever shared its GPU.
    """
    submission = SubmissionPaths(folder)
    record = json.loads(submission.record.read_text())
    array = next(a for a in record["arrays"] if a["name"] == array_name)
    per_gpu = array.get("runs_per_gpu", 1)
    tasks = task_keys(array)
    keys = tasks[task]
    started = time.time()
    if array.get("kind") == "datasets":
        code = make_task(record["datasets"], keys, ProjectPaths.default())
    else:
        jobs = [record["jobs"][k] for k in keys]
        stages = _stage_tasks(tasks, record["jobs"])
        lanes = [jobs[i::per_gpu] for i in range(per_gpu)]
        if len(lanes) == 1:
            code = _lane(jobs, submission, task, 0, stages)
        else:
            code = _lanes(lanes, submission, task, stages)
    if code == PREEMPTED:
        target = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
        print(f"preempted: requeueing {target}", flush=True)
        subprocess.run(["scontrol", "requeue", target], check=True)
        return 0
    print(json.dumps({"task": task, "start": started, "end": time.time()}), flush=True)
    return code


def _stage_tasks(tasks: list[list[str]], jobs: dict[str, str]) -> dict[str, int]:
    """Stage key -> the task of this array that trains it."""
    return {
        keys[0]: index
        for index, keys in enumerate(tasks)
        if len(keys) == 1 and json.loads(jobs[keys[0]])["kind"] == "stage"
    }


_POLL_S = 1.0  # how often a waiting run looks for its stage's checkpoint
_QUEUE_S = 60.0  # how often it asks SLURM whether the stage's task is still there
_WAITING = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "SUSPENDED"}


def _wait_for_stage(
    job: JobSpec, submission: SubmissionPaths, stages: dict[str, int], echo: Callable
) -> bool:
    """Wait until the shared stage ``job`` starts from (when it is a task of this array)
    has its checkpoint or ended; False when this task should give its slot back instead.

    A stage task has a lower index than every run task, so it started before any run
    task waiting for it. Its task writes ``ended`` however the stage job ended; a stage
    task killed outright is noticed from ``squeue`` within ``_QUEUE_S``. When the stage's
    task is pending again (requeued after preemption) the run task returns False, to be
    requeued itself, so waiting runs can never hold every slot the stage needs.
    """
    stage = job.depends[-1] if job.depends else None
    if stage not in stages:
        return True
    result, ended = job.paths.stage_files(stage).result, submission.ended(stage)
    target = f"{os.environ.get('SLURM_ARRAY_JOB_ID')}_{stages[stage]}"
    began = asked = time.monotonic()
    while not (result.exists() or ended.exists()):
        if time.monotonic() - asked >= _QUEUE_S:
            asked = time.monotonic()
            state = _queue_state(target)
            if state in _WAITING:
                echo(f"shared stage {stage} (task {target}) is {state}: giving this slot back")
                return False
            if not state and not (result.exists() or ended.exists()):
                break  # the stage's task is gone: run_job reports the run skipped
        time.sleep(_POLL_S)
    if time.monotonic() - began >= _POLL_S:
        echo(f"waited {time.monotonic() - began:.0f} s for shared stage {stage}")
    return True


def _queue_state(task: str) -> str:
    """The state of array task ``task`` in ``squeue``; "" when the controller no longer
    knows it (ended and purged), "UNKNOWN" while ``squeue`` itself fails (keep waiting)."""
    try:
        return _slurm("squeue", "-h", "-j", task, "-o", "%T").strip()
    except ConfigError as error:
        return "" if "Invalid job id" in str(error) else "UNKNOWN"
    except subprocess.TimeoutExpired:
        return "UNKNOWN"


def _lanes(
    lanes: list[list[str]], submission: SubmissionPaths, task: int, stages: dict[str, int]
) -> int:
    """Run each list of jobs in its own process at the same time; the worst exit code."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=_lane_exit, args=(jobs, submission, task, lane, stages))
        for lane, jobs in enumerate(lanes)
        if jobs
    ]
    for process in processes:
        process.start()
    signal.signal(
        signal.SIGUSR1,
        lambda *_: [os.kill(p.pid, signal.SIGUSR1) for p in processes if p.is_alive()],
    )
    try:
        for process in processes:
            process.join()
    except KeyboardInterrupt:  # SIGTERM, SIGINT or SIGHUP (zoo._signals): stop the lanes too
        from zoo._signals import grace_s, stop_all

        stop_all([p.pid for p in processes], time.monotonic() + grace_s())  # runs end KILLED
        for process in processes:
            process.join()
        raise
    codes = {p.exitcode for p in processes}
    return PREEMPTED if PREEMPTED in codes else 1 if codes != {0} else 0


def _lane_exit(*args: Any) -> None:
    """A lane process: _lane's status, 128 + signum when a signal stopped it; it stops
    by itself once the task's process has ended."""
    from zoo._signals import Stopped, exit_with_parent

    exit_with_parent(os.getppid())
    try:
        sys.exit(_lane(*args))
    except Stopped as stopped:
        sys.exit(128 + stopped.signum)


def _lane(
    jobs: list[str], submission: SubmissionPaths, task: int, lane: int, stages: dict[str, int]
) -> int:
    """Run ``jobs`` (JSON descriptions) one after another on lane ``lane``'s device: 0
    unless one failed (1) or training stopped on USR1 after checkpointing, or a run
    gave its slot back to its requeued stage (PREEMPTED)."""
    from zoo._signals import job_under_way
    from zoo.artifacts import drain_figures

    become_worker(lane)
    with job_under_way():  # a signal stops the run under way (KILLED), then the lane
        try:
            return _lane_jobs(jobs, submission, task, lane, stages)
        finally:
            drain_figures()


def _lane_jobs(
    jobs: list[str], submission: SubmissionPaths, task: int, lane: int, stages: dict[str, int]
) -> int:
    from zoo.train import STOP, Preempted

    signal.signal(signal.SIGUSR1, lambda *_: STOP.set())
    failures = 0
    for text in jobs:
        job = JobSpec.from_json(text)
        print(f"task {task} lane {lane} pid {os.getpid()}: {job.kind} {job.key}", flush=True)
        if not _wait_for_stage(job, submission, stages, lambda line: print(line, flush=True)):
            return PREEMPTED
        try:  # the submission found it unfinished; after a requeue it may have finished
            result = run_job(job, submission.job_log(job.key), pending=not requeues_made())
        except Preempted:
            return PREEMPTED  # a preempted stage has not ended: its runs keep waiting
        finally:  # ended however it ended (unless preempted), so its runs stop waiting
            if job.kind == "stage" and not STOP.is_set():
                submission.ended(job.key).touch()
        if result.status == "skipped":
            print(f"task {task}: skipped {job.key}: {result.reason}", flush=True)
            continue
        print(f"task {task}: {result.status} {result.run_id} {result.reason}", flush=True)
        failures += result.status != "finished"
    return 1 if failures else 0
