"""torch.compile on fastbci's ops and models, the drop-in path of the official trainer (CPU).

* ``torch._dynamo.explain`` finds no graph break in the fused ops (alone and chained), in
  fastbci's training step up to the GRU and in ``compat.GRUDecoder.gru_inputs`` (train and eval,
  with and without states); the whole compat forward breaks exactly once, on purpose, around
  the eagerly run GRU (``fastbci.model._run_gru``);
* ``fullgraph=True`` compiles each of them (inductor) and gives the eager results, forward and
  backward;
* the official per-day gradient semantics survive compilation: a day absent from the batch keeps
  ``grad is None`` and AdamW leaves it untouched, a compiled GRUDecoder trains like the eager one;
* no recompile across batch lengths and steps (``dynamic=True``, SymInt seed/step), and the
  trainer's ``fastbci.compile=true`` gives the eager losses and logs its recompiles;
* a bad day index is a clear error, eagerly and inside a compiled graph.
"""
from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F
from torch._dynamo.utils import counters

from fastbci import ops
from fastbci.compat import GRUDecoder as CompatGRUDecoder
from fastbci.config import load_config
from fastbci.model import GRUDecoder
from fastbci.ops import Augmentation
from fastbci.training import Trainer
from helpers import assert_close

#: real torch.compile runs: slow (pytest -m 'not slow' leaves them out)
pytestmark = pytest.mark.slow

TRANSFORMS = {"white_noise_std": 1.0, "constant_offset_std": 0.2, "random_walk_std": 0.0,
              "random_walk_axis": -1, "static_gain_std": 0.0, "random_cut": 3,
              "smooth_kernel_size": 100, "smooth_data": True, "smooth_kernel_std": 2}
AUG = Augmentation.from_transforms(TRANSFORMS)
C, N_DAYS = 8, 5


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each test compiles from an empty Dynamo cache (counts and explain start from zero)."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _data(seed=0, B=3, T=17):
    g = torch.Generator().manual_seed(seed)
    return {"x": torch.randn(B, T, C, generator=g), "n": torch.tensor([T, T - 5, T - 8][:B]),
            "feats": torch.randn(40, C, generator=g), "offsets": torch.tensor([0, 10, 25, 40]),
            "lengths": torch.tensor([10, 15, 15]), "rows": torch.tensor([2, 0, 1]),
            "local": torch.tensor([0, 1, 1]), "w": torch.randn(2, C, C, generator=g),
            "b": torch.randn(2, C, generator=g), "days": torch.tensor([0, 3, 3])}


# --------------------------------------------------------------------------------- the cases
def _augment(d):
    return ops.augment_smooth(d["x"], d["n"], AUG, mode="train", seed=3, step=5,
                              impl="fused")[0]


def _gather(d):
    return ops.augment_smooth_gather(d["feats"], d["offsets"], d["lengths"], d["rows"],
                                     AUG, mode="train", seed=3, step=5, impl="fused",
                                     t_max=15)[0]


def _day_projection(d):
    return ops.day_projection(d["x"], d["local"], d["w"], d["b"], 0.25, 3, 5, impl="fused")


def _patchify(d):
    return ops.patchify(d["x"], 4, 2, impl="fused")


def _patchify_reference(d):
    """Overlapping windows of an intermediate leaving the graph: AOTAutograd (torch 2.13) gets
    this gradient wrong for a view output; the op returns a copy under compile."""
    return ops.patchify(d["x"] * 1.0, 4, 2, impl="reference")


def _chain(d):
    y = ops.augment_smooth_gather(d["feats"], d["offsets"], d["lengths"], d["rows"], AUG,
                                  mode="train", seed=3, step=5, impl="fused", t_max=15)[0]
    y = ops.day_projection(y, d["local"], d["w"], d["b"], 0.25, 3, 5, impl="fused")
    return ops.patchify(y, 4, 2, impl="fused")


OP_CASES = {"augment_smooth": _augment, "augment_smooth_gather": _gather,
            "day_projection": _day_projection, "patchify": _patchify,
            "patchify (reference)": _patchify_reference,
            "gather -> day_projection -> patchify": _chain}
# inputs each case differentiates (the augment ops are data-path transforms, not differentiable)
GRAD_INPUTS = {"day_projection": ("x", "w", "b"), "patchify": ("x",),
               "patchify (reference)": ("x",),
               "gather -> day_projection -> patchify": ("w", "b")}


def _fastbci_model(**kw):
    torch.manual_seed(7)
    args = dict(rnn_dropout=0.0, input_dropout=0.2, n_layers=2, patch_size=4, patch_stride=2,
                impl="fused")
    args.update(kw)
    return GRUDecoder(C, 12, N_DAYS, 7, **args)


