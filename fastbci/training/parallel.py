"""How a run is spread over processes: :class:`SingleProcess`, or :class:`DataParallel`, one
rank of a ``torchrun`` launch with torch's ``DistributedDataParallel`` around the model.

Both have one small interface that the step, validation and checkpointing use: ``wrap`` the
model, ``shard`` a global batch, the ``local_loss`` whose gradients sum to the global mean's,
``all_sum`` / ``all_gather`` / ``gather_objects`` of statistics, the validation ``share``, the
per-rank ``dropout_seed`` and ``agree`` on errors. A single process is the world of one: every
collective is the identity, and the loss keeps its single-process formula (``per_trial.mean()``).
The semantics of a distributed run are in docs/distributed.md.
"""
from __future__ import annotations

import dataclasses
import datetime
import os
from typing import Any, Callable, Mapping

import torch

from fastbci.data.batch import Batch
from fastbci.errors import ConfigError, rebuild

DEFAULT_TIMEOUT_S = 1800
_ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclasses.dataclass(frozen=True)
class DistEnv:
    """What ``torchrun`` tells a worker: its global ``rank``, the ``world_size`` and its
    ``local_rank`` on this node."""
    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_from_os(environ: Mapping[str, str] | None = None) -> DistEnv | None:
    """The :class:`DistEnv` of a ``torchrun`` worker, or None outside ``torchrun`` (no
    ``WORLD_SIZE``). A partial or inconsistent environment is a :class:`ConfigError`."""
    environ = os.environ if environ is None else environ
    if "WORLD_SIZE" not in environ:
        stray = [k for k in ("RANK", "LOCAL_RANK") if k in environ]
        if stray:
            raise ConfigError(f"{' and '.join(stray)} set in the environment without WORLD_SIZE: "
                              "launch with torchrun, or unset them for a single-process run")
        return None
    vals = {}
    for key in _ENV_KEYS:
        raw = environ.get(key, "0" if key != "WORLD_SIZE" else None)
        try:
            vals[key] = int(raw)
        except (TypeError, ValueError):
            raise ConfigError(f"environment variable {key}={raw!r} is not an integer "
                              "(set by torchrun)") from None
    world, rank, local = vals["WORLD_SIZE"], vals["RANK"], vals["LOCAL_RANK"]
    if world < 1:
        raise ConfigError(f"WORLD_SIZE={world}: must be >= 1")
    if not 0 <= rank < world:
        raise ConfigError(f"RANK={rank} is outside [0, WORLD_SIZE={world})")
    if not 0 <= local <= rank:
        raise ConfigError(f"LOCAL_RANK={local} must be in [0, RANK={rank}]")
    return DistEnv(rank=rank, world_size=world, local_rank=local)


def check_world_size(cfg: Mapping, world_size: int) -> None:
    """Raise a :class:`ConfigError` for a configuration that cannot train on ``world_size``
    processes: a global batch not divisible by the world size, or ``fastbci.rng=torch``."""
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ConfigError(f"world size must be a positive integer, got {world_size!r}")
    B = int(cfg["dataset"]["batch_size"])
    if B % world_size != 0:
        divisors = [w for w in range(1, B + 1) if B % w == 0]
        raise ConfigError(
            f"dataset.batch_size={B} (the global batch) is not divisible by the world size "
            f"{world_size}: every rank must train on the same number of trials. Use a world size "
            f"in {divisors}, or a batch size that is a multiple of {world_size} (which changes the "
            "batch plan, hence the run)")
    if world_size > 1 and cfg["fastbci"]["rng"] == "torch":
        raise ConfigError(
            "fastbci.rng=torch (the official draw order from torch's global generator) works in "
            "a single process only; pass fastbci.rng=philox for a distributed run")


