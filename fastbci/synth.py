"""A synthetic t15 release: the identical file layout, learnable signal, realistic sizes.

``python -m fastbci.synth --out DIR [--small | --demo | --release] [options]`` writes
``DIR/<session>/data_{train,val,test}.hdf5`` exactly as the official release (docs/recipe.md
section 1; train-only sessions get no val/test file) plus ``DIR/synth_config.yaml``, a config
fragment (dataset_dir, sessions, dataset_probability_val, neural_dim) that ``load_config``
accepts, and ``DIR/corpus_train.txt``, the train sentences normalised as the evaluation
normalises them, one a line (a corpus for ``python -m fastbci.lm build``), and prints what it
wrote. Python: :func:`write_release`.

How a trial is made
-------------------
* A sentence of 2-6 words (presets change this) from a built-in lexicon of common English words
  with their ARPAbet pronunciations; ``seq_class_ids`` are the phoneme ids with the silence (40)
  after every word, the last one included; ``sentence_label`` is capitalised and punctuated;
  ``transcription`` its ASCII codes, zero-padded to 500.
* Timeline: a lead-in of ~170 bins (the delay period), then every phoneme token for a
  gamma-distributed ~20.5 bins, then a short tail, so ``T ~ 20.5 x seq_len + 206`` with spread,
  clipped to 130..1600.
* Neural latent: each of the 41 classes has a template over the 256 electrodes (4 arrays of 64,
  tuned with different strengths: ventral 6v and 55b strongest), switched on by a smooth bump
  over its token (neighbouring tokens overlap: co-articulation), plus a condition-independent
  "speaking" component, a slow within-trial random walk and white noise.
* Per-session drift: the latent goes through a near-identity mixing ``I + E_s`` and an offset
  ``b_s`` (what the day layers learn to undo).
* Features: 0..C/2-1 "threshold crossings" (Poisson counts from a soft-plus rate of the latent),
  C/2..C-1 "spike-band power" (a log-normal-ish power of the same latent with its own noise, so
  the two halves are correlated). Each feature is then z-scored with the mean and std of the
  preceding 20 trials of the session plus the current one (as the release's rolling z-score),
  so values have mean ~0 and std ~1.

All randomness comes from ``numpy.random.default_rng(seed)`` streams (one per session), so a
release is a pure function of its arguments.
"""
from __future__ import annotations

import argparse
import collections
import json
import math
import sys
import time
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .data.phonemes import PHONEME_TO_ID, PHONEMES, SILENCE_ID
from .data.t15 import PAD_LEN, Trial, session_file, write_session_file

__all__ = ["LEXICON", "OFFICIAL_SESSIONS", "TRAIN_ONLY_SESSIONS", "PRESETS", "CORPUS_FILE", "write_release",
           "write_corpus", "simulate_session", "make_sentence", "main"]

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

