"""``fastbci train CONFIG [key=value ...]``: train with the official recipe (the library:
:mod:`fastbci.training`)."""
from __future__ import annotations

import argparse
import os

from fastbci.commands.options import add_json, print_json, say_to_stderr

HELP = "train the phoneme decoder (the official recipe; several GPUs under torchrun)"
DESCRIPTION = """Train the Brain-to-Text '25 baseline phoneme decoder with the official recipe.

CONFIG is a YAML file (configs/official.yaml, configs/demo.yaml, a synth_config.yaml, or an
official rnn_args.yaml); key=value pairs override it (dotted keys, YAML values), e.g.
num_training_batches=10000 dataset.batch_size=48. Useful fastbci.* keys: impl=auto|fused|reference,
rng=philox|torch, progress=false, checkpoint_every=N, nonfinite_policy=stop|skip (docs/configuration.md
lists every key and its range).

Several GPUs / nodes: torchrun --nproc_per_node=N -m fastbci.train CONFIG [key=value ...]
(dataset.batch_size is the global batch; docs/distributed.md).
Ctrl-C or SIGTERM (kill, Slurm) stops after the current batch with a resumable checkpoint and
prints the command that resumes it."""
EPILOG = ("Exit status: 0 done (also after early stopping), 2 bad input (configuration, data, "
          "output folder, disk), 3 blank collapse, 4 non-finite, 130 interrupted.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", metavar="CONFIG", help="YAML configuration file")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="configuration overrides")
    p.add_argument("--resume", nargs="?", const="true", default=None, metavar="CHECKPOINT",
                   help="continue the run in output_dir exactly (= fastbci.resume=true), or from "
                        "CHECKPOINT (= fastbci.resume=CHECKPOINT)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the earlier run in output_dir (= fastbci.overwrite=true): only "
                        "the files fastbci wrote there; never the data, a checkpoint being read, "
                        "or a file fastbci did not write")
    p.add_argument("--quiet", action="store_true", help="no console log (= fastbci.progress=false; "
                                                       "train.log is still written)")
    add_json(p)


def _overrides(a: argparse.Namespace) -> list[str]:
    extra = []
    if a.resume is not None:
        extra.append(f"fastbci.resume={a.resume}")
    if a.overwrite:
        extra.append("fastbci.overwrite=true")
    if a.quiet:
        extra.append("fastbci.progress=false")
    return list(a.overrides) + extra


def before_run(a: argparse.Namespace) -> int | None:
    """Inside a ``torchrun`` worker (WORLD_SIZE > 1): the distributed run, its exit status."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from fastbci.errors import EXIT_CONFIG, ConfigError
    from fastbci.training import launch, parallel
    try:
        env = parallel.env_from_os()
    except ConfigError as e:
        say_to_stderr(f"fastbci train: configuration error: {e}")
        return EXIT_CONFIG
    return launch.run_distributed(a.config, _overrides(a), env)


def run(a: argparse.Namespace) -> int:
    from fastbci.errors import exit_code_of
    from fastbci.training import launch
    res = launch.train(a.config, _overrides(a), console=not a.quiet)
    if a.json:  # the console log (stderr) said the rest
        print_json({"status": res.status, "message": res.message, "last_batch": res.last_batch,
                    "best_val_per": res.best_val_per, "best_val_loss": res.best_val_loss,
                    "seconds": res.seconds, "val_history": res.val_history})
    return exit_code_of(res.status)
