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
Writes are atomic (temporary file, fsync, rename, fsync of the folder), so an interrupted save
or a full disk never leaves a truncated checkpoint behind, and the previous one stays.

Loading never runs code: files are read with ``torch.load(weights_only=True)``, allowing only
tensors, plain Python values and numpy arrays / scalars (what fastbci and the official trainer
store). A file that needs more is refused with the types it holds; ``trust=True``
(``fastbci.trust_checkpoint=true``, ``evaluate --trust-checkpoint``) loads it anyway, with a
warning. fastbci checkpoints carry a checksum of their contents (``fastbci_checksum``), verified
on load; official checkpoints, which have none, load as they are.
"""
from __future__ import annotations

import hashlib
import os
import random
import warnings
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from fastbci.errors import CheckpointError
from fastbci.fileio import atomic_path, file_kind, path_problem

__all__ = ["CheckpointError", "RESUME_NAME", "BEST_NAME", "load", "atomic_save", "build_checkpoint",
           "capture_rng_state", "restore_rng_state", "resume_state_of", "find_resume_checkpoint"]

RESUME_NAME = "resume_checkpoint"
BEST_NAME = "best_checkpoint"
FORMAT_VERSION = 1
CHECKSUM_KEY = "fastbci_checksum"
CHECKSUM_ALGORITHM = "blake2b-128"


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
    """``torch.save`` to a temporary file in the same folder, fsync, rename over ``path``, fsync
    the folder; a full disk is a :class:`~fastbci.fileio.StorageError` and ``path`` keeps its
    previous content."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _to_host(obj: Any) -> Any:
    """``obj`` with every tensor on the CPU (nested dicts, lists and tuples rebuilt)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, Mapping):
        return {k: _to_host(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_host(v) for v in obj)
    return obj


def _digest(obj: Any, h) -> None:
    """Feed ``obj`` (nested dicts / lists of tensors, arrays and plain values, in their stored
    order) to the hash ``h``."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous().reshape(-1)
        h.update(f"T{t.dtype}{tuple(obj.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().data if t.numel() else b"")
    elif isinstance(obj, np.ndarray):
        a = np.ascontiguousarray(obj)
        h.update(f"A{a.dtype.str}{a.shape}".encode())
        h.update(a.view(np.uint8).data if a.size and a.dtype != object else repr(a).encode())
    elif isinstance(obj, Mapping):
        h.update(b"{")
        for k, v in obj.items():
            _digest(k, h)
            _digest(v, h)
        h.update(b"}")
    elif isinstance(obj, (list, tuple)):
        h.update(b"[")
        for v in obj:
            _digest(v, h)
        h.update(b"]")
    else:
        h.update(f"{type(obj).__name__}:{obj!r}".encode())


def checksum(ckpt: Mapping) -> str:
    """The checksum of a checkpoint's contents (everything but the checksum itself)."""
    h = hashlib.blake2b(digest_size=16)
    _digest({k: v for k, v in ckpt.items() if k != CHECKSUM_KEY}, h)
    return h.hexdigest()


def build_checkpoint(model_state: Mapping[str, torch.Tensor], optimizer: torch.optim.Optimizer | None,
                     scheduler, val_per: float | None, val_loss: float | None,
                     resume_state: Mapping[str, Any] | None) -> dict:
    """The official checkpoint dict, plus ``"fastbci"`` (``resume_state``) when given, and its
    checksum. Tensors are moved to the host once here, for the checksum and for ``torch.save``
    alike (loading maps them to the run's device). ``optimizer`` / ``scheduler`` None: a
    weights-only checkpoint (e.g. a calibrated model: ``init_from_checkpoint`` then starts a
    fresh optimiser and schedule)."""
    ckpt: dict[str, Any] = {"model_state_dict": dict(model_state)}
    if optimizer is not None:
        ckpt["optimizer_state_dict"] = optimizer.state_dict()
    if scheduler is not None:
        ckpt["scheduler_state_dict"] = scheduler.state_dict()
    ckpt["val_PER"] = float("inf") if val_per is None else float(val_per)
    ckpt["val_loss"] = float("inf") if val_loss is None else float(val_loss)
    if resume_state is not None:
        ckpt["fastbci"] = {"format": FORMAT_VERSION, **resume_state}
    ckpt = _to_host(ckpt)
    ckpt[CHECKSUM_KEY] = {"algorithm": CHECKSUM_ALGORITHM, "digest": checksum(ckpt)}
    return ckpt


def _safe_globals() -> list:
    """What a checkpoint may hold besides tensors and plain values: numpy arrays and scalars
    (fastbci's loss history and generator states, the official ``val_loss``)."""
    core = getattr(np, "_core", None) or np.core
    allowed = [np.ndarray, np.dtype, core.multiarray._reconstruct, core.multiarray.scalar]
    allowed += [getattr(np.dtypes, n) for n in dir(getattr(np, "dtypes", None) or object)
                if n.endswith("DType")]
    return allowed


def _reason(error: BaseException) -> str:
    """torch's reason for refusing a file in a few words, without its advice to load it
    unsafely."""
    text = str(error)
    if "WeightsUnpickler error:" in text:
        tail = text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation")[0]
        return f"the safe unpickler refuses it: {' '.join(tail.split())[:200]}"
    first = text.strip().splitlines()[0] if text.strip() else ""
    if not first or "Weights only load failed" in first:
        return type(error).__name__
    return f"{type(error).__name__}: {first.split('. ')[0][:200]}"


def _read(path: Path, map_location, trust: bool):
    try:
        with torch.serialization.safe_globals(_safe_globals()), warnings.catch_warnings():
            # torch's notes on unusual pickle protocols: the outcome is reported below
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for a corrupt or foreign file
        error = e
    kind = file_kind(path)
    if kind not in ("a zip archive", "a pickle"):
        raise CheckpointError(f"{path} is not a checkpoint: it is {kind}, not a file written by "
                              "torch.save") from None
    try:
        allowed = {f"{g.__module__}.{g.__qualname__}" for g in _safe_globals()}
        unsafe = [g for g in torch.serialization.get_unsafe_globals_in_checkpoint(path)
                  if g not in allowed]
    except Exception:  # noqa: BLE001 - not a readable torch file at all
        unsafe = []
    if not unsafe:
        raise CheckpointError(f"cannot read checkpoint {path}: {kind} that torch.load cannot "
                              f"read, damaged or not written by torch.save ({_reason(error)})"
                              f"{_others_hint(path)}") from None
    held = ", ".join(unsafe[:8])
    if not trust:
        raise CheckpointError(
            f"{path} needs arbitrary unpickling to load (it holds {held}): loading it could run "
            "code from the file, so fastbci refuses. If you made this file or trust its source, "
            "pass fastbci.trust_checkpoint=true (training) or --trust-checkpoint (evaluate)")
    warnings.warn(f"loading {path} with full unpickling (trusted by request): it holds {held}",
                  UserWarning, stacklevel=3)
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}") from None


