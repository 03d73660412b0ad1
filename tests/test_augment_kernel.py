"""The fused augment + smoothing kernel against the pure-PyTorch reference (rng="philox").

Exactness rules:

* float32 output: ``max |fused - reference| <= 1e-5`` on the CPU (the Philox normals agree within
  ~1 ulp; the banded-matrix smoothing sums in a different order); on CUDA the bound derived in
  ``helpers.augment_tolerance`` (approximate sqrt in the normals, the tf32x3 dot), and the
  normals themselves within ``helpers.normal_tolerance``.
* bfloat16 output (the "2x rule"): with ``ref`` the float32 reference output,
  ``max |float(fused_bf16) - ref| <= 2 * max |float(bf16(ref)) - ref| + 1e-6``, i.e. the fused
  bf16 output is at most twice as far from the exact result as the exact result rounded to
  bf16 once (the 1e-6 absorbs float32-level differences at rounding ties).

The Triton interpreter is slow (~us per element and op), so the shape axes B in {1, 3, 64},
T in {1, 8, 15, 17, 300, 1025}, C in {7, 512}, cut in {0, 1, 2}, both paddings and both input
kinds (padded batch, packed store) are covered by a list of cases in which every value of every
axis appears, not by their cartesian product.
"""
from __future__ import annotations

import pytest
import torch

from fastbci import philox
from fastbci.ops.augment import Augmentation, augment_smooth, augment_smooth_gather
from fastbci.reference import gaussian_taps, smooth_ref, transform_ref
from helpers import (
    JIT_SPEC_PRELUDE, assert_close, augment_tolerance, non_specialised, normal_sum_tolerance,
    normal_tolerance, run_gpu_compile_script,
)

TRITON_KERNEL_TESTS = True  # see tests/conftest.py: CPU cases need the Triton interpreter

SEED = 1
OFFICIAL = dict(white_noise_std=1.0, constant_offset_std=0.2, random_walk_std=0.0,
                random_walk_axis=-1, static_gain_std=0.0, random_cut=3, smooth_kernel_size=100,
                smooth_data=True, smooth_kernel_std=2)
A = Augmentation.from_transforms


def _step_for_cut(cut: int, random_cut: int = 3, seed: int = SEED) -> int:
    """The first training step whose Philox random cut equals ``cut``."""
    if random_cut <= 1:
        assert cut == 0
        return 0
    for step in range(10_000):
        if philox.random_cut(random_cut, seed, step) == cut:
            return step
    raise AssertionError(f"no step below 10000 draws cut {cut} from [0, {random_cut})")


def _assert_bf16_rule(got: torch.Tensor, ref32: torch.Tensor, what: str) -> None:
    assert got.dtype == torch.bfloat16, f"{what}: dtype {got.dtype}, expected bfloat16"
    assert got.shape == ref32.shape, f"{what}: shape {tuple(got.shape)} != {tuple(ref32.shape)}"
    if ref32.numel() == 0:
        return
    err = float((got.float() - ref32).abs().max())
    base = float((ref32.to(torch.bfloat16).float() - ref32).abs().max())
    assert err <= 2 * base + 1e-6, (f"{what}: bf16 error {err:.3g} exceeds 2x the error of the "
                                    f"reference rounded to bf16 ({base:.3g})")


def _store(lengths, C, device, gen, noncontig=False):
    """A packed (N_total, C) store with offsets, from trial lengths; optionally a strided view."""
    lengths = torch.tensor(lengths, dtype=torch.int64)
    offsets = torch.zeros(len(lengths) + 1, dtype=torch.int64)
    offsets[1:] = torch.cumsum(lengths, 0)
    n = int(offsets[-1])
    if noncontig:  # every other column of a wider matrix: stride (2C, 2)
        features = torch.randn(n, 2 * C, generator=gen)[:, ::2].to(device)
    else:
        features = torch.randn(n, C, generator=gen).to(device)
    return features, offsets.to(device), lengths.to(device)


