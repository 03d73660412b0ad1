"""fastbci.compat.transforms: official names, signatures, outputs for the same generator state."""
import inspect

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter1d

from fastbci.compat.transforms import gauss_smooth, transform_data
from fastbci.reference import smooth_ref, transform_ref

OFFICIAL = dict(white_noise_std=1.0, constant_offset_std=0.2, random_walk_std=0.0,
                random_walk_axis=-1, static_gain_std=0.0, random_cut=3, smooth_kernel_size=100,
                smooth_data=True, smooth_kernel_std=2)


def _recipe_kernel(std, size):
    """docs/recipe.md section 3: scipy blur of a float32 impulse, taps > 0.01, normalised to sum 1."""
    impulse = np.zeros(size, dtype=np.float32)
    impulse[size // 2] = 1
    k = gaussian_filter1d(impulse, std)
    k = k[k > 0.01]
    return torch.tensor(k / k.sum(), dtype=torch.float32)


def _recipe_smooth(x, std=2, size=100, padding="same", dtype=torch.float32):
    """docs/recipe.md section 3: depthwise conv1d along time on the (B, C, T) view of the batch."""
    k = _recipe_kernel(std, size)
    C = x.shape[2]
    w = k.view(1, 1, -1).repeat(C, 1, 1).to(dtype)
    return F.conv1d(x.permute(0, 2, 1).to(dtype), w, padding=padding, groups=C).permute(0, 2, 1)


def _seed_all(s):
    torch.manual_seed(s)
    np.random.seed(s)


def test_official_signatures():
    sig = inspect.signature(gauss_smooth)
    assert list(sig.parameters) == ["inputs", "device", "smooth_kernel_std", "smooth_kernel_size",
                                    "padding"]
    assert sig.parameters["smooth_kernel_std"].default == 2
    assert sig.parameters["smooth_kernel_size"].default == 100
    assert sig.parameters["padding"].default == "same"
    sig = inspect.signature(transform_data)
    assert list(sig.parameters) == ["features", "n_time_steps", "transform_args", "mode", "device"]
    assert sig.parameters["mode"].default == "train"


@pytest.mark.parametrize("shape", [(1, 15, 3), (3, 17, 5), (2, 4, 2), (2, 40, 7)])
@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("std,size", [(2, 100), (1, 100), (3.5, 50)])
def test_gauss_smooth_bit_identical_to_recipe(shape, padding, std, size):
    x = torch.randn(shape)
    K = _recipe_kernel(std, size).numel()
    if padding == "valid" and shape[1] < K:
        with pytest.raises(ValueError, match="T >= K"):
            gauss_smooth(x, "cpu", std, size, padding)
        return
    y = gauss_smooth(x, "cpu", std, size, padding)
    want = _recipe_smooth(x, std, size, padding)
    assert y.shape == want.shape and y.dtype == torch.float32
    assert torch.equal(y, want), f"max |diff| {(y - want).abs().max()}"
    # and the reference agrees
    torch.testing.assert_close(y, smooth_ref(x, _recipe_kernel(std, size), padding), atol=1e-6,
                               rtol=0)


def test_gauss_smooth_non_contiguous_inputs():
    x = torch.randn(2, 6, 21).transpose(1, 2)
    assert torch.equal(gauss_smooth(x, "cpu"), _recipe_smooth(x))
    xs = torch.randn(2, 21, 12)[:, :, ::3]
    assert torch.equal(gauss_smooth(xs, torch.device("cpu")), _recipe_smooth(xs))


def test_gauss_smooth_under_autocast_runs_in_bf16_like_official():
    x = torch.randn(2, 19, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = gauss_smooth(x, "cpu")
        want = _recipe_smooth(x)
    assert y.dtype == want.dtype == torch.bfloat16
    assert torch.equal(y, want)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_gauss_smooth_other_dtypes_outside_autocast(dtype):
    x = torch.randn(2, 15, 3).to(dtype)
    y = gauss_smooth(x, "cpu")
    assert y.dtype == dtype
    tol = 1e-6 if dtype == torch.float64 else 2e-2
    torch.testing.assert_close(y.float(), smooth_ref(x, _recipe_kernel(2, 100)),
                               atol=tol, rtol=tol)


@pytest.mark.parametrize("args,kwargs,err,match", [
    ((torch.zeros(10, 3), "cpu"), {}, ValueError, r"\(B, T, C\)"),
    ((torch.zeros(1, 10, 3, dtype=torch.int32), "cpu"), {}, TypeError, "floating"),
    ((torch.zeros(1, 10, 3), "cpu"), dict(padding="full"), ValueError, "padding"),
    ((torch.zeros(1, 10, 3), "meta"), {}, ValueError, "device"),
    ((torch.zeros(1, 10, 3), "cpu"), dict(smooth_kernel_std=-1), ValueError, "std"),
    ((torch.zeros(1, 5, 3), "cpu"), dict(padding="valid"), ValueError, "T >= K"),
])
def test_gauss_smooth_bad_inputs(args, kwargs, err, match):
    with pytest.raises(err, match=match):
        gauss_smooth(*args, **kwargs)


@pytest.mark.parametrize("B,T,C", [(1, 15, 3), (3, 17, 5), (2, 33, 8)])
def test_transform_data_train_step_by_step(B, T, C):
    x = torch.randn(B, T, C)
    n = torch.tensor([T - b for b in range(B)])
    _seed_all(31)
    y, m = transform_data(x, n, OFFICIAL, "train", "cpu")
    _seed_all(31)
    noisy = x + torch.randn(B, T, C) * 1.0
    noisy = noisy + torch.randn(B, 1, C) * 0.2
    cut = np.random.randint(0, 3)
    want = _recipe_smooth(noisy[:, cut:])
    assert torch.equal(y, want), f"max |diff| {(y - want).abs().max()}"
    assert torch.equal(m, n - cut)


def test_transform_data_all_augmentations_equal_reference():
    tr = dict(OFFICIAL, static_gain_std=0.05, random_walk_std=0.02, random_walk_axis=1)
    x = torch.randn(3, 17, 5)
    n = torch.tensor([17, 12, 9])
    _seed_all(4)
    y, m = transform_data(x, n, tr)
    _seed_all(4)
    want, want_n = transform_ref(x, n, tr, rng="torch")
    torch.testing.assert_close(y, want, atol=0, rtol=0)
    assert torch.equal(m, want_n)


@pytest.mark.parametrize("mode", ["val", "eval", "test"])
def test_transform_data_eval_modes(mode):
    x = torch.randn(2, 15, 3)
    n = torch.tensor([15, 10])
    state = torch.get_rng_state()
    y, m = transform_data(x, n, OFFICIAL, mode)
    assert torch.equal(y, _recipe_smooth(x)) and m is n
    assert torch.equal(torch.get_rng_state(), state)


def test_transform_data_without_smoothing_and_inputs_untouched():
    x = torch.randn(2, 15, 3)
    n = torch.tensor([15, 10])
    x0 = x.clone()
    _seed_all(2)
    y, m = transform_data(x, n, dict(OFFICIAL, smooth_data=False))
    _seed_all(2)
    noisy = x + torch.randn(2, 15, 3) + torch.randn(2, 1, 3) * 0.2
    cut = np.random.randint(0, 3)
    assert torch.equal(y, noisy[:, cut:]) and torch.equal(m, n - cut)
    assert torch.equal(x, x0), "the official code adds into features in place; compat must not"


def test_transform_data_under_autocast_matches_official_dtype_flow():
    # official: noise added in float32, smoothing conv in bf16 under autocast
    x = torch.randn(2, 19, 4)
    n = torch.tensor([19, 12])
    _seed_all(7)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, _ = transform_data(x, n, OFFICIAL, "train", "cpu")
    _seed_all(7)
    noisy = x + torch.randn(2, 19, 4) + torch.randn(2, 1, 4) * 0.2
    cut = np.random.randint(0, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = _recipe_smooth(noisy[:, cut:])
    assert y.dtype == torch.bfloat16
    assert torch.equal(y, want)


@pytest.mark.parametrize("kwargs,err,match", [
    (dict(mode="training"), ValueError, "mode"),
    (dict(device="meta"), ValueError, "device"),
    (dict(device="not-a-device"), ValueError, "device"),
    (dict(transform_args={k: v for k, v in OFFICIAL.items() if k != "smooth_data"}), KeyError,
     "smooth_data"),
    (dict(transform_args=dict(OFFICIAL, white_noise_std=-1)), ValueError, "white_noise_std"),
])
def test_transform_data_bad_inputs(kwargs, err, match):
    args = dict(features=torch.zeros(2, 15, 3), n_time_steps=torch.tensor([15, 9]),
                transform_args=OFFICIAL)
    args.update(kwargs)
    with pytest.raises(err, match=match):
        transform_data(**args)
