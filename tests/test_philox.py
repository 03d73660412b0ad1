"""The pure-PyTorch Philox generator against Triton's tl.randint / tl.rand / tl.randn, and the
four-normals-per-counter contract (``philox.normal``) against tl.randint4x + Box-Muller."""
import pytest
import torch

triton = pytest.importorskip("triton")
import triton.language as tl  # noqa: E402

from fastbci import philox  # noqa: E402
from helpers import normal_tolerance  # noqa: E402

TRITON_KERNEL_TESTS = True  # see tests/conftest.py: CPU cases need the Triton interpreter


@triton.jit
def _draw_kernel(out_i, out_u, out_n, seed, base, n, BLOCK: tl.constexpr):
    idx = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = idx < n
    off = base + idx.to(tl.int64)
    tl.store(out_i + idx, tl.randint(seed, off), mask=m)
    tl.store(out_u + idx, tl.rand(seed, off), mask=m)
    tl.store(out_n + idx, tl.randn(seed, off), mask=m)


def _triton_draw(n, seed, step, stream, device):
    out_i = torch.empty(n, dtype=torch.int32, device=device)
    out_u = torch.empty(n, dtype=torch.float32, device=device)
    out_n = torch.empty(n, dtype=torch.float32, device=device)
    base = philox.triton_offset_base(step, stream)
    _draw_kernel[(triton.cdiv(n, 256),)](out_i, out_u, out_n, seed, base, n, BLOCK=256)
    return out_i, out_u, out_n


@pytest.mark.parametrize("seed,step,stream", [(1, 0, philox.NOISE), (10, 7, philox.OFFSET),
                                              (2**40 + 3, 119999, philox.DROPOUT),
                                              (123456789, 1, philox.CUT)])
def test_philox_matches_triton(seed, step, stream, device):
    n = 1000
    ti, tu, tn = _triton_draw(n, seed, step, stream, device)
    idx = torch.arange(n, device=device)
    ri = philox.randint(idx, seed, step, stream)
    ru = philox.rand(idx, seed, step, stream)
    rn = philox.randn(idx, seed, step, stream)
    assert torch.equal(ti.to(torch.int64) & 0xFFFFFFFF, ri), "randint differs"
    assert torch.equal(tu, ru), "rand differs bit for bit"
    torch.testing.assert_close(tn, rn, **normal_tolerance(device))


@triton.jit
def _normal4_kernel(out, seed, base, n, BLOCK: tl.constexpr):
    """normal(i) for i < n: one randint4x per counter k, its four Box-Muller outputs stored at
    4k, 4k + 1, 4k + 2, 4k + 3 (written out from the primitives, not through tl.randn4x)."""
    k = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    r0, r1, r2, r3 = tl.randint4x(seed, base + k.to(tl.int64))
    n0, n1 = tl.pair_uniform_to_normal(tl.uint_to_uniform_float(r0), tl.uint_to_uniform_float(r1))
    n2, n3 = tl.pair_uniform_to_normal(tl.uint_to_uniform_float(r2), tl.uint_to_uniform_float(r3))
    i = 4 * k
    tl.store(out + i, n0, mask=i < n)
    tl.store(out + i + 1, n1, mask=i + 1 < n)
    tl.store(out + i + 2, n2, mask=i + 2 < n)
    tl.store(out + i + 3, n3, mask=i + 3 < n)


@triton.jit
def _randn4x_interleaved_kernel(out, seed, base, BLOCK4: tl.constexpr):
    """The same numbers through tl.randn4x, interleaved in registers (the augment kernel's way)."""
    k = tl.program_id(0) * BLOCK4 + tl.arange(0, BLOCK4)
    n0, n1, n2, n3 = tl.randn4x(seed, base + k.to(tl.int64))
    z = tl.interleave(tl.interleave(n0, n2), tl.interleave(n1, n3))
    i = tl.program_id(0) * (4 * BLOCK4) + tl.arange(0, 4 * BLOCK4)
    tl.store(out + i, z)