def _padded(B, T, C, layout, device, gen):
    if layout == "contiguous":
        x = torch.randn(B, T, C, generator=gen)
    elif layout == "transposed":  # (B, C, T) storage viewed as (B, T, C)
        x = torch.randn(B, C, T, generator=gen).transpose(1, 2)
    elif layout == "sliced":  # every other time step and a channel offset
        x = torch.randn(B, 2 * T, C + 3, generator=gen)[:, ::2, 3:]
    else:
        raise ValueError(layout)
    return x.to(device)


# (B, T, C, cut, padding, input): every axis value appears at least once
CASES = [
    (1, 1, 7, 0, "same", "contiguous"),
    (3, 8, 512, 1, "same", "sliced"),
    (64, 15, 7, 2, "same", "gather"),
    (3, 17, 7, 0, "valid", "contiguous"),
    (1, 1025, 7, 1, "valid", "gather"),
    (3, 300, 7, 2, "same", "transposed"),
    (1, 300, 512, 0, "valid", "gather_noncontig"),
    (64, 17, 7, 1, "valid", "sliced"),
    (1, 1025, 16, 2, "same", "contiguous"),
    (3, 15, 512, 2, "valid", "transposed"),
    (64, 8, 7, 0, "same", "gather"),
]


def _run_case(B, T, C, cut, padding, kind, device, out_dtype, mode="train",
              transforms=None):
    transforms = dict(OFFICIAL if transforms is None else transforms)
    step = _step_for_cut(cut, transforms["random_cut"]) if mode == "train" else 3
    gen = torch.Generator().manual_seed(1000 * B + 10 * T + C)
    kw = dict(mode=mode, seed=SEED, step=step, padding=padding, out_dtype=out_dtype)
    if kind.startswith("gather"):
        # the longest trial sets T_max; the others are shorter (zero padding + noise)
        n_trials = B + 2
        lengths = [max(1, T - (i * 7) % max(T, 1)) for i in range(n_trials)]
        lengths[1] = T
        features, offsets, lens = _store(lengths, C, device, gen, kind == "gather_noncontig")
        rows = torch.randint(0, n_trials, (B,), generator=gen)
        rows[0] = 1  # make sure the longest trial is in the batch
        rows = rows.to(device)
        got, n_got = augment_smooth_gather(features, offsets, lens, rows, A(transforms), impl="fused",
                                           t_max=T, **kw)
        want, n_want = augment_smooth_gather(features, offsets, lens, rows, A(transforms),
                                             impl="reference", **{**kw, "out_dtype": None})
    else:
        x = _padded(B, T, C, kind, device, gen)
        n = torch.full((B,), T, dtype=torch.int64, device=device)
        got, n_got = augment_smooth(x, n, A(transforms), impl="fused", **kw)
        want, n_want = augment_smooth(x, n, A(transforms), impl="reference",
                                      **{**kw, "out_dtype": None})
    return got, n_got, want, n_want


@pytest.mark.parametrize("B,T,C,cut,padding,kind", CASES)
def test_fused_matches_reference_fp32(B, T, C, cut, padding, kind, device):
    got, n_got, want, n_want = _run_case(B, T, C, cut, padding, kind, device, None)
    assert got.dtype == torch.float32 and got.is_contiguous()
    assert torch.equal(n_got.cpu(), n_want.cpu()), f"lengths {n_got.tolist()} != {n_want.tolist()}"
    assert_close(got, want, **augment_tolerance(device),
                 what=f"fp32 B={B} T={T} C={C} cut={cut} {padding} {kind}")


@pytest.mark.parametrize("B,T,C,cut,padding,kind", [CASES[1], CASES[2], CASES[4], CASES[9]])
def test_fused_bf16_output_2x_rule(B, T, C, cut, padding, kind, device):
    got, _, want, _ = _run_case(B, T, C, cut, padding, kind, device, torch.bfloat16)
    _assert_bf16_rule(got, want, f"bf16 B={B} T={T} C={C} cut={cut} {padding} {kind}")
    # the kernel rounds its float32 result once, to nearest even, like torch's cast
    got32, _, _, _ = _run_case(B, T, C, cut, padding, kind, device, None)
    mismatch = int((got != got32.to(torch.bfloat16)).sum())
    assert mismatch == 0, f"{mismatch} bf16 outputs are not the float32 output rounded to nearest"


