"""One run on several devices: ``devices: N`` trains it with DistributedDataParallel in
N processes on this machine, launched by zoo itself (NCCL on GPUs 0..N-1, gloo on CPU).

The process that called zoo.run.run is rank 0: it alone opens the run's lock,
logs to MLflow, validates, and writes checkpoints and artifacts. It spawns
N - 1 followers and leads them with small broadcast commands (a stage starts,
an epoch starts, a batch from position p, sum the losses, done), so every rank
trains the same batches at the same time and no rank decides anything alone.

Promises:

- The global batch is the one a single process trains: each epoch's order comes
  from the same shuffle stream, each batch is split into contiguous shares (rank
  r the r-th), and each rank's loss is weighted by its share, so the averaged
  gradient is that of the whole batch even when shares differ in size.
- Batch normalisation uses the statistics of the whole global batch on every rank
  (``GlobalBatchNorm2d``: per-channel sums all-reduced in the forward pass,
  gradients through them), so with the same global batch a run gives the same
  losses as one process up to floating-point summation order; torch's own
  SyncBatchNorm would not run on CPU. Only ``torch.nn.BatchNorm2d`` layers are
  converted: other normalisation layers keep per-rank statistics.
- Each stage starts with the weights (DDP's broadcast) and optimizer state of rank
  0, so a resumed, carried or initialised stage continues identically on every rank.
- A failure or a preemption on rank 0 ends the followers; a follower that fails
  makes rank 0's next collective fail, which fails the run.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from zoo._malloc import keep_freed_memory
from zoo._signals import exit_with_parent
from zoo.config import Resolver, RunConfig, resolve
from zoo.losses import make_loss
from zoo.models import create_model, freeze, set_train_mode
from zoo.paths import ProjectPaths
from zoo.train import (
    Batcher,
    Shard,
    ShardFactory,
    Step,
    _amp_dtype,  # the stage's autocast dtype, exactly as rank 0 chooses it
    epoch_order,
    make_optimizer,
    pick_device,
    stage_lr,
    to_device,
    train_step,
)

__all__ = ["GlobalBatchNorm2d", "Group", "global_batchnorm", "group"]

STAGE, EPOCH, STEP, TOTAL, DONE = range(5)  # commands rank 0 broadcasts


@dataclass(frozen=True)
class Group:
    """This process's place in a run's process group."""

    rank: int
    world: int
    device: torch.device

    @property
    def leader(self) -> bool:
        return self.rank == 0

    @property
    def wire(self) -> torch.device:
        """Where collectives' tensors live: the GPU under NCCL, the CPU under gloo."""
        return self.device if self.device.type == "cuda" else torch.device("cpu")

    def command(self, kind: int = DONE, value: int = 0) -> tuple[int, int]:
        """Rank 0 sends (kind, value) without waiting for the device; a follower receives
        it (its own arguments are ignored)."""
        message = torch.tensor([kind, value], dtype=torch.int64, device=self.wire)
        dist.broadcast(message, 0)
        if self.leader:
            return kind, value
        received = message.tolist()
        return received[0], received[1]

    def broadcast_bytes(self, data: bytes = b"") -> bytes:
        """Rank 0's ``data`` on every rank."""
        length = torch.tensor([len(data)], dtype=torch.int64, device=self.wire)
        dist.broadcast(length, 0)
        size = int(length.item())
        if not size:
            return b""
        if self.leader:
            buffer = torch.frombuffer(bytearray(data), dtype=torch.uint8).to(self.wire)
        else:
            buffer = torch.empty(size, dtype=torch.uint8, device=self.wire)
        dist.broadcast(buffer, 0)
        return data if self.leader else buffer.cpu().numpy().tobytes()


def _share(count: int, group: Group) -> tuple[int, int]:
    """[low, high) of this rank's contiguous share of ``count`` batch positions."""
    base, extra = divmod(count, group.world)
    low = group.rank * base + min(group.rank, extra)
    return low, low + base + (group.rank < extra)


