"""Counter-based Philox 4x32-10 in pure PyTorch, bit-compatible with Triton's ``tl.rand*``.

Every random number fastbci draws in ``rng="philox"`` mode is a pure function of
``(seed, step, stream, element index)``, so a run is reproducible and resumable on any device
and the fused kernels (Triton, C++/CUDA) can regenerate exactly the numbers the reference used.

The stream contract (shared by the reference, the Triton kernels and the C++/CUDA extension):

* Philox key  = ``seed`` as an unsigned 64-bit integer: ``(k0, k1) = (seed & 0xffffffff, seed >> 32)``.
* Philox counter = ``(c0, c1, c2, c3) = (index, step * N_STREAMS + stream, 0, 0)``, i.e. the 64-bit
  Triton ``offset`` is ``((step * N_STREAMS + stream) << 32) | index``.
* ``index`` is the row-major element index inside the tensor the numbers are drawn for:

  ============ ======= ==========================================================
  stream       value   index
  ============ ======= ==========================================================
  NOISE        0       ``(b * T_max + t) * C + c`` over the padded, pre-cut batch
  OFFSET       1       ``b * C + c`` (one offset per trial and channel)
  DROPOUT      2       ``(b * T + t) * C + c`` over the day-projection output
  CUT          3       ``0`` (the batch's random cut, ``randint % random_cut``)
  RANDOM_WALK  4       ``(b * T_max + t) * C + c``
  STATIC_GAIN  5       ``(b * C + i) * C + j``
  ============ ======= ==========================================================

* ``randint`` is the first 32-bit output, ``rand`` maps it to [0, 1) as Triton does (the uint32 is
  reinterpreted as int32, negatives bit-inverted, times 4.6566127342e-10 in float32), ``randn``
  is Box-Muller on the first two outputs: ``sqrt(-2 log max(u1, 1e-7)) * cos(2 pi u2)``.
* Dropout keeps an element when ``rand >= p`` and scales it by ``1 / (1 - p)``.
"""
from __future__ import annotations

import math

import torch

# Philox 4x32 constants (Salmon et al. 2011), as used by Triton.
PHILOX_ROUND_A = 0xD2511F53
PHILOX_ROUND_B = 0xCD9E8D57
PHILOX_KEY_A = 0x9E3779B9
PHILOX_KEY_B = 0xBB67AE85
N_ROUNDS = 10
UNIFORM_SCALE = 4.6566127342e-10  # Triton's int32 -> [0, 1) scale

N_STREAMS = 8
NOISE = 0
OFFSET = 1
DROPOUT = 2
CUT = 3
RANDOM_WALK = 4
STATIC_GAIN = 5
MAX_STEP = (1 << 32) // N_STREAMS - 1
MAX_INDEX = (1 << 32) - 1

_M32 = 0xFFFFFFFF


