"""The reference day layer and patching (fastbci.reference.layers) against docs/recipe.md section 4/s5."""
import pytest
import torch

from fastbci import philox
from fastbci.reference import (
    day_layer_official, day_projection_ref, n_patches, patch_input_lengths, patchify_ref, softsign,
)


def _day_inputs(B, T, C, D, Cout=None, dtype=torch.float32, seed=0):
    Cout = Cout or C
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, C, generator=gen, dtype=dtype)
    w = torch.randn(D, C, Cout, generator=gen, dtype=dtype) / C ** 0.5
    b = torch.randn(D, Cout, generator=gen, dtype=dtype)
    day = torch.randint(0, D, (B,), generator=gen)
    return x, day, w, b


# ---------------------------------------------------------------------------------------------
# day layer
# ---------------------------------------------------------------------------------------------
def test_softsign():
    x = torch.tensor([-3.0, -1.0, 0.0, 0.5, 4.0])
    torch.testing.assert_close(softsign(x), torch.tensor([-0.75, -0.5, 0.0, 1 / 3, 0.8]))


@pytest.mark.parametrize("B,T,C,D,Cout", [(1, 15, 4, 1, 4), (3, 17, 5, 2, 5), (4, 6, 3, 3, 7)])
def test_day_projection_matches_explicit_loop(B, T, C, D, Cout, device):
    x, day, w, b = _day_inputs(B, T, C, D, Cout)
    y = day_projection_ref(x.to(device), day.to(device), w.to(device), b.to(device)).cpu()
    want = torch.empty(B, T, Cout)
    for i in range(B):
        d = int(day[i])
        for t in range(T):
            z = x[i, t] @ w[d] + b[d]
            want[i, t] = z / (1 + z.abs())
    torch.testing.assert_close(y, want, atol=1e-6, rtol=1e-6,
                               msg=lambda m: f"B={B} T={T} C={C} D={D}: {m}")


@pytest.mark.parametrize("p", [0.2, 0.5])
def test_day_projection_dropout_is_the_philox_mask(p):
    B, T, C, D = 3, 15, 6, 2
    x, day, w, b = _day_inputs(B, T, C, D)
    seed, step = 10, 123
    y = day_projection_ref(x, day, w, b, dropout_p=p, seed=seed, step=step)
    base = day_projection_ref(x, day, w, b)
    idx = ((torch.arange(B).view(B, 1, 1) * T + torch.arange(T).view(1, T, 1)) * C
           + torch.arange(C).view(1, 1, C))
    keep = philox.rand(idx, seed, step, philox.DROPOUT) >= p
    want = torch.where(keep, base / (1 - p), torch.zeros(()))
    torch.testing.assert_close(y, want, atol=1e-6, rtol=1e-6)
    frac = keep.float().mean().item()
    assert abs(frac - (1 - p)) < 0.15, f"kept fraction {frac} for p={p}"
    y2 = day_projection_ref(x, day, w, b, dropout_p=p, seed=seed, step=step + 1)
    assert not torch.equal(y, y2), "a different step must give a different mask"


def test_day_layer_official_matches_stacked_reference():
    B, T, C, D = 4, 9, 5, 3
    x, day, w, b = _day_inputs(B, T, C, D)
    wl = [w[d] for d in range(D)]
    bl = [b[d].unsqueeze(0) for d in range(D)]
    y = day_layer_official(x, day, wl, bl)
    torch.testing.assert_close(y, day_projection_ref(x, day, w, b), atol=1e-6, rtol=1e-6)


def test_day_layer_official_dropout_uses_torch_generator():
    B, T, C, D = 2, 7, 4, 2
    x, day, w, b = _day_inputs(B, T, C, D)
    wl, bl = list(w), [bb.unsqueeze(0) for bb in b]
    torch.manual_seed(3)
    y = day_layer_official(x, day, wl, bl, dropout_p=0.2, training=True)
    torch.manual_seed(3)
    want = torch.nn.functional.dropout(day_projection_ref(x, day, w, b), p=0.2, training=True)
    torch.testing.assert_close(y, want, atol=1e-6, rtol=1e-6)
    y_eval = day_layer_official(x, day, wl, bl, dropout_p=0.2, training=False)
    torch.testing.assert_close(y_eval, day_projection_ref(x, day, w, b), atol=1e-6, rtol=1e-6)


def test_day_layer_official_absent_days_get_no_gradient():
    B, T, C, D = 3, 5, 4, 4
    x, _, w, b = _day_inputs(B, T, C, D)
    day = torch.tensor([2, 0, 2])
    wl = [w[d].clone().requires_grad_() for d in range(D)]
    bl = [b[d].unsqueeze(0).clone().requires_grad_() for d in range(D)]
    day_layer_official(x, day, wl, bl).sum().backward()
    for d in range(D):
        present = d in (0, 2)
        assert (wl[d].grad is not None) == present, f"day {d} weight grad {wl[d].grad is not None}"
        assert (bl[d].grad is not None) == present, f"day {d} bias grad {bl[d].grad is not None}"


@pytest.mark.parametrize("p", [0.0, 0.3])
@pytest.mark.parametrize("B,T,C,D", [(1, 3, 2, 1), (3, 4, 3, 2)])
def test_day_projection_gradcheck(p, B, T, C, D):
    x, day, w, b = _day_inputs(B, T, C, D, dtype=torch.float64, seed=1)
    x.requires_grad_()
    w.requires_grad_()
    b.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x_, w_, b_: day_projection_ref(x_, day, w_, b_, dropout_p=p, seed=5, step=2),
        (x, w, b), eps=1e-6, atol=1e-6)


