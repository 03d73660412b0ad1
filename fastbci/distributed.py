"""Multi-GPU and multi-node training with ``torch.distributed``, launched by ``torchrun``.

``torchrun --nproc_per_node=N -m fastbci.train CONFIG [key=value ...]`` starts N processes;
:func:`fastbci.train.main` sees ``WORLD_SIZE > 1`` in the environment and hands over to
:func:`main` here, which joins the process group (NCCL on GPUs, gloo on the CPU; every rank
trains on ``cuda:LOCAL_RANK``) and runs a :class:`DistributedTrainer`.

Global batch semantics
----------------------
``dataset.batch_size`` is the GLOBAL batch, and the batch plan is the official one, drawn
identically on every rank: batch ``k`` is the same ``batch_size`` trials whatever the world
size. Rank ``r`` of ``W`` trains on the contiguous rows ``[r * B / W, (r + 1) * B / W)`` of it
(the plan lays trials out day by day, so a rank sees about ``days_per_batch / W`` days). Each
rank builds the augmented global batch (the Philox noise is indexed by the trial's position in
the global padded batch and the global ``T_max``; the cut is one draw per batch), keeps its rows,
trims the time padding that none of its trials needs, and back-propagates
``sum(its per-trial CTC losses) / B``. The gradients (plus the loss and a stop vote) are then
summed in ONE all-reduce of a flat bucket, so every rank holds the gradient of the global mean
loss and takes the identical clipped AdamW step: the replicas never drift apart.

How results relate to a single-GPU run with the same configuration: with the dropouts at 0 they
are the same run up to the order of floating-point sums (equal within float32 round-off; tested
at 1e-5 relative). Dropout cannot match a single process bit for bit, because its random
numbers are indexed by a rank's local layout: every rank gets its own streams (torch's generator,
used by the GRU's inter-layer dropout, seeded with ``dataset.seed + rank`` on ranks > 0; the
Philox day-layer dropout keyed with ``dataset.seed + (rank << 32)``), so with dropout on a
distributed run matches a single-process run in distribution, not bit for bit. The data
augmentation itself (noise, offset, cut) is identical to the single-process run in every case.

Day parameters keep the official semantics: the days of the GLOBAL batch (known on every rank
from the plan) are reduced, a day present on another rank but not locally receives the reduced
gradient, and a day absent from the global batch keeps ``grad = None``, so AdamW leaves it
untouched (no decay, no moment update), exactly as in a single-process run.

Validation: the validation batches are dealt round-robin to the ranks; losses, edit distances,
phoneme counts and blank frames are summed in one all-reduce and give the same PER and loss as a
single process. Rank 0 alone writes logs, metrics, plots and checkpoints (the per-trial
validation logits are gathered to it when they are saved). Checkpoints are the single-process
ones plus every rank's generator states; a run resumes on any world size that divides the batch
(with dropout off the continued losses equal the uninterrupted run's; with dropout on, a resume
on another world size gives ranks > 0 fresh streams).

``fastbci.rng=torch`` (the official draw order from torch's global generator) is single-process
only: in a distributed run the generators of the ranks would have to draw in lock-step.
Set ``FASTBCI_DIST_TIMEOUT`` (seconds, default 1800) to change the collective timeout.
"""
from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import signal
import sys
import threading
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.distributed as dist

from fastbci import checkpoint as ckpt_io
from fastbci import config as config_mod
from fastbci import train as T
from fastbci.config import ConfigError

__all__ = ["DistEnv", "env_from_os", "check_world_size", "shard_bounds", "slice_batch",
           "rank_device", "init_process_group", "GradientReducer", "DistributedTrainer", "main"]

DEFAULT_TIMEOUT_S = 1800
_ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


# ---------------------------------------------------------------------------------------------
# the launcher's environment
# ---------------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------------
# checks and sharding
# ---------------------------------------------------------------------------------------------
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
    if world_size > 1 and config_mod.get(cfg, "fastbci.rng", "philox") == "torch":
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


