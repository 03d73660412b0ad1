"""Worker of tests/test_distributed.py::test_ddp_keeps_the_official_day_gradients, launched by
``torchrun --nproc_per_node=2``: each rank runs a GRUDecoder inside fastbci's DataParallel.wrap
(torch DistributedDataParallel + the sum hook) on its own share of one global batch and saves
every parameter's gradient (None kept as None) to OUT/grads_RANK.pt.

Rank 0 holds days 0 and 1, rank 1 days 1 and 2: day 1 is on both ranks, days 0 and 2 on one
rank each, day 3 on none."""
import gc
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from fastbci.model import GRUDecoder
from fastbci.training.parallel import DataParallel, env_from_os

DAYS = {0: [0, 1, 1], 1: [1, 2, 2]}


def batch(rank: int):
    g = torch.Generator().manual_seed(100 + rank)
    return torch.randn(3, 9, 8, generator=g), torch.tensor(DAYS[rank])


def model() -> GRUDecoder:
    torch.manual_seed(0)
    return GRUDecoder(8, 6, 4, 5, n_layers=1, patch_size=2, patch_stride=1, impl="reference")


def main(out: Path) -> None:
    env = env_from_os()
    dist.init_process_group("gloo", rank=env.rank, world_size=env.world_size)
    try:
        par = DataParallel(env)
        m = model()
        net = par.wrap(m)
        x, days = batch(env.rank)
        logits = net(x, days, days_present=sorted(set(days.tolist())))
        # this rank's share of the global mean (6 trials), as the trainer's local_loss
        par.local_loss(logits.float().pow(2).mean((1, 2)), 6).backward()
        torch.save({n: (None if p.grad is None else p.grad.clone()) for n, p in m.named_parameters()},
                   out / f"grads_{env.rank}.pt")
        # free DDP's reducer while the process group is still alive: when the reducer held the
        # group's last reference (after destroy_process_group), the group's destructor joined gloo's
        # work thread while holding the GIL that thread needed, and the rank hung (8 of 20 runs)
        del net, logits
        gc.collect()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
