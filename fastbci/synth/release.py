"""Writing a synthetic release: the sessions, their trial counts, the HDF5 files, the config
fragment, the train corpus (the command line is :mod:`fastbci.commands.synth`)."""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..data.t15 import Trial, session_file, write_session_file
from .. import outputs
from ..fileio import atomic_path, atomic_write_text, dumps, name_problem

from .simulate import session_drift, session_trials, World

OFFICIAL_SESSIONS: tuple[str, ...] = tuple(
    ["t15.2023." + d for d in (
        "08.11 08.13 08.18 08.20 08.25 08.27 09.01 09.03 09.24 09.29 10.01 10.06 10.08 10.13 10.15 "
        "10.20 10.22 11.03 11.04 11.17 11.19 11.26 12.03 12.08 12.10 12.17 12.29").split()]
    + ["t15.2024." + d
       for d in "02.25 03.03 03.08 03.15 03.17 04.25 04.28 05.10 06.14 07.19 07.21 07.28".split()]
    + ["t15.2025." + d for d in "01.10 01.12 03.14 03.16 03.30 04.13".split()])
TRAIN_ONLY_SESSIONS: tuple[str, ...] = ("t15.2023.08.11", "t15.2024.03.03", "t15.2024.04.25",
                                        "t15.2024.04.28")
assert len(OFFICIAL_SESSIONS) == 45

PRESETS: dict[str, dict] = {
    # tiny and fast, for tests: 3 sessions (the last one train-only), short sentences
    "small": dict(sessions=("t15.2023.08.13", "t15.2023.08.18", "t15.2024.03.03"), n_train=6, n_val=2,
                  n_test=2, neural_dim=32, min_words=1, max_words=3),
    # a small CPU training demo: strong templates, moderate noise, short sentences
    "demo": dict(sessions=("t15.2023.08.13", "t15.2023.08.18", "t15.2023.08.20", "t15.2023.08.25"),
                 n_train=200, n_val=40, n_test=0, neural_dim=512, min_words=1, max_words=4,
                 signal=3.0, noise=0.6),
    # the release's sizes (8,072 / 1,426 / 1,450 trials, ~13.5 GB at 512 features)
    "release": dict(sessions=OFFICIAL_SESSIONS, n_train="release", n_val="release", n_test="release",
                    neural_dim=512),
}


def _release_counts(sessions: Sequence[str], train_only: set[str], rng: np.random.Generator
                    ) -> dict[str, tuple[int, int, int]]:
    """Per-session (train, val, test) counts in the release's ranges and totals."""
    n = len(sessions)
    tr = np.clip(rng.lognormal(math.log(170), 0.45, size=n), 59, 364)
    tr = np.maximum(59, np.round(tr * 8072 / tr.sum() if n == 45 else tr)).astype(int)
    out = {}
    for s, t in zip(sessions, tr):
        if s in train_only:
            out[s] = (int(t), 0, 0)
        else:
            out[s] = (int(t), int(rng.integers(9, 51)), int(rng.integers(9, 51)))
    return out


def _as_counts(value, sessions: Sequence[str], what: str) -> dict[str, int] | None:
    if isinstance(value, str):
        if value != "release":
            raise ValueError(f"{what} must be an integer, a per-session list/dict, or 'release'")
        return None
    if isinstance(value, Mapping):
        missing = [s for s in sessions if s not in value]
        if missing:
            raise ValueError(f"{what}: no count for session(s) {missing[:3]}")
        out = {s: int(value[s]) for s in sessions}
    elif isinstance(value, (list, tuple, np.ndarray)):
        if len(value) != len(sessions):
            raise ValueError(f"{what} has {len(value)} entries for {len(sessions)} sessions")
        out = {s: int(v) for s, v in zip(sessions, value)}
    else:
        out = {s: int(value) for s in sessions}
    bad = {s: v for s, v in out.items() if v < 0}
    if bad:
        raise ValueError(f"{what} must be >= 0, got {bad}")
    return out


