"""Triton kernel of the data path's transform step: gather + pad, white noise, constant offset,
random cut and Gaussian smoothing along time, in one pass over the data.

The contract is ``fastbci.reference.transform_ref(..., rng="philox")``; the argument-checking op
is ``fastbci.ops.augment_smooth``. How the kernel works (tiles, the four-normals-per-counter
noise, the banded-matrix smoothing, its cost), how the tile is chosen and what is bitwise
reproducible on a GPU: docs/internals.md, "The augment + smoothing kernel".
"""
from __future__ import annotations

import contextlib
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from fastbci.kernels.launch import INTERPRETED, device_guard, int64_bits

__all__ = ["augment_smooth_launch", "launch_plan", "gpu_tile", "tile_override", "Tile", "CANDIDATE_TILES",
           "PER_BATCH_ARGS", "INTERPRETED"]

# Integer arguments whose value changes from batch to batch (lengths, the random cut, the step's
# Philox offsets) or from run to run (the seed). Triton would otherwise compile one kernel per
# value class (== 1, divisible by 16, i32 / i64 / u64); they are also declared with a fixed type.
PER_BATCH_ARGS = ("T_max", "T_cut", "T_out", "cut", "seed", "noise_base", "offset_base")


class Tile(NamedTuple):
    """A launch configuration: time rows ``BT`` and channels ``BC`` per program, warps."""
    BT: int
    BC: int
    num_warps: int


# The tiles a benchmark may compare (bench/test_bench_augment.py times them at the reported
# shapes); gpu_tile below picks one of them for the official kernel. Registers per thread on
# sm_90 (C = 512, bf16 out, num_stages=1; none spills): 32x64/4 warps 82, 64x32/4 106,
# 64x64/4 130, 64x64/8 122, 64x128/8 158, 128x64/8 194.
CANDIDATE_TILES = (Tile(32, 64, 4), Tile(64, 32, 4), Tile(64, 64, 4), Tile(64, 64, 8),
                   Tile(64, 128, 8), Tile(128, 64, 8))

_override: Tile | None = None


def gpu_tile(C: int, K: int, smooth: bool) -> Tile:
    """The GPU tile for a kernel shape: a pure function of (C, K, smoothing on/off), never of
    timings, so every process (and every rank) rounds the banded dot the same way.

    64 x 64 at 4 warps for the official C = 512, K = 9 (32 elements per thread: ~110 hot
    instructions per element, against ~137 at 8 warps); 64 x 32 at 4 warps for the per-element
    Philox path (C % 4 != 0: one Philox call per element; at 64 x 64 it takes 246 registers,
    and under Triton 3.6 255 with 92 bytes of spills; at 64 x 32, 154-166 and none); channel
    tiles no wider than C needs for small C; a tall narrow tile when the halo K - 1 exceeds half
    of 64 rows. The rows (64) and so the grouping of the smoothing sum are the same in all three.
    """
    halo = K - 1 if smooth else 0
    if 2 * halo > 64:
        return Tile(triton.next_power_of_2(2 * halo + 1), 16, 8)
    bc = 64 if C >= 64 else max(16, triton.next_power_of_2(C))
    return Tile(64, min(bc, 32) if C % 4 else bc, 4)


@contextlib.contextmanager
def tile_override(tile: Tile):
    """Launch every GPU kernel of the block with ``tile`` instead of :func:`gpu_tile`'s choice
    (benchmarks only: another tile groups the smoothing sum differently, so the last bits of
    the output change)."""
    global _override
    if tile.BT < 16 or tile.BC < 16 or tile.BC % 4:
        raise ValueError(f"tile {tile}: BT and BC must be >= 16 and BC a multiple of 4")
    before, _override = _override, tile
    try:
        yield
    finally:
        _override = before


def _interpreter_blocks(C: int, K: int, smooth: bool) -> tuple[int, int]:
    """Large tiles under the interpreter, whose cost is per program and operation."""
    halo = K - 1 if smooth else 0
    bt = max(64, triton.next_power_of_2(2 * halo + 1))
    bc = min(512, max(16, triton.next_power_of_2(C)))
    return bt, bc


@triton.jit
def _normals_aligned(seed, base, counter):
    """``philox.normal(4 * counter + j)`` for ``j = 0..3``, interleaved along the last axis.

    ``counter`` is an int64 block whose last axis holds consecutive counters; the result has a
    last axis 4x longer: element ``4 * m + j`` is lane ``j`` of ``counter[..., m]``. One Philox
    call and two Box-Muller pairs (both outputs each) per four normals.
    """
    n0, n1, n2, n3 = tl.randn4x(seed, base + counter)
    # interleave(a, b)[2m + i] = (a, b)[i][m]; nested, position 4m + 2i + k holds
    # ((n0, n2), (n1, n3))[k][i][m], i.e. lane j = 2i + k of counter m
    return tl.interleave(tl.interleave(n0, n2), tl.interleave(n1, n3))


