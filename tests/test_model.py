"""fastbci.model.GRUDecoder: official architecture, init, keys, checkpoints, per-day AdamW semantics,
forward against the reference ops."""
from __future__ import annotations

import importlib.util
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastbci.model import CheckpointError, GRUDecoder, official_keys, strip_prefixes
from fastbci.reference import day_projection_ref, patchify_ref
from helpers import assert_close

HAS_DAY_OP = importlib.util.find_spec("fastbci.ops.day_projection") is not None


def small(**kw):
    args = dict(neural_dim=8, n_units=12, n_days=5, n_classes=7, rnn_dropout=0.0,
                input_dropout=0.0, n_layers=2, patch_size=4, patch_stride=2, impl="reference")
    args.update(kw)
    return GRUDecoder(**args)


# ---------------------------------------------------------------------------------------------
# size, init, keys
# ---------------------------------------------------------------------------------------------
def test_parameter_count_official_sizes():
    m = GRUDecoder(512, 768, 45, 41, 0.4, 0.2, 5, 14, 4)
    n = sum(p.numel() for p in m.parameters())
    assert n == 44_315_177, f"official GRUDecoder has 44,315,177 parameters, got {n:,}"
    assert m.gru.input_size == 14 * 512 and m.gru.hidden_size == 768 and m.gru.num_layers == 5
    assert m.gru.batch_first and not m.gru.bidirectional and m.gru.dropout == 0.4


@pytest.mark.parametrize("n_units,n_layers,patch", [(12, 2, (4, 2)), (16, 3, (0, 0)), (9, 1, (3, 3))])
def test_init_properties(n_units, n_layers, patch):
    torch.manual_seed(0)
    m = small(n_units=n_units, n_layers=n_layers, patch_size=patch[0], patch_stride=patch[1])
    C = m.neural_dim
    for d in range(m.n_days):
        assert torch.equal(m.day_weights[d], torch.eye(C)), f"day_weights.{d} is not the identity"
        assert m.day_biases[d].shape == (1, C) and torch.equal(m.day_biases[d], torch.zeros(1, C))
    in0 = C * patch[0] if patch[0] else C
    H = n_units
    for k in range(n_layers):
        whh = getattr(m.gru, f"weight_hh_l{k}").detach()
        assert whh.shape == (3 * H, H)
        # orthogonal_ on a (3H, H) matrix: orthonormal columns
        assert_close(whh.T @ whh, torch.eye(H), atol=1e-5, what=f"weight_hh_l{k}^T weight_hh_l{k}")
        wih = getattr(m.gru, f"weight_ih_l{k}").detach()
        fan_in = in0 if k == 0 else H
        bound = math.sqrt(6.0 / (fan_in + 3 * H))
        assert wih.abs().max() <= bound, f"weight_ih_l{k} exceeds the xavier bound {bound}"
        assert wih.abs().max() > 0.8 * bound, f"weight_ih_l{k} does not span the xavier range"
        for b in ("bias_ih", "bias_hh"):
            bias = getattr(m.gru, f"{b}_l{k}").detach()
            assert bias.abs().max() <= 1 / math.sqrt(H) and bias.abs().max() > 0
    bound = math.sqrt(6.0 / (H + m.n_classes))
    assert m.out.weight.abs().max() <= bound
    assert m.h0.shape == (1, 1, H)
    hb = math.sqrt(6.0 / (2 * H))
    assert 0 < m.h0.abs().max() <= hb, f"h0 outside the xavier range {hb}"


def test_seeded_init_follows_official_draw_order():
    """Same torch seed -> same weights as a construction in the official order."""
    torch.manual_seed(123)
    m = small(n_units=10, n_layers=3)
    torch.manual_seed(123)
    gru = nn.GRU(8 * 4, 10, 3, batch_first=True)
    for name, p in gru.named_parameters():
        if "weight_hh" in name:
            nn.init.orthogonal_(p)
        if "weight_ih" in name:
            nn.init.xavier_uniform_(p)
    out = nn.Linear(10, 7)
    nn.init.xavier_uniform_(out.weight)
    h0 = nn.init.xavier_uniform_(torch.zeros(1, 1, 10))
    for name, p in gru.named_parameters():
        assert torch.equal(getattr(m.gru, name), p), f"gru.{name} differs from the official init"
    assert torch.equal(m.out.weight, out.weight) and torch.equal(m.out.bias, out.bias)
    assert torch.equal(m.h0.detach(), h0)