def _trial_counts(sessions: Sequence[str], train_only: set[str], values: tuple,
                  count_rng: np.random.Generator) -> dict[str, dict[str, int]]:
    """``{session: {"train" | "val" | "test": count}}`` of write_release's arguments
    (``"release"``: counts in the release's ranges, drawn from ``count_rng``; a train-only
    session has no val or test trials), checked before anything is written."""
    release = _release_counts(sessions, train_only, count_rng)
    counts = {}
    for j, (what, value) in enumerate(zip(("n_train", "n_val", "n_test"), values)):
        c = _as_counts(value, sessions, what)
        counts[what] = c if c is not None else {s: release[s][j] for s in sessions}
    out = {s: {"train": counts["n_train"][s], "val": 0 if s in train_only else counts["n_val"][s],
               "test": 0 if s in train_only else counts["n_test"][s]} for s in sessions}
    for s, n in out.items():
        if n["train"] < 1:
            raise ValueError(f"session {s}: n_train must be >= 1 (every session has a train file)")
    return out


def _session_list(sessions: Sequence[str] | int | None) -> list[str]:
    """The session names of :func:`write_release`'s ``sessions`` argument, checked."""
    if sessions is None:
        sessions = list(OFFICIAL_SESSIONS)
    elif isinstance(sessions, (int, np.integer)):
        if not 1 <= sessions <= len(OFFICIAL_SESSIONS):
            raise ValueError(f"sessions = {sessions}: give 1..45 or a list of names")
        sessions = list(OFFICIAL_SESSIONS[:sessions])
    else:
        sessions = list(sessions)
        for s in sessions:
            problem = name_problem(s)
            if problem is not None:
                raise ValueError(f"sessions: the session name {s!r} {problem}; each session is written "
                                 "as one folder of the output folder, named like t15.2023.08.11")
    if not sessions:
        raise ValueError("no sessions to write")
    if len(set(sessions)) != len(sessions):
        raise ValueError("sessions holds duplicate names")
    return sessions


def _length_stats(all_T: list[int], all_L: list[int]) -> dict:
    T, L = np.asarray(all_T), np.asarray(all_L)
    return {"n_time_steps": {"mean": float(T.mean()), "median": float(np.median(T)),
                             "min": int(T.min()), "max": int(T.max())},
            "seq_len": {"mean": float(L.mean()), "max": int(L.max())}}


#: the range of write_release's scale parameters (beyond it the simulated rates overflow)
SCALE_MAX = 100.0


def _check_numbers(seed, neural_dim, signal, noise, drift, block_size) -> None:
    """write_release's numbers, each a ValueError naming the parameter and its allowed range."""
    def integer(v) -> bool:
        return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))

    if not integer(seed) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    if not integer(neural_dim) or neural_dim < 2 or neural_dim % 2:
        raise ValueError(f"neural_dim must be an even number >= 2 (threshold crossings + spike-band "
                         f"power per electrode), got {neural_dim!r}")
    for name, v in (("signal", signal), ("noise", noise), ("drift", drift)):
        ok = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))
        if not ok or not math.isfinite(v) or not 0 <= v <= SCALE_MAX:
            raise ValueError(f"{name} must be a finite number in [0, {SCALE_MAX:g}], got {v!r}")
    try:
        lo, hi = (int(b) for b in block_size)
        ok = all(integer(b) for b in block_size) and 1 <= lo <= hi
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"block_size must be two integers (lo, hi) with 1 <= lo <= hi, got {block_size!r}")


def _check_options(sessions: list[str], min_words: int, max_words: int, holdout) -> set[str]:
    """Validate write_release's word range and ``holdout``; return the held-out session names."""
    if not 1 <= min_words <= max_words:
        raise ValueError(f"need 1 <= min_words <= max_words, got {min_words}, {max_words}")
    if isinstance(holdout, bool) or not isinstance(holdout, int) or not 0 <= holdout < len(sessions):
        raise ValueError(f"holdout must be an integer in [0, {len(sessions) - 1}] (at least one "
                         f"session stays for training), got {holdout!r}")
    return set(sessions[len(sessions) - holdout:]) if holdout else set()


def _write_splits(out_dir: Path, session: str, per_split: dict, summary: dict) -> None:
    """Write one session's non-empty split files and count them into ``summary``."""
    summary["files"][session] = {}
    for split in ("train", "val", "test"):
        if not per_split[split]:
            continue
        p = write_session_file(session_file(out_dir, session, split), per_split[split], split)
        summary["files"][session][split] = len(per_split[split])
        summary["n_trials"][split] += len(per_split[split])
        summary["bytes"] += p.stat().st_size


