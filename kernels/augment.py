"""Triton kernel: gather + pad, white noise, constant offset, random cut and Gaussian smoothing
along time, in one pass over the data.

Semantics (RECIPE.md s3; the contract is ``fastbci.reference.transform_ref(..., rng="philox")``):
for a batch of ``B`` trials padded with zeros to ``T_max`` steps and ``C`` channels,

* ``x'[b, t, c] = x[b, t, c] + noise_std * N(NOISE, (b * T_max + t) * C + c)
  + offset_std * N(OFFSET, b * C + c)`` over the whole padded batch (padding included),
  where ``N(stream, i)`` is ``fastbci.philox.normal``: lane ``i % 4`` of
  ``tl.randn4x(seed, triton_offset_base(step, stream) + i // 4)`` (four normals per Philox call,
  the stream contract of ``fastbci/philox.py``);
* ``y[b, u, c] = x'[b, u + cut, c]`` for ``0 <= u < T_cut = T_max - cut`` and 0 outside (the
  random cut, then the zero padding of the convolution);
* ``out[b, s, c] = sum_k taps[k] * y[b, s + k - pad_left, c]`` for ``0 <= s < T_out``:
  ``'same'`` has ``pad_left = (K - 1) // 2`` and ``T_out = T_cut``, ``'valid'`` has
  ``pad_left = 0`` and ``T_out = T_cut - K + 1``. Without smoothing ``out = y``.

The input is either a padded batch ``x`` (B, T_max, C) read through its own strides, or the
TrialStore's packed ``(N_total, C)`` tensor: trial ``rows[b]`` occupies packed rows
``offsets[rows[b]] .. + lengths[rows[b]] - 1``, and the steps past its end read as zeros.

Scheme (designed for bandwidth: each input element is read once and each output element
written once, up to the small time halo; no intermediate tensor in memory):

* one program owns one trial ``b``, ``BC`` channels and ``BT - (K - 1)`` consecutive output
  steps. It loads the ``BT`` input steps those outputs need (the output rows plus the ``K - 1``
  halo rows), adds the Philox noise and the offset **in registers** (each noise value is
  generated once per tile, i.e. ``BT / (BT - K + 1)`` times per element overall, 1.14x for the
  official 9 taps and ``BT = 64``), zeroes the rows outside ``[0, T_cut)``;
* the normals: when ``C % 4 == 0`` (the official C = 512) every row of the padded batch starts
  at an element index divisible by 4 and so does every channel tile (``BC`` is a multiple of 4),
  so the four normals of one Philox counter are four adjacent channels of one row: the tile
  draws ``tl.randn4x`` on a ``(BT, BC / 4)`` grid of counters and interleaves the four outputs
  along the channels (``tl.interleave`` twice: lanes 0, 1, 2, 3 of counter ``k`` land in
  channels ``4k .. 4k + 3``). For any other ``C`` a row may start mid-counter, so each element
  computes its own counter ``i // 4`` and lane ``i % 4`` (one Philox call and one Box-Muller
  pair per element, its cos or sin output selected by the lane): slower, same numbers;
* the smoothing is a small banded matrix ``W[i, j] = taps[j - i]`` (``BT x BT``, built once per
  program from the taps in memory) applied with one ``tl.dot(W, tile)``: tensor cores do the
  K-tap sum without any shuffling of registers along time. In float32 the dot runs with
  ``input_precision="tf32x3"`` on GPUs with TF32 (three TF32 products, about float32 accuracy,
  ~1e-6 relative here) and ``"ieee"`` elsewhere;
* the result is stored as float32 or bfloat16, rounded once from float32 to nearest even (under
  the interpreter, whose float32 -> bfloat16 cast truncates, the rounding is done on the bits).

Block shapes: ``BT`` is a power of two larger than ``K - 1``: bigger tiles read less halo but
cost ``BT`` multiply-adds per output in the dot (64 is the balance for 9 taps: 14 % halo, 64
tensor-core MACs per output, far below the H100's tensor throughput per byte moved). ``BC``
trades registers for fewer programs. On GPU both are autotuned (key: C, K, smoothing on/off and
the tensor dtypes); under ``TRITON_INTERPRET=1`` a single fixed configuration with large tiles is
used (the interpreter's cost is per program and per operation, not per register).

Cost (static analysis of the sm_90 SASS from ``triton.compile`` + ``nvdisasm``, not a GPU
measurement): streaming 6 bytes per element (float32 in, bfloat16 out) at copy bandwidth leaves a
budget of ~50 instructions per element on an H100. "Hot" below excludes the never-taken
Payne-Hanek slow paths of sin/cos (arguments are in [0, 2 pi)); figures per element of a
64 x 64 tile, 8 warps, C = 512, bf16 out, noise and offset on:

===========================================  ===  ==========  =========
                                             hot  all static  registers
===========================================  ===  ==========  =========
one ``tl.randn`` per element (old contract)  235  311         122
four normals per counter (this kernel)       137  200         122
noise and offset off (load, dot, store)      53   53          122
===========================================  ===  ==========  =========

The noise alone went from ~121 to ~66 hot instructions per element (Philox work / 4, log and
sqrt / 2, one sin added per pair; the two ``tl.interleave`` cost a few shuffles), the offset from
~61 to ~17. Tiles with 32 elements per thread (64 x 64 / 4 warps, 64 x 128 / 8) come to
~110 hot per element. The kernel therefore stays ALU-bound on an H100 (about 2.5x the budget);
the remaining noise cost is the accurate libdevice log/sqrt/sin/cos that the contract fixes.
For ``C % 4 != 0`` (per-element path) the figure is ~300 hot per element.

These are the raw launchers; the argument-checking op is ``fastbci.ops.augment_smooth``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastbci.kernels import INTERPRETED  # the package's import-time interpreter state

__all__ = ["augment_smooth_launch", "INTERPRETED"]


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


@triton.jit
def _augment_smooth_kernel(
    src_ptr, out_ptr, taps_ptr, rows_ptr, offsets_ptr, lengths_ptr,
    T_max, T_cut, T_out, C,
    stride_sb, stride_st, stride_sc,
    stride_ob, stride_ot,
    cut, pad_left,
    seed, noise_base, offset_base,
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
    out_ptrs = out_ptr + b * stride_ob + s.to(tl.int64)[:, None] * stride_ot + cols64[None, :]
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


def _prune_configs(configs, named_args, **kwargs):
    """Keep the tiles whose time extent covers the smoothing halo with room to spare."""
    k = int(kwargs.get("K", named_args.get("K", 1)))
    smooth = bool(kwargs.get("SMOOTH", named_args.get("SMOOTH", True)))
    c = int(named_args["C"])
    halo = k - 1 if smooth else 0
    kept = [cfg for cfg in configs if cfg.kwargs["BT"] >= 2 * halo]
    if not kept:  # a long kernel: one tile tall enough for the halo, narrow to save registers
        bt = max(16, triton.next_power_of_2(2 * halo + 1))
        return [triton.Config({"BT": bt, "BC": 16}, num_warps=8, num_stages=1)]
    # channel tiles much wider than C only waste lanes (C = 7: keep the narrowest tiles)
    narrow = [cfg for cfg in kept if cfg.kwargs["BC"] <= max(32, triton.next_power_of_2(c))]
    return narrow or kept


# Candidate tiles for the GPU autotuner. Each program generates BT x BC Philox normals in
# registers, so the tiles are those that compile without register spills for sm_90. Registers
# per thread with four normals per counter (C = 512, bf16 out, fp32 in, num_stages=1, nvdisasm /
# cuobjdump -res-usage on the triton.compile cubin; none spills): 32x64/4 warps 82, 64x32/4 106,
# 64x64/4 130, 64x64/8 122, 64x128/8 158, 128x64/8 194 (left out as before: 32x128/4 127,
# 128x32/4 255, 128x128/8 248).
_GPU_CONFIGS = [
    triton.Config({"BT": bt, "BC": bc}, num_warps=w, num_stages=1)
    for bt, bc, w in [(32, 64, 4), (64, 32, 4), (64, 64, 4), (64, 64, 8), (64, 128, 8),
                      (128, 64, 8)]
]

if INTERPRETED:
    _kernel = _augment_smooth_kernel
else:
    _kernel = triton.autotune(configs=_GPU_CONFIGS,
                              key=["C", "K", "SMOOTH", "ALIGNED4", "ADD_NOISE", "ADD_OFFSET", "GATHER"],
                              prune_configs_by={"early_config_prune": _prune_configs})(
        _augment_smooth_kernel)


def _interpreter_blocks(C: int, K: int, smooth: bool) -> tuple[int, int]:
    halo = K - 1 if smooth else 0
    bt = max(64, triton.next_power_of_2(2 * halo + 1))
    bc = min(512, max(16, triton.next_power_of_2(C)))
    return bt, bc


def augment_smooth_launch(src: torch.Tensor, out: torch.Tensor, taps: torch.Tensor | None, *,
                          t_max: int, cut: int, padding: str, seed: int, noise_base: int,
                          offset_base: int, noise_std: float, offset_std: float,
                          rows: torch.Tensor | None = None, offsets: torch.Tensor | None = None,
                          lengths: torch.Tensor | None = None) -> torch.Tensor:
    """Launch the fused kernel into ``out`` (B, T_out, C), contiguous in C, float32 or bfloat16.

    ``src`` is the padded batch (B, t_max, C) (any strides) or, when ``rows`` is given, the packed
    (N_total, C) store read through ``offsets``/``lengths``/``rows``. ``taps`` None disables the
    smoothing (then ``padding`` is ignored). ``noise_std``/``offset_std`` 0 skip those draws.
    Arguments are assumed checked by the caller (``fastbci.ops.augment``); returns ``out``.
    """
    B, T_out, C = out.shape
    gather = rows is not None
    smooth = taps is not None
    K = int(taps.numel()) if smooth else 1
    pad_left = (K - 1) // 2 if (smooth and padding == "same") else 0
    t_cut = t_max - cut
    if B == 0 or T_out <= 0 or C == 0:
        return out
    if gather:
        stride_sb, stride_st, stride_sc = 0, src.stride(0), src.stride(1)
        rows_arg, offs_arg, lens_arg = rows, offsets, lengths
    else:
        stride_sb, stride_st, stride_sc = src.stride()
        rows_arg = offs_arg = lens_arg = src  # unused pointers (GATHER is a constexpr)
    taps_arg = taps if smooth else out
    on_gpu = out.device.type == "cuda"
    tf32 = on_gpu and torch.cuda.get_device_capability(out.device)[0] >= 8
    precision = "tf32x3" if tf32 else "ieee"
    args = (src, out, taps_arg, rows_arg, offs_arg, lens_arg,
            t_max, t_cut, T_out, C,
            stride_sb, stride_st, stride_sc,
            out.stride(0), out.stride(1),
            cut, pad_left,
            seed, noise_base, offset_base,
            float(noise_std), float(offset_std))
    consts = dict(K=K, GATHER=gather, ADD_NOISE=noise_std != 0, ADD_OFFSET=offset_std != 0,
                  ALIGNED4=C % 4 == 0, SMOOTH=smooth, OUT_BF16=out.dtype == torch.bfloat16,
                  MANUAL_BF16=INTERPRETED,
                  DOT_PRECISION=precision)
    halo = K - 1 if smooth else 0

    def grid(meta):
        return (triton.cdiv(T_out, meta["BT"] - halo), triton.cdiv(C, meta["BC"]), B)

    if INTERPRETED:
        bt, bc = _interpreter_blocks(C, K, smooth)
        _kernel[grid](*args, **consts, BT=bt, BC=bc)
    else:
        _kernel[grid](*args, **consts)
    return out