def _compat_model():
    torch.manual_seed(7)
    m = CompatGRUDecoder(C, 12, N_DAYS, 7, rnn_dropout=0.3, input_dropout=0.2, n_layers=2,
                         patch_size=4, patch_stride=2)
    with torch.no_grad():  # move the day layers away from identity / zero
        for p in list(m.day_weights) + list(m.day_biases):
            p.add_(0.3 * torch.randn_like(p))
    return m


def _trainer_step_up_to_the_gru(model, d):
    """What fastbci's training step runs before the GRU: the day layer with the trainer's
    host-known days and Philox dropout, then patching and the initial state."""
    return model.gru_inputs(d["x"], d["days"], days_present=[0, 3],
                            local_day_idx=torch.tensor([0, 1, 1]), seed=3, step=5)[0]


# --------------------------------------------------------------------------------- point 1
def explain(fn, *args, **kwargs):
    e = torch._dynamo.explain(fn)(*args, **kwargs)
    return e.graph_count, e.graph_break_count, [r.reason for r in e.break_reasons]


@pytest.mark.parametrize("name", list(OP_CASES))
def test_fused_ops_have_no_graph_break(name):
    d = _data()
    graphs, breaks, reasons = explain(OP_CASES[name], d)
    assert (graphs, breaks) == (1, 0), f"{name}: {graphs} graphs, {breaks} breaks: {reasons}"


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("with_states", [False, True])
def test_models_up_to_the_gru_have_no_graph_break(train, with_states):
    d = _data()
    states = torch.randn(2, 3, 12) if with_states else None
    compat = _compat_model().train(train)
    graphs, breaks, reasons = explain(compat.gru_inputs, d["x"], d["days"], states)
    assert (graphs, breaks) == (1, 0), f"compat gru_inputs: {breaks} breaks: {reasons}"
    model = _fastbci_model().train(train)
    graphs, breaks, reasons = explain(_trainer_step_up_to_the_gru, model, d)
    assert (graphs, breaks) == (1, 0), f"fastbci step up to the GRU: {breaks} breaks: {reasons}"


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("with_states", [False, True])
def test_compat_forward_breaks_only_around_the_gru(train, with_states):
    """The official call ``model(x, day_idx[, states])``: two graphs, the one break is the
    deliberate eager GRU (no data-dependent break, no host read)."""
    d = _data()
    m = _compat_model().train(train)
    states = torch.randn(2, 3, 12) if with_states else None
    graphs, breaks, reasons = explain(m, d["x"], d["days"], states)
    assert (graphs, breaks) == (2, 1), reasons
    assert "torch.compiler.disable" in reasons[0], reasons


@pytest.mark.parametrize("name", list(OP_CASES))
def test_fused_ops_fullgraph_equal_eager(name):
    fn = OP_CASES[name]
    names = GRAD_INPUTS.get(name, ())
    d_eager, d_comp = _data(), _data()
    for d in (d_eager, d_comp):
        for k in names:
            d[k].requires_grad_(True)
    want = fn(d_eager)
    got = torch.compile(fn, fullgraph=True)(d_comp)
    assert_close(got, want, atol=1e-6, rtol=1e-6, what=f"{name} forward")
    if names:
        g = torch.randn_like(want)
        want.backward(g)
        got.backward(g)
        for k in names:
            assert_close(d_comp[k].grad, d_eager[k].grad, atol=1e-5, rtol=1e-5,
                         what=f"{name} grad of {k}")


@contextlib.contextmanager
def eager_random():
    """Compiled dropout draws from torch's generator as eager does (else inductor's own)."""
    import torch._inductor.config as inductor_config
    with inductor_config.patch(fallback_random=True):
        yield


def _grads(model):
    return {n: (None if p.grad is None else p.grad.clone()) for n, p in model.named_parameters()}


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("with_states", [False, True])
def test_compat_fullgraph_up_to_the_gru_equals_eager(train, with_states):
    d = _data()
    states = torch.randn(2, 3, 12) if with_states else None
    eager, comp = _compat_model().train(train), _compat_model().train(train)
    fn = torch.compile(comp.gru_inputs, fullgraph=True)
    with eager_random():
        torch.manual_seed(11)
        want, want_h = eager.gru_inputs(d["x"], d["days"], states)
        torch.manual_seed(11)
        got, got_h = fn(d["x"], d["days"], states)
    assert_close(got, want, atol=1e-6, rtol=1e-6, what=f"gru inputs train={train}")
    assert_close(got_h, want_h, what="initial states")
    g = torch.randn_like(want)
    (want * g).sum().add(want_h.sum()).backward()  # both outputs used, as the GRU does
    (got * g).sum().add(got_h.sum()).backward()
    ge, gc = _grads(eager), _grads(comp)
    for n in ge:
        if ge[n] is None or gc[n] is None:
            assert ge[n] is None and gc[n] is None, f"{n}: eager grad None {ge[n] is None}, " \
                                                   f"compiled None {gc[n] is None}"
        else:
            assert_close(gc[n], ge[n], atol=1e-5, rtol=1e-5, what=f"grad of {n}")
    absent = [k for k in range(N_DAYS) if k not in (0, 3)]
    assert all(comp.day_weights[k].grad is None for k in absent)


