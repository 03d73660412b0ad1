"""Benchmarks: the fused augment + smoothing kernel vs the official sequence of PyTorch ops.

Cases (group ``augment_smooth-T{T}-{out}``), float32 input:

* ``fused``: ``fastbci.ops.augment_smooth(impl="fused")`` on a zero-padded batch;
* ``fused_gather``: ``augment_smooth_gather(impl="fused")`` reading the trials from a packed
  store (no padded batch in memory at all);
* ``fused_unaligned``: ``fused`` on a batch of ``C - 2`` channels (510 on GPU): ``C % 4 != 0``
  takes the kernel's per-element noise path (one Philox call per element instead of one per
  four channels), so its GB/s beside ``fused`` shows what the four-normals-per-counter tile
  path saves (bytes_moved is that batch's own, the reference time is scaled to it);
* ``reference``: ``fastbci.reference.transform_ref(rng="torch")``, the official transform step
  (torch.randn noise and offset, numpy cut, depthwise conv1d smoothing) in float32, plus the
  cast to the output dtype;
* ``copy``: ``dst.copy_(src)`` of the same number of bytes the fused op moves: the device's
  bandwidth yardstick.

extra_info: shapes, bytes moved (input read once + output written once), GB/s, the time ratio
reference / fused and the fraction of the copy bandwidth reached. GPU shapes are the official
ones (B=64, C=512, T=800 and 1600); on a machine without a GPU the Triton interpreter runs tiny
shapes and every figure is a CPU figure (``cpu_figures=True``), meaningless for the GPU targets
(>= 80 % of the copy bandwidth, >= 5x faster than the reference).
"""
from __future__ import annotations

import pytest
import torch

from bench_helpers import DEVICE, ON_GPU, median_seconds, run_bench
from fastbci import philox
from fastbci.ops.augment import Augmentation, augment_smooth, augment_smooth_gather
from fastbci.reference import transform_ref

OFFICIAL = dict(white_noise_std=1.0, constant_offset_std=0.2, random_walk_std=0.0,
                random_walk_axis=-1, static_gain_std=0.0, random_cut=3, smooth_kernel_size=100,
                smooth_data=True, smooth_kernel_std=2)
A = Augmentation.from_transforms
SEED, STEP = 1, 0
B, C = (64, 512) if ON_GPU else (2, 16)
TS = (800, 1600) if ON_GPU else (40,)
OUT_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
CASES = ("fused", "fused_gather", "fused_unaligned", "reference", "copy")


def _inputs(T: int):
    gen = torch.Generator().manual_seed(T)
    x = torch.randn(B, T, C, generator=gen).to(DEVICE)
    n = torch.full((B,), T, dtype=torch.int64, device=DEVICE)
    # packed store: the batch's trials back to back (all of length T, the worst case for
    # the padded layout is irrelevant here: the same bytes are read)
    features = x.reshape(B * T, C).clone()
    lengths = torch.full((B,), T, dtype=torch.int64)
    offsets = torch.arange(B + 1, dtype=torch.int64) * T
    rows = torch.arange(B, dtype=torch.int64)
    store = (features, offsets.to(DEVICE), lengths.to(DEVICE), rows.to(DEVICE))
    return x, n, store


