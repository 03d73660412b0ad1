"""fastbci.compat.GRUDecoder against an independent per-trial implementation of the official
forward pass, written here from the wording of docs/recipe.md section 4."""
from __future__ import annotations

import importlib.util
import inspect

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastbci.compat.model import GRUDecoder
from helpers import assert_close

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("fastbci.ops.day_projection") is None,
    reason="compat.GRUDecoder runs fastbci.ops.day_projection (impl='auto'), not in this tree")


class OfficialForward:
    """The official forward pass, per trial, from docs/recipe.md section 4: for each trial its own day matrix
    and bias, softsign, dropout (torch's generator), windows of ``size`` steps every ``stride``
    steps flattened time-major, a batch-first GRU from h0, a Linear layer."""

    def __init__(self, sd, cfg):
        self.sd, self.cfg = sd, cfg
        H, L = cfg["n_units"], cfg["n_layers"]
        size = cfg["patch_size"]
        in_size = cfg["neural_dim"] * size if size else cfg["neural_dim"]
        self.gru = nn.GRU(in_size, H, L, batch_first=True, dropout=cfg["rnn_dropout"])
        self.gru.load_state_dict({k[4:]: v for k, v in sd.items() if k.startswith("gru.")})

    def __call__(self, x, day_idx, training):
        sd, cfg = self.sd, self.cfg
        self.gru.train(training)
        rows = []
        for b in range(x.shape[0]):
            d = int(day_idx[b])
            rows.append(x[b] @ sd[f"day_weights.{d}"] + sd[f"day_biases.{d}"])
        y = torch.stack(rows)
        y = y / (1 + y.abs())
        if cfg["input_dropout"] > 0:
            y = F.dropout(y, cfg["input_dropout"], training=training)
        size, stride = cfg["patch_size"], cfg["patch_stride"]
        if size:
            n = (y.shape[1] - size) // stride + 1
            y = torch.stack([torch.cat([y[:, p * stride + k] for k in range(size)], dim=1)
                             for p in range(n)], dim=1)
        h0 = sd["h0"].expand(cfg["n_layers"], x.shape[0], cfg["n_units"]).contiguous()
        out, h = self.gru(y, h0)
        return out @ sd["out.weight"].T + sd["out.bias"], h


def make(cfg, seed=0):
    torch.manual_seed(seed)
    m = GRUDecoder(**cfg)
    with torch.no_grad():  # move the day layers away from identity / zero
        for p in list(m.day_weights) + list(m.day_biases):
            p.add_(0.3 * torch.randn_like(p))
    return m


CFGS = [
    dict(neural_dim=8, n_units=12, n_days=4, n_classes=7, rnn_dropout=0.3, input_dropout=0.2,
         n_layers=2, patch_size=4, patch_stride=2),
    dict(neural_dim=6, n_units=10, n_days=3, n_classes=5, rnn_dropout=0.0, input_dropout=0.0,
         n_layers=1, patch_size=0, patch_stride=0),
    dict(neural_dim=5, n_units=9, n_days=6, n_classes=41, rnn_dropout=0.4, input_dropout=0.2,
         n_layers=3, patch_size=14, patch_stride=4),
]


def test_official_signature():
    sig = inspect.signature(GRUDecoder.__init__)
    assert [(p.name, p.default) for p in list(sig.parameters.values())[1:]] == [
        ("neural_dim", inspect._empty), ("n_units", inspect._empty), ("n_days", inspect._empty),
        ("n_classes", inspect._empty), ("rnn_dropout", 0.0), ("input_dropout", 0.0),
        ("n_layers", 5), ("patch_size", 0), ("patch_stride", 0)]
    fsig = inspect.signature(GRUDecoder.forward)
    assert [(p.name, p.default) for p in list(fsig.parameters.values())[1:]] == [
        ("x", inspect._empty), ("day_idx", inspect._empty), ("states", None),
        ("return_state", False)]


