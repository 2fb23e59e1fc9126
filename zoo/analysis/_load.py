"""Reading a sweep's runs straight from the tracking store into tidy tables.

MLflow's ``search_runs`` builds a Python object per run and metric and is slow
at sweep scale; zoo reads SQL stores (SQLite, PostgreSQL) with a few queries and
pivots them with pandas. An MLflow server URL is read through its REST API.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Tables", "load_tables"]

_HISTORY_KEYS = ("train_loss", "stage", "epoch_seconds", "lr")
_EPOCH_KEYS = (*_HISTORY_KEYS, "images_per_s")  # per-epoch metrics: histories, not run columns
_TAG_COLUMNS = {
    "zoo.kind": "kind",
    "zoo.error": "error",
    "zoo.stage_run": "stage_run",
    "zoo.config_hash": "config_hash",
    "zoo.sweep": "sweep",
    "zoo.stage": "stage_name",
}
_NUMBER = re.compile(r"^-?\d+(\.\d*)?([eE][-+]?\d+)?$")


@dataclass(frozen=True)
class Tables:
    runs: pd.DataFrame  # one row per run: identity, state, axes, params, summary metrics
    histories: pd.DataFrame  # run_id, key, step, value for per-epoch metrics
    axes: tuple[str, ...]  # the sweep's axis columns (from zoo.axis.* tags)


def _typed(value: str | None) -> object:
    """Axis and param values come back as text: numbers become numbers again."""
    if value is None or not _NUMBER.match(value):
        return value
    number = float(value)
    return (
        int(number)
        if number.is_integer() and "." not in value and "e" not in value.lower()
        else number
    )


def _sql_tables(uri: str, experiment: str) -> tuple[pd.DataFrame, ...] | None:
    import pandas as pd
    import sqlalchemy

    engine = sqlalchemy.create_engine(uri)
    with engine.connect() as connection:
        found = pd.read_sql(
            sqlalchemy.text("SELECT experiment_id FROM experiments WHERE name = :name"),
            connection,
            params={"name": experiment},
        )
        if found.empty:
            return None
        params = {"experiment": int(found.iloc[0, 0])}
        in_experiment = (
            "JOIN runs r ON r.run_uuid = x.run_uuid "
            "WHERE r.experiment_id = :experiment AND r.lifecycle_stage = 'active'"
        )

        def query(sql: str) -> pd.DataFrame:
            return pd.read_sql(sqlalchemy.text(sql), connection, params=params)

        runs = query(
            "SELECT run_uuid AS run_id, status, start_time, end_time FROM runs "
            "WHERE experiment_id = :experiment AND lifecycle_stage = 'active'"
        )
        tags = query(f"SELECT x.run_uuid AS run_id, x.key, x.value FROM tags x {in_experiment}")
        values = query(f"SELECT x.run_uuid AS run_id, x.key, x.value FROM params x {in_experiment}")
        latest = query(
            f"SELECT x.run_uuid AS run_id, x.key, x.value FROM latest_metrics x {in_experiment}"
        )
        keys = " OR ".join([f"x.key = '{k}'" for k in _HISTORY_KEYS] + ["x.key LIKE 'val_%'"])
        history = query(
            f"SELECT x.run_uuid AS run_id, x.key, x.step, x.value FROM metrics x "
            f"{in_experiment} AND ({keys})"
        )
    return runs, tags, values, latest, history


def _rest_tables(uri: str, experiment: str) -> tuple[pd.DataFrame, ...] | None:
    import pandas as pd
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    runs, tags, params, latest, history = [], [], [], [], []
    token = None
    while True:
        page = client.search_runs([found.experiment_id], max_results=1000, page_token=token)
        for run in page:
            run_id = run.info.run_id
            runs.append((run_id, run.info.status, run.info.start_time, run.info.end_time))
            tags += [(run_id, k, v) for k, v in run.data.tags.items()]
            params += [(run_id, k, v) for k, v in run.data.params.items()]
            latest += [(run_id, k, v) for k, v in run.data.metrics.items()]
            for key in run.data.metrics:
                if key in _HISTORY_KEYS or key.startswith("val_"):
                    history += [
                        (run_id, key, m.step, m.value)
                        for m in client.get_metric_history(run_id, key)
                    ]
        token = page.token
        if not token:
            break
    columns = ["run_id", "key", "value"]
    return (
        pd.DataFrame(runs, columns=["run_id", "status", "start_time", "end_time"]),
        pd.DataFrame(tags, columns=columns),
        pd.DataFrame(params, columns=columns),
        pd.DataFrame(latest, columns=columns),
        pd.DataFrame(history, columns=["run_id", "key", "step", "value"]),
    )


def _wide(long: pd.DataFrame, prefix: str = "") -> pd.DataFrame:
    wide = long.pivot(index="run_id", columns="key", values="value")
    return wide.add_prefix(prefix) if prefix else wide


def load_tables(uri: str, experiment: str) -> Tables | None:
    """Every active run of ``experiment`` as one row, plus per-epoch histories; None if the
    experiment does not exist."""
    import pandas as pd

    reader = _rest_tables if uri.startswith(("http://", "https://")) else _sql_tables
    found = reader(uri, experiment)
    if found is None:
        return None
    runs, tags, params, latest, history = found
    axes = tags[tags.key.str.startswith("zoo.axis.")].assign(
        key=lambda t: t.key.str.slice(len("zoo.axis.")), value=lambda t: t.value.map(_typed)
    )
    kept_tags = tags[tags.key.isin(_TAG_COLUMNS)].assign(key=lambda t: t.key.map(_TAG_COLUMNS))
    summary = latest[~latest.key.isin(_EPOCH_KEYS) & ~latest.key.str.startswith("val_")]
    table = runs.set_index("run_id").join(
        [
            _wide(kept_tags),
            _wide(axes),
            _wide(params.assign(value=params.value.map(_typed)), "param."),
            _wide(summary),
        ],
        how="left",
    )
    table = table.reset_index()
    for column in ("kind", "error", "stage_run"):
        if column not in table:
            table[column] = pd.NA
    return Tables(table, history, tuple(sorted(axes.key.unique())))
