"""Sweeps and searches: specs expanded into jobs, planned with shared stages, run by an
executor (local processes or SLURM arrays) behind one interface.

Public API: :func:`load_spec`, :func:`make_plan`, :func:`run_sweep`, :func:`sweep_status`,
:class:`Job`, :func:`run_job`, :class:`Executor`, its :class:`JobHandle` and its
backends, chosen by name (:func:`make_executor`; a new one: :func:`register_executor`).
"""

from zoo.sweep._backends import (
    EXECUTORS,
    make_executor,
    register_executor,
    run_plan,
    submit_plan,
)
from zoo.sweep._executor import Executor, JobHandle, JobState, SweepReport
from zoo.sweep._job import Job, JobResult, job_tags, run_job
from zoo.sweep._local import LocalExecutor, check_placement, run_sweep, start_worker_server
from zoo.sweep._plan import (
    Plan,
    check_plan,
    format_report,
    jobs_from_plan,
    make_plan,
    report,
    show_run,
)
from zoo.sweep._rehearsal import rehearsal
from zoo.sweep._search import is_search
from zoo.sweep._spec import SweepSpec, expand, load_spec, with_execution
from zoo.sweep._status import format_status, sweep_status

__all__ = [
    "EXECUTORS",
    "Executor",
    "Job",
    "JobHandle",
    "JobResult",
    "JobState",
    "LocalExecutor",
    "Plan",
    "SweepReport",
    "SweepSpec",
    "check_placement",
    "check_plan",
    "expand",
    "format_report",
    "format_status",
    "is_search",
    "job_tags",
    "jobs_from_plan",
    "load_spec",
    "make_executor",
    "make_plan",
    "register_executor",
    "rehearsal",
    "report",
    "run_job",
    "run_plan",
    "run_sweep",
    "show_run",
    "start_worker_server",
    "submit_plan",
    "sweep_status",
    "with_execution",
]
