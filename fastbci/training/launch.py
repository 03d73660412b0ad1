"""Starting a training run from a configuration file: in this process (:func:`train`), or as one
``torchrun`` worker of a distributed run (:func:`run_distributed`: join the process group,
train, leave the group together)."""
from __future__ import annotations

import shlex
import sys
from typing import Sequence

from fastbci import config as config_mod
from fastbci.errors import (EXIT_COLLAPSE, EXIT_INTERRUPTED, EXIT_NONFINITE, EXIT_OK, exit_code_of,
                            run_command)
from fastbci.training.loop import FitSummary, Trainer

__all__ = ["resume_command", "train", "run_distributed"]


def resume_command(config: str, overrides: Sequence[str], prog: str = "fastbci train") -> str:
    """The command that resumes the run of ``config`` with ``overrides`` (what an interrupted
    run tells the user to type)."""
    again = [a for a in overrides if not a.startswith("fastbci.resume=")] + ["fastbci.resume=true"]
    return f"{prog} " + " ".join(shlex.quote(a) for a in [config, *again])


def train(config: str, overrides: Sequence[str] = (), *, console: bool = True) -> FitSummary:
    """Train the configuration file ``config`` with ``key=value`` ``overrides`` in this process."""
    cfg = config_mod.load_config(config, overrides)
    return Trainer(cfg, console=console, resume_command=resume_command(config, overrides)).fit()


def run_distributed(config: str, overrides: Sequence[str], env, prog: str = "fastbci train") -> int:
    """One ``torchrun`` worker (``env.world_size > 1``): join the process group, train, leave the
    group; the exit status. Only rank 0 prints errors."""
    import torch.distributed as dist

    from fastbci.devices import select_device
    from fastbci.training import parallel

    def run() -> int:
        cfg = config_mod.load_config(config, list(overrides))
        parallel.check_world_size(cfg, env.world_size)
        parallel.init_process_group(env, select_device(cfg, local_rank=env.local_rank))
        return exit_code_of(Trainer(cfg, parallel.DataParallel(env)).fit().status)

    code = 1
    try:
        code = run_command(run, prog=prog, report=env.is_main)
        return code
    finally:
        if dist.is_initialized():
            if code in (EXIT_OK, EXIT_COLLAPSE, EXIT_NONFINITE, EXIT_INTERRUPTED):
                # every rank left the training loop together (a fit() status): leave together;
                # without this barrier a rank can tear its gloo pairs down while a peer is still
                # closing, which aborts that peer ("terminate called without an active exception")
                dist.barrier()
            dist.destroy_process_group()
        sys.stdout.flush()