def test_init_blank_bias_changes_only_the_blank_bias():
    """fastbci.init_blank_bias (the demo's 3.0) sets the blank class's output bias after every
    random draw: every other initial weight is the official one for the same seed, and the
    global generator is where the official construction leaves it."""
    torch.manual_seed(7)
    ref = small(n_units=10, n_layers=2)
    after_ref = torch.rand(3)
    torch.manual_seed(7)
    m = small(n_units=10, n_layers=2, init_blank_bias=3.0)
    assert torch.equal(torch.rand(3), after_ref), "init_blank_bias drew from the generator"
    for (name, a), (_, b) in zip(ref.state_dict().items(), m.state_dict().items()):
        if name == "out.bias":
            assert float(b[0]) == 3.0 and torch.equal(a[1:], b[1:])
        else:
            assert torch.equal(a, b), name
    p = torch.softmax(m.out.bias, 0)
    assert int(p.argmax()) == 0 and float(p[0]) > 0.3


@pytest.mark.parametrize("n_days,n_layers", [(1, 1), (5, 2), (45, 5)])
def test_state_dict_keys_are_official(n_days, n_layers):
    m = small(n_days=n_days, n_layers=n_layers)
    expected = (["h0"] + [f"day_weights.{i}" for i in range(n_days)]
                + [f"day_biases.{i}" for i in range(n_days)]
                + [f"gru.{w}_l{k}" for k in range(n_layers)
                   for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
                + ["out.weight", "out.bias"])
    assert list(m.state_dict()) == expected
    assert official_keys(n_days, n_layers) == expected
    assert list(m.official_state_dict()) == expected


# ---------------------------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------------------------
def _random_official_sd(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=g) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("prefix", ["", "_orig_mod.", "module.", "module._orig_mod.",
                                    "_orig_mod.module."])
def test_official_checkpoint_round_trip(prefix):
    src = small()
    sd = _random_official_sd(src)
    saved = {prefix + k: v.clone() for k, v in sd.items()}
    m = small()
    m.load_official_state_dict(saved)
    back = m.official_state_dict()
    assert list(back) == list(sd), "re-saved keys differ from the official keys"
    for k in sd:
        assert torch.equal(back[k], sd[k]), f"{k} changed in the round trip"
        assert back[k].dtype == sd[k].dtype
    # an official checkpoint dict (model_state_dict inside) loads too
    m2 = small()
    m2.load_official_state_dict({"model_state_dict": saved, "val_PER": 0.5})
    assert all(torch.equal(m2.state_dict()[k], sd[k]) for k in sd)


def test_checkpoint_errors_name_keys():
    m = small()
    sd = _random_official_sd(m)
    missing = dict(sd)
    del missing["day_weights.3"]
    with pytest.raises(CheckpointError, match=r"missing keys \(1\): day_weights\.3"):
        m.load_official_state_dict(missing)
    extra = dict(sd, **{"day_weights.9": torch.eye(8)})
    with pytest.raises(CheckpointError, match=r"unexpected keys \(1\): day_weights\.9"):
        m.load_official_state_dict(extra)
    wrong = dict(sd, **{"out.weight": torch.zeros(3, 12)})
    with pytest.raises(CheckpointError, match=r"out\.weight: checkpoint \(3, 12\), model \(7, 12\)"):
        m.load_official_state_dict(wrong)
    # non-strict accepts missing keys and reports them, but never a wrong shape
    res = m.load_official_state_dict(missing, strict=False)
    assert list(res.missing_keys) == ["day_weights.3"]
    with pytest.raises(CheckpointError, match="shape"):
        m.load_official_state_dict(wrong, strict=False)


def test_strip_prefixes():
    t = torch.zeros(1)
    out = strip_prefixes({"_orig_mod.a": t, "module.b.module.c": t, "c": t})
    assert list(out) == ["a", "b.module.c", "c"] and out["a"] is t
    with pytest.raises(CheckpointError, match="both become 'a'"):
        strip_prefixes({"module.a": t, "_orig_mod.a": t})
    with pytest.raises(TypeError):
        strip_prefixes([("a", t)])


# ---------------------------------------------------------------------------------------------
# per-day parameters and AdamW
# ---------------------------------------------------------------------------------------------
def _adamw(model):
    days = [p for n, p in model.named_parameters() if "day_" in n]
    rest = [p for n, p in model.named_parameters() if "day_" not in n]
    groups = [{"params": days, "weight_decay": 0.05}, {"params": rest, "weight_decay": 0.001}]
    try:
        return torch.optim.AdamW(groups, lr=0.01, eps=0.1, fused=True)
    except RuntimeError:  # fused AdamW not supported on this device/build
        return torch.optim.AdamW(groups, lr=0.01, eps=0.1)


def _step(model, opt, x, days, **kw):
    opt.zero_grad()  # set_to_none=True, as the official trainer
    model(x, torch.tensor(days), **kw).square().mean().backward()
    opt.step()


@pytest.mark.parametrize("give_days", [False, True])
def test_absent_day_untouched_by_adamw(give_days, device):
    torch.manual_seed(1)
    m = small(input_dropout=0.2).to(device)
    opt = _adamw(m)
    x = torch.randn(4, 15, 8, device=device)
    days_a = [0, 1, 1, 0]
    _step(m, opt, x, days_a, days_present=[0, 1] if give_days else None)
    assert m.day_weights[2].grad is None and m.day_weights[4].grad is None
    assert m.day_biases[3].grad is None
    assert not torch.equal(m.day_weights[0], torch.eye(8, device=device)), "a present day did not move"
    before = {d: (m.day_weights[d].detach().clone(), m.day_biases[d].detach().clone())
              for d in range(5)}
    # day 0 now has AdamW state and non-zero weights; it is absent from the next batch
    _step(m, opt, x, [1, 2, 2, 1], days_present=[1, 2] if give_days else None)
    for d in (0, 3, 4):
        assert m.day_weights[d].grad is None, f"absent day {d} received a gradient"
        assert torch.equal(m.day_weights[d], before[d][0]), \
            f"absent day {d}: weight changed (decay or momentum applied)"
        assert torch.equal(m.day_biases[d], before[d][1]), f"absent day {d}: bias changed"
    for d in (1, 2):
        assert not torch.equal(m.day_weights[d], before[d][0]), f"present day {d} did not move"


# ---------------------------------------------------------------------------------------------
# forward
# ---------------------------------------------------------------------------------------------
def _manual_forward(m, x, day_idx, p=0.0, seed=0, step=0):
    """Reference composition: day_projection_ref on the present days, patchify_ref, GRU, Linear."""
    present = sorted(set(day_idx.tolist()))
    local = torch.tensor([present.index(d) for d in day_idx.tolist()], device=x.device)
    w = torch.stack([m.day_weights[d] for d in present])
    b = torch.cat([m.day_biases[d] for d in present])
    y = day_projection_ref(x, local, w, b, p, seed, step)
    if m.patch_size:
        y = patchify_ref(y, m.patch_size, m.patch_stride)
    h = m.h0.expand(m.n_layers, x.shape[0], m.n_units).contiguous()
    return m.out(m.gru(y, h)[0])


def _perturbed(**kw):
    torch.manual_seed(7)
    m = small(**kw)
    with torch.no_grad():
        for p in list(m.day_weights) + list(m.day_biases):
            p.add_(0.3 * torch.randn_like(p))
    return m


IMPLS = ["reference", pytest.param("auto", marks=pytest.mark.skipif(
    not HAS_DAY_OP, reason="fastbci.ops.day_projection not in this tree"))]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("B,T,patch", [(1, 15, (4, 2)), (3, 17, (4, 4)), (2, 15, (0, 0)),
                                       (5, 14, (14, 4)), (4, 23, (3, 1))])
def test_forward_matches_reference_eval(impl, B, T, patch, device):
    m = _perturbed(patch_size=patch[0], patch_stride=patch[1], impl=impl, input_dropout=0.2,
                   rnn_dropout=0.3).to(device)
    m.eval()
    torch.manual_seed(3)
    x = torch.randn(B, T, 8).to(device)
    day_idx = torch.randint(0, 5, (B,)).to(device)
    with torch.no_grad():
        got = m(x, day_idx)
        ref = _manual_forward(m, x, day_idx)
        got2, state = m(x, day_idx.tolist(), return_state=True,
                        days_present=sorted(set(day_idx.tolist()), reverse=True))
    P = (T - patch[0]) // patch[1] + 1 if patch[0] else T
    assert got.shape == (B, P, 7)
    # the fused CUDA day projection multiplies on bf16 tensor cores (fp32 accumulation)
    atol = 1e-5 if device.type == "cpu" else (1e-4 if impl == "reference" else 3e-2)
    assert_close(got, ref, atol=atol, what=f"logits impl={impl} on {device}")
    assert_close(got2, got, atol=1e-6, what="logits with days_present given")
    assert state.shape == (m.n_layers, B, m.n_units)


@pytest.mark.parametrize("impl", IMPLS)
def test_forward_train_philox_dropout(impl):
    m = _perturbed(input_dropout=0.25, rnn_dropout=0.0, impl=impl)
    m.train()
    x = torch.randn(3, 15, 8)
    day_idx = torch.tensor([4, 1, 4])
    got = m(x, day_idx, seed=11, step=5)
    ref = _manual_forward(m, x, day_idx, p=0.25, seed=11, step=5)
    assert_close(got, ref, atol=1e-5, what="train-mode logits (philox day dropout)")
    again = m(x, day_idx, seed=11, step=5)
    assert torch.equal(got, again), "philox dropout is not a pure function of (seed, step)"
    other = m(x, day_idx, seed=11, step=6)
    assert not torch.allclose(got, other), "a different step gave the same dropout mask"
    # gradients flow to the present days only
    got.sum().backward()
    assert m.day_weights[4].grad is not None and m.day_weights[1].grad is not None
    assert all(m.day_weights[d].grad is None for d in (0, 2, 3))


def test_forward_torch_rng_uses_global_generator():
    m = _perturbed(input_dropout=0.3, rng="torch")
    m.train()
    x = torch.randn(2, 15, 8)
    day_idx = torch.tensor([0, 3])
    torch.manual_seed(5)
    got = m(x, day_idx, seed=99, step=99)  # seed/step are ignored with rng="torch"
    present = [0, 3]
    w = torch.stack([m.day_weights[d] for d in present])
    b = torch.cat([m.day_biases[d] for d in present])
    torch.manual_seed(5)
    y = F.dropout(day_projection_ref(x, torch.tensor([0, 1]), w, b), 0.3, training=True)
    y = patchify_ref(y, 4, 2)
    ref = m.out(m.gru(y, m.h0.expand(2, 2, 12).contiguous())[0])
    assert_close(got, ref, atol=1e-5, what="rng='torch' logits")


def test_states_argument():
    m = _perturbed().eval()
    x = torch.randn(2, 15, 8)
    s = torch.randn(2, 2, 12)
    with torch.no_grad():
        a = m(x, torch.tensor([0, 1]), states=s)
        b = m.out(m.gru(patchify_ref(day_projection_ref(
            x, torch.tensor([0, 1]), torch.stack([m.day_weights[0], m.day_weights[1]]),
            torch.cat([m.day_biases[0], m.day_biases[1]])), 4, 2), s)[0])
    assert_close(a, b, atol=1e-5, what="logits from given states")
    with pytest.raises(ValueError, match=r"states must have shape \(2, 2, 12\)"):
        m(x, torch.tensor([0, 1]), states=torch.zeros(1, 2, 12))


# ---------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw,err,msg", [
    (dict(n_units=0), ValueError, "n_units must be >= 1"),
    (dict(n_days=2.5), TypeError, "n_days must be an integer"),
    (dict(patch_size=4, patch_stride=0), ValueError, "patch_stride must be > 0"),
    (dict(rnn_dropout=1.0), ValueError, r"rnn_dropout must be in \[0, 1\)"),
    (dict(impl="cuda"), ValueError, "impl must be one of"),
    (dict(rng="numpy"), ValueError, "rng must be one of"),
    (dict(init_blank_bias=float("nan")), ValueError, "init_blank_bias must be a finite number"),
    (dict(init_blank_bias="3"), ValueError, "init_blank_bias must be a finite number"),
    (dict(init_blank_bias=True), ValueError, "init_blank_bias must be a finite number"),
])
def test_constructor_errors(kw, err, msg):
    with pytest.raises(err, match=msg):
        small(**kw)


