"""Stage checkpoints: one safetensors file holding weights, optimizer state and progress.

Each file is written to a temporary name and renamed, so a process killed at
any point leaves either the previous checkpoint or the new one, never half.
Nothing here unpickles: weights and optimizer tensors are safetensors, the
rest is JSON in the file's metadata.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, safe_open, save_file

__all__ = ["load_checkpoint", "load_weights", "save_checkpoint", "save_weights"]


def _atomic_save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata)
    os.replace(tmp, path)


def save_weights(model: torch.nn.Module, path: Path) -> None:
    """The model's parameters and buffers (batch-norm statistics included)."""
    _atomic_save(model.state_dict(), path, {"format": "pt"})


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a safetensors file, or from a ``.pt`` file with weights_only=True."""
    if path.suffix == ".safetensors":
        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)


def save_checkpoint(
    path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, progress: dict[str, Any]
) -> None:
    """Weights, optimizer state, torch RNG state and ``progress`` (JSON-ready) in one file."""
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
    }
    _atomic_save(tensors, path, metadata)


def load_checkpoint(
    path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> dict[str, Any]:
    """Restore ``model`` and ``optimizer`` from ``path``; returns the saved progress."""
    with safe_open(path, framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
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
