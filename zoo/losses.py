"""Loss registry: each loss knows how to score a model output and its own floor.

The floor is the smallest loss the head can reach. A softmax head feeding
cross-entropy (the paper's set-up) cannot reach 0: with C classes the best
output is a one-hot probability vector, whose cross-entropy read as logits is
log(1 + (C - 1)/e), 0.31326 for two classes. Adjusted loss = loss - floor.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["LOSSES", "Loss", "apply_head", "loss_floor"]


def apply_head(logits: torch.Tensor, head: str) -> torch.Tensor:
    """The model's output: softmax probabilities for ``softmax``, raw logits otherwise."""
    return logits.softmax(dim=1) if head == "softmax" else logits


def _cross_entropy(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    import torch.nn.functional as F

    return F.cross_entropy(output.float(), target.long())


def _cross_entropy_floor(head: str, classes: int) -> float:
    return math.log(1 + (classes - 1) / math.e) if head == "softmax" else 0.0


@dataclass(frozen=True)
class Loss:
    compute: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (output, target) -> mean
    floor: Callable[[str, int], float]  # (head, classes) -> smallest reachable loss


LOSSES: dict[str, Loss] = {"cross_entropy": Loss(_cross_entropy, _cross_entropy_floor)}


def loss_floor(loss: str, head: str, classes: int) -> float:
    """The smallest value ``loss`` can take for a model with this head and class count."""
    return LOSSES[loss].floor(head, classes)