# A small lexicon of common English words, ordered roughly by frequency (used as sampling
# weights), with ARPAbet pronunciations (stress removed). Together they use all 39 phonemes.
_LEXICON_TEXT = """
the DH AH | a AH | i AY | you Y UW | it IH T | is IH Z | to T UW | and AH N D | of AH V
in IH N | that DH AE T | have HH AE V | for F AO R | not N AA T | on AA N | with W IH DH
he HH IY | as AE Z | do D UW | at AE T | this DH IH S | but B AH T | his HH IH Z | by B AY
from F R AH M | they DH EY | we W IY | say S EY | her HH ER | she SH IY | or AO R | will W IH L
my M AY | one W AH N | all AO L | would W UH D | there DH EH R | what W AH T | so S OW | up AH P
out AW T | if IH F | about AH B AW T | who HH UW | get G EH T | which W IH CH | go G OW
me M IY | when W EH N | make M EY K | can K AE N | like L AY K | time T AY M | no N OW
just JH AH S T | him HH IH M | know N OW | take T EY K | people P IY P AH L | into IH N T UW
year Y IH R | your Y AO R | good G UH D | some S AH M | could K UH D | them DH EH M | see S IY
other AH DH ER | than DH AE N | then DH EH N | now N AW | look L UH K | only OW N L IY
come K AH M | think TH IH NG K | also AO L S OW | back B AE K | after AE F T ER | use Y UW Z
two T UW | how HH AW | our AW ER | work W ER K | first F ER S T | well W EH L | way W EY
even IY V AH N | new N UW | want W AA N T | because B IH K AH Z | any EH N IY | these DH IY Z
give G IH V | day D EY | most M OW S T | us AH S | water W AO T ER | house HH AW S
family F AE M AH L IY | mother M AH DH ER | father F AA DH ER | child CH AY L D | thing TH IH NG
yes Y EH S | please P L IY Z | thank TH AE NG K | help HH EH L P | need N IY D | feel F IY L
tired T AY ER D | hungry HH AH NG G R IY | thirsty TH ER S T IY | pain P EY N | bed B EH D
chair CH EH R | door D AO R | window W IH N D OW | open OW P AH N | close K L OW Z | turn T ER N
light L AY T | music M Y UW Z IH K | television T EH L AH V IH ZH AH N | phone F OW N | call K AO L
nurse N ER S | doctor D AA K T ER | friend F R EH N D | today T AH D EY | tomorrow T AH M AA R OW
night N AY T | morning M AO R N IH NG | eat IY T | drink D R IH NG K | coffee K AO F IY | tea T IY
juice JH UW S | food F UW D | warm W AO R M | cold K OW L D | hot HH AA T | big B IH G
small S M AO L | little L IH T AH L | happy HH AE P IY | sad S AE D | right R AY T | left L EH F T
home HH OW M | outside AW T S AY D | walk W AO K | talk T AO K | read R IY D | book B UH K
write R AY T | name N EY M | very V EH R IY | much M AH CH | more M AO R | less L EH S
again AH G EH N | soon S UW N | later L EY T ER | wait W EY T | sleep S L IY P | change CH EY N JH
voice V OY S | toy T OY | boy B OY | enjoy EH N JH OY | measure M EH ZH ER | usual Y UW ZH UW AH L
yellow Y EH L OW | wish W IH SH | shoe SH UW | push P UH SH | full F UH L | sure SH UH R
thought TH AO T | brother B R AH DH ER | together T AH G EH DH ER | computer K AH M P Y UW T ER
weather W EH DH ER | garden G AA R D AH N | dog D AO G | cat K AE T
"""


def _parse_lexicon(text: str) -> dict[str, tuple[str, ...]]:
    lex: dict[str, tuple[str, ...]] = {}
    for entry in text.replace("\n", "|").split("|"):
        parts = entry.split()
        if not parts:
            continue
        word, phones = parts[0], tuple(parts[1:])
        for p in phones:
            if p not in PHONEME_TO_ID or PHONEME_TO_ID[p] in (0, SILENCE_ID):
                raise AssertionError(f"lexicon word {word!r}: {p!r} is not a phoneme")
        lex.setdefault(word, phones)
    return lex


#: word -> ARPAbet phonemes (no stress); ~170 common words covering all 39 phonemes.
LEXICON: dict[str, tuple[str, ...]] = _parse_lexicon(_LEXICON_TEXT)
_WORDS = list(LEXICON)
_WORD_P = 1.0 / np.sqrt(np.arange(1, len(_WORDS) + 1))
_WORD_P /= _WORD_P.sum()


def make_sentence(rng: np.random.Generator, min_words: int = 2, max_words: int = 6
                  ) -> tuple[str, list[int]]:
    """A random sentence label (capitalised, punctuated) and its phoneme ids (silence after
    every word)."""
    n = int(rng.integers(min_words, max_words + 1))
    words = [_WORDS[i] for i in rng.choice(len(_WORDS), size=n, p=_WORD_P)]
    ids: list[int] = []
    for w in words:
        ids.extend(PHONEME_TO_ID[p] for p in LEXICON[w])
        ids.append(SILENCE_ID)
    text = " ".join("I" if w == "i" else w for w in words)
    text = text[0].upper() + text[1:]
    r = rng.random()
    text += "?" if r < 0.15 else ("!" if r < 0.2 else ".")
    return text, ids


