"""The synthetic participant: a lexicon of common English words, sentences, and the neural
features of a trial (the contract is in :mod:`fastbci.synth`'s docstring, "How a trial is
made")."""
from __future__ import annotations

import collections
import math
from typing import Sequence

import numpy as np

from ..data.phonemes import PHONEME_TO_ID, PHONEMES, SILENCE_ID
from ..data.t15 import PAD_LEN, Trial

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
# ---------------------------------------------------------------------------------------------
# the generator
# ---------------------------------------------------------------------------------------------
class World:
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


def _trial_latent(world: World, ids: list[int], rng: np.random.Generator, noise: float
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


def _observe(world: World, lat: np.ndarray, drift: tuple[np.ndarray, np.ndarray, np.ndarray],
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


def session_drift(E: int, drift: float, rng: np.random.Generator):
    """Near-identity low-rank mixing ``I + U V^T`` and an offset ``b`` of one session."""
    rank = min(16, E)
    return (drift * 0.5 / math.sqrt(E) * rng.standard_normal((E, rank)),
            rng.standard_normal((E, rank)) / math.sqrt(rank),
            drift * 0.3 * rng.standard_normal(E))


def session_trials(world: World, session: str, labels: Sequence[str], rng: np.random.Generator,
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
    world = World(neural_dim, np.random.default_rng(root.integers(2 ** 63)), signal)
    rng = np.random.default_rng(root.integers(2 ** 63))
    drift_ = session_drift(world.E, drift, rng)
    return [(t, c) for _, t, c in session_trials(world, session, ["train"] * n_trials, rng, drift_,
                                                    noise, min_words, max_words, (20, 50))]
