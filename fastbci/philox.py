"""Counter-based Philox 4x32-10 in pure PyTorch, bit-compatible with Triton's ``tl.rand*``.

Every random number of ``rng="philox"`` mode is a pure function of ``(seed, step, stream, element
index)``, so a run is reproducible and resumable on any device, and the fused kernels (Triton,
C++/CUDA) regenerate exactly the numbers the reference used: four normals per Philox call for
NOISE / OFFSET / RANDOM_WALK / STATIC_GAIN, one uniform per call for DROPOUT / CUT. The stream
layout (keys, counters, element indices, Box-Muller lanes) is in docs/internals.md, "Random
streams".
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


_TWO_PI = 6.283185307179586  # rounded to float32 where it is used, as in Triton
_NORMAL_U_MIN = 1.0e-7


def _box_muller_radius(u: torch.Tensor) -> torch.Tensor:
    """``sqrt(-2 log max(u, 1e-7))`` in float32 (Triton's ``pair_uniform_to_normal``)."""
    u = torch.clamp(u, min=_NORMAL_U_MIN)
    return torch.sqrt(torch.tensor(-2.0, dtype=torch.float32) * torch.log(u))


def _box_muller_angle(u: torch.Tensor) -> torch.Tensor:
    return torch.tensor(_TWO_PI, dtype=torch.float32) * u


def _check_index(index, where: str) -> torch.Tensor:
    if not isinstance(index, torch.Tensor):
        raise TypeError(f"{where}: index must be an integer torch.Tensor, got "
                        f"{type(index).__name__}")
    if index.is_floating_point() or index.is_complex() or index.dtype == torch.bool:
        raise TypeError(f"{where}: index must be an integer tensor, got {index.dtype}")
    return index.to(torch.int64)


def normal(index: torch.Tensor, seed: int, step: int, stream: int) -> torch.Tensor:
    """float32 standard normals of the fastbci normal contract, four per Philox counter.

    ``normal(i) = BM[i % 4]`` with ``BM`` the two Box-Muller pairs of the Philox call at counter
    ``(i // 4, step * N_STREAMS + stream, 0, 0)`` (module docstring): equal, within ~1 ulp, to
    output ``i % 4`` of Triton's ``tl.randn4x(seed, triton_offset_base(step, stream) + i // 4)``.

    Args:
        index: integer tensor of element indices in ``[0, 2**32)``, any shape.
        seed: Philox key in ``[0, 2**64)``.
        step: training step in ``[0, MAX_STEP]``.
        stream: stream id in ``[0, N_STREAMS)`` (NOISE, OFFSET, RANDOM_WALK, STATIC_GAIN).

    Returns:
        float32 tensor of ``index``'s shape and device.
    """
    index = _check_index(index, "philox.normal")
    if index.numel() and (int(index.min()) < 0 or int(index.max()) > MAX_INDEX):
        raise ValueError("philox.normal: element indices must lie in [0, 2**32)")
    lane = index & 3
    r0, r1, r2, r3 = randint4x(index >> 2, seed, step, stream)
    first_pair = lane < 2
    # only the pair the lane belongs to is transformed: (u0, u1) for lanes 0-1, (u2, u3) for 2-3
    radius = _box_muller_radius(_uint_to_uniform(torch.where(first_pair, r0, r2)))
    theta = _box_muller_angle(_uint_to_uniform(torch.where(first_pair, r1, r3)))
    return radius * torch.where((lane & 1) == 0, torch.cos(theta), torch.sin(theta))


def normal4(counter: torch.Tensor, seed: int, step: int, stream: int):
    """The four normals ``(BM0, BM1, BM2, BM3)`` of each Philox counter (``index // 4``).

    ``normal(4 * k + j) == normal4(k)[j]``. Returns four float32 tensors of ``counter``'s shape.
    """
    counter = _check_index(counter, "philox.normal4")
    r0, r1, r2, r3 = randint4x(counter, seed, step, stream)
    r01 = _box_muller_radius(_uint_to_uniform(r0))
    th01 = _box_muller_angle(_uint_to_uniform(r1))
    r23 = _box_muller_radius(_uint_to_uniform(r2))
    th23 = _box_muller_angle(_uint_to_uniform(r3))
    return r01 * torch.cos(th01), r01 * torch.sin(th01), r23 * torch.cos(th23), \
        r23 * torch.sin(th23)


def _arange_index(shape, device) -> torch.Tensor:
    n = math.prod(shape)
    if n - 1 > MAX_INDEX:
        raise ValueError(f"a philox draw of {n} elements exceeds the 2**32 element index space")
    return torch.arange(n, dtype=torch.int64, device=device).reshape(shape)


def normal_like_shape(shape, seed: int, step: int, stream: int, device=None) -> torch.Tensor:
    """A tensor of standard normals of the given shape, element ``i`` (row-major) being
    :func:`normal` ``(i)``: one Philox call per four consecutive elements."""
    shape = tuple(int(s) for s in shape)
    if any(s < 0 for s in shape):
        raise ValueError(f"philox.normal_like_shape: negative size in shape {shape}")
    n = math.prod(shape)
    if n - 1 > MAX_INDEX:
        raise ValueError(f"philox.normal_like_shape: a draw of {n} elements exceeds the 2**32 "
                         f"element index space")
    counters = torch.arange((n + 3) // 4, dtype=torch.int64, device=device)
    four = torch.stack(normal4(counters, seed, step, stream), dim=-1)  # (n/4, 4): index 4k + j
    return four.reshape(-1)[:n].reshape(shape)


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
    # philox4x32's arithmetic works on Python ints as on tensors: one scalar draw, no torch ops
    v = philox4x32(0, counter_hi(step, CUT), 0, 0, seed)[0]
    return v % int(random_cut_max)
