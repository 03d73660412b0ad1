"""Triton kernels for patching: sliding time windows (forward) and their fold (backward).

``y[b, p, k * C + c] = x[b, stride * p + k, c]`` (``fastbci.reference.patchify_ref``); the fold
adds the overlapping windows back without atomics. The differentiable, argument-checking op is
``fastbci.ops.patchify``; the tiling is described in docs/internals.md, "The patchify kernels".
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastbci.kernels.launch import device_guard

__all__ = ["patchify_forward", "patchify_backward", "n_windows_covering", "FWD_PER_BATCH_ARGS",
           "BWD_PER_BATCH_ARGS"]

# Integer arguments that change with the batch length: not specialised (== 1, divisible by 16),
# and declared with a fixed type, so a new T never compiles a new kernel. The strides keep their
# specialisation: they decide whether the loads are vectorised.
FWD_PER_BATCH_ARGS = ("n_rows", "P")
BWD_PER_BATCH_ARGS = ("n_rows", "T", "P")

# Elements per program tile (rows x channels). Memory-bound copy: a few thousand elements per
# program keeps enough loads in flight without spilling registers.
_TILE_ELEMENTS = 4096
_MAX_BLOCK_C = 512
_SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@triton.jit(do_not_specialize=FWD_PER_BATCH_ARGS)
def _patchify_fwd_kernel(
    x_ptr, y_ptr,
    n_rows: tl.int64, C, P: tl.int32,
    sxb, sxt, sxc,
    SIZE: tl.constexpr, STRIDE: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid_r = tl.program_id(0).to(tl.int64)
    pid_c = tl.program_id(1).to(tl.int64)
    rows = pid_r * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)  # (b, p, k) flattened
    cols = pid_c * BLOCK_C + tl.arange(0, BLOCK_C).to(tl.int64)  # channel c
    row_ok = rows < n_rows
    col_ok = cols < C

    k = rows % SIZE
    bp = rows // SIZE
    p = bp % P
    b = bp // P
    t = p * STRIDE + k

    src = (b * sxb + t * sxt)[:, None] + (cols * sxc)[None, :]
    mask = row_ok[:, None] & col_ok[None, :]
    vals = tl.load(x_ptr + src, mask=mask)
    dst = rows[:, None] * C + cols[None, :]
    tl.store(y_ptr + dst, vals.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=BWD_PER_BATCH_ARGS)
def _patchify_bwd_kernel(
    dy_ptr, dx_ptr,
    n_rows: tl.int64, T: tl.int32, C, P: tl.int32,
    sdb, sdp, sdn,
    SIZE: tl.constexpr, STRIDE: tl.constexpr, N_COVER: tl.constexpr,
    ACC_FP64: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid_r = tl.program_id(0).to(tl.int64)
    pid_c = tl.program_id(1).to(tl.int64)
    rows = pid_r * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)  # (b, t) flattened
    cols = pid_c * BLOCK_C + tl.arange(0, BLOCK_C).to(tl.int64)  # channel c
    row_ok = rows < n_rows
    col_ok = cols < C

    t = rows % T
    b = rows // T
    col_off = (cols * sdn)[None, :]

    if ACC_FP64:
        acc = tl.zeros((BLOCK_R, BLOCK_C), dtype=tl.float64)
    else:
        acc = tl.zeros((BLOCK_R, BLOCK_C), dtype=tl.float32)
    for j in tl.static_range(N_COVER):
        # j-th latest window that may cover step t, and t's position k inside it.
        p = t // STRIDE - j
        k = t - p * STRIDE
        ok = row_ok & (p >= 0) & (p < P) & (k < SIZE)
        src = (b * sdb + p * sdp + k * C * sdn)[:, None] + col_off
        vals = tl.load(dy_ptr + src, mask=ok[:, None] & col_ok[None, :], other=0.0)
        acc += vals.to(acc.dtype)

    dst = rows[:, None] * C + cols[None, :]
    tl.store(dx_ptr + dst, acc.to(dx_ptr.dtype.element_ty),
             mask=row_ok[:, None] & col_ok[None, :])


def n_windows_covering(size: int, stride: int) -> int:
    """Most windows any one time step can belong to: ``ceil(size / stride)``."""
    return -(-size // stride)


def _blocks(C: int) -> tuple[int, int]:
    block_c = min(triton.next_power_of_2(max(C, 1)), _MAX_BLOCK_C)
    block_r = max(1, _TILE_ELEMENTS // block_c)
    return block_r, block_c


def _check_geometry(size: int, stride: int) -> None:
    for name, v in (("size", size), ("stride", stride)):
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ValueError(f"patchify kernel: {name} must be a positive int, got {v!r}")


def _check_tensor(name: str, t: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"patchify kernel: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 3:
        raise ValueError(f"patchify kernel: {name} must be 3-D, got shape {tuple(t.shape)}")
    if t.dtype not in _SUPPORTED_DTYPES:
        raise TypeError(f"patchify kernel: {name} dtype {t.dtype} is not supported "
                        f"(use one of {', '.join(str(d) for d in _SUPPORTED_DTYPES)})")


def patchify_forward(x: torch.Tensor, size: int = 14, stride: int = 4) -> torch.Tensor:
    """Sliding windows of ``x`` (B, T, C), any strides -> contiguous (B, P, size * C), same dtype.
    """
    _check_tensor("x", x)
    _check_geometry(size, stride)
    B, T, C = x.shape
    if T < size:
        raise ValueError(f"patchify kernel: needs T >= size={size}, "
                         f"got x of shape {tuple(x.shape)}")
    P = (T - size) // stride + 1
    y = torch.empty((B, P, size * C), dtype=x.dtype, device=x.device)
    n_rows = B * P * size
    if y.numel() == 0:
        return y
    block_r, block_c = _blocks(C)
    grid = (triton.cdiv(n_rows, block_r), triton.cdiv(C, block_c))
    with device_guard(y):
        _patchify_fwd_kernel[grid](
            x, y, n_rows, C, P,
            x.stride(0), x.stride(1), x.stride(2),
            SIZE=size, STRIDE=stride, BLOCK_R=block_r, BLOCK_C=block_c,
            num_warps=4,
        )
    return y


def patchify_backward(dy: torch.Tensor, T: int, size: int = 14, stride: int = 4) -> torch.Tensor:
    """Fold windows back: ``dy`` (B, P, size * C), any strides -> contiguous ``dx`` (B, T, C).

    ``dx[b, t, c]`` is the sum of every window element that copied ``x[b, t, c]``; the sum runs
    in float32 (float64 for float64) and is rounded once to ``dy.dtype``.
    """
    _check_tensor("dy", dy)
    _check_geometry(size, stride)
    B, P, N = dy.shape
    if isinstance(T, bool) or not isinstance(T, int) or T < size:
        raise ValueError(f"patchify kernel: T must be an int >= size={size}, got {T!r}")
    if N % size != 0:
        raise ValueError(f"patchify kernel: dy's last dim {N} is not a multiple of size={size}")
    if P != (T - size) // stride + 1:
        raise ValueError(f"patchify kernel: dy has {P} windows but T={T}, size={size}, "
                         f"stride={stride} give {(T - size) // stride + 1}")
    C = N // size
    dx = torch.empty((B, T, C), dtype=dy.dtype, device=dy.device)
    n_rows = B * T
    if dx.numel() == 0:
        return dx
    block_r, block_c = _blocks(C)
    grid = (triton.cdiv(n_rows, block_r), triton.cdiv(C, block_c))
    with device_guard(dx):
        _patchify_bwd_kernel[grid](
            dy, dx, n_rows, T, C, P,
            dy.stride(0), dy.stride(1), dy.stride(2),
            SIZE=size, STRIDE=stride, N_COVER=n_windows_covering(size, stride),
            ACC_FP64=dy.dtype == torch.float64,
            BLOCK_R=block_r, BLOCK_C=block_c,
            # 8 warps (16 elements per thread): at 4 the N_COVER-deep gather takes 72 registers
            # and spills 8 bytes under Triton 3.6 (bf16), 135 registers in float32 under 3.7
            # (18.75% occupancy); each element's sum runs in one thread either way (same bits)
            num_warps=8,
        )
    return dx