# ---------------------------------------------------------------------------------------------
# presets
# ---------------------------------------------------------------------------------------------
PRESETS: dict[str, dict] = {
    # tiny and fast, for tests: 3 sessions (the last one train-only), short sentences
    "small": dict(sessions=("t15.2023.08.13", "t15.2023.08.18", "t15.2024.03.03"), n_train=6, n_val=2,
                  n_test=2, neural_dim=32, min_words=1, max_words=3),
    # a small CPU training demo: strong templates, moderate noise, short sentences
    "demo": dict(sessions=("t15.2023.08.13", "t15.2023.08.18", "t15.2023.08.20", "t15.2023.08.25"),
                 n_train=200, n_val=40, n_test=0, neural_dim=512, min_words=1, max_words=4,
                 signal=2.0, noise=0.6),
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


# ---------------------------------------------------------------------------------------------
# the generator
# ---------------------------------------------------------------------------------------------
class _World:
    """Templates shared by every session (the participant's tuning)."""

    def __init__(self, neural_dim: int, rng: np.random.Generator, signal: float):
        if neural_dim < 2 or neural_dim % 2:
            raise ValueError(f"neural_dim must be an even number >= 2 (threshold crossings + "
                             f"spike-band power per electrode), got {neural_dim}")
        self.C = neural_dim
        self.E = E = neural_dim // 2
        # four arrays (ventral 6v, area 4, 55b, dorsal 6v), tuned with different strengths
        array_gain = np.array([1.0, 0.45, 0.85, 0.65])
        arr = np.minimum(np.arange(E) * 4 // max(E, 1), 3)
        tuning = array_gain[arr] * rng.uniform(0.5, 1.2, size=E)
        base = rng.standard_normal((len(PHONEMES), E))
        base[0] = 0.0                       # the blank has no neural correlate
        base[SILENCE_ID] *= 0.6             # the inter-word pause is a weaker pattern
        self.templates = signal * base * tuning           # (41, E)
        self.speech = 0.8 * signal * rng.standard_normal(E) * tuning   # condition-independent
        self.rate_base = rng.uniform(0.6, 1.6, size=E)    # log-ish threshold-crossing baseline
        self.sbp_mix = 0.8                                # TX / SBP latent correlation
        self.walk_loading = rng.standard_normal((4, E))


def _trial_latent(world: _World, ids: list[int], rng: np.random.Generator, noise: float
                  ) -> tuple[np.ndarray, np.ndarray]:
    """The (T, E) latent of one trial (T ~ 20.5 x len(ids) + 206, clipped to 130..1600) and the
    time bin at the centre of every phoneme token."""
    L = len(ids)
    lead = int(np.clip(rng.normal(170, 25), 100, 260))
    dur = np.maximum(6, rng.gamma(6.0, 20.5 / 6.0, size=L))
    tail = int(np.clip(rng.normal(36, 12), 10, 90))
    speech = float(dur.sum())
    budget = 1600 - lead - tail
    if speech > budget:
        dur *= budget / speech
    starts = lead + np.concatenate([[0.0], np.cumsum(dur)[:-1]])
    T = int(round(lead + dur.sum() + tail))
    T = max(T, 130)
    t = np.arange(T)[:, None] + 0.5
    # smooth bumps (Hann) over each token, widened by a quarter on each side (co-articulation)
    a = starts[None, :] - dur[None, :] / 4
    w = dur[None, :] * 1.5
    ph = np.clip((t - a) / w, 0.0, 1.0)
    bumps = np.sin(np.pi * ph) ** 2                         # (T, L)
    act = np.zeros((T, len(PHONEMES)))
    np.add.at(act.T, np.asarray(ids), bumps.T)
    lat = act @ world.templates
    env = np.clip((t[:, 0] - lead + 10) / 20, 0, 1) * np.clip((lead + dur.sum() + 15 - t[:, 0]) / 20, 0, 1)
    lat += env[:, None] * world.speech[None, :]
    # slow within-trial drift: a few random-walk factors with random loadings
    walk = np.cumsum(rng.standard_normal((T, 4)) * 0.03, axis=0)
    lat += walk @ world.walk_loading
    lat += noise * rng.standard_normal((T, world.E))
    return lat, np.minimum(T - 1, (starts + dur / 2).astype(np.int64))


def _observe(world: _World, lat: np.ndarray, drift: tuple[np.ndarray, np.ndarray, np.ndarray],
             rng: np.random.Generator, noise: float) -> np.ndarray:
    """Session drift, then threshold crossings (Poisson) and spike-band power: (T, C) float64.

    ``drift = (U, V, b)``: the latent becomes ``z (I + U V^T) + b`` (a near-identity, low-rank
    mixing and an offset).
    """
    U, V, b = drift
    z = lat + (lat @ U) @ V.T + b
    x = world.rate_base + 0.6 * z
    rate = 0.5 * (x + np.sqrt(x * x + 1.0))                         # smooth rectifier, counts / 20 ms
    tx = rng.poisson(rate * 1.5).astype(np.float64)
    own = rng.standard_normal(z.shape)
    sbp_lat = world.sbp_mix * z + math.sqrt(1 - world.sbp_mix ** 2) * (0.5 + 0.5 * noise) * own
    sbp = np.exp(0.35 * sbp_lat)
    return np.concatenate([tx, sbp], axis=1)


class _RollingZ:
    """z-score with the statistics of the previous ``window`` trials plus the current one."""

    def __init__(self, window: int = 20):
        self.hist: collections.deque = collections.deque(maxlen=window)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        stats = (x.shape[0], x.sum(0), (x * x).sum(0))
        n = stats[0] + sum(h[0] for h in self.hist)
        s = stats[1] + sum(h[1] for h in self.hist)
        ss = stats[2] + sum(h[2] for h in self.hist)
        self.hist.append(stats)
        mean = s / n
        std = np.sqrt(np.maximum(ss / n - mean * mean, 0.0))
        return ((x - mean) / np.maximum(std, 1e-2)).astype(np.float32)


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


def _session_drift(E: int, drift: float, rng: np.random.Generator):
    """Near-identity low-rank mixing ``I + U V^T`` and an offset ``b`` of one session."""
    rank = min(16, E)
    return (drift * 0.5 / math.sqrt(E) * rng.standard_normal((E, rank)),
            rng.standard_normal((E, rank)) / math.sqrt(rank),
            drift * 0.3 * rng.standard_normal(E))


def _simulate_session(world: _World, session: str, labels: Sequence[str], rng: np.random.Generator,
                      sess_drift, noise: float, min_words: int, max_words: int,
                      block_size: tuple[int, int]):
    """Yield ``(split, Trial, token centres)`` for one session's trials in time order."""
    zscore = _RollingZ(20)
    block, trial_in_block = 1, 0
    block_len = int(rng.integers(block_size[0], block_size[1] + 1))
    for split in labels:
        if trial_in_block >= block_len:
            block += 1 + int(rng.random() < 0.2)          # block numbers may skip
            trial_in_block = 0
            block_len = int(rng.integers(block_size[0], block_size[1] + 1))
        text, ids = make_sentence(rng, min_words, max_words)
        ids = ids[:PAD_LEN]
        lat, centres = _trial_latent(world, ids, rng, noise)
        x = zscore(_observe(world, lat, sess_drift, rng, noise))
        trans = np.frombuffer(text.encode("ascii"), dtype=np.uint8).astype(np.int32)
        yield split, Trial(input_features=x, block_num=block, trial_num=trial_in_block, session=session,
                           seq_class_ids=np.asarray(ids, np.int32), transcription=trans,
                           seq_len=len(ids), sentence_label=text), centres
        trial_in_block += 1


def simulate_session(n_trials: int, neural_dim: int = 64, seed: int = 0, *, session: str = "t15.2023.08.13",
                     signal: float = 1.0, noise: float = 1.0, drift: float = 1.0, min_words: int = 2,
                     max_words: int = 6) -> list[tuple[Trial, np.ndarray]]:
    """One session's trials in memory, each with the time bin at the centre of every phoneme
    token (the ground-truth alignment, e.g. to check that the signal is decodable)."""
    root = np.random.default_rng(seed)
    world = _World(neural_dim, np.random.default_rng(root.integers(2 ** 63)), signal)
    rng = np.random.default_rng(root.integers(2 ** 63))
    drift_ = _session_drift(world.E, drift, rng)
    return [(t, c) for _, t, c in _simulate_session(world, session, ["train"] * n_trials, rng, drift_,
                                                    noise, min_words, max_words, (20, 50))]


def _session_list(sessions: Sequence[str] | int | None) -> list[str]:
    """The session names of :func:`write_release`'s ``sessions`` argument, checked."""
    if sessions is None:
        sessions = list(OFFICIAL_SESSIONS)
    elif isinstance(sessions, (int, np.integer)):
        if not 1 <= sessions <= len(OFFICIAL_SESSIONS):
            raise ValueError(f"sessions = {sessions}: give 1..45 or a list of names")
        sessions = list(OFFICIAL_SESSIONS[:sessions])
    else:
        sessions = [str(s) for s in sessions]
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


def write_release(out_dir, sessions: Sequence[str] | int | None = None, n_train=20, n_val=5, n_test=5,
                  neural_dim: int = 512, seed: int = 0, *, train_only: Sequence[str] | None = None,
                  min_words: int = 2, max_words: int = 6, signal: float = 1.0, noise: float = 1.0,
                  drift: float = 1.0, block_size: tuple[int, int] = (20, 50), progress: bool = False,
                  write_config: bool = True) -> dict:
    """Write a synthetic t15 release under ``out_dir``; returns a summary dict.

    ``sessions``: names (default the 45 official ones) or a count (the first N official names).
    ``n_train`` / ``n_val`` / ``n_test``: trials per session (an int, a per-session list or dict,
    or ``"release"`` for counts in the release's ranges). ``train_only``: sessions with only a
    train file (default: the official four that are among ``sessions``). ``signal`` / ``noise``
    scale the phoneme templates and the latent noise; ``drift`` the per-session mixing and offset.
    Every trial satisfies the release's invariants (``n_time_steps`` = array length, ids padded
    to 500, ``seq_len`` = non-zero ids, contiguous groups ordered by block then trial).
    """
    t0 = time.perf_counter()
    sessions = _session_list(sessions)
    if not 1 <= min_words <= max_words:
        raise ValueError(f"need 1 <= min_words <= max_words, got {min_words}, {max_words}")
    train_only_set = set(TRAIN_ONLY_SESSIONS if train_only is None else train_only) & set(sessions)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    root = np.random.default_rng(seed)
    world = _World(neural_dim, np.random.default_rng(root.integers(2 ** 63)), signal)
    count_rng = np.random.default_rng(root.integers(2 ** 63))
    release = _release_counts(sessions, train_only_set, count_rng)
    counts = {}
    for j, (what, value) in enumerate((("n_train", n_train), ("n_val", n_val), ("n_test", n_test))):
        c = _as_counts(value, sessions, what)
        counts[what] = c if c is not None else {s: release[s][j] for s in sessions}
    session_seeds = root.integers(2 ** 63, size=len(sessions))

    summary = {"out_dir": str(out_dir), "sessions": list(sessions), "train_only": sorted(train_only_set),
               "neural_dim": neural_dim, "seed": seed, "files": {},
               "n_trials": {"train": 0, "val": 0, "test": 0},
               "bytes": 0}
    all_T, all_L = [], []
    train_sentences: list[str] = []
    E = world.E
    for si, s in enumerate(sessions):
        rng = np.random.default_rng(session_seeds[si])
        sess_drift = _session_drift(E, drift, rng)
        n = {"train": counts["n_train"][s], "val": 0 if s in train_only_set else counts["n_val"][s],
             "test": 0 if s in train_only_set else counts["n_test"][s]}
        if n["train"] < 1:
            raise ValueError(f"session {s}: n_train must be >= 1 (every session has a train file)")
        labels = np.array(["train"] * n["train"] + ["val"] * n["val"] + ["test"] * n["test"])
        rng.shuffle(labels)                 # splits interleave in time, as in the release
        per_split: dict[str, list[Trial]] = {"train": [], "val": [], "test": []}
        for split, trial, _ in _simulate_session(world, s, labels, rng, sess_drift, noise, min_words,
                                                 max_words, block_size):
            per_split[split].append(trial)
            if split == "train":
                train_sentences.append(trial.sentence_label)
            all_T.append(trial.n_time_steps)
            all_L.append(trial.seq_len)
        summary["files"][s] = {}
        for split in ("train", "val", "test"):
            if not per_split[split]:
                continue
            p = write_session_file(session_file(out_dir, s, split), per_split[split], split)
            summary["files"][s][split] = len(per_split[split])
            summary["n_trials"][split] += len(per_split[split])
            summary["bytes"] += p.stat().st_size
        if progress:
            print(f"  {s}: " + ", ".join(f"{k} {v}" for k, v in summary["files"][s].items()),
                  file=sys.stderr, flush=True)
    summary.update(_length_stats(all_T, all_L))
    summary["corpus"] = str(write_corpus(out_dir / CORPUS_FILE, train_sentences))
    if write_config:
        cfg_path = out_dir / "synth_config.yaml"
        _write_config(cfg_path, out_dir, sessions, train_only_set, neural_dim)
        summary["config"] = str(cfg_path)
    summary["seconds"] = time.perf_counter() - t0
    return summary


# ---------------------------------------------------------------------------------------------
# the text corpus of the train sentences (for an n-gram model: python -m fastbci.lm build)
# ---------------------------------------------------------------------------------------------
CORPUS_FILE = "corpus_train.txt"


def write_corpus(path: str | Path, sentences: Sequence[str]) -> Path:
    """Write ``sentences`` normalised as the official evaluation normalises them, one a line."""
    from .lm.text import normalize
    path = Path(path)
    with open(path, "w", encoding="utf-8") as f:
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
    with open(path, "w") as f:
        f.write("# written by python -m fastbci.synth: load with fastbci.config.load_config(this file)\n")
        yaml.safe_dump(frag, f, sort_keys=False, default_flow_style=None)


def _format_summary(summ: dict) -> str:
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
    lines.append(f"  train corpus: {summ['corpus']}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m fastbci.synth",
        description="Write a synthetic Brain-to-Text '25 (t15) release: the official folder "
                    "layout and HDF5 format, phoneme-driven features, and a synth_config.yaml "
                    "that trains on it. Without a preset: the 45 official sessions with 20 "
                    "train, 5 val and 5 test trials each (the four official train-only sessions "
                    "get train trials only), 512 features. A preset sets sessions and counts; "
                    "the options below override single values of it.")
    ap.add_argument("--out", required=True, help="output folder (created)")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--small", action="store_const", const="small", dest="preset",
                   help="3 sessions (one train-only) x 6 train / 2 val / 2 test trials, "
                        "neural_dim 32 (for tests)")
    g.add_argument("--demo", action="store_const", const="demo", dest="preset",
                   help="4 sessions x 200 train / 40 val trials, strong signal (CPU training demo)")
    g.add_argument("--release", action="store_const", const="release", dest="preset",
                   help="the release's 45 sessions and per-session trial counts (8,072 / 1,426 / "
                        "1,450 trials, ~13.5 GB at 512 features)")
    ap.add_argument("--sessions", help="a number N (the first N official sessions) or comma-separated names")
    ap.add_argument("--n-train", type=int, help="train trials per session")
    ap.add_argument("--n-val", type=int, help="val trials per session (none for train-only sessions)")
    ap.add_argument("--n-test", type=int, help="test trials per session (none for train-only sessions)")
    ap.add_argument("--neural-dim", type=int, help="features per time step (default 512)")
    ap.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    ap.add_argument("--min-words", type=int, help="fewest words per sentence (default 2)")
    ap.add_argument("--max-words", type=int, help="most words per sentence (default 6)")
    ap.add_argument("--signal", type=float, help="template strength (default 1, demo 2)")
    ap.add_argument("--noise", type=float, help="latent noise std (default 1, demo 0.6)")
    ap.add_argument("--drift", type=float, help="per-session drift scale (default 1)")
    ap.add_argument("--json", action="store_true", help="print the summary as JSON")
    a = ap.parse_args(argv)
    kw = dict(PRESETS[a.preset]) if a.preset else {}
    if a.sessions:
        kw["sessions"] = (int(a.sessions) if a.sessions.isdigit()
                          else [s.strip() for s in a.sessions.split(",") if s.strip()])
    for name in ("n_train", "n_val", "n_test", "neural_dim", "min_words", "max_words", "signal",
                 "noise", "drift"):
        v = getattr(a, name)
        if v is not None:
            kw[name] = v
    try:
        summ = write_release(a.out, seed=a.seed, progress=not a.json, **kw)
    except ValueError as e:
        print(f"fastbci.synth: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summ, indent=1) if a.json else _format_summary(summ))
    return 0


if __name__ == "__main__":
    sys.exit(main())
