"""Sweeps: specs expanded into runs, planned with shared stages, executed locally.

Public API: :func:`load_spec`, :func:`make_plan`, :func:`run_sweep`, :func:`sweep_status`.
"""

from zoo.sweep._local import SweepReport, job_tags, run_sweep
from zoo.sweep._plan import (
    Job,
    Plan,
    check_plan,
    format_report,
    make_plan,
    measure_images_per_s,
    report,
)
from zoo.sweep._spec import SweepSpec, expand, load_spec
from zoo.sweep._status import format_status, sweep_status

__all__ = [
    "Job",
    "Plan",
    "SweepReport",
    "SweepSpec",
    "check_plan",
    "expand",
    "format_report",
    "format_status",
    "job_tags",
    "load_spec",
    "make_plan",
    "measure_images_per_s",
    "report",
    "run_sweep",
    "sweep_status",
]