def test_reference_path_is_transform_ref(device):
    """impl='reference' with 'same' padding is transform_ref(rng='philox') itself."""
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(3, 20, 9, generator=gen).to(device)
    n = torch.tensor([20, 11, 4], device=device)
    got, n_got = augment_smooth(x, n, A(OFFICIAL), seed=SEED, step=2, impl="reference")
    want, n_want = transform_ref(x, n, OFFICIAL, "train", rng="philox", seed=SEED, step=2)
    assert torch.equal(got, want) and torch.equal(n_got, n_want)


@pytest.mark.parametrize("mode", ["val", "eval"])
@pytest.mark.parametrize("padding", ["same", "valid"])
def test_validation_mode_smooths_only(mode, padding, device):
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(3, 17, 7, generator=gen).to(device)
    n = torch.tensor([17, 9, 12], device=device)
    got, n_got = augment_smooth(x, n, A(OFFICIAL), mode=mode, seed=SEED, step=0, padding=padding,
                                impl="fused")
    want = smooth_ref(x, gaussian_taps(2.0, 100), padding)
    assert_close(got, want, **augment_tolerance(device), what=f"{mode} {padding}")
    k = gaussian_taps(2.0, 100).numel()
    n_expect = n if padding == "same" else torch.clamp(n - (k - 1), min=0)
    assert torch.equal(n_got, n_expect)


@pytest.mark.parametrize("std,size", [(1.0, 100), (5.0, 100), (12.0, 100), (1.0, 2), (0.5, 3)])
@pytest.mark.parametrize("padding", ["same", "valid"])
def test_any_taps(std, size, padding, device):
    """Other kernels than the official 9 taps: short, long (> the interpreter tile), even K."""
    k = gaussian_taps(std, size).numel()
    tr = dict(OFFICIAL, smooth_kernel_std=std, smooth_kernel_size=size)
    T = max(40, k + 5)
    got, n_got, want, n_want = _run_case(3, T, 7, 1, padding, "contiguous", device, None,
                                         transforms=tr)
    assert torch.equal(n_got, n_want)
    assert_close(got, want, **augment_tolerance(device, k),
                 what=f"taps std={std} size={size} (K={k}) {padding}")


@pytest.mark.parametrize("overrides", [
    dict(smooth_data=False),
    dict(white_noise_std=0.0),
    dict(constant_offset_std=0.0, random_cut=0),
    dict(white_noise_std=0.5, constant_offset_std=1.5, random_cut=1),
    dict(random_walk_std=0.1, random_walk_axis=1),
    dict(static_gain_std=0.05),
])
def test_transform_variants(overrides, device):
    """Switches of the recipe, including the (unfused) random walk and static gain."""
    tr = dict(OFFICIAL, **overrides)
    got, n_got, want, n_want = _run_case(3, 17, 7, 0, "same", "contiguous", device, None,
                                         transforms=tr)
    assert torch.equal(n_got, n_want)
    assert_close(got, want, **augment_tolerance(device), what=f"transforms {overrides}")
    got, n_got, want, n_want = _run_case(3, 17, 7, 0, "same", "gather", device, None,
                                         transforms=tr)
    assert_close(got, want, **augment_tolerance(device), what=f"gather, transforms {overrides}")


