"""Sweeps and searches: specs expanded into jobs, planned with shared stages, run by an
executor (local processes or SLURM arrays) behind one interface.

Public API: :func:`load_spec`, :func:`make_plan`, :func:`run_sweep`, :func:`sweep_status`,
:class:`JobSpec`, :func:`run_job`, :class:`Executor` and its backends.
"""

from zoo.sweep._executor import Executor, SweepReport
from zoo.sweep._job import JobResult, JobSpec, job_tags, jobs_from_plan, run_job
from zoo.sweep._local import LocalExecutor, check_placement, run_sweep, start_worker_server
from zoo.sweep._plan import (
    Job,
    Plan,
    check_plan,
    format_report,
    make_plan,
    report,
    show_run,
)
from zoo.sweep._rehearsal import rehearsal
from zoo.sweep._search import is_search
from zoo.sweep._spec import SweepSpec, expand, load_spec, with_execution
from zoo.sweep._status import format_status, sweep_status

__all__ = [
    "Executor",
    "Job",
    "JobResult",
    "JobSpec",
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
    "make_plan",
    "rehearsal",
    "report",
    "run_job",
    "run_sweep",
    "show_run",
    "start_worker_server",
    "sweep_status",
    "with_execution",
]
