"""zoo: an experiment-tracking model zoo for large training sweeps."""

from zoo._version import __version__ as __version__


def load_model(ref: str, tracking_uri: str | None = None, device: str = "cpu"):
    """(module, resolved run config) of a trained model: a run id, a registered
    ``NAME@alias`` or ``NAME/version``, or a query ``EXPERIMENT[:AXIS=VALUE,...]``.
    Weights are safetensors and the config YAML; nothing is unpickled. Imports torch
    only when called."""
    from zoo.modelzoo import load_model as _load_model

    return _load_model(ref, tracking_uri, device)
