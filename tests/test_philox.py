"""The pure-PyTorch Philox generator against Triton's tl.randint / tl.rand / tl.randn."""
import pytest
import torch

triton = pytest.importorskip("triton")
import triton.language as tl  # noqa: E402

from fastbci import philox  # noqa: E402


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
    torch.testing.assert_close(tn, rn, atol=1e-6, rtol=0)


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
    a = philox.randn(idx, 1, 5, philox.NOISE)
    assert not torch.equal(a, philox.randn(idx, 1, 6, philox.NOISE))
    assert not torch.equal(a, philox.randn(idx, 1, 5, philox.OFFSET))
    assert not torch.equal(a, philox.randn(idx, 2, 5, philox.NOISE))
    assert torch.equal(a, philox.randn(idx, 1, 5, philox.NOISE))


def test_bad_arguments_are_reported():
    with pytest.raises(ValueError, match="step"):
        philox.randn(torch.arange(3), 1, -1, philox.NOISE)
    with pytest.raises(ValueError, match="seed"):
        philox.randn(torch.arange(3), -5, 0, philox.NOISE)
    with pytest.raises(ValueError, match="dropout p"):
        philox.dropout_mask((2, 3), 1.0, 1, 0)


def test_random_cut_range():
    cuts = {philox.random_cut(3, 1, s) for s in range(200)}
    assert cuts == {0, 1, 2}
    assert philox.random_cut(0, 1, 0) == 0
