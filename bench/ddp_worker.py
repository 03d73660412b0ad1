"""Worker of bench/test_bench_distributed.py, launched by ``torchrun --nproc_per_node=2``: one
training step (forward, backward, gradient sum over the ranks) timed two ways on two copies of
one model (same weights: a model inside DDP cannot also run outside it) and the same batches,
interleaved in blocks so that machine drift hits both alike:

* ``ddp``: fastbci's DataParallel.wrap (torch DistributedDataParallel, bucketed all-reduce
  overlapped with the backward, the sum hook, find_unused_parameters);
* ``reducer``: the hand-made reducer fastbci used before (kept here only as the baseline): after
  the backward, every gradient of the global batch's parameters copied into one fp32 buffer,
  one all-reduce, copied back.

Rank 0 writes OUT/ddp_bench.json: the median step seconds of each and their ratio, and checks
that both give the same gradients."""
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from fastbci.model import GRUDecoder
from fastbci.training.parallel import DataParallel, env_from_os

SIZE = dict(neural_dim=256, n_units=256, n_days=8, n_classes=41, n_layers=2, patch_size=14,
            patch_stride=4)
B_RANK, T = 8, 160
BLOCKS, STEPS = 4, 3


class LegacyReducer:
    """The pre-DDP gradient sum: one flat fp32 buffer after the backward."""

    def __init__(self, model):
        self.day = {d: [w, b] for d, (w, b) in enumerate(zip(model.day_weights, model.day_biases))}
        ids = {id(p) for ps in self.day.values() for p in ps}
        self.shared = [p for p in model.parameters() if id(p) not in ids]

    def all_reduce(self, days):
        params = list(self.shared) + [p for d in sorted(set(days)) for p in self.day[d]]
        flat = torch.cat([torch.zeros(p.numel()) if p.grad is None else p.grad.reshape(-1).float()
                          for p in params])
        dist.all_reduce(flat)
        at = 0
        for p in params:
            p.grad = flat[at:at + p.numel()].view_as(p).clone()
            at += p.numel()


def batches(rank):
    g = torch.Generator().manual_seed(rank)
    out = []
    for _ in range(STEPS):
        days = torch.randint(0, SIZE["n_days"], (B_RANK,), generator=g)
        out.append((torch.randn(B_RANK, T, SIZE["neural_dim"], generator=g), days))
    return out


def step(net, model, x, days, all_days, reducer=None):
    model.zero_grad(set_to_none=True)
    net(x, days, days_present=sorted(set(days.tolist()))).float().pow(2).mean().backward()
    if reducer is not None:
        reducer.all_reduce(all_days)


def main(out: Path) -> None:
    env = env_from_os()
    dist.init_process_group("gloo", rank=env.rank, world_size=env.world_size)
    torch.manual_seed(0)
    model = GRUDecoder(**SIZE, impl="reference")
    plain = GRUDecoder(**SIZE, impl="reference")  # the same weights, never inside DDP
    plain.load_state_dict(model.state_dict())
    ddp = DataParallel(env).wrap(model)
    reducer = LegacyReducer(plain)
    data = batches(env.rank)
    everyone = [None] * env.world_size
    dist.all_gather_object(everyone, [d.tolist() for _, d in data])
    all_days = [sum((r[k] for r in everyone), []) for k in range(STEPS)]
    times = {"ddp": [], "reducer": []}
    for b in range(BLOCKS + 1):  # block 0 warms up
        for name in ("ddp", "reducer") if b % 2 == 0 else ("reducer", "ddp"):
            for k, (x, d) in enumerate(data):
                dist.barrier()
                t0 = time.perf_counter()
                if name == "ddp":
                    step(ddp, model, x, d, all_days[k])
                else:
                    step(plain, plain, x, d, all_days[k], reducer)
                if b:
                    times[name].append(time.perf_counter() - t0)
    x, d = data[0]
    step(ddp, model, x, d, all_days[0])
    g_ddp = {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}
    step(plain, plain, x, d, all_days[0], reducer)
    same = all((g_ddp[n] is None) == (p.grad is None) and
               (p.grad is None or torch.allclose(g_ddp[n], p.grad, rtol=1e-5, atol=1e-6))
               for n, p in plain.named_parameters())
    if env.rank == 0:
        med = {k: statistics.median(v) for k, v in times.items()}
        (out / "ddp_bench.json").write_text(json.dumps({
            "ddp_step_s": med["ddp"], "reducer_step_s": med["reducer"],
            "reducer_over_ddp": med["reducer"] / med["ddp"], "steps_each": len(times["ddp"]),
            "same_gradients": same, "world_size": env.world_size, "backend": "gloo",
            "model": SIZE, "batch_per_rank": B_RANK, "T": T,
            "parameters": sum(p.numel() for p in model.parameters())}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
