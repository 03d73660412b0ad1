"""torch.compile against eager: fastbci's training step (``fastbci.compile``) and the drop-in
model inside an official-style step, each pair timed in the same run.

* ``trainer step``: two ``fastbci.training.Trainer`` on one synthetic release, ``fastbci.impl=fused``,
  ``rng=philox``, identical but for ``fastbci.compile``; ``Trainer.train_step`` timed on the same
  plan. extra_info: ``eager_step_s``, ``compiled_step_s``, ``speedup_compiled_vs_eager``,
  ``first_compiled_step_s`` (includes compilation), ``recompiles`` over the timed steps (target 0:
  the batch length and the step change every batch), the losses of the first step (must agree).
* ``compat model step``: ``fastbci.compat.GRUDecoder`` forward, CTC, backward and AdamW on random
  batches whose length changes every step, ``torch.compile(model, dynamic=True)`` against the
  eager model (what a user of the official trainer gets). extra_info as above.

Shapes. GPU: the official ones (B=64, 4 days, 512 features, T near 800, GRU 5 x 768, bf16 autocast
for the trainer). CPU: small (the synthetic small preset for the trainer, B=4 and 32 features for
the compat model), one thread, the fused kernels in the Triton interpreter: CPU figures, a smoke
test of the suite, not a speed claim (``cpu_figures`` true).
"""
from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F

from bench_helpers import DEVICE, ON_GPU, median_seconds, run_bench
from fastbci import synth
from fastbci.compat import GRUDecoder
from fastbci.config import load_config
from fastbci.training import Trainer

if ON_GPU:
    RELEASE = dict(sessions=4, n_train=32, n_val=4, n_test=0, neural_dim=512, min_words=5,
                   max_words=8, train_only=[])
    OVERRIDES = ["dataset.batch_size=64", "dataset.days_per_batch=4", "use_amp=true"]
    MODEL = dict(neural_dim=512, n_units=768, n_days=45, n_classes=41, n_layers=5, B=64, T=800)
    REPEAT = 10
else:
    RELEASE = dict(synth.PRESETS["small"])
    OVERRIDES = ["model.n_units=32", "model.n_layers=2", "dataset.batch_size=4",
                 "dataset.days_per_batch=2", "use_amp=false"]
    MODEL = dict(neural_dim=32, n_units=32, n_days=6, n_classes=41, n_layers=2, B=4, T=120)
    REPEAT = 3
N_PLAN = 200
CPU_NOTE = ("CPU figures at small shapes, one thread, fused kernels in the Triton interpreter: "
            "not a GPU measurement, not a speed claim")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    if not ON_GPU:
        torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return synth.write_release(tmp_path_factory.mktemp("bench_compile"), seed=0, **RELEASE)


def _trainer(release, out, compile_: bool) -> Trainer:
    cfg = load_config(release["config"], OVERRIDES + [
        f"output_dir={out}", f"checkpoint_dir={out}/checkpoint", f"num_training_batches={N_PLAN}",
        "fastbci.impl=fused", "fastbci.rng=philox", f"fastbci.device={DEVICE.type}",
        "fastbci.progress=false", "fastbci.plot=false", f"fastbci.compile={str(compile_).lower()}"])
    return Trainer(cfg, console=False).setup()


class Steps:
    """``train_step`` over the plan, one batch after the other."""

    def __init__(self, trainer: Trainer):
        self.trainer, self.k = trainer, 0

    def __call__(self):
        out = self.trainer.train_step(self.k % N_PLAN)
        self.k += 1
        return out


def _timed_first(fn):
    t0 = time.perf_counter()
    out = fn()
    if ON_GPU:
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


