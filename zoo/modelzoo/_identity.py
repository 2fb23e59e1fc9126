"""The store side of config resolution: what an ``init: run:`` or ``init: model:``
reference is, found in the tracking store (zoo.config asks through a Resolver and never
opens a store itself)."""

from __future__ import annotations

import functools

from zoo._resolver import Resolver
from zoo.errors import ConfigError
from zoo.paths import ProjectPaths

__all__ = ["check_point", "init_identity", "store_resolver"]


def store_resolver(paths: ProjectPaths, store: str | None = None) -> Resolver:
    """A Resolver for the project at ``paths`` that identifies ``init: run:``/``model:``
    references in the store at ``store`` (None: ``$MLFLOW_TRACKING_URI`` or the
    project's mlflow.db, chosen when a reference is first identified)."""
    return Resolver(paths, store, identify=init_identity)


def init_identity(resolver: Resolver, kind: str, target: str, where: str) -> str:
    """The identity of the run ``kind:target`` names in ``resolver``'s store."""
    from zoo.store import tracking_uri

    uri = tracking_uri(resolver.store, resolver.paths)
    return _run_identity(uri, resolver.paths, kind, target, where)


@functools.lru_cache(maxsize=256)
def _run_identity(uri: str, paths: ProjectPaths, kind: str, target: str, where: str) -> str:
    """The identity of the run ``target`` names in the store at ``uri`` (its
    ``zoo.config_hash`` tag, else the sha256 of its weights), with its ``@STAGE`` or
    ``@epoch:N`` suffix; a run that does not exist is a ConfigError naming ``where``.
    Weights are downloaded into project ``paths``."""
    from zoo.store import CONFIG_HASH_TAG, StoreError, Tracker

    run_id, _, at = target.partition("@") if kind == "run" else (target, "", "")
    init = f"{kind}:{target}"
    try:
        tracker = Tracker(uri, paths, create=False)
        if kind == "model":
            from zoo.modelzoo._ref import resolve_ref

            run_id = resolve_ref(target, uri).run_id
        run = tracker.get_run(run_id)
    except (ConfigError, StoreError) as error:
        reason = str(error).splitlines()[0] if kind == "model" else f"no run {run_id!r}"
        raise ConfigError(f"{where}: {init!r} is not allowed; {reason} in {uri}") from None
    if at:
        check_point(run.data.params, at, f"{where}: {init!r} is not allowed;")
    identity = run.data.tags.get(CONFIG_HASH_TAG)
    if identity is None:  # not made by zoo: the weights it gives
        from zoo.data import file_hash
        from zoo.modelzoo._files import fetch_weights

        identity = file_hash(fetch_weights(run_id if kind == "run" else target, tracker))[:16]
    return f"{identity}@{at}" if at else identity


def check_point(params: dict[str, str], point: str, refused: str) -> None:
    """Refuse a ``@STAGE``, ``@epoch:N`` or ``@iter:K`` the run (by its logged params) does
    not have."""
    if point.startswith("iter:"):
        from zoo._refine_config import check_iteration

        return check_iteration(params, int(point.removeprefix("iter:")), refused)
    stages = []
    while f"stages.{len(stages)}.name" in params:
        at = len(stages)
        stages.append((params[f"stages.{at}.name"], int(params[f"stages.{at}.epochs"])))
    if not stages:
        raise ConfigError(f"{refused} the run was not trained by zoo (it has no stages)")
    if point.startswith("epoch:"):
        epoch, first = int(point.removeprefix("epoch:")), 0
        for at, (_, epochs) in enumerate(stages):
            kept = params.get(f"stages.{at}.keep_epochs", "").lower() == "true"
            if epoch <= first + epochs:
                if epoch < first + epochs and not kept:
                    raise ConfigError(
                        f"{refused} its stage {at} kept only its last epoch "
                        f"({first + epochs}; keep_epochs: true keeps every one)"
                    )
                return
            first += epochs
        raise ConfigError(f"{refused} the run trained {first} epochs")
    elif point not in (name for name, _ in stages):
        raise ConfigError(
            f"{refused} no stage {point!r}; the run has " + ", ".join(n for n, _ in stages)
        )
