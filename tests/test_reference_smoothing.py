"""The reference Gaussian kernel and per-channel smoothing (fastbci.reference.smoothing)."""
import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter1d

from fastbci.reference import gaussian_taps, same_padding, smooth_output_length, smooth_ref

STD2_HALF = [0.02763055, 0.06628225, 0.12383153, 0.18017381, 0.20416369]


def _recipe_taps(std, size):
    """docs/recipe.md section 3 step by step: float32 impulse at size//2, gaussian_filter1d defaults,
    taps > 0.01 (compared in float32), divided by their float32 sum."""
    impulse = np.zeros(size, dtype=np.float32)
    impulse[size // 2] = np.float32(1.0)
    blurred = gaussian_filter1d(impulse, sigma=std)
    assert blurred.dtype == np.float32
    keep = np.nonzero(blurred > np.float32(0.01))[0]
    kept = blurred[keep]
    return kept / kept.sum(dtype=np.float32)


def _numpy_smooth(x, taps, padding):
    """Direct per-channel correlation in float64 numpy: out[t] = sum_k taps[k] * xp[t + k]."""
    x = np.asarray(x, dtype=np.float64)
    taps = np.asarray(taps, dtype=np.float64)
    B, T, C = x.shape
    K = taps.size
    if padding == "same":
        left = (K - 1) // 2
        right = K - 1 - left
        x = np.concatenate([np.zeros((B, left, C)), x, np.zeros((B, right, C))], axis=1)
    n_out = x.shape[1] - K + 1
    out = np.zeros((B, n_out, C))
    for b in range(B):
        for c in range(C):
            out[b, :, c] = np.correlate(x[b, :, c], taps, mode="valid")
    return out


def test_std2_taps_match_recipe_values():
    taps = gaussian_taps(2.0, 100)
    assert taps.dtype == torch.float32 and taps.shape == (9,), \
        f"got {taps.dtype} {tuple(taps.shape)}"
    expected = torch.tensor(STD2_HALF + STD2_HALF[-2::-1], dtype=torch.float32)
    torch.testing.assert_close(taps, expected, atol=5e-9, rtol=0,
                               msg=lambda m: f"std-2 taps differ from docs/recipe.md: {m}\n{taps}")
    assert torch.equal(taps, taps.flip(0)), "std-2 kernel must be symmetric"
    assert abs(float(taps.double().sum()) - 1.0) < 1e-6


@pytest.mark.parametrize("std,size", [(2, 100), (2.0, 100), (1.0, 100), (0.5, 100), (3.7, 100),
                                      (5, 64), (2, 9), (2, 5), (2, 4), (1.3, 7), (8, 101),
                                      (0.2, 1)])
def test_taps_bit_identical_to_recipe_construction(std, size):
    ours = gaussian_taps(std, size).numpy()
    want = _recipe_taps(std, size).astype(np.float32)
    assert ours.shape == want.shape, f"std={std} size={size}: {ours.shape} taps vs {want.shape}"
    assert np.array_equal(ours, want), (
        f"std={std} size={size}: max |diff| {np.abs(ours - want).max()}\nours {ours}\nwant {want}")


@pytest.mark.parametrize("std", [0.7, 1.0, 2.0, 3.0, 4.5])
def test_taps_follow_the_gaussian_formula(std):
    # independent of scipy: far from the edges the blurred impulse is the truncated Gaussian
    radius = int(4.0 * std + 0.5)
    k = np.arange(-radius, radius + 1, dtype=np.float64)
    g = np.exp(-0.5 * k ** 2 / std ** 2)
    g /= g.sum()
    g = g[g > 0.01]
    g /= g.sum()
    ours = gaussian_taps(std, 100).double().numpy()
    assert ours.shape == g.shape, f"std={std}: {ours.size} taps, formula gives {g.size}"
    np.testing.assert_allclose(ours, g, atol=2e-7, rtol=0, err_msg=f"std={std}")


def test_taps_cache_returns_fresh_tensors():
    a = gaussian_taps(2.0, 100)
    a.zero_()
    b = gaussian_taps(2.0, 100)
    assert float(b.sum()) > 0.99, "modifying a returned kernel must not corrupt the cache"


@pytest.mark.parametrize("std,size,match", [(0, 100, "std"), (-1.0, 100, "std"),
                                            (float("nan"), 100, "std"), ("2", 100, "std"),
                                            (2.0, 0, "size"), (2.0, 10.5, "size"),
                                            (100.0, 200, "no tap")])
def test_taps_bad_arguments(std, size, match):
    with pytest.raises(ValueError, match=match):
        gaussian_taps(std, size)


@pytest.mark.parametrize("k,expected", [(9, (4, 4)), (1, (0, 0)), (4, (1, 2)), (5, (2, 2)),
                                        (2, (0, 1))])
def test_same_padding(k, expected):
    assert same_padding(k) == expected


@pytest.mark.parametrize("shape", [(1, 15, 3), (2, 5, 4), (3, 17, 5), (2, 1, 2), (1, 9, 1),
                                   (2, 33, 7)])
@pytest.mark.parametrize("taps_kind", ["std2", "std1", "even4", "single"])
@pytest.mark.parametrize("padding", ["same", "valid"])
def test_smooth_matches_numpy_correlation(shape, taps_kind, padding, device):
    taps = {"std2": gaussian_taps(2.0, 100), "std1": gaussian_taps(1.0, 100),
            "even4": torch.tensor([0.1, 0.2, 0.3, 0.4]), "single": torch.tensor([0.75])}[taps_kind]
    gen = torch.Generator().manual_seed(hash((shape, taps_kind)) % 2**31)
    x = torch.randn(shape, generator=gen)
    B, T, C = shape
    K = taps.numel()
    if padding == "valid" and T < K:
        with pytest.raises(ValueError, match="T >= K"):
            smooth_ref(x.to(device), taps, padding)
        return
    y = smooth_ref(x.to(device), taps.to(device), padding)
    assert y.dtype == torch.float32 and y.is_contiguous()
    assert y.shape == (B, smooth_output_length(T, K, padding), C), f"shape {tuple(y.shape)}"
    want = torch.from_numpy(_numpy_smooth(x.numpy(), taps.numpy(), padding)).float()
    torch.testing.assert_close(y.cpu(), want, atol=1e-6, rtol=1e-6,
                               msg=lambda m: f"{shape} {taps_kind} {padding}: {m}")


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
def test_smooth_same_matches_conv1d_same_padding_even_kernel():
    taps = torch.tensor([0.1, 0.2, 0.3, 0.25, 0.15, 0.05])
    x = torch.randn(2, 11, 3)
    want = torch.nn.functional.conv1d(x.permute(0, 2, 1), taps.view(1, 1, -1).repeat(3, 1, 1),
                                      padding="same", groups=3).permute(0, 2, 1)
    torch.testing.assert_close(smooth_ref(x, taps, "same"), want, atol=1e-6, rtol=0)


def test_smooth_lengths():
    taps = gaussian_taps()
    assert smooth_ref(torch.zeros(2, 40, 3), taps, "same").shape == (2, 40, 3)
    assert smooth_ref(torch.zeros(2, 40, 3), taps, "valid").shape == (2, 32, 3)
    assert smooth_ref(torch.zeros(2, 9, 3), taps, "valid").shape == (2, 1, 3)
    assert smooth_ref(torch.zeros(2, 3, 3), taps, "same").shape == (2, 3, 3)
    assert smooth_output_length(40, 9, "valid") == 32


def test_smooth_impulse_response_is_the_kernel():
    taps = gaussian_taps()
    x = torch.zeros(1, 21, 2)
    x[0, 10, 1] = 1.0
    y = smooth_ref(x, taps)
    assert torch.equal(y[0, 6:15, 1], taps), f"impulse response {y[0, :, 1]}"
    assert torch.count_nonzero(y[0, :, 0]) == 0


@pytest.mark.parametrize("view", ["transposed", "sliced_time", "sliced_channels", "expanded"])
def test_smooth_non_contiguous_inputs(view):
    gen = torch.Generator().manual_seed(3)
    if view == "transposed":
        base = torch.randn(2, 6, 19, generator=gen)
        x = base.transpose(1, 2)  # (2, 19, 6) with time as the fast axis
    elif view == "sliced_time":
        x = torch.randn(2, 38, 5, generator=gen)[:, ::2]
    elif view == "sliced_channels":
        x = torch.randn(3, 17, 10, generator=gen)[:, :, 1::3]
    else:
        x = torch.randn(1, 15, 4, generator=gen).expand(3, 15, 4)
    assert not x.is_contiguous()
    taps = gaussian_taps()
    for padding in ("same", "valid"):
        torch.testing.assert_close(smooth_ref(x, taps, padding), smooth_ref(x.contiguous(), taps,
                                   padding), atol=0, rtol=0, msg=lambda m: f"{view} {padding}: {m}")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_smooth_computes_in_float32(dtype):
    x = torch.randn(2, 15, 3).to(dtype)
    y = smooth_ref(x, gaussian_taps())
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, smooth_ref(x.float(), gaussian_taps()), atol=0, rtol=0)


