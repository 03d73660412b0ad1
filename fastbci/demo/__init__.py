"""The CPU demo (``fastbci demo [--out DIR] [--data DIR]``; the command line is
:mod:`fastbci.commands.demo`).

Writes a small synthetic release (:mod:`fastbci.synth`, demo preset, at the sessions and
feature count of ``configs/demo.yaml``) under ``data/synth-demo`` unless it is already there,
then trains the small model of ``configs/demo.yaml`` on it (a few minutes on two CPU cores) and
prints the final validation phoneme error rate. Extra ``key=value`` arguments override the
configuration, as for ``fastbci train``. With flashlight-text installed it then builds
a 3-gram from the synthetic train sentences and prints the validation word error rate too.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import yaml

from fastbci import config as config_mod
from fastbci.config import ConfigError

if TYPE_CHECKING:
    from fastbci.training import FitSummary

DEFAULT_DATA = Path("data/synth-demo")
DEFAULT_OUT = Path("trained_models/demo")
DATA_SEED = 0  # the demo data are the same on every machine; the config's seeds vary the run


def demo_config_path() -> Path:
    """``configs/demo.yaml`` of the installation."""
    return config_mod.packaged("demo.yaml")


def demo_release_params(cfg: dict) -> dict:
    """The synth.write_release arguments of the demo release for ``cfg``."""
    from fastbci import synth
    ds = cfg["dataset"]
    preset = dict(synth.PRESETS["demo"])
    preset.update(sessions=tuple(ds["sessions"]), neural_dim=int(ds["neural_dim"]), seed=DATA_SEED)
    return preset


def ensure_data(data_dir: Path, cfg: dict, quiet: bool = False) -> bool:
    """Write the demo release to ``data_dir`` unless a matching one is there; True if written.
    A release there that differs (sessions, feature count, or generation parameters: one written
    by an earlier fastbci) is a ConfigError saying so, never silently trained on."""
    from fastbci import synth
    preset = demo_release_params(cfg)
    marker = data_dir / "synth_config.yaml"
    if marker.is_file():
        with open(marker) as f:
            have = (yaml.safe_load(f) or {}).get("dataset", {})
        params = synth.read_params(data_dir)
        if params is None:
            differ = [f"no record of its generation parameters ({synth.PARAMS_FILE})"]
        else:
            differ = [f"{k} {params.get(k)} (the demo's {preset[k]})" for k in ("signal", "noise", "seed")
                      if params.get(k) != preset[k]]
        if have.get("sessions") != list(preset["sessions"]):
            differ.insert(0, f"sessions {have.get('sessions')}")
        if have.get("neural_dim") != preset["neural_dim"]:
            differ.insert(0, f"neural_dim {have.get('neural_dim')} (the demo's {preset['neural_dim']})")
        if not differ:
            return False
        raise ConfigError(
            f"{data_dir} holds a synthetic release that does not match the demo configuration "
            f"({'; '.join(differ)}): an earlier fastbci's demo data, or another release. Delete "
            "it (the demo writes it again) or pass --data OTHER_DIR")
    if data_dir.exists() and any(data_dir.iterdir()):
        raise ConfigError(f"{data_dir} exists and is not a fastbci synthetic release; "
                          "pass --data OTHER_DIR")
    if not quiet:
        print(f"Writing the demo data to {data_dir} ...", file=sys.stderr)
    summary = synth.write_release(data_dir, **preset)
    if not quiet:
        print(f"  {summary['n_trials']} trials in {summary['seconds']:.1f} s", file=sys.stderr)
    return True


def previous_run(out: Path) -> tuple[str, str | None]:
    """What an earlier demo left in ``out``: ``("none", None)``, ``("unfinished", message)``
    (a resumable checkpoint and no final status: Ctrl-C, a crash) or ``("finished", message)``."""
    from fastbci import checkpoint as ckpt_io
    from fastbci.training.rundir import RUN_STATUS
    ck = ckpt_io.find_resume_checkpoint(out / "checkpoint")
    status_file = out / RUN_STATUS
    status = None
    if status_file.is_file():
        try:
            status = yaml.safe_load(status_file.read_text()).get("status")
        except (yaml.YAMLError, AttributeError):
            status = None
    if ck is not None and status in (None, "interrupted"):
        return "unfinished", f"Resuming the unfinished demo run in {out} (delete it to start afresh)"
    if ck is not None or status is not None:
        return "finished", (f"Replacing the previous demo run in {out} ({status or 'no status'}): "
                            "its checkpoints, logs, metrics and curves")
    return "none", None


def run(out: Path = DEFAULT_OUT, data_dir: Path = DEFAULT_DATA, overrides: Sequence[str] = (),
        quiet: bool = False) -> "FitSummary":
    """Generate the data if needed and train (resuming an unfinished demo run, replacing a
    finished one, and saying which); returns the trainer's summary."""
    from fastbci.training import Trainer
    out, data_dir = Path(out), Path(data_dir)
    base = [f"dataset.dataset_dir={data_dir}", f"output_dir={out}", f"checkpoint_dir={out / 'checkpoint'}"]
    kind, message = previous_run(out)
    if kind == "unfinished":
        base.append("fastbci.resume=true")
    elif kind == "finished":
        base.append("fastbci.overwrite=true")
    cfg = config_mod.load_config(demo_config_path(), base + list(overrides))
    ensure_data(data_dir, cfg, quiet=quiet)
    if message:
        print(message, file=sys.stderr)
    command = "fastbci demo" + "".join(
        f" {k} {v}" for k, v, d in (("--out", out, DEFAULT_OUT), ("--data", data_dir, DEFAULT_DATA))
        if Path(v) != d) + "".join(f" {o}" for o in overrides)
    return Trainer(cfg, console=not quiet, resume_command=command).fit()


