"""Loss registry: each loss knows how to score a model output, its task and its own floor.

The floor is the smallest loss the head can reach. A softmax head feeding
cross-entropy (the paper's set-up) cannot reach 0: with C classes the best
output is a one-hot probability vector, whose cross-entropy read as logits is
log(1 + (C - 1)/e), 0.31326 for two classes. Adjusted loss = loss - floor.

A stage's ``loss`` is one registered name or a weighted sum of names of the same
task, ``{mse: 1.0, ssim: 0.1}``, whose floor is the weighted sum of the floors.
Regression losses compare float outputs and targets of shape (B, C, H, W): MSE, L1
and smooth L1 from torch, SSIM and MS-SSIM from pytorch-msssim (as 1 - index, with
the data range of each batch's targets), all with floor 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch

__all__ = [
    "LOSSES",
    "Loss",
    "LossSpec",
    "apply_head",
    "check_loss",
    "loss_floor",
    "loss_task",
    "make_loss",
    "ms_ssim_window",
]

LossSpec = str | Mapping[str, float]  # a name, or name -> weight


def apply_head(logits: torch.Tensor, head: str) -> torch.Tensor:
    """The model's output: softmax probabilities for ``softmax``, raw logits otherwise."""
    return logits.softmax(dim=1) if head == "softmax" else logits


def _cross_entropy(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    import torch.nn.functional as F

    return F.cross_entropy(output.float(), target.long())


def _cross_entropy_floor(head: str, classes: int) -> float:
    return math.log(1 + (classes - 1) / math.e) if head == "softmax" else 0.0


def _zero_floor(head: str, classes: int) -> float:
    return 0.0


def _like(target: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    """``target`` in float32 with the output's channel axis ((B, H, W) -> (B, 1, H, W))."""
    return target.float().unsqueeze(1) if target.dim() == output.dim() - 1 else target.float()


def _pointwise(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    def compute(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F

        return getattr(F, name)(output.float(), _like(target, output))

    return compute


def data_range(target: torch.Tensor) -> float:
    """The value range of a batch of targets (max - min, at least 1e-8): SSIM's L."""
    return max(float(target.detach().amax() - target.detach().amin()), 1e-8)


def _ssim(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    from pytorch_msssim import ssim

    y = _like(target, output)
    return 1 - ssim(output.float(), y, data_range=data_range(y), size_average=True)


def ms_ssim_window(side: int) -> int:
    """The Gaussian window of MS-SSIM on images whose smaller side is ``side``: 11 (the
    standard) where it fits the 4 downsamplings, else the largest odd one that does (an
    image needs side > 16·(window - 1); at least 3, so 33 px and up)."""
    window = min(11, (side - 1) // 16 + 1)
    window -= 1 - window % 2
    if window < 3:
        raise ValueError(f"ms_ssim needs images larger than 32 px; got {side} px")
    return window


def _ms_ssim(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    from pytorch_msssim import ms_ssim

    y = _like(target, output)
    window = ms_ssim_window(min(y.shape[-2:]))
    return 1 - ms_ssim(
        output.float(), y, data_range=data_range(y), size_average=True, win_size=window
    )


@dataclass(frozen=True)
class Loss:
    compute: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (output, target) -> mean
    floor: Callable[[str, int], float]  # (head, classes) -> smallest reachable loss
    task: Literal["segmentation", "regression"] = "segmentation"  # what its targets are
    min_size: int = 1  # smallest image side it accepts


LOSSES: dict[str, Loss] = {
    "cross_entropy": Loss(_cross_entropy, _cross_entropy_floor),
    "mse": Loss(_pointwise("mse_loss"), _zero_floor, "regression"),
    "l1": Loss(_pointwise("l1_loss"), _zero_floor, "regression"),
    "smooth_l1": Loss(_pointwise("smooth_l1_loss"), _zero_floor, "regression"),
    "ssim": Loss(_ssim, _zero_floor, "regression", 11),
    "ms_ssim": Loss(_ms_ssim, _zero_floor, "regression", 33),
}


def _terms(spec: LossSpec) -> dict[str, float]:
    return {spec: 1.0} if isinstance(spec, str) else dict(spec)


def check_loss(spec: LossSpec, where: str) -> None:
    """Refuse unknown names, weights <= 0 and sums mixing tasks (a one-line ConfigError)."""
    from zoo._typed import check

    terms = _terms(spec)
    check(bool(terms), where, spec, "a loss name or a mapping of loss names to weights")
    for name, weight in terms.items():
        at = where if isinstance(spec, str) else f"{where}.{name}"
        check(name in LOSSES, at, name, "one of " + ", ".join(LOSSES))
        check(weight > 0, at, weight, "a weight > 0")
    tasks = {LOSSES[name].task for name in terms}
    check(len(tasks) == 1, where, spec, "losses of one task (segmentation or regression)")


def loss_task(spec: LossSpec) -> str:
    """The task a (checked) loss serves: "segmentation" or "regression"."""
    return LOSSES[next(iter(_terms(spec)))].task


def make_loss(spec: LossSpec) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """(output, target) -> the loss, or the weighted sum of the named losses."""
    terms = _terms(spec)
    if len(terms) == 1 and next(iter(terms.values())) == 1.0:
        return LOSSES[next(iter(terms))].compute

    def weighted(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        parts = [w * LOSSES[name].compute(output, target) for name, w in terms.items()]
        return sum(parts[1:], parts[0])

    return weighted


def loss_floor(loss: LossSpec, head: str, classes: int) -> float:
    """The smallest value ``loss`` can take for a model with this head and class count."""
    return sum(w * LOSSES[name].floor(head, classes) for name, w in _terms(loss).items())