def shard_bounds(batch_size: int, rank: int, world_size: int) -> tuple[int, int]:
    """The rows ``[lo, hi)`` of a global batch of ``batch_size`` that ``rank`` trains on."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"shard_bounds: rank {rank} is outside [0, world_size={world_size})")
    if batch_size % world_size != 0:
        raise ValueError(f"shard_bounds: a batch of {batch_size} trials does not split evenly "
                         f"over {world_size} ranks")
    n = batch_size // world_size
    return rank * n, (rank + 1) * n


def _timeout() -> datetime.timedelta:
    raw = os.environ.get("FASTBCI_DIST_TIMEOUT", str(DEFAULT_TIMEOUT_S))
    try:
        seconds = float(raw)
    except ValueError:
        raise ConfigError(f"FASTBCI_DIST_TIMEOUT={raw!r} is not a number of seconds") from None
    if seconds <= 0:
        raise ConfigError(f"FASTBCI_DIST_TIMEOUT={raw!r} must be > 0")
    return datetime.timedelta(seconds=seconds)


def init_process_group(env: DistEnv, device: torch.device) -> str:
    """Join the default process group (NCCL for CUDA devices, gloo for the CPU) from the
    ``torchrun`` environment; returns the backend. Already initialised: checked, not redone."""
    import torch.distributed as dist
    backend = "nccl" if device.type == "cuda" else "gloo"
    if dist.is_initialized():
        if dist.get_world_size() != env.world_size or dist.get_rank() != env.rank:
            raise ConfigError(f"a process group is already initialised with rank "
                              f"{dist.get_rank()} of {dist.get_world_size()}, but the environment "
                              f"says rank {env.rank} of {env.world_size}")
        return dist.get_backend()
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise ConfigError(f"{' and '.join(missing)} not set: launch with torchrun (it sets them), "
                          "e.g. torchrun --nproc_per_node=N -m fastbci.train CONFIG")
    kwargs: dict[str, Any] = {}
    if device.type == "cuda":
        torch.cuda.set_device(device)
        kwargs["device_id"] = device
    dist.init_process_group(backend=backend, init_method="env://", rank=env.rank,
                            world_size=env.world_size, timeout=_timeout(), **kwargs)
    return backend


class SingleProcess:
    """One process: every collective is the identity."""
    rank = 0
    world_size = 1
    is_main = True
    local_rank: int | None = None
    launch_hint = "fastbci train"

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module the training forward and backward run through."""
        return model

    def agree(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` (on every rank; an error anywhere is raised everywhere)."""
        return fn()

    def shard(self, batch: Batch, *, min_time: int = 1) -> Batch:
        """This process's share of a global batch."""
        return batch

    def local_loss(self, per_trial: torch.Tensor, global_batch: int) -> torch.Tensor:
        """This process's part of the global mean loss (its gradients sum to the global one's)."""
        return per_trial.mean()

    def all_sum(self, values: torch.Tensor, async_op: bool = False):
        """``values`` summed over the processes (``async_op``: an object whose ``wait()`` gives
        the sum, for overlapping it with other work)."""
        return _Done(values) if async_op else values

    def all_gather(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def gather_objects(self, obj: Any) -> list | None:
        """``[obj of rank 0, obj of rank 1, ...]`` on the main process, None elsewhere."""
        return [obj]

    def share(self, batches: list) -> list:
        """This process's validation batches."""
        return batches

    def dropout_seed(self, seed: int) -> int:
        """The Philox key of this process's day-layer dropout."""
        return seed

    def stop_agreed(self, requested: str | None, voted: bool) -> bool:
        """Whether to stop after this batch: one process stops when asked (``requested``);
        ranks stop together once the vote of the step (anyone asked before it) says so."""
        return requested is not None

    def describe(self, cfg: Mapping) -> str | None:
        return None


class _Done:
    """A finished ``all_sum``: ``wait()`` returns the value."""

    def __init__(self, value: torch.Tensor):
        self.value = value

    def wait(self) -> torch.Tensor:
        return self.value


class _Pending:
    """An ``all_sum`` in flight: ``wait()`` returns the sum."""

    def __init__(self, work, value: torch.Tensor):
        self.work, self.value = work, value

    def wait(self) -> torch.Tensor:
        self.work.wait()
        return self.value


def _sum_hook(state, bucket):
    """DDP communication hook: the gradient buckets SUMMED over the ranks (DDP's default hook
    averages). Each rank's loss is already its share of the global mean (``local_loss``), so the
    sum is the gradient of the global mean, exactly as one process computes it."""
    import torch.distributed as dist
    fut = dist.all_reduce(bucket.buffer(), group=state, async_op=True).get_future()
    return fut.then(lambda f: f.value()[0])


class DataParallel(SingleProcess):
    """One rank of a ``torch.distributed`` run (the default process group must be initialised,
    e.g. by :func:`init_process_group`): the model runs inside ``DistributedDataParallel``
    (gradients all-reduced in buckets, overlapped with the backward pass, summed by
    :func:`_sum_hook`; ``find_unused_parameters`` because a batch uses only some day layers: a
    day absent from every rank's share keeps ``grad is None``, so AdamW skips it, and a day on
    one rank only gets that rank's gradient). The global batch is split in contiguous shards,
    validation batches are dealt round-robin, and rank 0 alone writes files."""
    launch_hint = "torchrun --nproc_per_node=N -m fastbci.train (any N dividing the batch)"

    def __init__(self, env: DistEnv | None = None):
        import torch.distributed as dist
        if not dist.is_initialized():
            raise RuntimeError("DataParallel needs an initialised torch.distributed process "
                               "group (fastbci.training.parallel.init_process_group)")
        if env is None:  # the torchrun environment, else the group (LOCAL_RANK: this node's index)
            env = env_from_os() or DistEnv(rank=dist.get_rank(), world_size=dist.get_world_size(),
                                           local_rank=int(os.environ.get("LOCAL_RANK", 0)))
        if env.world_size != dist.get_world_size() or env.rank != dist.get_rank():
            raise RuntimeError(f"DataParallel: env says rank {env.rank} of {env.world_size}, "
                               f"the process group rank {dist.get_rank()} of {dist.get_world_size()}")
        self.env = env
        self.rank, self.world_size, self.is_main = env.rank, env.world_size, env.is_main
        self.local_rank = env.local_rank

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """``DistributedDataParallel(model)``: its construction broadcasts rank 0's weights (a
        no-op after the seeded init or a resume, which every rank does the same way; it matters
        for seed=-1)."""
        from torch.nn.parallel import DistributedDataParallel
        device = next(model.parameters()).device
        # the model's buffers are per-rank bookkeeping (the days a compiled forward saw), never
        # synchronised: no broadcast before each forward
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
            model, [name for name, _ in model.named_buffers()])
        ddp = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None,
                                      find_unused_parameters=True)
        ddp.register_comm_hook(None, _sum_hook)
        return ddp

    def agree(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on every rank; if it failed anywhere, raise on every rank (the lowest
        failing rank's error, as its own class), so that no rank waits forever in a later
        collective."""
        import torch.distributed as dist
        err: Exception | None = None
        result = None
        try:
            result = fn()
        except Exception as e:  # re-raised below, on every rank
            err = e
        mine = None if err is None else (self.rank, type(err).__name__, str(err))
        reports: list = [None] * self.world_size
        dist.all_gather_object(reports, mine)
        failed = [r for r in reports if r is not None]
        if err is not None:
            raise err
        if failed:
            rank, kind, message = failed[0]
            raise rebuild(kind, f"(rank {rank}) {message}" if rank else message)
        return result

    def shard(self, batch: Batch, *, min_time: int = 1) -> Batch:
        lo, hi = shard_bounds(len(batch.rows), self.rank, self.world_size)
        return batch.select(lo, hi, min_time=min_time)

    def local_loss(self, per_trial: torch.Tensor, global_batch: int) -> torch.Tensor:
        return per_trial.float().sum() / global_batch

    def all_sum(self, values: torch.Tensor, async_op: bool = False):
        import torch.distributed as dist
        out = values.clone()
        work = dist.all_reduce(out, op=dist.ReduceOp.SUM, async_op=async_op)
        return _Pending(work, out) if async_op else out

    def all_gather(self, t: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist
        parts = [torch.empty_like(t) for _ in range(self.world_size)]
        dist.all_gather(parts, t.contiguous())
        return torch.cat(parts)

    def gather_objects(self, obj: Any) -> list | None:
        import torch.distributed as dist
        parts: list | None = [None] * self.world_size if self.is_main else None
        dist.gather_object(obj, parts, dst=0)
        return parts

    def share(self, batches: list) -> list:
        return batches[self.rank::self.world_size]

    def dropout_seed(self, seed: int) -> int:
        """The Philox key of this rank's day-layer dropout: ``seed + (rank << 32)``."""
        return (int(seed) + (self.rank << 32)) % (1 << 64)

    def stop_agreed(self, requested: str | None, voted: bool) -> bool:
        return voted

    def describe(self, cfg: Mapping) -> str:
        import torch.distributed as dist
        B = int(cfg["dataset"]["batch_size"])
        return (f"Distributed: {self.world_size} ranks ({dist.get_backend()}), "
                f"DistributedDataParallel, global batch {B} = {self.world_size} x "
                f"{B // self.world_size} trials; validation batches dealt round-robin; dropout "
                "streams per rank")