def _mul_hi_lo(const: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) 32-bit halves of ``const * x`` for a 32-bit constant and int64 tensor x < 2^32.

    int64 cannot hold the full 64-bit product, so x is split into 16-bit halves.
    """
    x_hi = x >> 16
    x_lo = x & 0xFFFF
    p1 = x_hi * const  # < 2^48
    p0 = x_lo * const  # < 2^48
    hi = (p1 + (p0 >> 16)) >> 16
    lo = (((p1 & 0xFFFF) << 16) + p0) & _M32
    return hi & _M32, lo


def philox4x32(c0: torch.Tensor, c1: torch.Tensor, c2: torch.Tensor, c3: torch.Tensor,
               seed: int, n_rounds: int = N_ROUNDS):
    """Philox 4x32 on int64 tensors holding uint32 values; returns four int64 tensors (uint32)."""
    seed = int(seed)
    if not 0 <= seed < (1 << 64):
        raise ValueError(f"philox seed must be in [0, 2**64), got {seed}")
    k0 = seed & _M32
    k1 = (seed >> 32) & _M32
    for _ in range(n_rounds):
        hi_b, lo_b = _mul_hi_lo(PHILOX_ROUND_B, c2)
        hi_a, lo_a = _mul_hi_lo(PHILOX_ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0 = (k0 + PHILOX_KEY_A) & _M32
        k1 = (k1 + PHILOX_KEY_B) & _M32
    return c0, c1, c2, c3


def counter_hi(step: int, stream: int) -> int:
    """The high 32 bits of the 64-bit Triton offset for (step, stream)."""
    step = int(step)
    if not 0 <= step <= MAX_STEP:
        raise ValueError(f"philox step must be in [0, {MAX_STEP}], got {step}")
    if not 0 <= stream < N_STREAMS:
        raise ValueError(f"philox stream must be in [0, {N_STREAMS}), got {stream}")
    return step * N_STREAMS + stream


def triton_offset_base(step: int, stream: int) -> int:
    """The int64 Triton offset of element 0: add the element index to it inside a kernel."""
    return counter_hi(step, stream) << 32


def _counters(index: torch.Tensor, step: int, stream: int):
    index = index.to(torch.int64)
    if index.numel() and (int(index.min()) < 0 or int(index.max()) > MAX_INDEX):
        raise ValueError("philox element indices must lie in [0, 2**32)")
    zero = torch.zeros_like(index)
    return index, torch.full_like(index, counter_hi(step, stream)), zero, zero.clone()


def randint4x(index: torch.Tensor, seed: int, step: int, stream: int):
    """The four uint32 outputs (as int64 tensors) for the given element indices."""
    return philox4x32(*_counters(index, step, stream), seed)


def _uint_to_uniform(x: torch.Tensor) -> torch.Tensor:
    x = torch.where(x >= (1 << 31), x - (1 << 32), x)  # reinterpret as int32
    x = torch.where(x < 0, -x - 1, x)
    return x.to(torch.float32) * torch.tensor(UNIFORM_SCALE, dtype=torch.float32)


def randint(index: torch.Tensor, seed: int, step: int, stream: int) -> torch.Tensor:
    """uint32 values (int64 tensor), Triton ``tl.randint(seed, offset)``."""
    return randint4x(index, seed, step, stream)[0]


def rand(index: torch.Tensor, seed: int, step: int, stream: int) -> torch.Tensor:
    """float32 uniforms in [0, 1), bit-identical to Triton ``tl.rand(seed, offset)``."""
    return _uint_to_uniform(randint(index, seed, step, stream))


def randn(index: torch.Tensor, seed: int, step: int, stream: int) -> torch.Tensor:
    """float32 standard normals, Triton ``tl.randn(seed, offset)`` (within ~1 ulp)."""
    i1, i2, _, _ = randint4x(index, seed, step, stream)
    u1 = torch.clamp(_uint_to_uniform(i1), min=1.0e-7)
    u2 = _uint_to_uniform(i2)
    th = torch.tensor(6.283185307179586, dtype=torch.float32) * u2
    r = torch.sqrt(torch.tensor(-2.0, dtype=torch.float32) * torch.log(u1))
    return r * torch.cos(th)


def _arange_index(shape, device) -> torch.Tensor:
    n = math.prod(shape)
    if n - 1 > MAX_INDEX:
        raise ValueError(f"a philox draw of {n} elements exceeds the 2**32 element index space")
    return torch.arange(n, dtype=torch.int64, device=device).reshape(shape)


def randn_like_shape(shape, seed: int, step: int, stream: int, device=None) -> torch.Tensor:
    """A (row-major indexed) tensor of standard normals of the given shape."""
    return randn(_arange_index(tuple(shape), device), seed, step, stream)


def rand_like_shape(shape, seed: int, step: int, stream: int, device=None) -> torch.Tensor:
    """A (row-major indexed) tensor of [0, 1) uniforms of the given shape."""
    return rand(_arange_index(tuple(shape), device), seed, step, stream)


def dropout_mask(shape, p: float, seed: int, step: int, device=None) -> torch.Tensor:
    """The DROPOUT-stream scale tensor: ``1/(1-p)`` where kept (``rand >= p``), else 0 (float32)."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout p must be in [0, 1), got {p}")
    u = rand_like_shape(shape, seed, step, DROPOUT, device)
    return (u >= p).to(torch.float32) * (1.0 / (1.0 - p))


def random_cut(random_cut_max: int, seed: int, step: int) -> int:
    """The batch's random cut in [0, random_cut_max), from the CUT stream (host side, no sync)."""
    if random_cut_max <= 0:
        return 0
    v = int(randint(torch.zeros(1, dtype=torch.int64), seed, step, CUT)[0])
    return v % int(random_cut_max)