@outputs.writes("synth")
def write_release(out_dir, sessions: Sequence[str] | int | None = None, n_train=20, n_val=5, n_test=5,
                  neural_dim: int = 512, seed: int = 0, *, train_only: Sequence[str] | None = None,
                  min_words: int = 2, max_words: int = 6, signal: float = 1.0, noise: float = 1.0,
                  drift: float = 1.0, block_size: tuple[int, int] = (20, 50), progress: bool = False,
                  write_config: bool = True, holdout: int = 0, overwrite: bool = False) -> dict:
    """Write a synthetic t15 release under ``out_dir``; returns a summary dict.

    ``sessions``: names (default the 45 official ones) or a count (the first N official names).
    ``n_train`` / ``n_val`` / ``n_test``: trials per session (an int, a per-session list or dict,
    or ``"release"`` for counts in the release's ranges). ``train_only``: sessions with only a
    train file (default: the official four that are among ``sessions``). ``signal`` / ``noise``
    scale the phoneme templates and the latent noise; ``drift`` the per-session mixing and offset.
    Every trial satisfies the release's invariants (``n_time_steps`` = array length, ids padded
    to 500, ``seq_len`` = non-zero ids, contiguous groups ordered by block then trial).
    ``holdout``: the last ``holdout`` sessions are written like the others (the same participant,
    a drift of the same scale) but left out of ``synth_config.yaml`` and of the train corpus:
    new recording days for ``fastbci calibrate`` (``summary["holdout"]``). Every argument is
    checked before anything is written (session names are plain names; ``seed`` >= 0; ``signal``,
    ``noise``, ``drift`` finite in [0, SCALE_MAX]). ``out_dir`` (:mod:`fastbci.outputs`' rule):
    new, empty, or synth's own release: left as it is when the same (``summary["unchanged"]``),
    else replaced only with ``overwrite``.
    """
    t0 = time.perf_counter()
    _check_numbers(seed, neural_dim, signal, noise, drift, block_size)
    sessions = _session_list(sessions)
    held = _check_options(sessions, min_words, max_words, holdout)
    train_only_set = set(TRAIN_ONLY_SESSIONS if train_only is None else train_only) & set(sessions)
    out_dir = Path(out_dir)
    record = _record(seed=seed, neural_dim=neural_dim, signal=signal, noise=noise, drift=drift,
                     min_words=min_words, max_words=max_words, sessions=list(sessions), n_train=n_train,
                     n_val=n_val, n_test=n_test, train_only=sorted(train_only_set),
                     block_size=list(block_size), holdout=holdout, write_config=write_config)
    root = np.random.default_rng(seed)
    world = World(neural_dim, np.random.default_rng(root.integers(2 ** 63)), signal)
    counts = _trial_counts(sessions, train_only_set, (n_train, n_val, n_test),
                           np.random.default_rng(root.integers(2 ** 63)))
    session_seeds = root.integers(2 ** 63, size=len(sessions))
    if _claim(out_dir, record, overwrite):  # the arguments are all checked: now the folder
        return {"out_dir": str(out_dir), "unchanged": True, "sessions": list(sessions),
                "seed": seed, "seconds": time.perf_counter() - t0}
    out_dir.mkdir(parents=True, exist_ok=True)

    summary = {"out_dir": str(out_dir), "sessions": list(sessions), "train_only": sorted(train_only_set),
               "holdout": [x for x in sessions if x in held],
               "neural_dim": neural_dim, "seed": seed, "files": {},
               "n_trials": {"train": 0, "val": 0, "test": 0},
               "bytes": 0}
    all_T, all_L = [], []
    train_sentences: list[str] = []
    E = world.E
    for si, s in enumerate(sessions):
        rng = np.random.default_rng(session_seeds[si])
        sess_drift = session_drift(E, drift, rng)
        n = counts[s]
        labels = np.array(["train"] * n["train"] + ["val"] * n["val"] + ["test"] * n["test"])
        rng.shuffle(labels)                 # splits interleave in time, as in the release
        per_split: dict[str, list[Trial]] = {"train": [], "val": [], "test": []}
        for split, trial, _ in session_trials(world, s, labels, rng, sess_drift, noise, min_words,
                                                 max_words, block_size):
            per_split[split].append(trial)
            if split == "train" and s not in held:
                train_sentences.append(trial.sentence_label)
            all_T.append(trial.n_time_steps)
            all_L.append(trial.seq_len)
        _write_splits(out_dir, s, per_split, summary)
        if progress:
            print(f"  {s}: " + ", ".join(f"{k} {v}" for k, v in summary["files"][s].items()),
                  file=sys.stderr, flush=True)
    summary.update(_length_stats(all_T, all_L))
    summary["corpus"] = str(write_corpus(out_dir / CORPUS_FILE, train_sentences))
    if write_config:
        cfg_path = out_dir / "synth_config.yaml"
        _write_config(cfg_path, out_dir, [x for x in sessions if x not in held], train_only_set,
                      neural_dim)
        summary["config"] = str(cfg_path)
    _write_params(out_dir, record)  # last: a release without it is incomplete
    summary["seconds"] = time.perf_counter() - t0
    return summary