class _Ranked(Shard):
    """One rank's part in a stage: its share of each batch, through DDP."""

    def __init__(
        self, group: Group, model: torch.nn.Module, optimizer: torch.optim.Optimizer
    ) -> None:
        _sync_optimizer(group, optimizer)
        global_batchnorm(model)
        ids = [group.device.index] if group.device.type == "cuda" else None
        network = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=ids, forward_sync_buffers=False
        )  # the constructor broadcasts rank 0's weights and buffers; the batch-norm
        # buffers then stay equal on every rank without a broadcast per step
        super().__init__(network)
        self.group = group

    def epoch(self, epoch: int) -> None:
        if self.group.leader:
            self.group.command(EPOCH, epoch)

    def step(self, step: Step, batches: Batcher, start: int, size: int) -> torch.Tensor:
        if self.group.leader:
            self.group.command(STEP, start)
        count = min(size, len(batches.order) - start)
        low, high = _share(count, self.group)
        x, y = batches(start + low, high - low)
        weight = (high - low) * self.group.world / count
        loss = step.loss
        if high == low:  # nothing to train here: take part in the collectives, add nothing

            def weighted(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
                return output.sum() * 0.0
        else:

            def weighted(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
                return loss(output, target) * weight

        return train_step(replace(step, loss=weighted), x, y) * (count / self.group.world)

    def total(self, total: torch.Tensor) -> torch.Tensor:
        if self.group.leader:
            self.group.command(TOTAL)
        summed = total.to(self.group.wire, torch.float64)
        dist.all_reduce(summed)
        return summed.to(total.device, total.dtype)


def _sync_optimizer(group: Group, optimizer: torch.optim.Optimizer) -> None:
    """Every rank's optimizer state made rank 0's (nothing pickled: safetensors + JSON)."""
    from safetensors.torch import load, save

    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    if group.leader:
        for index, values in optimizer.state_dict()["state"].items():
            for key, value in values.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"{index}.{key}"] = value.detach().cpu().contiguous()
                else:
                    scalars.setdefault(str(index), {})[key] = value
    text = group.broadcast_bytes(json.dumps(scalars).encode() if group.leader else b"")
    blob = group.broadcast_bytes(save(tensors) if tensors else b"")
    if group.leader:
        return
    state: dict[int, dict[str, Any]] = {}
    for key, value in (load(blob) if blob else {}).items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    for index, values in json.loads(text or "{}").items():
        state.setdefault(int(index), {}).update(values)
    groups = optimizer.state_dict()["param_groups"]
    optimizer.load_state_dict({"state": state, "param_groups": groups})


class _Summed(torch.autograd.Function):
    """A tensor summed over the ranks; its gradient is the sum of the ranks' gradients."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        summed = tensor.clone()
        dist.all_reduce(summed)
        return summed

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        summed = grad.clone()
        dist.all_reduce(summed)
        return summed


class GlobalBatchNorm2d(torch.nn.BatchNorm2d):
    """BatchNorm2d that normalises with the statistics of the global batch in training:
    each channel's count, sum and sum of squared deviations all-reduced over the ranks
    (two passes, float32), gradients flowing through the reductions; the running
    statistics are updated as one process would. In eval mode it is BatchNorm2d."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        dims, values = (0, 2, 3), x.float()
        count = torch.full((1,), x.numel() / max(x.shape[1], 1), device=x.device)
        sums = _Summed.apply(torch.cat([values.sum(dims), count]))
        total = sums[-1]
        mean = sums[:-1] / total
        centred = values - mean.view(1, -1, 1, 1)
        var = _Summed.apply(centred.square().sum(dims)) / total
        if self.track_running_stats:
            self._track(mean.detach(), var.detach(), total.detach())
        y = centred * torch.rsqrt(var + self.eps).view(1, -1, 1, 1)
        if self.affine:
            y = y * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        return y.to(x.dtype)

    @torch.no_grad()
    def _track(self, mean: torch.Tensor, var: torch.Tensor, total: torch.Tensor) -> None:
        self.num_batches_tracked += 1
        factor = self.momentum
        if factor is None:  # cumulative moving average
            factor = 1.0 / float(self.num_batches_tracked)
        unbiased = var * total / (total - 1).clamp_min(1)
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
        self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)


def global_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with each exact ``torch.nn.BatchNorm2d`` made a GlobalBatchNorm2d in
    place (the same parameters and buffers, so optimizers and weight names are kept)."""
    for module in model.modules():
        if type(module) is torch.nn.BatchNorm2d:
            module.__class__ = GlobalBatchNorm2d
    return model


def _rank_device(config: RunConfig, rank: int) -> torch.device:
    """Rank ``rank``'s device: GPU ``rank`` when the run trains on CUDA, else the CPU."""
    cuda = pick_device(config).type == "cuda"
    return torch.device("cuda", rank) if cuda else torch.device("cpu")


