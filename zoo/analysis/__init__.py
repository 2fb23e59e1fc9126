"""Analysis: tidy tables read straight from the store, aggregates, figures, reports, import.

Public API: :func:`load` (store -> Tables), :func:`analyze` (Tables -> files and
report.html), :func:`publish` (report -> the store, for the MLflow UI),
:func:`import_table` (CSV -> finished runs), :func:`prefetch` (the drawing and
publishing libraries, imported while the store is read).
"""

from zoo.analysis._columns import higher_is_better
from zoo.analysis._figures import FIGURES, figure
from zoo.analysis._import import ImportMapping, import_table, load_mapping, table_runs
from zoo.analysis._load import Tables, load_tables
from zoo.analysis._prefetch import prefetch
from zoo.analysis._publish import publish
from zoo.analysis._report import Analysis, analyze, load, load_definition
from zoo.analysis._tidy import (
    HEADLINES,
    Definition,
    aggregate,
    apply_offset,
    headline,
    prepare,
    run_tasks,
    table_task,
)

__all__ = [
    "FIGURES",
    "HEADLINES",
    "Analysis",
    "Definition",
    "ImportMapping",
    "Tables",
    "aggregate",
    "analyze",
    "apply_offset",
    "figure",
    "headline",
    "higher_is_better",
    "import_table",
    "load",
    "load_definition",
    "load_mapping",
    "load_tables",
    "prefetch",
    "prepare",
    "publish",
    "run_tasks",
    "table_runs",
    "table_task",
]
