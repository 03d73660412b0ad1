"""Where a run computes: the device (``fastbci.device``), the autocast context and the training
numerics, decided in one place for the trainer and for evaluation, and small host-to-device
copies that do not block (the implementation of each op: :mod:`fastbci.ops.dispatch`)."""
from __future__ import annotations

import contextlib
import logging
from typing import Mapping

import numpy as np
import torch

from fastbci.errors import ConfigError


def select_device(cfg: Mapping, log: logging.Logger | None = None, *,
                  local_rank: int | None = None) -> torch.device:
    """The device of ``fastbci.device``.

    One process (``local_rank`` None): ``auto`` is ``cuda:{gpu_number}``, falling back to GPU 0
    when that GPU does not exist and to the CPU without CUDA (each fallback logged); ``cpu``,
    ``cuda`` and ``cuda:N`` are taken as given (an error when CUDA or GPU N is missing).
    One rank of a distributed run: ``cuda:LOCAL_RANK`` (``auto`` with CUDA, or ``cuda``), else
    the CPU (``cpu``, or ``auto`` without CUDA); pinning every rank to one GPU is an error.
    """
    want = str(cfg["fastbci"]["device"])
    if local_rank is not None:
        return _rank_device(want, local_rank)
    info = log.info if log else (lambda *_: None)
    if want == "auto":
        if not torch.cuda.is_available():
            info("No CUDA device: training on the CPU")
            return torch.device("cpu")
        try:
            n = int(cfg["gpu_number"])
        except (TypeError, ValueError):
            raise ConfigError(f"gpu_number must be a GPU index, got {cfg['gpu_number']!r}") from None
        count = torch.cuda.device_count()
        if not 0 <= n < count:
            info(f"gpu_number {n} does not exist on this machine ({count} GPU(s)): using cuda:0")
            n = 0
        return torch.device(f"cuda:{n}")
    try:
        dev = torch.device(want)
    except RuntimeError:
        raise ConfigError(f"fastbci.device: {want!r} is not a device (auto, cpu, cuda or cuda:N)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"fastbci.device={want} but CUDA is not available on this machine; "
                              "use fastbci.device=auto or cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"fastbci.device={want} but this machine has "
                              f"{torch.cuda.device_count()} GPU(s)")
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
    elif dev.type != "cpu":
        raise ConfigError(f"fastbci.device: {want!r} is not supported (auto, cpu, cuda or cuda:N)")
    return dev


def _rank_device(want: str, local_rank: int) -> torch.device:
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
    if local_rank >= n:
        raise ConfigError(f"LOCAL_RANK={local_rank} but this node has {n} GPU(s): start at "
                          f"most {n} processes per node (torchrun --nproc_per_node={n})")
    return torch.device("cuda", local_rank)


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on CUDA when ``use_amp``; nothing on the CPU (as the official trainer, whose
    autocast names device type 'cuda' and therefore does nothing on a CPU run)."""
    if enabled and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def numerics(device: torch.device):
    """The official trainer's CUDA numerics (TF32 for float32 matmuls, deterministic cuDNN)
    while training on ``device``, and the caller's settings back afterwards: the process-wide
    flags never leak into code that runs after a training step, e.g. tests or evaluation.
    Nothing changes off CUDA."""
    if torch.device(device).type != "cuda":
        yield
        return
    precision = torch.get_float32_matmul_precision()
    deterministic = torch.backends.cudnn.deterministic
    torch.set_float32_matmul_precision("high")
    torch.backends.cudnn.deterministic = True
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(precision)
        torch.backends.cudnn.deterministic = deterministic


def to_device(a: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small host array on ``device``: through pinned memory with ``non_blocking`` on CUDA
    (no synchronisation; the caching host allocator keeps the pinned block until the copy has
    run), a fresh tensor elsewhere (never a view of the caller's array)."""
    t = a if isinstance(a, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(a).copy())
    if torch.device(device).type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device, copy=not isinstance(a, np.ndarray))