@triton.jit
def _normals_any(seed, base, idx):
    """``philox.normal(idx)`` elementwise for any int64 index block (no alignment needed).

    Each element runs its own Philox call at counter ``idx // 4`` and transforms only the
    uniform pair its lane ``idx % 4`` belongs to, keeping the cos (even lane) or sin (odd lane)
    output; the numbers are those of ``_normals_aligned``.
    """
    r0, r1, r2, r3 = tl.randint4x(seed, base + (idx >> 2))
    lane = idx & 3
    first_pair = lane < 2
    u_a = tl.uint_to_uniform_float(tl.where(first_pair, r0, r2))
    u_b = tl.uint_to_uniform_float(tl.where(first_pair, r1, r3))
    n_cos, n_sin = tl.pair_uniform_to_normal(u_a, u_b)
    return tl.where((lane & 1) == 0, n_cos, n_sin)


@triton.jit(do_not_specialize=PER_BATCH_ARGS)
def _augment_smooth_kernel(
    src_ptr, out_ptr, taps_ptr, rows_ptr, offsets_ptr, lengths_ptr,
    T_max: tl.int32, T_cut: tl.int32, T_out: tl.int32, C,
    stride_sb, stride_st, stride_sc,
    cut: tl.int32, pad_left,
    seed: tl.int64, noise_base: tl.int64, offset_base: tl.int64,
    noise_std, offset_std,
    K: tl.constexpr, GATHER: tl.constexpr, ADD_NOISE: tl.constexpr, ADD_OFFSET: tl.constexpr,
    ALIGNED4: tl.constexpr,
    SMOOTH: tl.constexpr, OUT_BF16: tl.constexpr, MANUAL_BF16: tl.constexpr,
    DOT_PRECISION: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr,
):
    pid_t = tl.program_id(0)
    pid_c = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    if SMOOTH:
        step_t = BT - (K - 1)
    else:
        step_t = BT
    s0 = pid_t * step_t  # first output step of this program

    i = tl.arange(0, BT)
    cols = pid_c * BC + tl.arange(0, BC)
    col_ok = cols < C
    cols64 = cols.to(tl.int64)

    # input steps of the tile in post-cut coordinates, then in pre-cut (padded batch) ones
    u = s0 - pad_left + i
    u_ok = (u >= 0) & (u < T_cut)
    t = (u + cut).to(tl.int64)

    if GATHER:
        trial = tl.load(rows_ptr + b).to(tl.int64)
        start = tl.load(offsets_ptr + trial).to(tl.int64)
        length = tl.load(lengths_ptr + trial).to(tl.int64)
        present = u_ok & (t < length)
        src_rows = (start + t) * stride_st
    else:
        present = u_ok
        src_rows = b * stride_sb + t * stride_st
    ptrs = src_ptr + src_rows[:, None] + cols64[None, :] * stride_sc
    ok2 = u_ok[:, None] & col_ok[None, :]
    val = tl.load(ptrs, mask=present[:, None] & col_ok[None, :], other=0.0).to(tl.float32)

    # element indices: (b * T_max + t) * C + c over the padded, pre-cut (B, T_max, C) batch for
    # the noise (< 2**32, checked on the host), b * C + c for the offset
    if ALIGNED4:
        # C % 4 == 0: counter (index // 4) = row * C/4 + c // 4, lanes = 4 adjacent channels
        tl.static_assert(BC % 4 == 0, "the aligned noise path needs channel tiles of 4k")
        quads = (pid_c * (BC // 4) + tl.arange(0, BC // 4)).to(tl.int64)
        c4 = C // 4
        if ADD_NOISE:
            q = (b * T_max + t)[:, None] * c4 + quads[None, :]
            val = val + noise_std * _normals_aligned(seed, noise_base, q)
        if ADD_OFFSET:
            off = _normals_aligned(seed, offset_base, b * c4 + quads)
            val = val + (offset_std * off)[None, :]
    else:
        if ADD_NOISE:
            idx = (b * T_max + t)[:, None] * C + cols64[None, :]
            val = val + noise_std * _normals_any(seed, noise_base, idx)
        if ADD_OFFSET:
            off = _normals_any(seed, offset_base, b * C + cols64)
            val = val + (offset_std * off)[None, :]
    val = tl.where(ok2, val, 0.0)

    if SMOOTH:
        # banded matrix: output row r of the tile reads input rows r .. r + K - 1
        band = i[None, :] - i[:, None]
        w = tl.load(taps_ptr + band, mask=(band >= 0) & (band < K), other=0.0).to(tl.float32)
        res = tl.dot(w, val, input_precision=DOT_PRECISION)
    else:
        res = val

    s = s0 + i
    out_ok = (i < step_t) & (s < T_out)
    # out is contiguous (B, T_out, C): the row offset is a multiple of C, so C's divisibility
    # (specialised) keeps the stores vectorised although T_out is not specialised
    out_ptrs = out_ptr + ((b * T_out + s.to(tl.int64)) * C)[:, None] + cols64[None, :]
    if OUT_BF16:
        if MANUAL_BF16:
            # the interpreter's float32 -> bfloat16 cast truncates (and its "rtne" mode drops the
            # mantissa carry): round to nearest even on the bits instead (finite values)
            bits = res.to(tl.uint32, bitcast=True)
            bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
            res = bits.to(tl.uint16).to(tl.bfloat16, bitcast=True)
        else:
            res = res.to(tl.bfloat16)  # cvt.rn: round to nearest even
    tl.store(out_ptrs, res, mask=out_ok[:, None] & col_ok[None, :])


def _dot_precision(out: torch.Tensor) -> str:
    on_gpu = out.device.type == "cuda"
    return "tf32x3" if on_gpu and torch.cuda.get_device_capability(out.device)[0] >= 8 else "ieee"


def launch_plan(src: torch.Tensor, out: torch.Tensor, taps: torch.Tensor | None, *, t_max: int,
                cut: int, padding: str, seed: int, noise_base: int, offset_base: int,
                noise_std: float, offset_std: float, rows: torch.Tensor | None = None,
                offsets: torch.Tensor | None = None, lengths: torch.Tensor | None = None
                ) -> tuple[tuple, tuple, dict]:
    """``(grid, args, kwargs)`` of the kernel launch :func:`augment_smooth_launch` makes (also
    what a test hands to Triton's binder to see the specialisation a GPU would compile)."""
    B, T_out, C = out.shape
    gather = rows is not None
    smooth = taps is not None
    K = int(taps.numel()) if smooth else 1
    if gather:
        strides = (0, src.stride(0), src.stride(1))
        rows_arg, offs_arg, lens_arg = rows, offsets, lengths
    else:
        strides = src.stride()
        rows_arg = offs_arg = lens_arg = src  # unused pointers (GATHER is a constexpr)
    args = (src, out, taps if smooth else out, rows_arg, offs_arg, lens_arg,
            t_max, t_max - cut, T_out, C, *strides,
            cut, (K - 1) // 2 if (smooth and padding == "same") else 0,
            int64_bits(seed), int64_bits(noise_base), int64_bits(offset_base),
            float(noise_std), float(offset_std))
    kwargs = dict(K=K, GATHER=gather, ADD_NOISE=noise_std != 0, ADD_OFFSET=offset_std != 0,
                  ALIGNED4=C % 4 == 0, SMOOTH=smooth, OUT_BF16=out.dtype == torch.bfloat16,
                  MANUAL_BF16=INTERPRETED, DOT_PRECISION=_dot_precision(out))
    if INTERPRETED:
        bt, bc = _interpreter_blocks(C, K, smooth)
        kwargs.update(BT=bt, BC=bc)
    else:
        tile = _override or gpu_tile(C, K, smooth)
        bt, bc = tile.BT, tile.BC
        kwargs.update(BT=bt, BC=bc, num_warps=tile.num_warps, num_stages=1)
    halo = K - 1 if smooth else 0
    if bt <= halo:
        raise ValueError(f"augment_smooth: a tile of {bt} rows is too short for {K} taps")
    return (triton.cdiv(T_out, bt - halo), triton.cdiv(C, bc), B), args, kwargs


def augment_smooth_launch(src: torch.Tensor, out: torch.Tensor, taps: torch.Tensor | None,
                          **kw) -> torch.Tensor:
    """Launch the fused kernel into ``out``: a contiguous (B, T_out, C) float32 or bfloat16 tensor.

    ``src`` is the padded batch (B, t_max, C) (any strides) or, when ``rows`` is given, the packed
    (N_total, C) store read through ``offsets``/``lengths``/``rows``. ``taps`` None disables the
    smoothing (then ``padding`` is ignored). ``noise_std``/``offset_std`` 0 skip those draws.
    Keyword arguments as :func:`launch_plan`, assumed checked by the caller
    (``fastbci.ops.augment``); returns ``out``.
    """
    if not out.is_contiguous():
        raise ValueError("augment_smooth_launch: out must be contiguous")
    if out.numel() == 0:
        return out
    grid, args, kwargs = launch_plan(src, out, taps, **kw)
    with device_guard(out):
        _augment_smooth_kernel[grid](*args, **kwargs)
    return out