def slice_batch(batch: "T.Batch", lo: int, hi: int, meta: "T.HostMeta", *,
                min_time: int = 1) -> "T.Batch":
    """Rows ``[lo, hi)`` of a device batch, with the time padding that none of them needs
    trimmed (kept at least ``min_time`` steps, e.g. the patch size).

    Exact: the smoothing already ran over the whole padded batch, and every output frame a
    trial's loss and decoding read depends only on its steps before ``n_time_steps`` (the day
    layer is per step, the patches lie inside the trial, the GRU is causal).
    """
    if not 0 <= lo < hi <= len(batch.rows):
        raise ValueError(f"slice_batch: rows [{lo}, {hi}) are not inside a batch of "
                         f"{len(batch.rows)} trials")
    rows = batch.rows[lo:hi]
    t_now = batch.features.shape[1]
    cut = int(meta.lengths[batch.rows].max()) - t_now  # the random cut (0 outside training)
    need = int(meta.lengths[rows].max()) - cut
    keep = min(t_now, max(need, int(min_time)))
    feats = batch.features[lo:hi]
    if keep < t_now:
        feats = feats[:, :keep].contiguous()
    labels = label_lens = label_lens_host = None
    n_label_total = 0
    if batch.labels is not None:
        lens = meta.seq_len[rows]
        labels = batch.labels[lo:hi, :max(int(lens.max()), 1)]
        label_lens = batch.label_lens[lo:hi]
        label_lens_host = torch.from_numpy(lens.astype(np.int64))
        n_label_total = int(lens.sum())
    days = meta.day[rows]
    present = np.unique(days)
    local = None
    if batch.local_day_idx is not None:
        # positions in this shard's days (host facts), uploaded without a synchronisation
        local_np = np.searchsorted(present, days).astype(np.int64)
        local = torch.from_numpy(local_np)
        if batch.local_day_idx.device.type == "cuda":
            local = local.pin_memory().to(batch.local_day_idx.device, non_blocking=True)

    def part(t):
        return None if t is None else t[lo:hi]

    return T.Batch(features=feats, n_time_steps=batch.n_time_steps[lo:hi], labels=labels,
                   label_lens=label_lens, day_idx=batch.day_idx[lo:hi],
                   days_present=[int(d) for d in present], rows=rows,
                   n_label_total=n_label_total, n_time_host=part(batch.n_time_host),
                   input_lens_host=part(batch.input_lens_host), label_lens_host=label_lens_host,
                   local_day_idx=local)


def rank_device(cfg: Mapping, env: DistEnv) -> torch.device:
    """The device of a rank: ``cuda:LOCAL_RANK`` when training on GPUs (``fastbci.device`` auto
    with CUDA available, or ``cuda``), the CPU otherwise (``cpu``, or auto without CUDA)."""
    want = str(config_mod.get(cfg, "fastbci.device", "auto"))
    if want == "cpu" or (want == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if want not in ("auto", "cuda"):
        raise ConfigError(
            f"fastbci.device={want} would put every rank on one device; in a distributed run use "
            "fastbci.device=auto or cuda (rank i of a node trains on cuda:LOCAL_RANK) or cpu, "
            "and choose the GPUs with CUDA_VISIBLE_DEVICES")
    if not torch.cuda.is_available():
        raise ConfigError("fastbci.device=cuda but CUDA is not available on this node")
    n = torch.cuda.device_count()
    if env.local_rank >= n:
        raise ConfigError(f"LOCAL_RANK={env.local_rank} but this node has {n} GPU(s): start at "
                          f"most {n} processes per node (torchrun --nproc_per_node={n})")
    return torch.device("cuda", env.local_rank)


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
    if device.type == "cuda":
        torch.cuda.set_device(device)
    kwargs: dict[str, Any] = {}
    if device.type == "cuda":
        kwargs["device_id"] = device
    dist.init_process_group(backend=backend, init_method="env://", rank=env.rank,
                            world_size=env.world_size, timeout=_timeout(), **kwargs)
    return backend


# ---------------------------------------------------------------------------------------------
# gradient reduction
# ---------------------------------------------------------------------------------------------
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
        self.shared: list[torch.nn.Parameter] = []
        self.day_params: dict[int, list[torch.nn.Parameter]] = {}
        # the per-day layers from the model's own lists, not from parameter names (a wrapped or
        # compiled model renames them, which would silently turn every day into a shared one)
        inner = getattr(model, "_orig_mod", getattr(model, "module", model))
        day_ids: dict[int, int] = {}
        for d, (w, b) in enumerate(zip(inner.day_weights, inner.day_biases)):
            for p in (w, b):
                if p.requires_grad:
                    self.day_params.setdefault(d, []).append(p)
                    day_ids[id(p)] = d
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
        params = self.params_for(days)
        if extras.dim() != 1:
            raise ValueError(f"GradientReducer.all_reduce: extras must be 1-D, got {tuple(extras.shape)}")
        ref = params[0] if params else extras
        pieces = []
        for p in params:
            g = p.grad
            if g is None:
                pieces.append(torch.zeros(p.numel(), dtype=torch.float32, device=p.device))
            else:
                pieces.append(g.reshape(-1).to(torch.float32))
        pieces.append(extras.to(device=ref.device, dtype=torch.float32).reshape(-1))
        flat = torch.cat(pieces)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=self.group)
        offset = 0
        for p in params:
            n = p.numel()
            p.grad = flat[offset:offset + n].view_as(p).to(p.dtype)
            offset += n
        return flat[offset:]