def test_fastbci_step_up_to_the_gru_fullgraph_equals_eager():
    d = _data()
    eager, comp = _fastbci_model().train(), _fastbci_model().train()
    want = _trainer_step_up_to_the_gru(eager, d)
    got = torch.compile(_trainer_step_up_to_the_gru, fullgraph=True)(comp, d)
    assert_close(got, want, atol=1e-6, rtol=1e-6, what="philox day dropout + patches")


# ----------------------------------------------------------------- per-day gradient semantics
def _ctc_step(model, opt, x, days, labels):
    """One official-style step: forward, CTC (blank 0, per-trial mean), backward, AdamW."""
    opt.zero_grad(set_to_none=True)
    logits = model(x, days)
    lens = torch.full((x.shape[0],), logits.shape[1], dtype=torch.long)
    loss = F.ctc_loss(logits.log_softmax(2).permute(1, 0, 2), labels, lens,
                      torch.full((x.shape[0],), labels.shape[1], dtype=torch.long),
                      blank=0, reduction="mean", zero_infinity=False)
    loss.backward()
    grads_none = [p.grad is None for p in model.day_weights]
    opt.step()
    return float(loss.detach()), grads_none


def _official_adamw(model):
    day = [p for n, p in model.named_parameters() if "day_" in n]
    rest = [p for n, p in model.named_parameters() if "day_" not in n]
    return torch.optim.AdamW([{"params": rest, "weight_decay": 0.001},
                              {"params": day, "weight_decay": 0.05}], lr=0.01, eps=0.1)


BATCH_DAYS = ([0, 3, 3, 0], [1, 1, 2, 2], [4, 0, 4, 0], [2, 3, 2, 3])


def test_compiled_compat_decoder_trains_like_eager():
    """A few official-style steps (AdamW with the day group, CTC): the compiled model's losses,
    absent-day gradients (None) and parameters follow the eager model's; the absent days are
    left untouched by AdamW (decay and momentum skipped), as officially."""
    eager, comp = _compat_model().train(), _compat_model().train()
    opt_e, opt_c = _official_adamw(eager), _official_adamw(comp)
    compiled = torch.compile(comp, dynamic=True)
    g = torch.Generator().manual_seed(5)
    for k, days in enumerate(BATCH_DAYS):
        T = 19 + 2 * k
        x = torch.randn(4, T, C, generator=g)
        labels = torch.randint(1, 7, (4, 3), generator=g)
        days = torch.tensor(days)
        before = [p.detach().clone() for p in comp.day_weights]
        with eager_random():
            torch.manual_seed(100 + k)
            le, none_e = _ctc_step(eager, opt_e, x, days, labels)
            torch.manual_seed(100 + k)
            lc, none_c = _ctc_step(compiled, opt_c, x, days, labels)
        assert lc == pytest.approx(le, rel=1e-5), f"step {k}: loss {lc} vs eager {le}"
        assert none_c == none_e == [d not in days.tolist() for d in range(N_DAYS)], \
            f"step {k}: grad is None per day: compiled {none_c}, eager {none_e}"
        for d in range(N_DAYS):
            if d not in days.tolist():
                assert torch.equal(comp.day_weights[d], before[d]), f"absent day {d} moved"
    for (n, pe), pc in zip(eager.named_parameters(), comp.parameters()):
        assert_close(pc, pe, atol=1e-5, rtol=1e-5, what=f"{n} after {len(BATCH_DAYS)} steps")


def test_host_known_days_spare_the_mask_read():
    """With note_batch_days the hooks take the host's days: the device mask is not read (here
    it is wiped after the forward, and the present days still keep their gradients)."""
    m = _fastbci_model()
    compiled = torch.compile(m, fullgraph=False)
    d = _data()
    out = compiled(d["x"], d["days"], seed=1, step=2)
    m._days_seen.zero_()
    m.note_batch_days([0, 3])
    out.sum().backward()
    assert [p.grad is None for p in m.day_weights] == [False, True, True, False, True]
    # without the note the mask decides: wiped, every day loses its gradient
    m.zero_grad(set_to_none=True)
    out = compiled(d["x"], d["days"], seed=1, step=2)
    m._days_seen.zero_()
    out.sum().backward()
    assert all(p.grad is None for p in m.day_weights)


