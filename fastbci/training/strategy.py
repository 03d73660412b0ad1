"""How a run is spread over processes: :class:`SingleProcess` and :class:`DataParallel`
(``torch.distributed``, launched by ``torchrun``) behind one small interface.

The trainer, the step and validation are the same code for both; a strategy supplies what
differs: the device, this process's share of a batch (:meth:`shard`), its part of the global
mean loss (:meth:`local_loss`), the gradient sum (:meth:`reduce_gradients`, which also carries
the loss and the stop vote), sums and gathers of statistics, the agreement on errors, the
initial broadcast of the weights, the per-rank random streams and signal handling. A
single-process run is the world of one: every collective is the identity, and the loss keeps
its single-process formula (``per_trial.mean()``), so its rounding is unchanged. The semantics
of the distributed run are in docs/distributed.md.
"""
from __future__ import annotations

import dataclasses
import datetime
import os
import signal
import threading
from typing import Any, Callable, Mapping, Sequence

import torch

from fastbci import checkpoint as ckpt_io
from fastbci.config import ConfigError
from fastbci.data.batch import Batch
from fastbci.devices import select_device

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


class SingleProcess:
    """One process: every collective is the identity."""
    rank = 0
    world_size = 1
    is_main = True
    launch_hint = "python -m fastbci.train"
    #: SIGINT stops after the current batch (a second one at once); nothing to agree on
    signals: tuple[int, ...] = (signal.SIGINT,)

    def __init__(self, device: torch.device | None = None):
        self._device = None if device is None else torch.device(device)

    def choose_device(self, cfg: Mapping, log=None) -> torch.device:
        return self._device if self._device is not None else select_device(cfg, log)

    def check(self, cfg: Mapping) -> None:
        check_world_size(cfg, self.world_size)

    def agree(self, fn: Callable[[], Any]) -> Any:
        return fn()

    def shard(self, batch: Batch, *, min_time: int = 1) -> Batch:
        return batch

    def local_loss(self, per_trial: torch.Tensor, global_batch: int) -> torch.Tensor:
        return per_trial.mean()

    def attach(self, model: torch.nn.Module) -> None:
        """Bind the model (for the gradient sum) and make every replica start equal."""

    def reduce_gradients(self, days: Sequence[int], extras: torch.Tensor) -> torch.Tensor:
        return extras

    def all_sum(self, values: torch.Tensor) -> torch.Tensor:
        return values

    def all_gather(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def gather_objects(self, obj: Any) -> list | None:
        """``[obj of rank 0, obj of rank 1, ...]`` on the main process, None elsewhere."""
        return [obj]

    def share(self, batches: list) -> list:
        """This process's validation batches."""
        return batches

    def dropout_seed(self, seed: int) -> int:
        return seed

    def stop_agreed(self, local: str | None, voted: bool) -> str | None:
        return local

    def seed_streams(self, cfg: Mapping, resume: Mapping | None, log) -> None:
        """The generator states of processes other than the main one (nothing to do here)."""

    def describe(self, cfg: Mapping) -> str | None:
        return None

    def install_signals(self, on_signal: Callable[[int], None]) -> dict | None:
        """Route :attr:`signals` to ``on_signal(signum)``; returns what :meth:`restore_signals`
        puts back (None off the main thread, where handlers cannot be set)."""
        if threading.current_thread() is not threading.main_thread():
            return None
        old = {}
        for s in self.signals:
            try:
                old[s] = signal.signal(s, lambda signum, frame: on_signal(signum))
            except ValueError:  # pragma: no cover - not the main interpreter
                pass
        return old

    @staticmethod
    def restore_signals(old: dict | None) -> None:
        for s, h in (old or {}).items():
            signal.signal(s, h)


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


class GradientReducer:
    """Sums the gradients of the parameters that the GLOBAL batch used, in one all-reduce.

    The shared parameters (everything but the per-day layers) always take part; a day's weight
    and bias take part when the day is in the global batch. A taking-part parameter without a
    local gradient (its day sits on another rank) contributes zeros and receives the sum; a day
    outside the global batch is left alone, so its ``grad`` stays ``None`` on every rank.
    Parameters with ``requires_grad=False`` never take part. ``extras`` (a 1-D float tensor,
    e.g. the loss) ride along in the same bucket and come back summed.
    """

    def __init__(self, model: torch.nn.Module, group=None):
        self.group = group
        self.day_params: dict[int, list[torch.nn.Parameter]] = {}
        # the per-day layers from the model's own lists, not from parameter names (a wrapped or
        # compiled model renames them, which would silently turn every day into a shared one)
        inner = getattr(model, "_orig_mod", getattr(model, "module", model))
        day_ids: set[int] = set()
        for d, (w, b) in enumerate(zip(inner.day_weights, inner.day_biases)):
            for p in (w, b):
                if p.requires_grad:
                    self.day_params.setdefault(d, []).append(p)
                    day_ids.add(id(p))
        self.shared = [p for p in model.parameters() if p.requires_grad and id(p) not in day_ids]

    def params_for(self, days: Sequence[int]) -> list[torch.nn.Parameter]:
        """The parameters that a global batch holding ``days`` updates, in bucket order."""
        out = list(self.shared)
        for d in sorted({int(d) for d in days}):
            out.extend(self.day_params.get(d, ()))
        return out

    def all_reduce(self, days: Sequence[int], extras: torch.Tensor) -> torch.Tensor:
        """Sum the gradients over the ranks (in place: every taking-part ``p.grad`` becomes the
        sum); returns the summed ``extras``."""
        import torch.distributed as dist
        params = self.params_for(days)
        if extras.dim() != 1:
            raise ValueError(f"GradientReducer.all_reduce: extras must be 1-D, got {tuple(extras.shape)}")
        ref = params[0] if params else extras
        pieces = [torch.zeros(p.numel(), dtype=torch.float32, device=p.device) if p.grad is None
                  else p.grad.reshape(-1).to(torch.float32) for p in params]
        pieces.append(extras.to(device=ref.device, dtype=torch.float32).reshape(-1))
        flat = torch.cat(pieces)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=self.group)
        offset = 0
        for p in params:
            n = p.numel()
            p.grad = flat[offset:offset + n].view_as(p).to(p.dtype)
            offset += n
        return flat[offset:]


