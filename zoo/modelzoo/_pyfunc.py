"""zoo's models as MLflow models: the ``python_function`` flavor written as a model from
code (``zoo/resources/pyfunc_model.py``), its artifacts the safetensors weights and the
resolved config.yaml; nothing is pickled. ``predict`` takes a batch of images at the
model's pixel size, (N, H, W) for one input channel or (N, C, H, W), and returns what
``zoo predict`` writes: masks (N, H, W, uint8) or class probabilities of a segmentation
model, the outputs (N, K, H, W, float32) of a regression model."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from torch import nn

    from zoo.config import RunConfig

__all__ = ["MLFLOW_FOLDER", "ZooPredictor", "outputs", "predictable", "save_pyfunc"]

MLFLOW_FOLDER = "mlflow-model"  # the run artifact a registered version's MLflow model is in
CODE = "pyfunc_model.py"  # in zoo.resources
# what predict returns, by params["output"]: a segmentation model's masks (its default) or
# probabilities; a regression model's outputs
OUTPUTS = {"segmentation": ("masks", "probabilities"), "regression": ("outputs",)}


def predictable(config: RunConfig) -> bool:
    """Whether the MLflow model takes this model: any task, any channels, scaled without
    its training set's statistics (``per_dataset`` needs the dataset, not in the model)."""
    return config.model.input_scaling != "per_dataset"


def outputs(module: nn.Module, config: RunConfig, images: np.ndarray) -> np.ndarray:
    """Float32 outputs (N, K, H, W) of images (N, C, H, W), as ``zoo predict`` computes
    them for images at the model's pixel size (the one call into zoo.predict)."""
    from zoo.predict import apply_all, bundle

    found = np.zeros((len(images), config.model.classes, *images.shape[2:]), np.float32)
    apply_all(bundle(module, config), images, found)
    return found


class ZooPredictor:
    """What MLflow's model runs (zoo.store's Predictor), built by zoo's model factory from
    the version's artifacts: a segmentation model's masks (N, H, W, uint8), or with
    ``params={"output": "probabilities"}`` its class probabilities (N, K, H, W, float32);
    a regression model's outputs (N, K, H, W, float32)."""

    def load(self, artifacts: dict[str, str]) -> None:
        import torch
        from safetensors.torch import load_file

        from zoo.models import create_model
        from zoo.modelzoo._load import read_config

        self.config = read_config(Path(artifacts["config"]))
        module = create_model(self.config.model)
        module.load_state_dict(load_file(artifacts["weights"]))
        device = "cuda" if torch.cuda.is_available() else "cpu"  # as zoo predict's auto
        self.module = module.to(device).eval()

    def predict(self, model_input: np.ndarray, params: dict | None) -> np.ndarray:
        """Outputs of a batch; RefusedInput names images or an output it does not take."""
        from zoo.predict import masks
        from zoo.store._pyfunc import RefusedInput

        model = self.config.model
        images = np.asarray(model_input, dtype=np.float32)
        images = images[:, None] if images.ndim == 3 and model.in_channels == 1 else images
        allowed = OUTPUTS[model.task]
        output = (params or {}).get("output") or allowed[0]
        if images.ndim != 4 or images.shape[1] != model.in_channels or output not in allowed:
            raise RefusedInput(
                f"images of shape {tuple(np.shape(model_input))}, output {output!r}; expected "
                f"images (N, {model.in_channels}, H, W)"
                + (" or (N, H, W)" if model.in_channels == 1 else "")
                + f" and output one of {', '.join(allowed)}"
            )
        found = outputs(self.module, self.config, images)
        return masks(found) if output == "masks" else found


def _signature(config: RunConfig) -> Any:
    """Images (N, H, W) for one input channel, else (N, C, H, W); masks (N, H, W) of a
    segmentation model, else outputs (N, K, H, W)."""
    from zoo.store import tensor_signature

    model = config.model
    shape = (-1, -1, -1) if model.in_channels == 1 else (-1, model.in_channels, -1, -1)
    returned = (
        (np.dtype(np.uint8), (-1, -1, -1))
        if model.task == "segmentation"
        else (np.dtype(np.float32), (-1, model.classes, -1, -1))
    )
    return tensor_signature(
        (np.dtype(np.float32), shape), returned, {"output": OUTPUTS[model.task][0]}
    )


def _requirements() -> list[str]:
    """Pinned distributions the model needs besides zoo itself (not on PyPI)."""
    from importlib.metadata import version

    names = ("mlflow", "torch", "numpy", "safetensors", "segmentation-models-pytorch", "timm")
    return [f"{name}=={version(name)}" for name in names]


def save_pyfunc(weights: Path, config: Path, out: Path) -> Path:
    """Write the MLflow model of zoo's ``weights`` (safetensors) and resolved ``config``
    (config.yaml) into the new folder ``out``; returns it."""
    from zoo.modelzoo._load import read_config
    from zoo.store import save_python_model

    artifacts = {"weights": str(weights), "config": str(config)}
    signature = _signature(read_config(config))
    with resources.as_file(resources.files("zoo.resources") / CODE) as code:
        return save_python_model(out, code, artifacts, signature, _requirements())