def test_smooth_ignores_autocast():
    x = torch.randn(2, 15, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = smooth_ref(x, gaussian_taps())
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, smooth_ref(x, gaussian_taps()), atol=0, rtol=0)


def test_smooth_gradient_is_the_transposed_correlation():
    taps = torch.tensor([0.2, 0.5, 0.3])
    x = torch.randn(1, 7, 2, requires_grad=True)
    g = torch.randn(1, 7, 2)
    (smooth_ref(x, taps) * g).sum().backward()
    # d/dx[s] sum_t g[t] * sum_k taps[k] x[t + k - 1]  =  sum_k taps[k] g[s - k + 1]
    gp = torch.nn.functional.pad(g.permute(0, 2, 1), (1, 1))
    want = sum(taps[k] * gp[..., 2 - k: 2 - k + 7] for k in range(3)).permute(0, 2, 1)
    torch.testing.assert_close(x.grad, want, atol=1e-6, rtol=0)


def test_smooth_empty_batch_and_channels():
    assert smooth_ref(torch.zeros(0, 10, 3), gaussian_taps()).shape == (0, 10, 3)
    assert smooth_ref(torch.zeros(2, 10, 0), gaussian_taps(), "valid").shape == (2, 2, 0)


@pytest.mark.parametrize("args,err,match", [
    ((torch.zeros(10, 3),), ValueError, r"\(B, T, C\)"),
    ((torch.zeros(2, 10, 3, dtype=torch.int32),), TypeError, "floating"),
    ((torch.zeros(2, 10, 3), torch.ones(3, 3)), ValueError, "1-D"),
    ((torch.zeros(2, 10, 3), torch.ones(0)), ValueError, "non-empty"),
    ((torch.zeros(2, 10, 3), None, "full"), ValueError, "padding"),
])
def test_smooth_bad_arguments(args, err, match):
    x = args[0]
    taps = args[1] if len(args) > 1 and args[1] is not None else gaussian_taps()
    padding = args[2] if len(args) > 2 else "same"
    with pytest.raises(err, match=match):
        smooth_ref(x, taps, padding)

