"""Checkpoints: the official format, plus the state fastbci needs to resume a run exactly.

A checkpoint written by fastbci is a ``dict`` that the official trainer can load as is:

    model_state_dict, optimizer_state_dict, scheduler_state_dict, val_PER, val_loss

(``model_state_dict`` carries the official key names, without ``_orig_mod.`` / ``module.``
prefixes), plus one extra key, ``"fastbci"``, with everything needed to continue the run
bit for bit: the index of the next training batch, the random-generator states (torch CPU and
CUDA, numpy's legacy global generator, Python's ``random``), best metrics, counters, the loss
history and the configuration. The official loader ignores the extra key. ``args.yaml`` (the
configuration) is written beside the checkpoints, as official.

Files in ``checkpoint_dir``: ``best_checkpoint`` (best validation PER, ties by loss),
``resume_checkpoint`` (the latest resumable state, rewritten at every validation, every
``fastbci.checkpoint_every`` batches and on interrupt), ``checkpoint_batch_{k}``
(``save_all_val_steps``) and ``final_checkpoint_batch_{k}`` (``save_final_model``).
Writes are atomic (temporary file + rename), so an interrupted save never leaves a truncated
checkpoint behind.
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

RESUME_NAME = "resume_checkpoint"
BEST_NAME = "best_checkpoint"
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit the run, with the path and the reason."""


# ---------------------------------------------------------------------------------------------
# random-generator states
# ---------------------------------------------------------------------------------------------
def capture_rng_state() -> dict[str, Any]:
    """The state of every global generator a training step may draw from."""
    state = {
        "torch_cpu": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["torch_cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Restore the states saved by :func:`capture_rng_state`."""
    cpu_state = state["torch_cpu"]
    torch.set_rng_state(cpu_state.cpu() if hasattr(cpu_state, "cpu") else cpu_state)
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    cuda_states = state.get("torch_cuda")
    if cuda_states is not None and torch.cuda.is_available():
        n = torch.cuda.device_count()
        if len(cuda_states) != n:
            raise CheckpointError(
                f"the checkpoint holds CUDA generator states for {len(cuda_states)} GPU(s) but this "
                f"machine has {n}; an exact resume needs the same GPU count")
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda_states])


# ---------------------------------------------------------------------------------------------
# io
# ---------------------------------------------------------------------------------------------
def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def build_checkpoint(model_state: Mapping[str, torch.Tensor], optimizer: torch.optim.Optimizer,
                     scheduler, val_per: float | None, val_loss: float | None,
                     resume_state: Mapping[str, Any] | None) -> dict:
    """The official checkpoint dict, plus ``"fastbci"`` (``resume_state``) when given."""
    ckpt = {
        "model_state_dict": dict(model_state),
        "optimizer_state_dict": optimizer.state_dict(),
        "scheduler_state_dict": scheduler.state_dict(),
        "val_PER": float("inf") if val_per is None else float(val_per),
        "val_loss": float("inf") if val_loss is None else float(val_loss),
    }
    if resume_state is not None:
        ckpt["fastbci"] = {"format": FORMAT_VERSION, **resume_state}
    return ckpt


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint file (fastbci's or the official one) with a clear error when it fails."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # torch raises many types for a corrupt or foreign file
        raise CheckpointError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}") from None
    if isinstance(ckpt, Mapping) and "model_state_dict" in ckpt:
        return dict(ckpt)
    if isinstance(ckpt, Mapping) and ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        # a bare state dict
        return {"model_state_dict": dict(ckpt)}
    raise CheckpointError(
        f"{path} is not a model checkpoint: expected a dict with 'model_state_dict' "
        f"(official / fastbci format) or a bare state dict, got {type(ckpt).__name__}"
        + (f" with keys {sorted(ckpt)[:8]}" if isinstance(ckpt, Mapping) else ""))


def resume_state_of(ckpt: Mapping, path: str | os.PathLike) -> dict:
    """The ``"fastbci"`` resume state of a checkpoint, or a clear error for an official one."""
    st = ckpt.get("fastbci")
    if not isinstance(st, Mapping) or "next_batch" not in st:
        raise CheckpointError(
            f"{path} has no fastbci resume state (it is an official or weights-only checkpoint); "
            "to start from its weights use init_from_checkpoint=true "
            f"init_checkpoint_path={path} instead of fastbci.resume")
    if st.get("format", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path} was written by a newer fastbci (checkpoint format "
                              f"{st['format']} > {FORMAT_VERSION})")
    return dict(st)


def find_resume_checkpoint(checkpoint_dir: str | os.PathLike) -> Path | None:
    """The latest resumable checkpoint of a run: ``checkpoint_dir/resume_checkpoint`` if present
    (only there: a stale run elsewhere, e.g. under ``output_dir``, is never picked up)."""
    p = Path(checkpoint_dir) / RESUME_NAME
    return p if p.is_file() else None