@pytest.mark.parametrize("n", [1, 7, 1001, 1024])
@pytest.mark.parametrize("seed,step,stream", [(1, 0, philox.NOISE), (10, 7, philox.OFFSET),
                                              (2**40 + 3, 119999, philox.RANDOM_WALK),
                                              (123456789, 1, philox.STATIC_GAIN)])
def test_normal_matches_triton_randint4x_box_muller(n, seed, step, stream, device):
    out = torch.full((n,), float("nan"), dtype=torch.float32, device=device)
    base = philox.triton_offset_base(step, stream)
    n_counters = (n + 3) // 4
    _normal4_kernel[(triton.cdiv(n_counters, 128),)](out, seed, base, n, BLOCK=128)
    got = philox.normal(torch.arange(n, device=device), seed, step, stream)
    tol = normal_tolerance(device)
    torch.testing.assert_close(got, out, **tol,
                               msg=lambda m: f"normal vs Triton (n={n}, stream {stream}): {m}")
    shaped = philox.normal_like_shape((n,), seed, step, stream, device=device)
    torch.testing.assert_close(shaped, out, **tol,
                               msg=lambda m: f"normal_like_shape vs Triton (n={n}): {m}")


def test_normal_matches_randn4x_interleaved(device):
    seed, step, stream = 77, 12345, philox.NOISE
    out = torch.empty(4 * 256, dtype=torch.float32, device=device)
    _randn4x_interleaved_kernel[(4,)](out, seed, philox.triton_offset_base(step, stream),
                                      BLOCK4=64)
    want = philox.normal_like_shape((4 * 256,), seed, step, stream, device=device)
    torch.testing.assert_close(out, want, **normal_tolerance(device))


def test_normal_lanes_and_counters():
    """normal(4k + j) is output j of counter k: the first lane is randn's cos, the counter of
    index i is i // 4, and arbitrary (non-contiguous, shuffled) index tensors are supported."""
    seed, step, stream = 5, 9, philox.NOISE
    k = torch.arange(300)
    lanes = philox.normal4(k, seed, step, stream)
    for j in range(4):
        torch.testing.assert_close(philox.normal(4 * k + j, seed, step, stream), lanes[j],
                                   atol=1e-6, rtol=0, msg=lambda m: f"lane {j}: {m}")
    # lane 0 is Box-Muller's cosine output on (u0, u1): tl.randn at counter k
    torch.testing.assert_close(lanes[0], philox.randn(k, seed, step, stream), atol=1e-6, rtol=0)
    idx = torch.randperm(1200, generator=torch.Generator().manual_seed(0)).reshape(30, 40)
    full = philox.normal_like_shape((1200,), seed, step, stream)
    torch.testing.assert_close(philox.normal(idx.t(), seed, step, stream), full[idx.t()],
                               atol=1e-6, rtol=0)
    # row-major over any shape
    torch.testing.assert_close(philox.normal_like_shape((3, 5, 7), seed, step, stream),
                               full[:105].reshape(3, 5, 7), atol=0, rtol=0)