def test_accumulated_gradient_of_a_day_absent_later_is_kept():
    m = _fastbci_model(input_dropout=0.0)
    compiled = torch.compile(m)
    x = _data()["x"]
    compiled(x, torch.tensor([0, 0, 1]), seed=1, step=2).sum().backward()
    g0 = m.day_weights[0].grad.clone()
    compiled(x, torch.tensor([1, 2, 2]), seed=1, step=3).sum().backward()
    assert torch.equal(m.day_weights[0].grad, g0), "an absent day's accumulated grad changed"
    assert m.day_weights[3].grad is None and m.day_weights[2].grad is not None


# ------------------------------------------------------------------------ shapes, recompiles
def test_no_recompile_across_lengths_and_steps():
    m = _fastbci_model()
    compiled = torch.compile(m, dynamic=True)
    start, frames = counters["frames"]["ok"], []
    for k in range(5):
        T = 15 + 3 * k
        x = torch.randn(4, T, C)
        out = compiled(x, torch.tensor([0, 3, 3, 1]), days_present=[0, 1, 3],
                       local_day_idx=torch.tensor([0, 2, 2, 1]), seed=5, step=k)
        out.sum().backward()
        frames.append(counters["frames"]["ok"] - start)
    # the first call compiles the two graphs around the eager GRU, the later ones nothing
    assert frames == [2] * 5, f"frames compiled after each step: {frames}"


# ------------------------------------------------------------------------------------ errors
def test_bad_day_index_is_a_clear_error():
    d = _data()
    m = _compat_model().eval()
    bad = torch.tensor([0, 7, 3])
    with pytest.raises(ValueError, match=r"day indices \[7\] are outside \[0, 4\]"):
        m(d["x"], bad)
    with pytest.raises(ValueError, match="must index the 2 stacked days"):
        ops.day_projection(d["x"], torch.tensor([0, 2, 1]), d["w"], d["b"], impl="fused")
    # inside a compiled graph the C++ op checks the range (CPU; CUDA flags the trial with NaN)
    with pytest.raises(RuntimeError, match=r"day_idx\[1\] = 7 does not index the 5 stacked days"):
        torch.compile(m.gru_inputs, fullgraph=True)(d["x"], bad)


# ----------------------------------------------------------------------- trainer (point 2)
@pytest.fixture(scope="module")
def release(synth_release):
    return synth_release(seed=0)


def _run(release, out, compile_: bool) -> Trainer:
    """Four training batches through the trainer's loop (train log every batch)."""
    cfg = load_config(release / "synth_config.yaml", [
        f"output_dir={out}", f"checkpoint_dir={out}/checkpoint", "model.n_units=16",
        "model.n_layers=2", "model.rnn_dropout=0.4", "dataset.batch_size=5",
        "dataset.days_per_batch=2", "num_training_batches=4", "batches_per_train_log=1",
        "batches_per_val_step=100", "lr_warmup_steps=2", "lr_warmup_steps_day=2",
        "lr_decay_steps=4", "lr_decay_steps_day=4", "use_amp=false", "fastbci.rng=philox",
        "fastbci.impl=fused", "fastbci.device=cpu", "fastbci.progress=false",
        "fastbci.plot=false", f"fastbci.compile={str(compile_).lower()}"])
    tr = Trainer(cfg, console=False).setup()
    tr.fit()
    return tr


def test_trainer_compile_gives_the_eager_losses_and_logs_recompiles(release, tmp_path):
    torch.manual_seed(0)
    eager = _run(release, tmp_path / "eager", False)
    torch.manual_seed(0)
    comp = _run(release, tmp_path / "compiled", True)
    want, got = eager.state.train_losses.tolist(), comp.state.train_losses.tolist()
    assert got == pytest.approx(want, rel=1e-5), f"compiled {got} vs eager {want}"
    for a, b in zip(comp.model.parameters(), eager.model.parameters()):
        assert_close(a, b, atol=1e-5, rtol=1e-5, what="parameters after 4 batches")
    log = (tmp_path / "compiled" / "train.log").read_text()
    assert "torch.compile: on" in log
    lines = [ln for ln in log.splitlines() if "Train batch" in ln]
    assert len(lines) == 4 and all(ln.endswith("recompiles: 0") for ln in lines), lines
    assert "recompiles" not in (tmp_path / "eager" / "train.log").read_text()
