"""Checkpoints of a run: save (official format plus the resume state), resume exactly, or start
from another run's weights; and the seeding of the random streams around them."""
from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from fastbci import checkpoint as ckpt_io
from fastbci import config as config_mod
from fastbci.errors import ConfigError
from fastbci.loading import load_weights
from fastbci.training.rundir import RunDir
from fastbci.training.state import RunState

#: configuration keys whose change does not make a resumed run differ from an uninterrupted one
RESUME_NEUTRAL = ("fastbci.resume", "fastbci.overwrite", "fastbci.progress", "fastbci.plot",
                  "fastbci.tensorboard", "num_training_batches", "output_dir", "checkpoint_dir")


def seed_everything(seed: int) -> None:
    """The official trainer's seeding before the model is built (skipped when ``seed == -1``)."""
    if seed != -1:
        np.random.seed(seed)
        random.seed(seed)
        torch.manual_seed(seed)


def _rank_torch_seed(cfg: Mapping, rank: int, salt: int = 0) -> int:
    base = int(cfg["dataset"]["seed"])
    base = base if base != -1 else int(cfg["seed"])
    if base == -1:
        base = torch.initial_seed()
    return (base + rank + salt * 1_000_003) % (1 << 63)


class Checkpointer:
    """Writes and reads the run's checkpoints in ``run_dir.checkpoint_dir``: ``save`` is a
    collective call (every rank's generator states go in), the main process writes."""

    def __init__(self, cfg: Mapping, run_dir: RunDir, model: torch.nn.Module, optimizer,
                 scheduler, state: RunState, parallel, log: logging.Logger):
        self.cfg = cfg
        self.run_dir = run_dir
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.state = state
        self.parallel = parallel
        self.log = log
        self.trust = bool(cfg["fastbci"]["trust_checkpoint"])

    def save(self, name: str, val_per: float | None = None, val_loss: float | None = None
             ) -> Path | None:
        """Write ``checkpoint_dir/name`` (official format + the resume state at the current
        batch); returns its path on the main process, None elsewhere."""
        rng_by_rank = self.parallel.gather_objects(ckpt_io.capture_rng_state())
        if not self.parallel.is_main:
            return None
        resume = {**self.state.to_dict(), "rng": ckpt_io.capture_rng_state(),
                  "config": self.cfg, "world_size": self.parallel.world_size,
                  "rng_by_rank": rng_by_rank}
        path = self.run_dir.checkpoint_dir / name
        ck = ckpt_io.build_checkpoint(self.model.official_state_dict(), self.optimizer,
                                      self.scheduler, val_per, val_loss, resume)
        ckpt_io.atomic_save(ck, path)
        self.run_dir.write_config(self.cfg, beside_checkpoints_only=True)
        return path

    def _load(self, path) -> dict:
        return ckpt_io.load(path, map_location=next(self.model.parameters()).device,
                            trust=self.trust)

    def init_from(self, path) -> None:
        """``init_from_checkpoint``: another run's weights (and optimiser and schedule when the
        file has them); the run continues at the schedule's batch, with fresh random streams."""
        if path in (None, "None", ""):
            raise ConfigError("init_from_checkpoint=true needs init_checkpoint_path=PATH")
        ck = self._load(path)
        load_weights(self.model, ck, path)
        if "optimizer_state_dict" in ck:
            self.optimizer.load_state_dict(ck["optimizer_state_dict"])
        if "scheduler_state_dict" in ck:
            self.scheduler.load_state_dict(ck["scheduler_state_dict"])
            # fix: the official trainer restarts its loop at batch 0 here; continue instead
            self.state.next_batch = int(self.scheduler.last_epoch)
        st = self.state
        st.best_val_per = float(ck.get("val_PER", st.best_val_per))
        st.best_val_loss = float(ck.get("val_loss", st.best_val_loss))
        self.log.info(f"Initialised from checkpoint {path}; continuing at batch {st.next_batch} "
                      "(random streams restart: not an exact resume; use fastbci.resume for that)")

    def resume(self, path: Path) -> dict[str, Any]:
        """Continue the run of ``path`` exactly: weights, optimiser, schedule, counters and
        every random generator; returns the checkpoint's resume state."""
        ck = self._load(path)
        st = ckpt_io.resume_state_of(ck, path)
        a, b = config_mod.flatten(st.get("config") or {}), config_mod.flatten(self.cfg)
        changed = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k not in RESUME_NEUTRAL)
        if changed:
            self.log.info("Resuming with configuration changes (the run will differ from an "
                          "uninterrupted one): " + ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}"
                                                             for k in changed))
        load_weights(self.model, ck, path)
        self.optimizer.load_state_dict(ck["optimizer_state_dict"])
        self.scheduler.load_state_dict(ck["scheduler_state_dict"])
        self.state.load_dict(st)
        ckpt_io.restore_rng_state(st["rng"])
        self.log.info(f"Resumed from {path} at batch {self.state.next_batch}")
        return st

    def seed_streams(self, resume: Mapping | None) -> None:
        """torch's generator on ranks > 0 of a distributed run: its own stream (``seed + rank``)
        for a fresh run, the saved per-rank state on a resume at the same world size, a fresh
        stream otherwise. Nothing to do in one process."""
        rank, world = self.parallel.rank, self.parallel.world_size
        if world == 1:
            return
        if resume is None:
            if rank > 0:
                torch.manual_seed(_rank_torch_seed(self.cfg, rank))
            return
        saved = resume.get("rng_by_rank")
        old_world = int(resume.get("world_size", 1))
        if saved is not None and len(saved) == world and old_world == world:
            ckpt_io.restore_rng_state(saved[rank])
            return
        if rank > 0:
            torch.manual_seed(_rank_torch_seed(self.cfg, rank, salt=int(resume["next_batch"])))
        if old_world != world:
            self.log.info(f"The checkpoint was written by {old_world} rank(s), resuming on "
                          f"{world}: same batches and augmentation; dropout streams of ranks > 0 "
                          "start afresh (with dropout on, the continuation matches in "
                          "distribution, not bit for bit)")