def _others_hint(path: Path) -> str:
    """``; other checkpoints of this run: ...`` (existing checkpoint files in ``path``'s
    folder, ``path`` itself left out), or what to do when there is none."""
    folder = path.parent
    names = {RESUME_NAME, BEST_NAME}
    try:
        found = sorted(p for p in folder.iterdir() if p.name != path.name and p.is_file() and (
            p.name in names or p.name.startswith(("checkpoint_batch_", "final_checkpoint_batch_"))))
    except OSError:
        found = []
    if not found:
        return f"; {folder} holds no other checkpoint"
    return f"; other checkpoints in {folder}: {', '.join(p.name for p in found[:6])}"


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu", *,
         trust: bool = False) -> dict:
    """Read a checkpoint file (fastbci's or the official one) without running code from it
    (``trust``: allow full unpickling, with a warning), verify its checksum when it has one,
    and give a clear error when any of that fails: the path missing, a directory, unreadable,
    not a torch file, damaged, or holding code."""
    path = Path(path)
    problem = path_problem(path)
    if problem is not None:
        raise CheckpointError(f"checkpoint {path} {problem}")
    ckpt = _read(path, map_location, trust)
    if isinstance(ckpt, Mapping) and "model_state_dict" in ckpt:
        stored = ckpt.get(CHECKSUM_KEY)
        if isinstance(stored, Mapping) and stored.get("algorithm") == CHECKSUM_ALGORITHM \
                and stored.get("digest") != checksum(ckpt):
            raise CheckpointError(
                f"{path} is corrupt: its contents do not match the checksum stored when it was "
                "written (a damaged disk or an incomplete copy); use another checkpoint"
                f"{_others_hint(path)}")
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