def test_gather_equals_padded_batch(device):
    """The packed-store path equals the padded-batch path on the zero-padded batch."""
    gen = torch.Generator().manual_seed(7)
    features, offsets, lengths = _store([5, 23, 1, 17], 7, device, gen)
    rows = torch.tensor([3, 1, 1, 2, 0], device=device)
    t_max = 23
    padded = torch.zeros(5, t_max, 7, device=device)
    for b, r in enumerate(rows.tolist()):
        s, n = int(offsets[r]), int(lengths[r])
        padded[b, :n] = features[s:s + n]
    n_batch = lengths[rows]
    step = _step_for_cut(2)
    got, n_got = augment_smooth_gather(features, offsets, lengths, rows, A(OFFICIAL), seed=SEED,
                                       step=step, impl="fused")  # t_max computed
    want, n_want = augment_smooth(padded, n_batch, A(OFFICIAL), seed=SEED, step=step, impl="fused")
    assert torch.equal(n_got, n_want) and n_got.tolist() == [15, 21, 21, -1, 3]
    assert_close(got, want, atol=0.0, what="gather vs padded batch (same kernel)")
    # host-side rows/lengths (no device sync for t_max), and an explicit larger t_max
    got_cpu, _ = augment_smooth_gather(features, offsets.cpu(), lengths.cpu(), rows.cpu(),
                                       A(OFFICIAL), seed=SEED, step=step, impl="fused")
    assert_close(got_cpu, want, atol=0.0, what="gather with CPU index tensors")
    longer, _ = augment_smooth_gather(features, offsets, lengths, rows, A(OFFICIAL), seed=SEED,
                                      step=step, impl="fused", t_max=30)
    padded30 = torch.cat([padded, torch.zeros(5, 7, 7, device=device)], dim=1)
    want30, _ = augment_smooth(padded30, n_batch, A(OFFICIAL), seed=SEED, step=step, impl="reference")
    assert_close(longer, want30, **augment_tolerance(device),
                 what="gather with t_max above the longest trial")


# ---------------------------------------------------------------------------------------------
# statistics of the noise
# ---------------------------------------------------------------------------------------------
NOISE_ONLY = dict(OFFICIAL, constant_offset_std=0.0, random_cut=0, smooth_data=False)


def _noise(device, step, seed=SEED, transforms=NOISE_ONLY, shape=(4, 64, 128)):
    x = torch.zeros(shape, device=device)
    n = torch.full((shape[0],), shape[1], device=device)
    return augment_smooth(x, n, A(transforms), seed=seed, step=step, impl="fused")[0].cpu()


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    a = a.flatten() - a.mean()
    b = b.flatten() - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


def test_noise_statistics(device):
    z = _noise(device, step=11)  # 32768 values: sampling error of the mean 1/sqrt(n) ~ 0.0055
    assert abs(float(z.mean())) < 0.03, f"noise mean {float(z.mean()):.4f}"
    assert abs(float(z.std()) - 1.0) < 0.03, f"noise std {float(z.std()):.4f}"
    assert abs(float((z.abs() > 1.96).float().mean()) - 0.05) < 0.01, "tail mass is not Gaussian"
    assert abs(_corr(z[:, 1:], z[:, :-1])) < 0.03, "neighbouring time steps correlate"
    assert abs(_corr(z[:, :, 1:], z[:, :, :-1])) < 0.03, "neighbouring channels correlate"
    assert abs(_corr(z[1:], z[:-1])) < 0.03, "neighbouring trials correlate"


def test_noise_depends_on_seed_and_step_only(device):
    a = _noise(device, step=3)
    assert torch.equal(a, _noise(device, step=3)), "same (seed, step) gave different noise"
    b = _noise(device, step=4)
    c = _noise(device, step=3, seed=SEED + 1)
    assert abs(_corr(a, b)) < 0.03, "different steps give correlated noise"
    assert abs(_corr(a, c)) < 0.03, "different seeds give correlated noise"
    # the noise matches the NOISE Philox stream element by element
    want = philox.normal_like_shape((4, 64, 128), SEED, 3, philox.NOISE)
    assert_close(a, want, **normal_tolerance(device), what="noise vs philox.normal (NOISE stream)")


@pytest.mark.parametrize("seed,step", [(2**64 - 5, 3), (2**63, philox.MAX_STEP), (7, 2**28)])
def test_64bit_seeds_and_offsets(seed, step, device):
    """Seeds and Philox offsets of 2**63 and above reach the kernel as int64 with the same bits
    (the kernel declares them int64 so that no value changes its compiled signature)."""
    tr = dict(NOISE_ONLY, constant_offset_std=1.0)
    z = _noise(device, step=step, seed=seed, transforms=tr, shape=(2, 3, 8))
    want = (philox.normal_like_shape((2, 3, 8), seed, step, philox.NOISE)
            + philox.normal_like_shape((2, 8), seed, step, philox.OFFSET)[:, None, :])
    assert_close(z, want, **normal_sum_tolerance(device, (1.0, 1.0)), what=f"seed {seed} step {step}")