def test_forward_errors():
    m = small().eval()
    x = torch.randn(2, 15, 8)
    with pytest.raises(ValueError, match=r"x must be a \(B, T, 8\) tensor"):
        m(x[0], torch.tensor([0]))
    with pytest.raises(ValueError, match="x has 5 channels"):
        m(torch.randn(2, 15, 5), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"day_idx must have shape \(2,\)"):
        m(x, torch.tensor([0]))
    with pytest.raises(ValueError, match=r"day indices \[7\] are outside \[0, 4\]"):
        m(x, torch.tensor([0, 7]))
    with pytest.raises(ValueError, match=r"day_idx holds days \[1\] that are not in days_present"):
        m(x, torch.tensor([0, 1]), days_present=[0])
    with pytest.raises(ValueError, match="repeated days"):
        m(x, torch.tensor([0, 0]), days_present=[0, 0])
    with pytest.raises(ValueError, match="at least patch_size=4 time steps, got T=3"):
        m(torch.randn(2, 3, 8), torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="integer tensor"):
        m(x, torch.tensor([0.0, 1.0]))


def test_from_config():
    from fastbci.config import load_config
    cfg = load_config(None, ["model.n_units=16", "model.n_layers=2", "fastbci.rng=torch"])
    m = GRUDecoder.from_config(cfg)
    assert (m.neural_dim, m.n_units, m.n_days, m.n_classes, m.n_layers) == (512, 16, 45, 41, 2)
    assert (m.patch_size, m.patch_stride, m.rnn_dropout, m.input_dropout) == (14, 4, 0.4, 0.2)
    assert m.rng == "torch" and m.impl == "auto"
    assert abs(float(m.out.bias[0])) < 1, "the default is PyTorch's own output bias (official)"
    cfg = load_config(None, ["model.n_units=16", "model.n_layers=1", "fastbci.init_blank_bias=3"])
    assert float(GRUDecoder.from_config(cfg).out.bias[0]) == 3.0
    with pytest.raises(ValueError, match="lacks"):
        GRUDecoder.from_config({"model": {}})