def _rebuild_error(rank: int, kind: str, message: str) -> Exception:
    text = f"(rank {rank}) {message}" if rank else message
    known = {"ConfigError": ConfigError, "CheckpointError": ckpt_io.CheckpointError,
             "ValueError": ValueError, "FileNotFoundError": FileNotFoundError}
    return known.get(kind, RuntimeError)(text if kind in known else f"{kind}: {text}")


class DataParallel(SingleProcess):
    """One rank of a ``torch.distributed`` run (the default process group must be initialised,
    e.g. by :func:`init_process_group`): the global batch is split in contiguous shards, the
    gradients of the days in the global batch are summed in one all-reduce, validation batches
    are dealt round-robin, and rank 0 alone writes files. SIGTERM (what ``torchrun`` and batch
    schedulers send) is a stop vote like Ctrl-C; the ranks agree on it in the next step."""
    launch_hint = "torchrun --nproc_per_node=N -m fastbci.train (any N dividing the batch)"
    signals = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, env: DistEnv | None = None, *, device: torch.device | None = None):
        import torch.distributed as dist
        if not dist.is_initialized():
            raise RuntimeError("DataParallel needs an initialised torch.distributed process "
                               "group (fastbci.training.strategy.init_process_group)")
        if env is None:  # the torchrun environment, else the group (LOCAL_RANK: this node's index)
            env = env_from_os() or DistEnv(rank=dist.get_rank(), world_size=dist.get_world_size(),
                                           local_rank=int(os.environ.get("LOCAL_RANK", 0)))
        if env.world_size != dist.get_world_size() or env.rank != dist.get_rank():
            raise RuntimeError(f"DataParallel: env says rank {env.rank} of {env.world_size}, "
                               f"the process group rank {dist.get_rank()} of {dist.get_world_size()}")
        super().__init__(device)
        self.env = env
        self.rank, self.world_size, self.is_main = env.rank, env.world_size, env.is_main
        self.device: torch.device | None = None
        self.reducer: GradientReducer | None = None

    def choose_device(self, cfg: Mapping, log=None) -> torch.device:
        self.device = self._device if self._device is not None else \
            select_device(cfg, log, local_rank=self.env.local_rank)
        return self.device

    def agree(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on every rank; if it failed anywhere, raise on every rank (the lowest
        failing rank's error), so that no rank waits forever in a later collective."""
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
            raise _rebuild_error(*failed[0])
        return result

    def shard(self, batch: Batch, *, min_time: int = 1) -> Batch:
        lo, hi = shard_bounds(len(batch.rows), self.rank, self.world_size)
        return batch.select(lo, hi, min_time=min_time)

    def local_loss(self, per_trial: torch.Tensor, global_batch: int) -> torch.Tensor:
        return per_trial.float().sum() / global_batch

    def attach(self, model: torch.nn.Module) -> None:
        """Identical weights everywhere (a no-op after the seeded init or a resume, which every
        rank does the same way; it matters for seed=-1), then the gradient reducer."""
        import torch.distributed as dist
        params = list(model.parameters())
        flat = torch.cat([p.detach().reshape(-1) for p in params])
        dist.broadcast(flat, src=0)
        offset = 0
        with torch.no_grad():
            for p in params:
                p.copy_(flat[offset:offset + p.numel()].view_as(p))
                offset += p.numel()
        self.reducer = GradientReducer(model)

    def reduce_gradients(self, days: Sequence[int], extras: torch.Tensor) -> torch.Tensor:
        return self.reducer.all_reduce(days, extras)

    def all_sum(self, values: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist
        out = values.to(self.device).clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

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

    def stop_agreed(self, local: str | None, voted: bool) -> str | None:
        return (local or "interrupt") if voted else None

    def _rank_torch_seed(self, cfg: Mapping, salt: int = 0) -> int:
        base = int(cfg["dataset"]["seed"])
        base = base if base != -1 else int(cfg["seed"])
        if base == -1:
            base = torch.initial_seed()
        return (base + self.rank + salt * 1_000_003) % (1 << 63)

    def seed_streams(self, cfg: Mapping, resume: Mapping | None, log) -> None:
        """torch's generator on ranks > 0: its own stream (``seed + rank``) for a fresh run, the
        saved per-rank state on a resume at the same world size, a fresh stream otherwise."""
        if resume is None:
            if self.rank > 0:
                torch.manual_seed(self._rank_torch_seed(cfg))
            return
        saved = resume.get("rng_by_rank")
        old_world = int(resume.get("world_size", 1))
        if saved is not None and len(saved) == self.world_size and old_world == self.world_size:
            ckpt_io.restore_rng_state(saved[self.rank])
            return
        if self.rank > 0:
            torch.manual_seed(self._rank_torch_seed(cfg, salt=int(resume["next_batch"])))
        if old_world != self.world_size:
            log.info(f"The checkpoint was written by {old_world} rank(s), resuming on "
                     f"{self.world_size}: same batches and augmentation; dropout streams of "
                     "ranks > 0 start afresh (with dropout on, the continuation matches in "
                     "distribution, not bit for bit)")

    def describe(self, cfg: Mapping) -> str:
        import torch.distributed as dist
        B = int(cfg["dataset"]["batch_size"])
        return (f"Distributed: {self.world_size} ranks ({dist.get_backend()}), global batch {B} = "
                f"{self.world_size} x {B // self.world_size} trials; validation batches dealt "
                "round-robin; dropout streams per rank")