@pytest.mark.parametrize("C", [1, 2, 3, 4, 5, 6, 7, 8, 12, 20, 36, 100, 512])
def test_noise_and_offset_are_philox_normal_for_any_C(C, device):
    """The raw kernel noise (no smoothing, no cut) is philox.normal element by element, for
    every C: multiples of 4 take the four-lanes-per-counter tile path, the others the
    per-element path, where rows start mid-counter (C % 4 in {1, 2, 3})."""
    B, T = 3, 5
    z = _noise(device, step=7, shape=(B, T, C))
    want = philox.normal_like_shape((B, T, C), SEED, 7, philox.NOISE)
    assert_close(z, want, **normal_tolerance(device), what=f"noise, C={C} (C % 4 = {C % 4})")
    tr = dict(NOISE_ONLY, white_noise_std=0.0, constant_offset_std=1.0)
    z = _noise(device, step=7, transforms=tr, shape=(B, T, C))
    want = philox.normal_like_shape((B, C), SEED, 7, philox.OFFSET)[:, None, :].expand(B, T, C)
    assert_close(z, want, **normal_tolerance(device), what=f"offset, C={C} (C % 4 = {C % 4})")
    # both together, with a random cut: the noise indices are those of the pre-cut batch
    tr = dict(NOISE_ONLY, constant_offset_std=0.5, random_cut=3)
    step = _step_for_cut(2)
    z = _noise(device, step=step, transforms=tr, shape=(B, T, C))
    want = (philox.normal_like_shape((B, T, C), SEED, step, philox.NOISE)
            + 0.5 * philox.normal_like_shape((B, C), SEED, step, philox.OFFSET)[:, None, :])
    assert_close(z, want[:, 2:], **normal_sum_tolerance(device, (1.0, 0.5)),
                 what=f"noise + offset after cut 2, C={C}")


def test_constant_offset_statistics(device):
    tr = dict(NOISE_ONLY, white_noise_std=0.0, constant_offset_std=1.0)
    z = _noise(device, step=5, transforms=tr, shape=(16, 9, 256))
    assert torch.equal(z, z[:, :1].expand_as(z)), "offset is not constant along time"
    off = z[:, 0]
    assert abs(float(off.mean())) < 0.06 and abs(float(off.std()) - 1.0) < 0.06
    assert abs(_corr(off[:, 1:], off[:, :-1])) < 0.06, "neighbouring channel offsets correlate"