@pytest.mark.parametrize("cfg", CFGS)
@pytest.mark.parametrize("B,T", [(1, 15), (3, 17), (5, 22)])
def test_forward_equals_official_eval(cfg, B, T, device):
    m = make(cfg).eval().to(device)
    sd = {k: v.detach().clone() for k, v in m.state_dict().items()}
    official = OfficialForward(sd, cfg)
    official.gru.to(device)
    g = torch.Generator().manual_seed(B * 100 + T)
    x = torch.randn(B, T, cfg["neural_dim"], generator=g).to(device)
    day_idx = torch.randint(0, cfg["n_days"], (B,), generator=g).to(device)
    with torch.no_grad():
        got, h = m(x, day_idx, return_state=True)
        ref, h_ref = official(x, day_idx, training=False)
    # on CUDA the fused day projection multiplies on bf16 tensor cores (fp32 accumulation)
    atol = 1e-5 if device.type == "cpu" else 3e-2
    assert_close(got, ref, atol=atol, what=f"eval logits cfg={cfg} B={B} T={T} on {device}")
    assert_close(h, h_ref, atol=atol, what="final GRU state")
    with torch.no_grad():
        as_list = m(x, day_idx.tolist())
    assert_close(as_list, got, atol=1e-6, what="day_idx given as a list")


@pytest.mark.parametrize("cfg", CFGS)
@pytest.mark.parametrize("B,T", [(1, 15), (4, 21)])
def test_forward_equals_official_train_same_seed(cfg, B, T):
    m = make(cfg).train()
    sd = {k: v.detach().clone() for k, v in m.state_dict().items()}
    official = OfficialForward(sd, cfg)
    x = torch.randn(B, T, cfg["neural_dim"])
    day_idx = torch.tensor([(3 * b + 1) % cfg["n_days"] for b in range(B)])
    torch.manual_seed(1234)
    got = m(x, day_idx)
    torch.manual_seed(1234)
    ref, _ = official(x, day_idx, training=True)
    assert_close(got, ref, atol=1e-5, what=f"train logits with the same torch seed, cfg={cfg}")
    if cfg["input_dropout"] > 0 or (cfg["rnn_dropout"] > 0 and cfg["n_layers"] > 1):
        other = m(x, day_idx)  # the generator has moved on: different masks
        assert not torch.allclose(other, got), "dropout did not draw from torch's generator"


def test_gradients_match_official_and_absent_days_stay_none():
    cfg = CFGS[0]
    m = make(cfg).eval()
    sd = {k: v.detach().clone().requires_grad_(True) for k, v in m.state_dict().items()}
    official = OfficialForward(sd, cfg)
    x = torch.randn(3, 16, 8)
    day_idx = torch.tensor([2, 0, 2])
    target = torch.randn(3, 7, 7)
    (m(x, day_idx) * target).sum().backward()
    (official(x, day_idx, training=False)[0] * target).sum().backward()
    for d in (0, 2):
        assert_close(m.day_weights[d].grad, sd[f"day_weights.{d}"].grad, atol=1e-5, what=f"dW day {d}")
        assert_close(m.day_biases[d].grad, sd[f"day_biases.{d}"].grad, atol=1e-5, what=f"db day {d}")
    assert_close(m.h0.grad, sd["h0"].grad, atol=1e-5, what="dh0")
    assert_close(m.out.weight.grad, sd["out.weight"].grad, atol=1e-5, what="d out.weight")
    for d in (1, 3):
        assert m.day_weights[d].grad is None and m.day_biases[d].grad is None, \
            f"absent day {d} received a gradient"


def test_official_keys_and_seeded_init():
    from fastbci.model import GRUDecoder as Fast
    cfg = CFGS[0]
    torch.manual_seed(9)
    a = GRUDecoder(**cfg)
    torch.manual_seed(9)
    b = Fast(**cfg)
    assert list(a.state_dict()) == b.official_keys()
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), f"{k}: compat init differs for the same seed"
    assert a.rng == "torch" and a.impl == "auto"
    # an official checkpoint loads with plain load_state_dict, as in the official scripts
    a.load_state_dict(b.official_state_dict())