@pytest.mark.benchmark(group="compile: trainer step")
def test_bench_trainer_step_compiled(benchmark, release, tmp_path):
    torch._dynamo.reset()
    eager = Steps(_trainer(release, tmp_path / "eager", False))
    comp = Steps(_trainer(release, tmp_path / "compiled", True))
    torch.manual_seed(0)
    loss_e = float(eager().loss)
    torch.manual_seed(0)
    out, first_s = _timed_first(comp)
    rtol = 2e-2 if ON_GPU else 1e-5
    assert abs(float(out.loss) - loss_e) <= rtol * abs(loss_e), (float(out.loss), loss_e)
    t_eager = median_seconds(eager, repeat=REPEAT, warmup=2)
    t_comp = median_seconds(comp, repeat=REPEAT, warmup=2)
    info = {"cpu_figures": not ON_GPU, "shape": " ".join(OVERRIDES), "eager_step_s": t_eager,
            "compiled_step_s": t_comp, "speedup_compiled_vs_eager": t_eager / t_comp,
            "first_compiled_step_s": first_s, "loss_step0": loss_e}
    if not ON_GPU:
        info["note"] = CPU_NOTE
    run_bench(benchmark, comp, rounds=REPEAT, warmup=1, **info)
    benchmark.extra_info["recompiles"] = comp.trainer.compile_watch.recompiles()
    print(f"\ntrainer step: eager {t_eager * 1e3:.1f} ms, compiled {t_comp * 1e3:.1f} ms "
          f"({t_eager / t_comp:.2f}x), first compiled step {first_s:.1f} s, recompiles "
          f"{benchmark.extra_info['recompiles']} ({'GPU' if ON_GPU else 'CPU figures'})")
    assert benchmark.extra_info["recompiles"] == 0


class CompatSteps:
    """Official-style steps of a compat GRUDecoder (forward, CTC, backward, AdamW) on random
    batches whose length changes every step, 4 days per batch."""

    def __init__(self, model):
        self.model = model.to(DEVICE).train()
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        self.k = 0
        g = torch.Generator().manual_seed(0)
        B, T, C = MODEL["B"], MODEL["T"], MODEL["neural_dim"]
        self.x = torch.randn(B, T + 3 * 8, C, generator=g).to(DEVICE)
        self.days = (torch.arange(B) % 4).to(DEVICE)
        self.labels = torch.randint(1, MODEL["n_classes"], (B, 20), generator=g).to(DEVICE)

    def __call__(self, net=None):
        net = self.model if net is None else net
        T = MODEL["T"] + 3 * (self.k % 8)
        self.k += 1
        self.opt.zero_grad(set_to_none=True)
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=ON_GPU):
            logits = net(self.x[:, :T], self.days)
        lens = torch.full((logits.shape[0],), logits.shape[1], dtype=torch.long)
        loss = F.ctc_loss(logits.float().log_softmax(2).permute(1, 0, 2), self.labels, lens,
                          torch.full_like(lens, self.labels.shape[1]), blank=0)
        loss.backward()
        self.opt.step()
        return loss.detach()


def _compat_model():
    torch.manual_seed(0)
    m = MODEL
    return GRUDecoder(m["neural_dim"], m["n_units"], m["n_days"], m["n_classes"], 0.4, 0.2,
                      m["n_layers"], 14, 4)


@pytest.mark.benchmark(group="compile: compat model step")
def test_bench_compat_model_step_compiled(benchmark):
    torch._dynamo.reset()
    from torch._dynamo.utils import counters
    eager = CompatSteps(_compat_model())
    comp = CompatSteps(_compat_model())
    compiled = torch.compile(comp.model, dynamic=True)
    _, first_s = _timed_first(lambda: comp(compiled))
    frames = counters["frames"]["ok"]
    t_eager = median_seconds(eager, repeat=REPEAT, warmup=2)
    t_comp = median_seconds(lambda: comp(compiled), repeat=REPEAT, warmup=2)
    info = {"cpu_figures": not ON_GPU, "shape": str(MODEL), "eager_step_s": t_eager,
            "compiled_step_s": t_comp, "speedup_compiled_vs_eager": t_eager / t_comp,
            "first_compiled_step_s": first_s}
    if not ON_GPU:
        info["note"] = CPU_NOTE
    run_bench(benchmark, lambda: comp(compiled), rounds=REPEAT, warmup=1, **info)
    benchmark.extra_info["recompiles"] = counters["frames"]["ok"] - frames
    print(f"\ncompat model step: eager {t_eager * 1e3:.1f} ms, compiled {t_comp * 1e3:.1f} ms "
          f"({t_eager / t_comp:.2f}x), first compiled step {first_s:.1f} s, recompiles "
          f"{benchmark.extra_info['recompiles']} ({'GPU' if ON_GPU else 'CPU figures'})")
    assert benchmark.extra_info["recompiles"] == 0
