"""The SLURM executor: a sweep submitted as job arrays, one array task training K runs.

Layout of a submission (``.zoo/sweeps/<sweep>/<timestamp>/``): ``runs.json``
(every array's job keys and each job's payload, written before anything is
submitted), one rendered script per array, and per-task logs. Shared stages go
first as one array; the runs that start from a shared stage form an array that
waits (``afterok``) for exactly that stage's task, so one failed stage leaves
only its own dependents unstarted (SLURM's ``kill_invalid_depend`` removes
them). Arrays longer than the cluster's ``MaxArraySize`` are split.
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
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any

from zoo.errors import ConfigError
from zoo.paths import ProjectPaths
from zoo.sweep._local import execute, payload, pin_device
from zoo.sweep._plan import Job, Plan
from zoo.tracking import Tracker

__all__ = ["SubmitOptions", "cluster_max_array_size", "submit", "worker"]

TEMPLATE = Path(__file__).resolve().parents[2] / "slurm" / "array.sbatch"
_PATTERNS = {
    "partition": r"[\w.,-]+",
    "account": r"[\w.-]+",
    "qos": r"[\w.-]+",
    "time": r"(\d+-)?\d+(:\d+){0,2}",
    "constraint": r"[\w&|!*\[\](),:.-]+",
    "mem_per_task": r"\d+[KMGT]?",
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
    gpus_per_task: int | None = None
    cpus_per_task: int | None = None
    mem_per_task: str | None = None  # e.g. 16G
    max_parallel: int | None = None  # array throttle %N (per array)
    runs_per_task: int = 1  # runs one task trains
    runs_per_gpu: int = 1  # of a task's runs, this many train at once (processes per GPU)
    gpu_power: int | None = None  # watts: NVML cap in the worker (+ #SBATCH --gpu-power=W)
    site_gpu_power: bool = False  # the site understands #SBATCH --gpu-power
    grace_s: int = 120  # USR1 this long before the time limit: checkpoint and requeue
    extra: tuple[str, ...] = ()  # extra #SBATCH lines, e.g. "--mail-type=END"
    resubmit_failed: bool = False
    dry_run: bool = False

    def validate(self) -> None:
        for name, pattern in _PATTERNS.items():
            value = getattr(self, name)
            if value is not None and not re.fullmatch(pattern, value):
                raise ConfigError(
                    f"--{name.replace('_', '-')}: {value!r} is not allowed; "
                    f"expected characters matching {pattern}"
                )
        for name in ("gpus_per_task", "cpus_per_task", "max_parallel", "gpu_power"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(
                    f"--{name.replace('_', '-')}: {value} is not allowed; expected an integer >= 1"
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


@dataclass
class Array:
    name: str
    keys: list[str]  # job keys, runs_per_task consecutive keys per task
    depends_on: str | None = None  # the array that must end before this one starts
    job_id: str | None = None
    task_count: int = 0
    runs_per_task: int = 1
    runs_per_gpu: int = 1


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
    match = re.search(r"^MaxArraySize\s*=\s*(\d+)", _slurm("scontrol", "show", "config"), re.M)
    return int(match.group(1)) if match else 1001


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


def _submissions(paths: ProjectPaths, sweep: str) -> list[Path]:
    folder = paths.sweep(sweep)
    return sorted(folder.glob("*/runs.json")) if folder.exists() else []


def queued_keys(paths: ProjectPaths, sweep: str) -> dict[str, str]:
    """Job key -> SLURM state for the keys of this sweep now pending or running in SLURM."""
    if not _submissions(paths, sweep):
        return {}
    active = active_tasks(sweep)
    queued = {}
    for record in _submissions(paths, sweep):
        for array in json.loads(record.read_text())["arrays"]:
            for index, key in enumerate(array["keys"]):
                state = active.get((str(array["job_id"]), index // array["runs_per_task"]))
                if state:
                    queued[key] = state
    return queued


def _group(selected: list[Job], limit: int, per_task: int, per_gpu: int) -> list[Array]:
    """A chain of arrays: shared stages first, then runs (grouped by their stage).

    Each array waits for the one before it to end (``afterany``), so the array
    throttle %N bounds the whole sweep and arrays split at MaxArraySize run in turn.
    A run task whose stage failed finds no checkpoint and reports the run skipped.
    """
    stages = [j.key for j in selected if j.kind == "stage"]
    runs = sorted((j for j in selected if j.kind == "run"), key=lambda j: j.depends[-1:])
    arrays = _split("stages", stages, limit, 1, 1) + _split(
        "runs", [j.key for j in runs], limit, per_task, per_gpu
    )
    for before, after in itertools.pairwise(arrays):
        after.depends_on = before.name
    return arrays


def _split(name: str, keys: list[str], limit: int, per_task: int, per_gpu: int) -> list[Array]:
    per_array = limit * per_task
    chunks = [keys[i : i + per_array] for i in range(0, len(keys), per_array)]
    return [
        Array(
            f"{name}-{n}",
            chunk,
            task_count=-(-len(chunk) // per_task),
            runs_per_task=per_task,
            runs_per_gpu=per_gpu,
        )
        for n, chunk in enumerate(chunks)
    ]


def _render(plan: Plan, array: Array, submission: Path, root: Path, options: SubmitOptions) -> str:
    throttle = f"%{options.max_parallel}" if options.max_parallel else ""
    values = {
        "sweep": plan.spec.name,
        "array": shlex.quote(array.name),
        "job_name": f"zoo-{plan.spec.name}-{array.name}",
        "array_spec": f"0-{array.task_count - 1}{throttle}",
        "log_pattern": shlex.quote(str(submission / "logs" / f"{array.name}_%A_%a.out")),
        "grace": str(options.grace_s),
        "directives": "\n".join(options.directives()),
        "root": shlex.quote(str(root)),
        "python": shlex.quote(sys.executable),
        "submission": shlex.quote(str(submission)),
    }
    return Template(TEMPLATE.read_text()).substitute(values)


def submit(plan: Plan, tracker: Tracker, options: SubmitOptions, echo=print) -> Path | None:
    """Submit the jobs of ``plan`` that are neither finished nor queued; returns the
    submission folder (None when nothing was submitted, or on a dry run)."""
    options.validate()
    experiment = tracker.experiment(plan.spec.name, plan.spec.description)
    states = tracker.states(experiment)
    finished = {k for k, (_, status) in states.items() if status == "FINISHED"}
    queued = (
        {}
        if options.dry_run and not _submissions(tracker.paths, plan.spec.name)
        else queued_keys(tracker.paths, plan.spec.name)
    )
    if queued and not options.resubmit_failed:
        raise ConfigError(
            f"sweep {plan.spec.name}: {len(queued)} jobs are still queued or "
            "running; use --resubmit-failed to add only failed and missing jobs"
        )
    selected = [j for j in plan.jobs if j.key not in finished and j.key not in queued]
    if not selected:
        echo(
            f"sweep {plan.spec.name}: nothing to submit ({len(finished)} finished, "
            f"{len(queued)} queued)"
        )
        return None
    limit = _dry_limit() if options.dry_run else cluster_max_array_size()
    arrays = _group(selected, limit, options.runs_per_task, options.runs_per_gpu)
    folder = _unique(tracker.paths.sweep(plan.spec.name) / time.strftime("%Y%m%d-%H%M%S"))
    jobs = {j.key: j for j in plan.jobs}
    parents = {k: v[0] for k, v in states.items() if k in finished}
    payloads = {}
    for array in arrays:
        for key in array.keys:
            job = jobs[key]
            parent = parents.get(job.depends[-1]) if job.depends else None
            config = job.config
            if options.gpu_power:
                from dataclasses import replace

                config = replace(config, power_cap_w=float(options.gpu_power))
            payloads[key] = payload(
                plan,
                Job(job.key, job.kind, job.name, config, job.names, job.depends),
                tracker.uri,
                tracker.paths,
                parent,
            )
            payloads[key]["stage_key"] = job.depends[-1] if job.depends else None
    record = {"sweep": plan.spec.name, "arrays": [], "payloads": payloads}
    scripts = {a.name: _render(plan, a, folder, tracker.paths.root, options) for a in arrays}
    if options.dry_run:
        for array in arrays:
            command = [
                "sbatch",
                "--parsable",
                *_dependency(array, arrays),
                str(folder / f"{array.name}.sbatch"),
            ]
            echo(f"# would run: {shlex.join(command)}\n{scripts[array.name]}")
        echo(f"dry run: {len(arrays)} arrays, {len(selected)} jobs; nothing written or submitted")
        return None
    (folder / "logs").mkdir(parents=True)
    for array in arrays:
        (folder / f"{array.name}.sbatch").write_text(scripts[array.name])
    _write_record(folder, record, arrays)
    for array in arrays:
        dependency = _dependency(array, arrays)
        command = ["sbatch", "--parsable", *dependency, str(folder / f"{array.name}.sbatch")]
        array.job_id = _slurm(*command).strip().split(";")[0]
        _write_record(folder, record, arrays)
        echo(
            f"submitted {array.name}: job {array.job_id}, {len(array.keys)} jobs in "
            f"{array.task_count} tasks" + (f", after {dependency[0][13:]}" if dependency else "")
        )
    return folder


def _dry_limit() -> int:
    try:
        return cluster_max_array_size()
    except ConfigError:
        return 1001


def _unique(folder: Path) -> Path:
    candidate, n = folder, 1
    while candidate.exists():
        candidate, n = folder.with_name(f"{folder.name}-{n}"), n + 1
    return candidate


def _dependency(array: Array, arrays: list[Array]) -> list[str]:
    """``--dependency=afterany:<job>`` on the array before this one in the chain."""
    if array.depends_on is None:
        return []
    before = next(a for a in arrays if a.name == array.depends_on)
    return [f"--dependency=afterany:{before.job_id or before.name}"]


def _write_record(folder: Path, record: dict[str, Any], arrays: list[Array]) -> None:
    record["arrays"] = [
        {
            "name": a.name,
            "keys": a.keys,
            "job_id": a.job_id,
            "runs_per_task": a.runs_per_task,
            "runs_per_gpu": a.runs_per_gpu,
            "depends_on": a.depends_on,
        }
        for a in arrays
    ]
    tmp = folder / "runs.json.tmp"
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, folder / "runs.json")


PREEMPTED = 3  # exit code of a lane that checkpointed on USR1


def worker(submission: Path, array_name: str, task: int) -> int:
    """Train the runs of one array task; on USR1, checkpoint and requeue this task only.

    With ``runs_per_gpu`` N > 1 the task's runs are dealt to N processes that
    train side by side (round-robin over the task's GPUs); USR1 is passed on to
    them. Like local workers each trains with one intra-op thread, so a run's
    numbers are the same whichever executor ran it and whatever shared its GPU.
    """
    record = json.loads((submission / "runs.json").read_text())
    array = next(a for a in record["arrays"] if a["name"] == array_name)
    per_task, per_gpu = array["runs_per_task"], array.get("runs_per_gpu", 1)
    keys = array["keys"][task * per_task : (task + 1) * per_task]
    started = time.time()
    if per_gpu == 1:
        code = _lane(record, keys, submission, task, 0)
    else:
        code = _lanes(record, [keys[i::per_gpu] for i in range(per_gpu)], submission, task)
    if code == PREEMPTED:
        target = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
        print(f"preempted: requeueing {target}", flush=True)
        subprocess.run(["scontrol", "requeue", target], check=True)
        return 0
    print(json.dumps({"task": task, "start": started, "end": time.time()}), flush=True)
    return code


def _lanes(record: dict[str, Any], lanes: list[list[str]], submission: Path, task: int) -> int:
    """Train each list of keys in its own process at the same time; the worst exit code."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=_lane_exit, args=(record, keys, submission, task, lane))
        for lane, keys in enumerate(lanes)
        if keys
    ]
    for process in processes:
        process.start()
    signal.signal(
        signal.SIGUSR1,
        lambda *_: [os.kill(p.pid, signal.SIGUSR1) for p in processes if p.is_alive()],
    )
    for process in processes:
        process.join()
    codes = {p.exitcode for p in processes}
    return PREEMPTED if PREEMPTED in codes else 1 if codes != {0} else 0