def test_day_projection_non_contiguous_inputs():
    B, T, C, D = 3, 11, 6, 2
    x, day, w, b = _day_inputs(B, T, C, D)
    xt = x.transpose(1, 2).contiguous().transpose(1, 2)
    wt = w.transpose(1, 2).contiguous().transpose(1, 2)
    assert not xt.is_contiguous() and not wt.is_contiguous()
    torch.testing.assert_close(day_projection_ref(xt, day, wt, b[:, :]),
                               day_projection_ref(x, day, w, b), atol=1e-6, rtol=1e-6)
    x2 = torch.randn(B, 2 * T, C)[:, ::2]
    torch.testing.assert_close(day_projection_ref(x2, day, w, b),
                               day_projection_ref(x2.contiguous(), day, w, b), atol=1e-6, rtol=0)


@pytest.mark.parametrize("args,match", [
    ((torch.zeros(5, 4), torch.zeros(5, dtype=torch.long), torch.zeros(1, 4, 4), torch.zeros(1, 4)),
     r"\(B, T, C\)"),
    ((torch.zeros(2, 3, 4), torch.zeros(3, dtype=torch.long), torch.zeros(1, 4, 4),
      torch.zeros(1, 4)), "day_idx"),
    ((torch.zeros(2, 3, 4), torch.zeros(2, dtype=torch.long), torch.zeros(1, 5, 4),
      torch.zeros(1, 4)), "weight"),
    ((torch.zeros(2, 3, 4), torch.zeros(2, dtype=torch.long), torch.zeros(1, 4, 4),
      torch.zeros(2, 4)), "bias"),
    ((torch.zeros(2, 3, 4), torch.tensor([0, 1]), torch.zeros(1, 4, 4), torch.zeros(1, 4)),
     "index"),
])
def test_day_projection_bad_inputs(args, match):
    with pytest.raises(ValueError, match=match):
        day_projection_ref(*args)


# ---------------------------------------------------------------------------------------------
# patching
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("B,T,C,size,stride", [(1, 14, 3, 14, 4), (2, 15, 2, 14, 4),
                                               (3, 17, 5, 14, 4), (1, 33, 2, 14, 4),
                                               (2, 10, 3, 3, 2), (1, 7, 4, 1, 1), (2, 9, 2, 4, 5)])
def test_patch_layout_element_by_element(B, T, C, size, stride, device):
    x = torch.arange(B * T * C, dtype=torch.float32).reshape(B, T, C)
    y = patchify_ref(x.to(device), size, stride).cpu()
    P = (T - size) // stride + 1
    assert y.shape == (B, P, size * C), f"shape {tuple(y.shape)}, want {(B, P, size * C)}"
    assert n_patches(T, size, stride) == P
    for b in range(B):
        for p in range(P):
            for k in range(size):
                for c in range(C):
                    got, want = y[b, p, k * C + c], x[b, stride * p + k, c]
                    assert got == want, f"y[{b},{p},{k}*{C}+{c}] = {got}, want x[{b}," \
                                        f"{stride * p + k},{c}] = {want}"


def test_patch_official_sizes():
    x = torch.randn(2, 800, 512)
    y = patchify_ref(x)
    assert y.shape == (2, 197, 7168)
    assert torch.equal(y[1, 5, 3 * 512:4 * 512], x[1, 23])


@pytest.mark.parametrize("B,T,C,size,stride", [(1, 14, 2, 14, 4), (2, 17, 3, 14, 4),
                                               (1, 9, 2, 3, 2), (2, 8, 1, 2, 3)])
def test_patch_gradcheck(B, T, C, size, stride):
    x = torch.randn(B, T, C, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: patchify_ref(t, size, stride), (x,), eps=1e-6,
                                    atol=1e-7)


def test_patch_backward_adds_overlapping_windows():
    size, stride = 14, 4
    for T in (17, 22, 30):  # P = 1, 3 (overlapping), 5
        x = torch.randn(1, T, 2, requires_grad=True)
        patchify_ref(x, size, stride).sum().backward()
        count = torch.zeros(T)
        for p in range(n_patches(T, size, stride)):
            count[stride * p: stride * p + size] += 1
        torch.testing.assert_close(x.grad[0], count[:, None].expand(T, 2),
                                   msg=lambda m: f"T={T}: {m}")


def test_patch_non_contiguous_inputs():
    x = torch.randn(2, 6, 21)
    xt = x.transpose(1, 2)  # (2, 21, 6)
    assert torch.equal(patchify_ref(xt), patchify_ref(xt.contiguous()))
    xs = torch.randn(2, 42, 3)[:, ::2]
    assert torch.equal(patchify_ref(xs), patchify_ref(xs.contiguous()))


@pytest.mark.parametrize("x,size,stride,match", [
    (torch.zeros(13, 4), 14, 4, r"\(B, T, C\)"),
    (torch.zeros(1, 13, 4), 14, 4, "at least"),
    (torch.zeros(1, 20, 4), 0, 4, "positive"),
    (torch.zeros(1, 20, 4), 14, 0, "positive"),
])
def test_patch_bad_inputs(x, size, stride, match):
    with pytest.raises(ValueError, match=match):
        patchify_ref(x, size, stride)


def test_patch_input_lengths_official_formula():
    n = torch.tensor([14, 15, 17, 18, 100, 545, 1025, 13, 10])
    got = patch_input_lengths(n)
    assert got.dtype == torch.int32
    # int32 of the float (n - 14) / 4 + 1: truncation toward zero, also below one window
    want = [int((v - 14) / 4 + 1) for v in n.tolist()]
    assert got.tolist() == want, f"{got.tolist()} vs {want}"
    for v in (14, 17, 100, 1025):
        assert int(patch_input_lengths(torch.tensor([v]))[0]) == n_patches(v, 14, 4)