# ---------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------
def test_clear_errors(device, monkeypatch):
    x = torch.zeros(2, 10, 7, device=device)
    n = torch.full((2,), 10, device=device)
    with pytest.raises(ValueError, match="padding"):
        augment_smooth(x, n, A(OFFICIAL), padding="full", impl="fused")
    with pytest.raises(ValueError, match="out_dtype"):
        augment_smooth(x, n, A(OFFICIAL), out_dtype=torch.float16, impl="fused")
    with pytest.raises(ValueError, match="impl"):
        augment_smooth(x, n, A(OFFICIAL), impl="cuda")
    with pytest.raises(ValueError, match="mode"):
        augment_smooth(x, n, A(OFFICIAL), mode="training", impl="fused")
    with pytest.raises(ValueError, match=r"\(B, T_max, C\)"):
        augment_smooth(x[0], n, A(OFFICIAL), impl="fused")
    with pytest.raises(ValueError, match="n_time_steps"):
        augment_smooth(x, n[:1], A(OFFICIAL), impl="fused")
    with pytest.raises(KeyError, match="white_noise_std"):
        augment_smooth(x, n, A({k: v for k, v in OFFICIAL.items() if k != "white_noise_std"}),
                       impl="fused")
    with pytest.raises(ValueError, match="step"):
        augment_smooth(x, n, A(OFFICIAL), step=-1, impl="fused")
    with pytest.raises(ValueError, match="random cut"):
        augment_smooth(x[:, :2], n, A(OFFICIAL), seed=SEED, step=_step_for_cut(2), impl="fused")
    with pytest.raises(ValueError, match="'valid'"):
        augment_smooth(x[:, :9], n, A(OFFICIAL), seed=SEED, step=_step_for_cut(1),
                       padding="valid", impl="fused")
    with pytest.raises(ValueError, match="requires grad"):
        augment_smooth(x.clone().requires_grad_(), n, A(OFFICIAL), impl="fused")
    f, o, L = _store([3, 4], 7, device, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="rows must index"):
        augment_smooth_gather(f, o, L, torch.tensor([0, 2], device=device), A(OFFICIAL),
                              impl="fused")
    with pytest.raises(ValueError, match="offsets must have"):
        augment_smooth_gather(f, o[:-1], L, torch.tensor([0], device=device), A(OFFICIAL),
                              impl="fused")
    if device.type == "cpu":
        import fastbci.kernels.launch
        monkeypatch.setattr(fastbci.kernels.launch, "INTERPRETED", False)  # kernels defined for a GPU
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
            augment_smooth(x, n, A(OFFICIAL), impl="fused")
        # 'auto' on a CPU tensor is the reference path
        got, _ = augment_smooth(x, n, A(OFFICIAL), impl="auto")
        want, _ = augment_smooth(x, n, A(OFFICIAL), impl="reference")
        assert torch.equal(got, want)


def test_gpu_tile_table():
    """The GPU tile is a pure function of (C, K, smoothing): one of the benchmarked candidates
    for the official shape, tall enough for the halo with room to spare, never wider than small
    C needs, and the same object every call (no timing, no autotuner)."""
    from fastbci.kernels import augment as kern

    assert kern.gpu_tile(512, 9, True) == kern.Tile(64, 64, 4)
    assert kern.gpu_tile(512, 9, True) in kern.CANDIDATE_TILES
    # the per-element Philox path (C % 4 != 0): narrower, so that it does not spill (Triton 3.6)
    assert kern.gpu_tile(510, 9, True) == kern.Tile(64, 32, 4)
    assert kern.gpu_tile(510, 9, True) in kern.CANDIDATE_TILES
    for c, k, smooth in [(512, 9, True), (7, 9, True), (512, 21, True), (512, 1, False),
                         (64, 101, True), (3, 2, True), (36, 33, True)]:
        tile = kern.gpu_tile(c, k, smooth)
        halo = k - 1 if smooth else 0
        assert tile.BT >= 2 * halo and tile.BT >= 16 and tile.BC >= 16 and tile.BC % 4 == 0, tile
        assert tile.BC <= max(16, triton_next_pow2(c)), f"C={c}: channel tile {tile.BC}"
        assert tile == kern.gpu_tile(c, k, smooth)
    with pytest.raises(ValueError, match="multiple of 4"):
        with kern.tile_override(kern.Tile(64, 18, 4)):
            pass


def triton_next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def test_empty_batch(device):
    x = torch.zeros(0, 12, 7, device=device)
    out, n = augment_smooth(x, torch.zeros(0, device=device), A(OFFICIAL), impl="fused")
    assert out.shape[0] == 0 and out.shape[2] == 7 and n.numel() == 0


def _official_plan(K, *, T=800, cut=1, step=3, seed=SEED, gather=True, C=512, out=torch.bfloat16):
    """The launch the training step makes (gather from the store, bf16 out) for one batch."""
    from fastbci.kernels import augment as kern

    features = torch.zeros(4 * T, C)
    rows = torch.arange(4)
    offsets = torch.arange(5) * T
    lengths = torch.full((4,), T)
    src = features if gather else torch.zeros(4, T, C)
    return kern.launch_plan(
        src, torch.empty(4, T - cut, C, dtype=out), torch.ones(K), t_max=T, cut=cut,
        padding="same", seed=seed, noise_base=philox.triton_offset_base(step, philox.NOISE),
        offset_base=philox.triton_offset_base(step, philox.OFFSET), noise_std=1.0,
        offset_std=0.2, **(dict(rows=rows, offsets=offsets, lengths=lengths) if gather else {}))


