"""MLflow's ``python_function`` flavour, the one place zoo meets MLflow's model API: a
model written as code whose predictions come from a zoo predictor, its signature, and
saving it. The predictor knows nothing of MLflow: it loads from the version's artifact
paths and raises :class:`RefusedInput` for input it does not take, which MLflow answers
as an invalid parameter (any other error stays an error of the model)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np
from mlflow.pyfunc import PythonModel

__all__ = ["Predictor", "RefusedInput", "save_python_model", "serve", "tensor_signature"]


class RefusedInput(ValueError):
    """Input a predictor does not take (its message names what it expects)."""


class Predictor(Protocol):
    """What a zoo model does inside MLflow."""

    def load(self, artifacts: dict[str, str]) -> None:
        """Build the model from the version's artifacts (name -> local path)."""

    def predict(self, images: np.ndarray, params: dict | None) -> np.ndarray:
        """Outputs of a batch; RefusedInput names input the model does not take."""


class _Flavour(PythonModel):
    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor

    def load_context(self, context: Any) -> None:
        self.predictor.load(dict(context.artifacts))

    def predict(
        self, context: Any, model_input: np.ndarray, params: dict | None = None
    ) -> np.ndarray:  # MLflow reads the hints: np.ndarray asks for no schema inference
        from mlflow.exceptions import MlflowException

        try:
            return self.predictor.predict(model_input, params)
        except RefusedInput as error:
            raise MlflowException.invalid_parameter_value(str(error)) from None


def serve(predictor: Predictor) -> None:
    """Make ``predictor`` the model of the code file MLflow is loading."""
    from mlflow.models import set_model

    set_model(_Flavour(predictor))


def tensor_signature(
    inputs: tuple[np.dtype, tuple[int, ...]],
    outputs: tuple[np.dtype, tuple[int, ...]],
    params: dict[str, str],
) -> Any:
    """A signature of one input tensor, one output tensor (dtype, shape; -1 for any) and
    string parameters with their defaults."""
    from mlflow.models import ModelSignature
    from mlflow.types import ParamSchema, ParamSpec, Schema, TensorSpec

    return ModelSignature(
        inputs=Schema([TensorSpec(*inputs)]),
        outputs=Schema([TensorSpec(*outputs)]),
        params=ParamSchema([ParamSpec(k, "string", v) for k, v in params.items()]),
    )


def save_python_model(
    out: Path, code: Path, artifacts: dict[str, str], signature: Any, requirements: list[str]
) -> Path:
    """Write the MLflow model of ``code`` (a file calling :func:`serve`) with its
    ``artifacts`` into the new folder ``out``; returns it."""
    import warnings

    import mlflow.pyfunc

    with warnings.catch_warnings():  # the signature is given: no input example is wanted
        warnings.filterwarnings("ignore", ".*input example", UserWarning)
        mlflow.pyfunc.save_model(
            path=str(out),
            python_model=str(code),
            artifacts=artifacts,
            signature=signature,
            pip_requirements=requirements,
        )
    return out
