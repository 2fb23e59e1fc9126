"""Segmentation models: an architecture registry, one factory, freezing and parameter counts.

Every model is a segmentation-models-pytorch model built with
``encoder_weights=None`` (nothing is downloaded). A model has three parts:
``encoder``, ``decoder`` and ``head`` (the final convolution, smp's
``segmentation_head``). Freezing ``encoder`` or ``decoder`` freezes that part's
weights and batch-norm running statistics; the head is never frozen, so every
stage can adapt the output layer. A model's config is a zoo.config.ModelConfig (typed Any
here, so zoo.config may check architectures against this registry without a circle).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "ARCHITECTURES",
    "check_buildable",
    "check_encoder",
    "create_model",
    "freeze",
    "meta_model",
    "meta_template",
    "parameter_counts",
    "set_train_mode",
]

ARCHITECTURES = {"unet": "Unet", "unetplusplus": "UnetPlusPlus", "fpn": "FPN"}


def check_encoder(name: str, where: str = "config.model.encoder") -> None:
    """Refuse an encoder that neither segmentation-models-pytorch nor timm (``tu-NAME``)
    knows, naming the closest known names."""
    import difflib

    import segmentation_models_pytorch as smp

    from zoo.errors import ConfigError

    if name.startswith("tu-"):
        import timm

        if timm.is_model(name[3:]):
            return
        known = ["tu-" + n for n in timm.list_models()]
    else:
        known = list(smp.encoders.get_encoder_names())
        if name in known:
            return
    close = difflib.get_close_matches(name, known, n=4, cutoff=0.5)
    hint = f"closest: {', '.join(close)}" if close else "an smp encoder name or tu-<timm model>"
    raise ConfigError(f"{where}: {name!r} is not a known encoder; {hint}")


def create_model(config: Any) -> nn.Module:
    """A randomly initialised model for ``config`` (seed torch first for reproducibility)."""
    import segmentation_models_pytorch as smp

    from zoo.errors import ConfigError

    kwargs = {
        "encoder_name": config.encoder,
        "encoder_weights": None,
        "in_channels": config.in_channels,
        "classes": config.classes,
        "encoder_depth": config.encoder_depth,
    }
    if config.arch == "fpn":
        kwargs["decoder_segmentation_channels"] = config.decoder_channels[-1]
    else:
        kwargs["decoder_channels"] = config.decoder_channels
    try:
        model = getattr(smp, ARCHITECTURES[config.arch])(**kwargs)
    except (KeyError, ValueError, RuntimeError) as error:
        raise ConfigError(f"model.encoder: {config.encoder!r} cannot be built ({error})") from None
    _drop_unused_stages(model.encoder, config.encoder_depth)
    if config.output == "residual":
        model.register_forward_hook(_residual(config.reference_channel))
    return model


def meta_model(config: Any) -> nn.Module:
    """A fresh copy of ``config``'s model on the meta device, to load weights into with
    ``assign=True``. Leaves torch's random stream as it was (a plain build draws from
    it: smp initialises a re-shaped first convolution on the CPU): the model is built
    once per process, the stream saved and restored around the build, then copied.
    Refuses an unbuildable ``config`` as ``create_model`` does."""
    import copy

    return copy.deepcopy(meta_template(config))


def check_buildable(config: Any) -> None:
    """Refuse ``config`` in one line (ConfigError) when its model cannot be built; the
    meta-device build is kept for ``meta_model``, so a process builds it once."""
    meta_template(config)


@functools.lru_cache(maxsize=64)
def meta_template(config: Any) -> nn.Module:
    """The meta-device model ``meta_model`` copies, built once per process (see there).
    Shared by every caller: copy it, never change it."""
    import torch

    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        return create_model(config)


def _residual(channel: int):
    """A forward hook adding input channel ``channel`` to every output channel (the weights
    and their names stay those of the plain model)."""

    def hook(module: nn.Module, inputs: tuple, output):
        return output + inputs[0][:, channel : channel + 1]

    return hook


def _drop_unused_stages(encoder: nn.Module, depth: int) -> None:
    """Replace encoder stages deeper than ``depth`` (built by smp but never run) by Identity,
    so a shallow encoder's checkpoints hold only the weights it uses."""
    from torch import nn

    get_stages = getattr(encoder, "get_stages", None)
    if get_stages is None:
        return
    unused = {
        id(m) for stride, modules in get_stages().items() if stride > 2**depth for m in modules
    }
    for name, child in list(encoder.named_children()):
        if id(child) in unused:
            setattr(encoder, name, nn.Identity())


def _part(model: nn.Module, name: str) -> nn.Module:
    return model.segmentation_head if name == "head" else getattr(model, name)


def freeze(model: nn.Module, part: str) -> None:
    """Stop gradients to ``part`` ("encoder", "decoder" or "none"); see set_train_mode for BN."""
    for name in ("encoder", "decoder", "head"):
        for parameter in _part(model, name).parameters():
            parameter.requires_grad_(name != part)


def set_train_mode(model: nn.Module, frozen: str) -> None:
    """Training mode, except the frozen part, whose batch-norm statistics must not move."""
    model.train()
    if frozen != "none":
        _part(model, frozen).eval()


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(total, trainable) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    return total, sum(p.numel() for p in model.parameters() if p.requires_grad)