def test_normal_statistics():
    z = philox.normal_like_shape((1 << 16,), 1, 3, philox.NOISE).double()
    n = z.numel()  # standard errors: mean 0.004, std 0.003, tail mass 0.0009, corr 0.008 a lane
    assert abs(float(z.mean())) < 0.02, f"mean {float(z.mean()):.4f}"
    assert abs(float(z.std()) - 1.0) < 0.015, f"std {float(z.std()):.4f}"
    assert abs(float((z.abs() > 1.96).double().mean()) - 0.05) < 0.004, "tail mass not Gaussian"
    lanes = z.reshape(n // 4, 4)
    for j in range(4):  # each lane is standard normal on its own
        lj = lanes[:, j]
        assert abs(float(lj.mean())) < 0.04 and abs(float(lj.std()) - 1.0) < 0.03, \
            f"lane {j}: mean {float(lj.mean()):.4f} std {float(lj.std()):.4f}"
    eye = torch.eye(4, dtype=torch.float64)
    corr = torch.corrcoef(lanes.t())  # the four lanes of one counter are uncorrelated ...
    assert float((corr - eye).abs().max()) < 0.04, f"lanes correlate:\n{corr}"
    # ... and so are their squares: cos and sin of one pair share a radius, independent only
    # because Box-Muller is exact (a wrong pairing or angle would show up here)
    corr2 = torch.corrcoef((lanes ** 2).t())
    assert float((corr2 - eye).abs().max()) < 0.04, f"squared lanes correlate:\n{corr2}"
    # lane 3 of counter k and lane 0 of counter k + 1 are neighbouring elements
    r = float(torch.corrcoef(torch.stack([lanes[1:, 0], lanes[:-1, 3]]))[0, 1])
    assert abs(r) < 0.04, f"neighbouring counters correlate ({r:.4f})"


def test_normal_bad_arguments():
    with pytest.raises(TypeError, match="integer"):
        philox.normal(torch.arange(4.0), 1, 0, philox.NOISE)
    with pytest.raises(ValueError, match=r"2\*\*32"):
        philox.normal(torch.tensor([-1]), 1, 0, philox.NOISE)
    with pytest.raises(ValueError, match="step"):
        philox.normal(torch.arange(3), 1, -1, philox.NOISE)
    with pytest.raises(ValueError, match="stream"):
        philox.normal_like_shape((3,), 1, 0, philox.N_STREAMS)
    with pytest.raises(ValueError, match="seed"):
        philox.normal_like_shape((3,), -1, 0, philox.NOISE)


def test_known_answer_vector():
    # Philox4x32-10 known-answer test (Random123 kat_vectors): counter 0, key 0.
    z = torch.zeros(1, dtype=torch.int64)
    out = philox.philox4x32(z, z, z, z, 0)
    assert [int(o[0]) for o in out] == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    # the "pi" vector: counter 243f6a88 85a308d3 13198a2e 03707344, key a4093822 299f31d0
    c = [torch.tensor([v], dtype=torch.int64) for v in (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344)]
    out = philox.philox4x32(*c, (0x299F31D0 << 32) | 0xA4093822)
    assert [int(o[0]) for o in out] == [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]


def test_streams_and_steps_differ():
    idx = torch.arange(4096)
    for draw in (philox.randn, philox.normal):
        a = draw(idx, 1, 5, philox.NOISE)
        assert not torch.equal(a, draw(idx, 1, 6, philox.NOISE)), draw.__name__
        assert not torch.equal(a, draw(idx, 1, 5, philox.OFFSET)), draw.__name__
        assert not torch.equal(a, draw(idx, 2, 5, philox.NOISE)), draw.__name__
        assert torch.equal(a, draw(idx, 1, 5, philox.NOISE)), draw.__name__


def test_bad_arguments_are_reported():
    with pytest.raises(ValueError, match="step"):
        philox.randn(torch.arange(3), 1, -1, philox.NOISE)
    with pytest.raises(ValueError, match="seed"):
        philox.randn(torch.arange(3), -5, 0, philox.NOISE)
    with pytest.raises(ValueError, match="dropout p"):
        philox.dropout_mask((2, 3), 1.0, 1, 0)


def test_random_cut_is_the_cut_stream_randint():
    for step in (0, 1, 7, 119999, philox.MAX_STEP):
        for seed in (1, 10, 2**40 + 3):
            v = int(philox.randint(torch.zeros(1, dtype=torch.int64), seed, step, philox.CUT)[0])
            assert philox.random_cut(3, seed, step) == v % 3
            assert philox.random_cut(1000, seed, step) == v % 1000


def test_random_cut_range():
    cuts = {philox.random_cut(3, 1, s) for s in range(200)}
    assert cuts == {0, 1, 2}
    assert philox.random_cut(0, 1, 0) == 0