# ---------------------------------------------------------------------------------------------
# words: a 3-gram of the synthetic train sentences, lexicon beam search, validation WER
# ---------------------------------------------------------------------------------------------
def words_wer(out: Path, data_dir: Path, quiet: bool = False) -> dict | None:
    """Build a 3-gram from the release's train corpus and decode the best checkpoint's
    validation logits to words (pronunciations: the synthetic lexicon); returns the
    evaluation summary (``wer``), or None without flashlight-text (said on stderr)."""
    from fastbci import evaluation, synth
    from fastbci.data import PHONEME_TO_ID
    from fastbci.lm import Lexicon, available, build_arpa
    if not available():
        print("(no word error rate: flashlight-text is not installed; pip install 'fastbci[lm]')",
              file=sys.stderr)
        return None
    corpus = data_dir / synth.CORPUS_FILE
    if not corpus.is_file():  # a release written before the corpus was part of it
        from fastbci.data import read_session_file
        sentences = [t.sentence_label for f in sorted(data_dir.glob("*/data_train.hdf5"))
                     for t in read_session_file(f, "train")]
        synth.write_corpus(corpus, sentences)
    lm_dir = out / "lm"  # the n-gram and the lexicon: inputs of the evaluation into out/words
    lm_dir.mkdir(parents=True, exist_ok=True)
    build_arpa(corpus, lm_dir / "lm_3gram.arpa", order=3, overwrite=True)
    lexicon = Lexicon({w: [[PHONEME_TO_ID[p] for p in ph]] for w, ph in synth.LEXICON.items()})
    lexicon.write(lm_dir / "lexicon.txt")
    return evaluation.evaluate(out / "checkpoint" / "best_checkpoint", "val", out_dir=out / "words",
                               quiet=quiet, lm=lm_dir / "lm_3gram.arpa", overwrite=True,
                               lm_options={"lexicon": lm_dir / "lexicon.txt", "use_cmudict": False})


PLATEAU_PER = 0.5       # a final validation PER at or above this: still on (or just off) the plateau
UNFINISHED_PER = 0.15   # above this: off the plateau, but the run ended while the PER still fell


def ending_advice(hist: Sequence[dict], n_batches: int, overrides: Sequence[str] = ()) -> str | None:
    """Plain words for a demo run of ``n_batches`` batches that ended before it learned (None
    when its final validation PER is at most ``UNFINISHED_PER``): what happened and what to do."""
    if not hist or hist[-1].get("per") is None or hist[-1]["per"] <= UNFINISHED_PER:
        return None
    per, blank = hist[-1]["per"], hist[-1].get("blank_fraction")
    keys = {o.split("=", 1)[0] for o in overrides}
    longer = " ".join(f"{k}={2 * n_batches}" for k in ("num_training_batches", "lr_decay_steps",
                                             "lr_decay_steps_day"))
    reseed = "" if {"seed", "dataset.seed"} & keys else " or with other seeds (seed=2 dataset.seed=2)"
    blank_txt = f" and {100 * blank:.0f}% of its output frames are blank" if blank == blank else ""
    if per >= PLATEAU_PER:
        what = (f"This run ended on the blank plateau: its validation PER is {100 * per:.0f}%"
                f"{blank_txt}. CTC training starts by predicting blank almost everywhere and "
                "leaves that plateau after a number of batches that varies with the seed; this "
                "run's batches ran out first. The model has not learned, and nothing is broken.")
    else:
        what = (f"This run left the blank plateau late: its validation PER is {100 * per:.0f}% and "
                "was still falling when the batches ran out.")
    return "\n".join([
        what,
        f"What to do: run it again with more batches (fastbci demo {longer}){reseed}. "
        "For your own configurations, fastbci doctor CONFIG names the settings that "
        "keep a run on the plateau."])
