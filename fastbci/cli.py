"""The command line of the trainer: ``python -m fastbci.train CONFIG [key=value ...]``, the
error handling every fastbci command shares (:func:`run_cli`) and the hand-over to a
distributed run when launched by ``torchrun``."""
from __future__ import annotations

import logging
import os
import shlex
import sys
from typing import Callable, Sequence

from fastbci import config as config_mod
from fastbci.errors import (EXIT_COLLAPSE, EXIT_CONFIG, EXIT_INTERRUPTED, EXIT_NONFINITE, EXIT_OK,
                            ConfigError, exit_code_of, run_command)

USAGE = """usage: python -m fastbci.train CONFIG [key=value ...]

Train the Brain-to-Text '25 baseline phoneme decoder with the official recipe.
CONFIG is a YAML file (e.g. configs/official.yaml, configs/demo.yaml); key=value pairs override
it (dotted keys, YAML values), e.g. num_training_batches=10000 dataset.batch_size=48.
Useful fastbci.* keys: resume=true|PATH, overwrite=true, impl=auto|fused|reference,
rng=philox|torch, progress=false, checkpoint_every=N, nonfinite_policy=stop|skip.
Several GPUs / nodes: torchrun --nproc_per_node=N -m fastbci.train CONFIG [key=value ...]
(dataset.batch_size is the global batch; see docs/distributed.md).
Ctrl-C or SIGTERM (kill, SLURM) stops after the current batch with a resumable checkpoint and
prints the command that resumes it.
Exit status: 0 done, 2 configuration error, 3 blank collapse, 4 non-finite, 130 interrupted."""


def run_cli(fn: Callable[[], int], *, report: bool = True, prog: str = "fastbci.train") -> int:
    """:func:`fastbci.errors.run_command` with the trainer's name (the one error-to-exit-status
    mapping every fastbci command shares)."""
    return run_command(fn, prog=prog, report=report)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return EXIT_OK if argv else EXIT_CONFIG
    from fastbci.training import parallel
    try:
        env = parallel.env_from_os()
    except ConfigError as e:
        print(f"fastbci.train: configuration error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    if env is not None and env.world_size > 1:
        return distributed_main(argv, env)

    def run() -> int:
        from fastbci.training import Trainer
        cfg = config_mod.load_config(argv[0], argv[1:])
        again = [a for a in argv if not a.startswith("fastbci.resume=")] + ["fastbci.resume=true"]
        command = "python -m fastbci.train " + " ".join(shlex.quote(a) for a in again)
        return exit_code_of(Trainer(cfg, resume_command=command).fit().status)

    return run_cli(run)


def distributed_main(argv: Sequence[str], env) -> int:
    """``python -m fastbci.train`` inside a ``torchrun`` worker (``env.world_size > 1``): join
    the process group, train, leave the group. Only rank 0 prints errors."""
    import torch.distributed as dist

    from fastbci.devices import select_device
    from fastbci.training import DataParallel, Trainer, parallel

    def run() -> int:
        cfg = config_mod.load_config(argv[0], list(argv[1:]))
        parallel.check_world_size(cfg, env.world_size)
        parallel.init_process_group(env, select_device(cfg, local_rank=env.local_rank))
        return exit_code_of(Trainer(cfg, DataParallel(env)).fit().status)

    code = 1
    try:
        code = run_cli(run, report=env.is_main)
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


def exit_worker(code: int) -> None:
    """End a ``torchrun`` worker process: flush, then leave without interpreter finalisation.
    Gloo's C++ threads can still hold Python objects when the interpreter tears itself down,
    which aborts the process (SIGABRT, "terminate called without an active exception") after a
    successful run and makes torchrun report a failure; the process group is already destroyed
    and every file closed by then (:func:`distributed_main`)."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