def _lane_exit(*args: Any) -> None:
    sys.exit(_lane(*args))


def _lane(record: dict[str, Any], keys: list[str], submission: Path, task: int, lane: int) -> int:
    """Train ``keys`` one after another on lane ``lane``'s device: 0 unless one failed (1)
    or training stopped on USR1 after checkpointing (PREEMPTED)."""
    import torch

    from zoo.train import STOP, Preempted

    torch.set_num_threads(1)
    pin_device(lane)
    signal.signal(signal.SIGUSR1, lambda *_: STOP.set())
    failures = 0
    for key in keys:
        job = record["payloads"][key]
        print(
            f"task {task} lane {lane} pid {os.getpid()}: {job['tags']['zoo.kind']} {key}",
            flush=True,
        )
        if job["stage_key"]:
            paths = ProjectPaths(Path(job["root"]))
            if not (paths.stage(job["stage_key"]) / "result.json").exists():
                print(
                    f"task {task}: skipped {key}: shared stage {job['stage_key']} has no "
                    "finished checkpoint",
                    flush=True,
                )
                continue
            _link_parent(job)
        try:
            status, run_id, reason = execute(job, submission / "logs" / f"{key}.log")
        except Preempted:
            return PREEMPTED
        print(f"task {task}: {status} {run_id} {reason}", flush=True)
        failures += status != "finished"
    return 1 if failures else 0


def _link_parent(job: dict[str, Any]) -> None:
    """Tag a run with the MLflow run of the shared stage it starts from."""
    if job["tags"].get("mlflow.parentRunId"):
        return
    tracker = Tracker(job["uri"], ProjectPaths(Path(job["root"])))
    found = tracker.find(tracker.experiment(job["experiment"]), job["stage_key"])
    if found is not None:
        job["tags"].update(
            {"mlflow.parentRunId": found.info.run_id, "zoo.stage_run": found.info.run_id}
        )
