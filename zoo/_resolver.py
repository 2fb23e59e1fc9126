"""What resolving a run config may read, handed down explicitly instead of found in the
process: the project (its root names relative ``path:`` datasets and ``init: file:``
weights) and the store that ``init: run:`` and ``init: model:`` references are identified
in. The CLI and the executors build one; configs carry the one that resolved them. Config
identities read files and the store through it alone."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zoo.errors import ConfigError
from zoo.paths import ProjectPaths

__all__ = ["Resolver"]


@dataclass(frozen=True)
class Resolver:
    """The project root and store a config is resolved against; picklable, so a worker
    process resolves exactly as its parent did."""

    paths: ProjectPaths
    store: str | None = None  # tracking URI; None: $MLFLOW_TRACKING_URI or the project's mlflow.db
    # the identity of an init: run:/model: reference, (resolver, kind, target, where) -> str,
    # from the store side (zoo.modelzoo.store_resolver); None: such references are refused
    identify: Callable[[Resolver, str, str, str], str] | None = field(default=None, repr=False)

    @property
    def root(self) -> Path:
        return self.paths.root

    @classmethod
    def here(cls) -> Resolver:
        """The project this process runs in (``$ZOO_ROOT`` or the working directory),
        without a store: for callers at the top (tests, notebooks); zoo's CLI and
        executors pass their own."""
        return cls(ProjectPaths.default())

    def init_file(self, init: str) -> Path | None:
        """The weights file of an ``init: file:PATH`` (relative to the root), else None."""
        kind, _, target = init.partition(":")
        return self.root / target if kind == "file" else None

    def init_file_hash(self, init: str, where: str) -> str:
        """The content hash of the weights an ``init: file:`` names; a ConfigError naming
        ``where`` when that is not a readable file."""
        from zoo.data import file_hash
        from zoo.errors import DataError

        path = self.init_file(init)
        if path is None or not path.is_file():
            raise ConfigError(f"{where}: {init!r} is not allowed; {path} is not a file")
        try:
            return file_hash(path)[:16]
        except DataError as error:
            raise ConfigError(f"{where}: {error}") from None

    def dataset_content(self, source: Any) -> str:
        """The content digest of a folder or HDF5 dataset (a zoo.data.FileSpec) under the
        root: its files' hashes, cached by path, size and mtime."""
        from zoo.data import content_digest

        return content_digest(source, self.root)

    def init_identity(self, kind: str, target: str, where: str) -> str:
        """The identity of the run an ``init: run:``/``model:`` reference names; a
        ConfigError naming ``where`` when it names none or there is no store to ask."""
        if self.identify is None:
            raise ConfigError(
                f"{where}: '{kind}:{target}' is not allowed; no store to identify it in"
            )
        return self.identify(self, kind, target, where)