def test_per_batch_arguments_are_not_specialised():
    """The integer arguments that change with every batch (lengths, cut, the step's Philox
    offsets) and the seed are excluded from Triton's specialisation and carry a fixed type, so
    no batch compiles a new kernel; read off the kernel object the interpreter made here."""
    import inspect

    from fastbci.kernels import augment as kern

    fn = kern._augment_smooth_kernel
    params = inspect.signature(getattr(fn, "fn", fn)).parameters
    missing = [a for a in kern.PER_BATCH_ARGS if a not in params]
    assert not missing, f"PER_BATCH_ARGS names no parameter of the kernel: {missing}"
    assert non_specialised(fn) == set(kern.PER_BATCH_ARGS), (
        f"do_not_specialize of the augment kernel is {sorted(non_specialised(fn))}, "
        f"expected {sorted(kern.PER_BATCH_ARGS)}")
    for a in kern.PER_BATCH_ARGS:
        assert str(params[a].annotation) in ("tl.int32", "tl.int64"), \
            f"{a} has no fixed integer type (annotation {params[a].annotation!r})"


_AOT_SCRIPT = JIT_SPEC_PRELUDE + r"""
import re
from fastbci.kernels import augment as K
from helpers import non_specialised
import test_augment_kernel as t

fn = K._augment_smooth_kernel
assert non_specialised(fn) == set(K.PER_BATCH_ARGS), sorted(non_specialised(fn))


def spec(**kw):
    grid, args, kwargs = t._official_plan(9, **kw)
    kwargs["DOT_PRECISION"] = "tf32x3"  # what a GPU with TF32 gets
    return jit_spec(fn, *args, **kwargs), kwargs


base, kwargs = spec()
# batches of other lengths, cuts, steps and seeds: the same specialisation, i.e. no recompile
for kw in [dict(T=801), dict(T=17), dict(T=1024), dict(cut=0), dict(cut=2), dict(step=0),
           dict(step=1), dict(step=119999), dict(seed=2), dict(seed=2**40 + 3),
           dict(seed=2**64 - 5), dict(T=15, cut=0, step=0, seed=1)]:
    other = spec(**kw)[0]
    diff = [(n, a, b) for n, a, b in zip(fn.arg_names, base, other) if a != b]
    if diff:
        sys.exit(f"{kw} changes the specialisation: {diff}")
print("stable", len(base))
for aligned in (True, False):
    s, kw = spec(gather=aligned, C=512 if aligned else 510)
    ptx = compile_like_jit(fn, s, num_warps=kw["num_warps"])
    # Philox multiplies: one 10-round call per 4 elements (aligned) or per element; the two
    # paths have their own tiles (gpu_tile), so the counts are compared per tile element
    print("aligned" if aligned else "per-element", ptx.count("mul.hi.u32"), kw["BT"] * kw["BC"])
    approx = sorted(set(re.findall(r"\b((?:sqrt|rsqrt|lg2|ex2|sin|cos)\.approx[.a-z0-9]*)", ptx)))
    print("approx", aligned, " ".join(approx))
print("compiled")
"""