def _record(**args) -> dict:
    """write_release's arguments as recorded in ``PARAMS_FILE`` (standard JSON: a numpy number
    or a tuple as JSON has it, so that a record read back compares equal)."""
    return json.loads(dumps(args))


def _claim(out_dir: Path, record: dict, overwrite: bool) -> bool:
    """The output rule for a release folder; True when it already holds this very release."""
    plan = outputs.check_dir(out_dir, overwrite=True, option="--out")  # refuses foreign files
    if not plan.clear:
        return False
    have = read_params(out_dir)
    if have == record:
        return True
    if not overwrite:
        what = ("an incomplete release (no record of its parameters: an interrupted write, or an "
                "older fastbci's)") if have is None else (
            "a release written with other parameters (" + ", ".join(
                f"{k} {have.get(k)!r}" for k in record if have.get(k) != record[k])[:200] + ")")
        raise outputs.OutputError(f"--out {out_dir} holds {what}: pass --overwrite to replace it, "
                                  "or choose another folder")
    outputs.clear(plan)
    return False


PARAMS_FILE = "synth_params.json"


def _write_params(out_dir: Path, params: dict) -> None:
    """Record the generation parameters (``PARAMS_FILE``), so that a reader such as the demo can
    tell a release written with other parameters from the one it expects."""
    atomic_write_text(out_dir / PARAMS_FILE, dumps(params, indent=1) + "\n")


def read_params(data_dir: str | Path) -> dict | None:
    """The generation parameters recorded in ``data_dir`` (None for a release without them)."""
    p = Path(data_dir) / PARAMS_FILE
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------------------------------------
# the text corpus of the train sentences (for an n-gram model: fastbci lm build)
# ---------------------------------------------------------------------------------------------
CORPUS_FILE = "corpus_train.txt"


def write_corpus(path: str | Path, sentences: Sequence[str]) -> Path:
    """Write ``sentences`` normalised as the official evaluation normalises them, one a line."""
    from ..lm.text import normalize
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.writelines(t + "\n" for t in (normalize(x) for x in sentences) if t)
    return path


def _write_config(path: Path, out_dir: Path, sessions: Sequence[str], train_only: set[str],
                  neural_dim: int) -> None:
    import yaml
    frag = {
        "model": {"n_input_features": neural_dim,
                  "input_network": {"input_layer_sizes": [neural_dim]}},
        "dataset": {
            "dataset_dir": str(out_dir.resolve()),
            "neural_dim": neural_dim,
            "sessions": list(sessions),
            "dataset_probability_val": [0 if s in train_only else 1 for s in sessions],
            "days_per_batch": min(4, len(sessions)),
        },
    }
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write("# written by fastbci synth: load with fastbci.config.load_config(this file)\n")
        yaml.safe_dump(frag, f, sort_keys=False, default_flow_style=None)


def format_summary(summ: dict) -> str:
    if summ.get("unchanged"):
        return (f"{summ['out_dir']} already holds this release (written with the same parameters): "
                "nothing written (--overwrite writes it again)")
    n = summ["n_trials"]
    T, L = summ["n_time_steps"], summ["seq_len"]
    lines = [f"wrote a synthetic t15 release to {summ['out_dir']} in {summ['seconds']:.1f} s",
             f"  {len(summ['sessions'])} sessions ({len(summ['train_only'])} train-only), "
             f"neural_dim {summ['neural_dim']}, seed {summ['seed']}",
             f"  trials: train {n['train']}, val {n['val']}, test {n['test']}; "
             f"{summ['bytes'] / 2**20:.1f} MiB on disk",
             f"  n_time_steps mean {T['mean']:.0f} (median {T['median']:.0f}, "
             f"min {T['min']}, max {T['max']}); "
             f"seq_len mean {L['mean']:.1f}, max {L['max']}"]
    if "config" in summ:
        lines.append(f"  config fragment: {summ['config']}")
    if summ.get("holdout"):
        lines.append(f"  held out (not in the config or the corpus): {', '.join(summ['holdout'])}")
    lines.append(f"  train corpus: {summ['corpus']}")
    return "\n".join(lines)