@contextmanager
def group(
    config: RunConfig, root: Path, load_datasets: Callable[[RunConfig, Any], dict[str, Any]]
) -> Iterator[ShardFactory | None]:
    """With ``config.devices`` N > 1: N - 1 followers spawned (each loads its datasets with
    ``load_datasets(config, ProjectPaths(root))``) and the process group formed; yields
    the shard factory zoo.train.train_stage trains through. Else yields None (one
    process). On CPU the ranks split this process's threads between them rather than
    each taking them all. On leaving, the followers are told to stop (or, after an error, ended)."""
    if config.devices == 1:
        yield None
        return
    world, device = config.devices, _rank_device(config, 0)
    threads = torch.get_num_threads()  # on CPU, the N ranks share them (as under torchrun)
    share = max(1, threads // world) if device.type == "cpu" else threads
    store = dist.TCPStore("127.0.0.1", 0, world, is_master=True, wait_for_workers=False)
    context = torch.multiprocessing.get_context("spawn")
    followers = [
        context.Process(
            target=_follow,
            args=(config.to_dict(), str(root), rank, world, store.port, load_datasets),
            kwargs={"threads": share, "resolver": config.resolver},
            name=f"zoo-rank-{rank}",
        )
        for rank in range(1, world)
    ]
    for process in followers:
        process.start()
    try:
        torch.set_num_threads(share)
        _wait_ready(store, followers)
        dist.init_process_group(_backend(device), store=store, rank=0, world_size=world)
        leader = Group(0, world, device)
        yield functools.partial(_lead, leader)
        leader.command(DONE)
        for process in followers:
            process.join(timeout=60)
    finally:
        for process in followers:
            if process.is_alive():
                process.terminate()
            process.join()
        if dist.is_initialized():
            dist.destroy_process_group()
        torch.set_num_threads(threads)


def _backend(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def _wait_ready(store: dist.TCPStore, followers: list[Any]) -> None:
    """Wait until every follower has loaded its data; one that exits first is an error."""
    while True:
        ready = [store.check([f"ready/{rank}"]) for rank in range(1, len(followers) + 1)]
        if all(ready):
            return
        for process in followers:
            if not process.is_alive():
                raise RuntimeError(
                    f"{process.name} exited with code {process.exitcode} before training"
                )
        time.sleep(0.05)


def _lead(
    leader: Group,
    config: RunConfig,
    index: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
) -> Shard:
    """Rank 0's part in stage ``index``: the followers are told to start it too."""
    leader.command(STAGE, index)
    return _Ranked(leader, model, optimizer)


def _follow(
    document: dict[str, Any],
    root: str,
    rank: int,
    world: int,
    port: int,
    load_datasets: Callable[[RunConfig, Any], dict[str, Any]],
    threads: int = 1,
    resolver: Resolver | None = None,
) -> None:
    """A follower process: load the data, join the group, obey rank 0 until DONE (its
    config resolved as rank 0's was, by ``resolver``: the same root and store)."""
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # rank 0 alone checkpoints on USR1
    exit_with_parent(os.getppid())  # rank 0 killed outright: no follower is left waiting
    torch.set_num_threads(threads)
    keep_freed_memory()  # as rank 0's process does (a sweep worker, or zoo run)
    config = resolve(document, resolver=resolver)
    device = _rank_device(config, rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    datasets = load_datasets(config, ProjectPaths(Path(root)))
    store = dist.TCPStore("127.0.0.1", port, world, is_master=False)
    store.set(f"ready/{rank}", "1")
    dist.init_process_group(_backend(device), store=store, rank=rank, world_size=world)
    try:
        trained = {s.train for s in config.stages}
        data = {name: to_device(datasets[name], device, config.model) for name in trained}
        _Follower(Group(rank, world, device), config, data).obey()
    finally:
        dist.destroy_process_group()


class _Follower:
    """Rank r > 0: the stages, epochs and batches rank 0 commands, nothing else."""

    def __init__(self, me: Group, config: RunConfig, data: dict[str, Any]):
        self.me, self.config, self.data = me, config, data
        self.total = torch.zeros((), device=me.device)

    def obey(self) -> None:
        handlers = {STAGE: self.stage, EPOCH: self.epoch, STEP: self.step, TOTAL: self.reduce}
        while True:
            kind, value = self.me.command()
            if kind == DONE:
                return
            handlers[kind](value)

    def stage(self, index: int) -> None:
        config, device = self.config, self.me.device
        self.index, self.stage_config = index, config.stages[index]
        torch.manual_seed(config.seed)
        self.model = create_model(config.model).to(device)
        if device.type == "cuda":
            self.model.to(memory_format=torch.channels_last)
        freeze(self.model, self.stage_config.freeze)
        self.optimizer = make_optimizer(self.stage_config, self.model)
        self.part = _Ranked(self.me, self.model, self.optimizer)
        network = torch.compile(self.part.network) if config.compile else self.part.network
        amp = _amp_dtype(config, device)
        scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
        loss = make_loss(self.stage_config.loss)
        self.train = Step(network, self.optimizer, loss, config.model.head, amp, scaler)

    def epoch(self, epoch: int) -> None:
        stage, config = self.stage_config, self.config
        for group in self.optimizer.param_groups:
            group["lr"] = stage_lr(stage, epoch)
        set_train_mode(self.model, stage.freeze)
        source = self.data[stage.train]
        count = min(stage.size or len(source.train_images), len(source.train_images))
        first, before = config.stream(self.index)
        augment = stage.augment == "dihedral"
        order = epoch_order(config.seed, first, before + epoch, count, augment)
        self.batches = Batcher(source, order)
        self.total = torch.zeros((), device=self.me.device)

    def step(self, start: int) -> None:
        self.total += self.part.step(self.train, self.batches, start, self.stage_config.batch_size)

    def reduce(self, _: int) -> None:
        self.part.total(self.total)
