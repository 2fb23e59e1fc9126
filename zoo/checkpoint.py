"""Stage checkpoints: one safetensors file holding weights, optimizer state and progress.

Each file is written to a temporary name, fsync'd and renamed (and its folder
fsync'd), so a process killed at any point, or a full disk, leaves either the
previous checkpoint or the new one, never half. A checkpoint keeps the one
before it beside it (``previous_path``). Loading verifies the file; a damaged
one raises CheckpointError. Nothing here unpickles: weights and optimizer
tensors are safetensors, the rest is JSON in the file's metadata.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, safe_open, save_file

from zoo._disk import raise_if_full

__all__ = [
    "BackgroundWrites",
    "CheckpointError",
    "atomic_write_text",
    "checkpoint_record",
    "load_checkpoint",
    "load_weights",
    "previous_path",
    "reissue",
    "save_weights",
    "set_aside",
    "weights_digest",
    "weights_problem",
]


log = logging.getLogger(__name__)


class CheckpointError(Exception):
    """A checkpoint file is damaged or does not fit the model; the message names it."""


def previous_path(path: Path) -> Path:
    """Where the checkpoint before ``path`` is kept."""
    return path.with_name(f"previous.{path.name}")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _commit(tmp: Path, path: Path, keep_previous: bool = False) -> None:
    """fsync ``tmp``, rename it to ``path`` (the old ``path`` kept as previous_path when
    asked), fsync the folder."""
    _fsync(tmp)
    if keep_previous and path.exists():
        os.replace(path, previous_path(path))
    os.replace(tmp, path)
    _fsync(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so a reader sees the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
    except OSError as error:  # a full disk: the partial file goes; the error names the bytes
        tmp.unlink(missing_ok=True)
        raise_if_full(error, path, len(text.encode()))
        raise
    _commit(tmp, path)


def set_aside(path: Path) -> Path:
    """Rename a damaged file out of the way (kept for inspection); returns its new name."""
    target = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
    os.replace(path, target)
    return target


def _atomic_save(
    tensors: dict[str, torch.Tensor],
    path: Path,
    metadata: dict[str, str],
    keep_previous: bool = False,
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    host = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    try:
        save_file(host, tmp, metadata)
    except Exception as error:  # a full disk: the partial file goes; the error names the bytes
        tmp.unlink(missing_ok=True)
        raise_if_full(error, path, sum(t.nbytes for t in host.values()))
        raise
    _commit(tmp, path, keep_previous)


def save_weights(model: torch.nn.Module, path: Path) -> None:
    """The model's parameters and buffers (batch-norm statistics included)."""
    _atomic_save(model.state_dict(), path, {"format": "pt"})


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a safetensors file, or from a ``.pt`` file with weights_only=True."""
    if path.suffix == ".safetensors":
        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)


def weights_digest(path: Path) -> str:
    """sha256 of a weights file's bytes (recorded when a stage finishes, checked on reuse)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_problem(path: Path, recorded: str) -> str | None:
    """None when ``path`` holds the bytes whose digest was ``recorded``, else one line
    naming the file and what is wrong with it. A file this process verified is read again
    only when its inode, size, modification or change time differ."""
    try:
        stat = path.stat()
        key = (str(path), stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
        found = _VERIFIED.get(key) or weights_digest(path)
    except OSError as error:
        return f"{path}: unreadable weights ({type(error).__name__})"
    if found != recorded:
        return f"{path}: damaged weights (content changed)"
    _VERIFIED[key] = found
    return None


_VERIFIED: dict[tuple, str] = {}  # (path, inode, size, mtime, ctime) -> sha256 seen


def reissue(source: Path, target: Path, record: dict[str, Any]) -> dict[str, Any]:
    """Copy the checkpoint ``source`` to ``target`` under a new ``record`` (a longer stage
    continuing a shorter one's final state); returns its progress. A damaged ``source``
    raises CheckpointError and nothing is written."""
    metadata, tensors = _read(source)
    _atomic_save(tensors, target, {**metadata, "record": json.dumps(record)})
    return json.loads(metadata["progress"])


def _checkpoint_parts(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    progress: dict[str, Any],
    record: dict[str, Any] | None,
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    state = optimizer.state_dict()
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    scalars: dict[str, dict[str, Any]] = {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{index}.{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    tensors["rng"] = torch.get_rng_state()
    metadata = {
        "progress": json.dumps(progress),
        "param_groups": json.dumps(state["param_groups"]),
        "optim_scalars": json.dumps(scalars),
        "record": json.dumps(record),
    }
    return tensors, metadata


class BackgroundWrites:
    """Weights and checkpoints written in the order given by one thread, while training
    goes on (a context manager). What is handed over is copied at once, so training may
    change it; at most two copies wait, so a slow disk slows training rather than
    filling memory. A failed write is raised at the next hand-over and on leaving the
    context (which first waits for every file); when another exception leaves the
    context, the failed write is logged with it."""

    def __init__(self) -> None:
        import queue
        import threading

        self._queue: queue.Queue = queue.Queue(maxsize=2)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="zoo-checkpoints", daemon=True)

    def __enter__(self) -> BackgroundWrites:
        self._thread.start()
        return self

    def __exit__(self, kind: type | None, *_: object) -> None:
        self._queue.put(None)
        self._thread.join()
        if self._error is not None and kind is None:
            raise self._error
        if self._error is not None:
            log.error("zoo: a checkpoint write failed: %s", self._error)

    def weights(self, model: torch.nn.Module, path: Path) -> None:
        """``save_weights(model, path)``, in the background."""
        self._hand_over((_copied(model.state_dict()), path, {"format": "pt"}, False))

    def checkpoint(
        self,
        path: Path,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        progress: dict[str, Any],
        record: dict[str, Any] | None = None,
    ) -> None:
        """Weights, optimizer state, torch RNG state, ``progress`` and ``record`` (what
        made it: JSON-ready) in one file at ``path``, written in the background; the
        checkpoint it replaces is kept as previous_path."""
        tensors, metadata = _checkpoint_parts(model, optimizer, progress, record)
        self._hand_over((_copied(tensors), path, metadata, True))

    def _hand_over(self, item: tuple) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(item)

    def _loop(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is None:  # after a failed write, later ones would mislead
                try:
                    _atomic_save(*item)
                except BaseException as error:
                    self._error = error


def _copied(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Host copies of ``tensors`` (from any device), owned by the caller."""
    return {k: v.detach().to("cpu", copy=True) for k, v in tensors.items()}


def _read(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """Metadata and tensors of a checkpoint; a damaged file is a CheckpointError."""
    try:
        with safe_open(path, framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
        parsed = {k: json.loads(metadata[k]) for k in ("progress", "param_groups", "optim_scalars")}
    except Exception as error:  # truncated, garbled or foreign: one line naming the file
        raise CheckpointError(f"{path}: damaged checkpoint ({type(error).__name__})") from None
    if "rng" not in tensors or not isinstance(parsed["progress"], dict):
        raise CheckpointError(f"{path}: damaged checkpoint (incomplete)")
    return metadata, tensors


def checkpoint_record(path: Path) -> Any:
    """The record saved with a checkpoint (None for older ones); damaged: CheckpointError."""
    metadata, _ = _read(path)
    return json.loads(metadata.get("record", "null"))


def load_checkpoint(
    path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> dict[str, Any]:
    """Restore ``model`` and ``optimizer`` from ``path``; returns the saved progress.

    A damaged file, or one whose tensors do not fit ``model``, raises CheckpointError
    before ``model`` or ``optimizer`` is changed.
    """
    metadata, tensors = _read(path)
    weights = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    expected = model.state_dict()
    if set(weights) != set(expected) or any(
        weights[k].shape != v.shape for k, v in expected.items()
    ):
        raise CheckpointError(f"{path}: checkpoint does not fit the model")
    model.load_state_dict(weights)
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    for index, values in json.loads(metadata["optim_scalars"]).items():
        state.setdefault(int(index), {}).update(values)
    optimizer.load_state_dict(
        {"state": state, "param_groups": json.loads(metadata["param_groups"])}
    )
    torch.set_rng_state(tensors["rng"])
    return json.loads(metadata["progress"])