@pytest.mark.slow
def test_kernel_compiles_for_sm90_as_the_jit_would():
    """What the JIT would build on a GPU, without one (Triton's binder and bundled ptxas):

    * the specialisation key is the same for batches of other lengths, cuts, steps and seeds
      (item: no recompile on the hot path);
    * the aligned noise path (C % 4 == 0) emits about a quarter of the Philox multiplies of the
      per-element path per tile element (measured with Triton 3.7.1 and 3.6.0: 172 mul.hi.u32 for the
      aligned 64 x 64 tile, 324 for the per-element 64 x 32 tile, i.e. 0.042 vs 0.158 per
      element);
    * the only approximate transcendental in the Box-Muller is ``sqrt.approx.ftz.f32``: the
      premise of ``helpers.normal_tolerance``'s CUDA bound (log, cos and sin are libdevice).
    """
    stdout = run_gpu_compile_script(_AOT_SCRIPT, "the augment kernel")
    lines = dict(line.split(" ", 1) for line in stdout.splitlines() if " " in line)
    (aligned, a_elems), (per_element, p_elems) = (
        map(int, lines[k].split()) for k in ("aligned", "per-element"))
    assert 0 < aligned * p_elems * 5 < per_element * a_elems * 2, (
        f"Philox mul.hi.u32 in the PTX: aligned path {aligned} for a tile of {a_elems} "
        f"elements, per-element path {per_element} for {p_elems}; expected about 1 : 4 per "
        f"element (at least 1 : 2.5)")
    approx = {ln.split(" ", 2)[-1] for ln in stdout.splitlines() if ln.startswith("approx ")}
    assert approx == {"sqrt.approx.ftz.f32"}, (
        f"approximate instructions in the Box-Muller: {approx}; helpers.normal_tolerance "
        f"assumes sqrt.approx.ftz.f32 only")


# ---------------------------------------------------------------------------------------------
# CUDA only: compile count, bitwise determinism across processes, device guard
# ---------------------------------------------------------------------------------------------
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _compiled(fn) -> int:
    """Kernels in the JIT cache of a Triton function, all devices (Triton 3.x: the first entry
    of each per-device cache tuple is the dict of compiled kernels)."""
    return sum(len(c[0]) for c in getattr(fn, "device_caches", {}).values())


@needs_cuda
@pytest.mark.cuda
def test_cuda_batches_of_other_lengths_do_not_recompile():
    from fastbci.kernels import augment as kern

    features, offsets, lengths = _store([800, 801, 17, 1024, 333], 512, "cuda",
                                        torch.Generator().manual_seed(2))

    def run(rows, step):
        return augment_smooth_gather(features, offsets, lengths, torch.tensor(rows, device="cuda"),
                                     A(OFFICIAL), seed=SEED, step=step, out_dtype=torch.bfloat16,
                                     impl="fused")
    run([0, 1], 0)
    before = _compiled(kern._augment_smooth_kernel)
    assert before >= 1, "cannot read the kernel cache of this Triton version"
    for rows, step in [([1, 2], 1), ([2], 7), ([3, 4, 0], 8), ([4], 119999), ([0, 3], 2)]:
        run(rows, step)
    assert _compiled(kern._augment_smooth_kernel) == before, "a batch compiled a new kernel"


_BITWISE_SCRIPT = r"""
import hashlib, sys, torch
sys.path.insert(0, "tests")
import test_augment_kernel as t
got, _, _, _ = t._run_case(64, 300, 512, 1, "same", "gather", torch.device("cuda"), torch.float32)
print(hashlib.sha256(got.cpu().numpy().tobytes()).hexdigest())
"""


@needs_cuda
@pytest.mark.cuda
def test_cuda_output_is_bitwise_identical_across_processes():
    """The GPU tile is a fixed function of the shape, so another process (a resumed run,
    another rank) computes the same bits (docs/internals.md: what is bitwise on CUDA)."""
    import hashlib
    import os
    import subprocess
    import sys

    got, _, _, _ = _run_case(64, 300, 512, 1, "same", "gather", torch.device("cuda"), torch.float32)
    here = hashlib.sha256(got.cpu().numpy().tobytes()).hexdigest()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    res = subprocess.run([sys.executable, "-c", _BITWISE_SCRIPT], capture_output=True, text=True,
                         timeout=300, cwd=root)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.split()[-1] == here, "another process computed other bits"


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
@pytest.mark.cuda
def test_cuda_tensors_on_another_device():
    with torch.cuda.device(0):
        got, _, want, _ = _run_case(3, 17, 7, 0, "same", "contiguous", torch.device("cuda:1"), None)
    assert got.device == torch.device("cuda:1")
    assert_close(got, want, **augment_tolerance("cuda"), what="tensors on cuda:1, cuda:0 current")