# ---------------------------------------------------------------------------------------------
# the trainer
# ---------------------------------------------------------------------------------------------
def _rebuild_error(rank: int, kind: str, message: str) -> Exception:
    text = f"(rank {rank}) {message}" if rank else message
    known = {"ConfigError": ConfigError, "CheckpointError": ckpt_io.CheckpointError,
             "ValueError": ValueError, "FileNotFoundError": FileNotFoundError}
    return known.get(kind, RuntimeError)(text if kind in known else f"{kind}: {text}")


class DistributedTrainer(T.Trainer):
    """:class:`fastbci.train.Trainer` for one rank of a ``torch.distributed`` run (the default
    process group must be initialised, e.g. by :func:`init_process_group`).

    ``device``: this rank's device (default :func:`rank_device`). The module docstring states the
    batch, gradient, validation, checkpoint and random-stream semantics.
    """

    def __init__(self, cfg: Mapping, env: DistEnv | None = None, *, device: torch.device | None = None,
                 console: bool = True):
        if not dist.is_initialized():
            raise RuntimeError("DistributedTrainer needs an initialised torch.distributed process "
                               "group (fastbci.distributed.init_process_group)")
        if env is None:  # the torchrun environment, else the group (LOCAL_RANK: this node's index)
            env = env_from_os() or DistEnv(rank=dist.get_rank(), world_size=dist.get_world_size(),
                                           local_rank=int(os.environ.get("LOCAL_RANK", 0)))
        if env.world_size != dist.get_world_size() or env.rank != dist.get_rank():
            raise RuntimeError(f"DistributedTrainer: env says rank {env.rank} of {env.world_size}, "
                               f"the process group rank {dist.get_rank()} of {dist.get_world_size()}")
        super().__init__(cfg, rank=env.rank, world_size=env.world_size, console=console)
        self.env = env
        self._device = device
        self._local_stop: str | None = None
        self.reducer: GradientReducer | None = None

    # -- collectives ----------------------------------------------------------------------------
    def _agree(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on every rank; if it failed anywhere, raise on every rank (the lowest
        failing rank's error), so that no rank waits forever in a later collective."""
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

    def _sum_across_ranks(self, values: torch.Tensor) -> torch.Tensor:
        out = values.to(self.device).clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    # -- setup ----------------------------------------------------------------------------------
    def _choose_device(self) -> torch.device:
        return self._device if self._device is not None else rank_device(self.cfg, self.env)

    def setup(self) -> "DistributedTrainer":
        if self._setup_done:
            return self
        if not self.is_main:
            # ranks > 0 stay silent: every message they could log, rank 0 logs too
            log = logging.getLogger(T.LOGGER_NAME)
            for h in log.handlers[:]:
                log.removeHandler(h)
            log.addHandler(logging.NullHandler())
            log.propagate = False
            self.log = log

        def checked_setup():
            check_world_size(self.cfg, self.world_size)
            return T.Trainer.setup(self)

        self._agree(checked_setup)
        # identical weights everywhere (a no-op after the seeded init or a resume, which every
        # rank does the same way; it matters for seed=-1)
        params = [p for p in self.model.parameters()]
        flat = torch.cat([p.detach().reshape(-1) for p in params])
        dist.broadcast(flat, src=0)
        offset = 0
        with torch.no_grad():
            for p in params:
                p.copy_(flat[offset:offset + p.numel()].view_as(p))
                offset += p.numel()
        self._seed_rank_streams()
        self.reducer = GradientReducer(self.model)
        ds = self.cfg["dataset"]
        B = int(ds["batch_size"])
        self.log.info(f"Distributed: {self.world_size} ranks ({dist.get_backend()}), global batch "
                      f"{B} = {self.world_size} x {B // self.world_size} trials; validation "
                      f"batches dealt round-robin; dropout streams per rank")
        return self

    @property
    def dropout_seed(self) -> int:
        """The Philox key of this rank's day-layer dropout: ``dataset.seed + (rank << 32)``."""
        return (int(self.data_path.seed) + (self.rank << 32)) % (1 << 64)

    def _rank_torch_seed(self, salt: int = 0) -> int:
        ds_seed = int(self.cfg["dataset"]["seed"])
        base = ds_seed if ds_seed != -1 else int(self.cfg["seed"])
        if base == -1:
            base = torch.initial_seed()
        return (base + self.rank + salt * 1_000_003) % (1 << 63)

    def _seed_rank_streams(self) -> None:
        """torch's generator on ranks > 0: its own stream (``seed + rank``) for a fresh run, the
        saved per-rank state on a resume at the same world size, a fresh stream otherwise."""
        st = self._resume_info
        if st is None:
            if self.rank > 0:
                torch.manual_seed(self._rank_torch_seed())
            return
        saved = st.get("rng_by_rank")
        old_world = int(st.get("world_size", 1))
        if saved is not None and len(saved) == self.world_size and old_world == self.world_size:
            ckpt_io.restore_rng_state(saved[self.rank])
            return
        if self.rank > 0:
            torch.manual_seed(self._rank_torch_seed(salt=int(st["next_batch"])))
        if old_world != self.world_size:
            self.log.info(f"The checkpoint was written by {old_world} rank(s), resuming on "
                          f"{self.world_size}: same batches and augmentation; dropout streams of "
                          "ranks > 0 start afresh (with dropout on, the continuation matches in "
                          "distribution, not bit for bit)")

    # -- checkpoints ----------------------------------------------------------------------------
    def save_checkpoint(self, name: str, next_batch: int, val_per=None, val_loss=None):
        states: list | None = [None] * self.world_size if self.is_main else None
        dist.gather_object(ckpt_io.capture_rng_state(), states, dst=0)
        self._rng_by_rank = states
        return super().save_checkpoint(name, next_batch, val_per, val_loss)

    def resume_state(self, next_batch: int) -> dict:
        st = super().resume_state(next_batch)
        st["world_size"] = self.world_size
        st["rng_by_rank"] = getattr(self, "_rng_by_rank", None)
        return st

    # -- one step -------------------------------------------------------------------------------
    def request_stop(self, reason: str = "interrupt") -> None:
        """Vote to stop after the current batch; the ranks agree on it in the step's all-reduce,
        so they all stop after the same batch and rank 0 saves a resumable checkpoint."""
        self._local_stop = reason

    def _install_sigint(self):
        """Ctrl-C as in a single process, plus SIGTERM (what ``torchrun`` and batch schedulers
        send to stop workers): vote to stop after this batch and save a resumable checkpoint."""
        old = super()._install_sigint()
        self._old_sigterm = None
        if threading.current_thread() is threading.main_thread():
            def on_term(signum, frame):
                self.request_stop("terminate")

            try:
                self._old_sigterm = signal.signal(signal.SIGTERM, on_term)
            except ValueError:  # pragma: no cover - not the main interpreter
                self._old_sigterm = None
        return old

    def _restore_sigint(self, old) -> None:
        T.Trainer._restore_sigint(old)
        if getattr(self, "_old_sigterm", None) is not None:
            signal.signal(signal.SIGTERM, self._old_sigterm)
            self._old_sigterm = None

    def train_step(self, k: int) -> dict:
        cfg = self.cfg
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        rows = np.asarray(self.plan[k])
        B = len(rows)
        full = self.data_path.batch(self.train_store, self.train_meta, rows, mode="train", step=k)
        lo, hi = shard_bounds(B, self.rank, self.world_size)
        batch = slice_batch(full, lo, hi, self.train_meta,
                            min_time=max(1, int(cfg["model"]["patch_size"])))
        with T._autocast(self.device, self.data_path.amp):
            logits, lens = T.forward_logits(self.model, batch, cfg, seed=self.dropout_seed, step=k)
            per_trial = T.ctc_per_trial(logits, lens, batch)
            local = per_trial.float().sum() / B
        local.backward()
        vote = 1.0 if self._local_stop is not None else 0.0
        extras = torch.stack([local.detach().float(),
                              torch.tensor(vote, dtype=torch.float32, device=local.device)])
        summed = self.reducer.all_reduce(full.days_present, extras)
        loss = summed[0]
        grad_norm = self.clip_gradients()
        # one host read for both the non-finite check and the stop vote
        finite, voted = torch.stack([torch.isfinite(loss) & torch.isfinite(grad_norm),
                                     summed[1] > 0]).tolist()
        if voted and self._stop_request is None:
            self._stop_request = self._local_stop or "interrupt"
        lr = self.optimizer.param_groups[-1]["lr"]
        self.apply_update(finite)
        self.train_losses[k] = loss.detach().float()
        out = {"loss": loss.detach(), "grad_norm": grad_norm.detach(), "per_trial": per_trial.detach(),
               "logits": logits.detach(), "lens": lens, "batch": batch, "finite": finite, "lr": lr}
        if not finite:
            # every rank sees the same non-finite sum: gather the per-trial losses so that the
            # diagnosis names the culprit trials of the whole batch
            # (in their own keys: "batch"/"per_trial"/"logits" stay this rank's, for the train log)
            parts = [torch.empty_like(out["per_trial"].float()) for _ in range(self.world_size)]
            dist.all_gather(parts, out["per_trial"].float().contiguous())
            out["diag_per_trial"] = torch.cat(parts)
            out["diag_batch"] = full
        return out

    # -- validation -----------------------------------------------------------------------------
    def validate(self, collect: bool = False) -> dict:
        """Validation with the batches dealt round-robin to the ranks, the sums all-reduced;
        the per-trial outputs (``collect``) stay on their rank until
        :meth:`_gather_val_trials`."""
        mine = self.val_plan[self.rank::self.world_size]
        res = T.run_validation(self.model, self.val_store, self.val_meta, mine, self.cfg,
                               self.data_path, collect=collect)
        n_days = len(self.cfg["dataset"]["sessions"])
        vec = torch.zeros(4 + 2 * n_days, dtype=torch.float64)
        vec[0] = res["loss_sum"]
        vec[1] = res["n_loss_batches"]
        vec[2] = res["blank_frames"]
        vec[3] = res["frames"]
        for d, e in res["edits_by_day"].items():
            vec[4 + d] = float(e)
        for d, p in res["phonemes_by_day"].items():
            vec[4 + n_days + d] = float(p)
        tot = self._sum_across_ranks(vec).cpu().tolist()
        days = sorted({int(self.val_meta.day[b[0]]) for b in self.val_plan})
        edits = {d: int(round(tot[4 + d])) for d in days}
        phon = {d: int(round(tot[4 + n_days + d])) for d in days}
        total_ph = sum(phon.values())
        n_loss = int(round(tot[1]))
        out = {
            "loss": tot[0] / n_loss if n_loss else None,
            "per": sum(edits.values()) / total_ph if total_ph > 0 else None,
            "per_by_day": {d: (edits[d] / phon[d] if phon[d] else None) for d in days},
            "edits_by_day": edits,
            "phonemes_by_day": phon,
            "blank_fraction": tot[2] / tot[3] if tot[3] else float("nan"),
            "n_trials": int(sum(len(b) for b in self.val_plan)),
            "loss_sum": tot[0], "n_loss_batches": n_loss,
            "blank_frames": int(round(tot[2])), "frames": int(round(tot[3])),
        }
        for key in ("rows", "logits", "tokens"):
            if key in res:
                out[key] = res[key]
        return out

    def _gather_val_trials(self, res: Mapping) -> Mapping | None:
        local = {key: res.get(key, []) for key in ("rows", "logits", "tokens")}
        parts: list | None = [None] * self.world_size if self.is_main else None
        dist.gather_object(local, parts, dst=0)
        if not self.is_main:
            return None
        merged: dict[str, list] = {"rows": [], "logits": [], "tokens": []}
        for part in parts:
            for key in merged:
                merged[key].extend(part[key])
        return merged if merged["rows"] else None


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------
def main(argv: Sequence[str], env: DistEnv) -> int:
    """``python -m fastbci.train`` inside a ``torchrun`` worker (``env.world_size > 1``):
    join the process group, train, leave the group. Only rank 0 prints errors."""
    def run() -> int:
        cfg = config_mod.load_config(argv[0], list(argv[1:]))
        check_world_size(cfg, env.world_size)
        device = rank_device(cfg, env)
        init_process_group(env, device)
        trainer = DistributedTrainer(cfg, env, device=device)
        return T.exit_code_of(trainer.fit()["status"])

    code = 1
    try:
        code = T.run_cli(run, report=env.is_main)
        return code
    finally:
        if dist.is_initialized():
            if code in (T.EXIT_OK, T.EXIT_COLLAPSE, T.EXIT_NONFINITE, T.EXIT_INTERRUPTED):
                # every rank left the training loop together (a fit() status): leave together;
                # without this barrier a rank can tear its gloo pairs down while a peer is still
                # closing, which aborts that peer ("terminate called without an active exception")
                dist.barrier()
            dist.destroy_process_group()
        sys.stdout.flush()