def _fns(T: int, out_dtype: torch.dtype):
    x, n, (features, offsets, lengths, rows) = _inputs(T)
    cut = philox.random_cut(OFFICIAL["random_cut"], SEED, STEP)
    t_out = T - cut
    bytes_moved = x.numel() * x.element_size() + B * t_out * C * torch.empty(
        (), dtype=out_dtype).element_size()

    def fused():
        return augment_smooth(x, n, A(OFFICIAL), seed=SEED, step=STEP, out_dtype=out_dtype,
                              impl="fused")[0]

    x_unaligned = x[:, :, :C - 2].contiguous()

    def fused_unaligned():
        return augment_smooth(x_unaligned, n, A(OFFICIAL), seed=SEED, step=STEP,
                              out_dtype=out_dtype, impl="fused")[0]

    def fused_gather():
        return augment_smooth_gather(features, offsets, lengths, rows, A(OFFICIAL), seed=SEED,
                                     step=STEP, out_dtype=out_dtype, impl="fused", t_max=T)[0]

    def reference():
        out, _ = transform_ref(x, n, OFFICIAL, "train", rng="torch")
        return out.to(out_dtype)

    # the copy moves the same number of bytes: half read, half written
    n_copy = max(1, bytes_moved // 8)
    src = torch.randn(n_copy, device=DEVICE)
    dst = torch.empty_like(src)

    def copy():
        return dst.copy_(src)

    fns = dict(fused=fused, fused_gather=fused_gather, fused_unaligned=fused_unaligned,
               reference=reference, copy=copy)
    return fns, bytes_moved


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("out", list(OUT_DTYPES))
@pytest.mark.parametrize("T", TS)
def test_bench_augment_smooth(benchmark, T, out, case):
    benchmark.group = f"augment_smooth-T{T}-{out}"
    fns, bytes_full = _fns(T, OUT_DTYPES[out])
    fn = fns[case]
    c_case = C - 2 if case == "fused_unaligned" else C
    bytes_moved = bytes_full * c_case // C
    info = dict(B=B, T=T, C=c_case, out_dtype=out, case=case, bytes_moved=bytes_moved,
                cpu_figures=not ON_GPU, normals_per_philox_call=4 if c_case % 4 == 0 else 1)
    if not ON_GPU:
        info["note"] = ("CPU figures: Triton interpreter at tiny shapes; no GPU in this run, "
                        "the GPU targets are not measured")
    if not benchmark.disabled:
        repeat = 10 if ON_GPU else 3
        t_case = median_seconds(fn, repeat=repeat)
        t_ref = median_seconds(fns["reference"], repeat=repeat)
        t_copy = median_seconds(fns["copy"], repeat=repeat)
        gbps = bytes_moved / t_case / 1e9
        copy_gbps = bytes_full / t_copy / 1e9
        # the reference runs on all C channels: scale its time to this case's bytes
        info.update(median_s=t_case, gb_per_s=gbps, copy_gb_per_s=copy_gbps,
                    fraction_of_copy_bandwidth=gbps / copy_gbps,
                    speedup_vs_reference=t_ref * c_case / C / t_case)
    result = run_bench(benchmark, fn, **info)
    if case != "copy":
        assert result.shape[0] == B and result.shape[2] == c_case \
            and result.dtype == OUT_DTYPES[out]
        assert bool(torch.isfinite(result.float()).all())


def test_bench_augment_tiles(benchmark):
    """The GPU tile table's choice against every candidate tile, at the training case (gather
    from the store, bf16 out, T = 800): the only autotuning fastbci does, here, at the reported
    shape. extra_info: each tile's median time, the table's tile, the fastest one and
    ``table_vs_best`` (table time / fastest time; 1.0 when the table is right)."""
    if not ON_GPU:
        pytest.skip("tiles are a GPU choice: the interpreter runs one large tile")
    from fastbci.kernels import augment as kern

    benchmark.group = "augment_smooth-tiles"
    T = TS[0]
    fns, _ = _fns(T, torch.bfloat16)
    table = kern.gpu_tile(C, 9, True)
    times = {}
    for tile in kern.CANDIDATE_TILES:
        with kern.tile_override(tile):
            times[tile] = median_seconds(fns["fused_gather"], repeat=10)
    best = min(times, key=times.get)
    name = "{0.BT}x{0.BC}/{0.num_warps}w".format
    info = dict(B=B, T=T, C=C, out_dtype="bf16", case="fused_gather", table_tile=name(table),
                best_tile=name(best), table_vs_best=times[table] / times[best],
                tile_median_s={name(t): s for t, s in times.items()})
    run_bench(benchmark, fns["fused_gather"], **info)
