"""``fastbci doctor --env``: does ``torch.compile`` give the official model's
gradients on this torch?

Some torch releases compile the official patching wrongly: when the patches (``unfold`` of
overlapping windows, ``permute``, ``reshape``) leave a compiled graph, as they do before the
GRU's graph break, AOTAutograd lays the incoming gradient out with the overlapping strides of
the view and the day-layer gradients come out wrong (docs/compat.md). Nothing fails: the
official trainer, compiled, just learns from wrong day-layer gradients.

:func:`probe` compiles the official model's forward up to its GRU (day matrices and biases
per trial, softsign, 14/4 patches: the graph that ends at the GRU's graph break) on a tiny
input and compares the day-layer gradients with eager ones. :func:`report` says plainly
whether this torch is affected and what to do. Exit status of ``--env``: 0 not affected, 1
affected (a severe finding), 2 when the probe cannot run (e.g. no C++ compiler for inductor).
"""
from __future__ import annotations

import dataclasses
import platform
import time
from typing import Callable

import torch
import torch.nn as nn

from fastbci.errors import FastbciError

PATCH_SIZE, PATCH_STRIDE = 14, 4
#: float32 rounding between a compiled and an eager run is ~1e-6 here; the bug is of order 1
TOLERANCE = 1e-3


class OfficialPatching(nn.Module):
    """The official ``GRUDecoder.forward`` (rnn_model.py) up to its GRU, with its parameter
    layout: one identity-initialised ``day_weights.{i}`` and zero ``day_biases.{i}`` per day,
    stacked per trial; here moved away from identity / zero so that every gradient term counts.
    """

    def __init__(self, neural_dim: int = 8, n_days: int = 2, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.day_layer_activation = nn.Softsign()
        self.day_weights = nn.ParameterList(
            [nn.Parameter(torch.eye(neural_dim) + 0.3 * torch.randn(neural_dim, neural_dim, generator=g))
             for _ in range(n_days)])
        self.day_biases = nn.ParameterList(
            [nn.Parameter(0.3 * torch.randn(1, neural_dim, generator=g)) for _ in range(n_days)])

    def forward(self, x: torch.Tensor, day_idx) -> torch.Tensor:
        day_weights = torch.stack([self.day_weights[i] for i in day_idx], dim=0)
        day_biases = torch.cat([self.day_biases[i] for i in day_idx], dim=0).unsqueeze(1)
        x = torch.einsum("btd,bdk->btk", x, day_weights) + day_biases
        x = self.day_layer_activation(x)
        x = x.unsqueeze(1)
        x = x.permute(0, 3, 1, 2)
        x_unfold = x.unfold(3, PATCH_SIZE, PATCH_STRIDE)
        x_unfold = x_unfold.squeeze(2)
        x_unfold = x_unfold.permute(0, 2, 3, 1)
        return x_unfold.reshape(x.size(0), x_unfold.size(1), -1)  # the GRU's input


@dataclasses.dataclass
class ProbeResult:
    """What :func:`probe` measured: per day-layer parameter the largest absolute difference
    between compiled and eager gradients, and the largest eager gradient (the scale)."""
    torch_version: str
    triton_version: str | None
    device: str
    backend: str
    seconds: float
    differences: dict[str, float]
    scale: float

    @property
    def worst(self) -> tuple[str, float]:
        name = max(self.differences, key=self.differences.get)
        return name, self.differences[name]

    @property
    def affected(self) -> bool:
        return self.worst[1] > TOLERANCE * max(1.0, self.scale)


def _gradients(model: nn.Module, forward: Callable, x: torch.Tensor, day_idx: list[int],
               upstream: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    (forward(x, day_idx) * upstream).sum().backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def _triton_version() -> str | None:
    try:
        import triton
    except ImportError:
        return None
    return getattr(triton, "__version__", "unknown")


def probe(device: str | None = None, backend: str = "inductor",
          compile_fn: Callable[[Callable], Callable] | None = None) -> ProbeResult:
    """Compile :class:`OfficialPatching` (``torch.compile(model, backend=backend)``, or
    ``compile_fn(model)``) and compare its day-layer gradients with eager ones, for a batch of
    3 trials x 60 steps x 8 features over 2 days. ``device``: default CUDA when available."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 60, 8, generator=g).to(device)
    day_idx = [0, 1, 1]  # a list, as constants: one graph (a tensor adds graph breaks, not the bug)
    model = OfficialPatching().to(device)
    n_patches = (x.shape[1] - PATCH_SIZE) // PATCH_STRIDE + 1
    upstream = torch.randn(3, n_patches, PATCH_SIZE * 8, generator=g).to(device)
    eager = _gradients(model, model, x, day_idx, upstream)
    compile_fn = compile_fn or (lambda m: torch.compile(m, backend=backend))
    t0 = time.perf_counter()
    try:
        compiled = _gradients(model, compile_fn(model), x, day_idx, upstream)
    except Exception as e:  # noqa: BLE001 - a compiler that cannot run is the finding
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
        raise FastbciError(f"torch.compile (backend {backend}) failed on {device}, so the probe "
                           f"could not run: {type(e).__name__}: {first}. Without a working "
                           "compiler, train without torch.compile") from None
    seconds = time.perf_counter() - t0
    diffs = {n: float((eager[n] - compiled[n]).abs().max()) for n in eager}
    scale = max(float(v.abs().max()) for v in eager.values())
    return ProbeResult(torch.__version__, _triton_version(), device, backend, seconds, diffs, scale)


#: torch version -> (affected, how it was measured); docs/compat.md states the same
MEASURED = {
    "2.13.0": (True, "CPU, this probe, inductor and aot_eager"),
    "2.11.0": (False, "a CUDA build, the official GRUDecoder compiled against eager, measured "
                      "by fastbci's maintainers"),
}


def _measured() -> str:
    return "; ".join(f"torch {v} {'affected' if bad else 'passes'} ({how})"
                     for v, (bad, how) in MEASURED.items())


def report(r: ProbeResult) -> str:
    """The probe's result in plain words, with the verdict and what to do."""
    name, worst = r.worst
    lines = [f"torch {r.torch_version}, triton {r.triton_version or 'not installed'}, "
             f"python {platform.python_version()}, probe on {r.device}",
             f"compiled the official patching (day layer, softsign, {PATCH_SIZE}/{PATCH_STRIDE} "
             f"unfold windows) with torch.compile (backend {r.backend}) in {r.seconds:.1f} s",
             "day-layer gradients, compiled against eager (largest absolute difference; the "
             f"largest gradient is {r.scale:.3g}):"]
    lines += [f"  {n:<16} {d:.3g}" for n, d in r.differences.items()]
    if r.affected:
        lines += ["", f"this torch is AFFECTED: torch.compile gives wrong gradients for the official "
                  f"model's day layers ({name} off by {worst:.3g}). A compiled official trainer "
                  "learns from them without any error.",
                  "What to do: use fastbci.compat.GRUDecoder (drop-in, its patching is not "
                  "affected), or fastbci's own trainer, or train the official model without "
                  "torch.compile, or use a torch that passes this check "
                  f"(measured: {_measured()}; docs/compat.md)."]
    else:
        lines += ["", f"this torch is not affected: compiled and eager day-layer gradients agree "
                  f"(within {TOLERANCE:g} of the largest gradient)."]
    return "\n".join(lines)
