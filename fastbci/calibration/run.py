"""Adding a new recording day to a trained model from a few sentences (``fastbci calibrate``;
:func:`calibrate` from Python; docs/calibration.md).

Writes ``OUT/calibrated_checkpoint`` (the official format, the model with one more day layer,
fastbci's configuration with the session added and the calibration report) with ``args.yaml``
beside it, and ``OUT/calibration.json`` (the report).
"""
from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from fastbci import checkpoint as ckpt_io
from fastbci import config as config_mod
from fastbci import outputs
from fastbci.errors import ConfigError
from fastbci.fileio import atomic_write_text, dumps
from fastbci.loading import resolve_config

from .core import (Budget, NewDay, builder_for, choose_init_day, evaluate_per, layer_of, load_session,
                   new_day, set_layer, timed, train_layer)
from .rounds import Rounds, run_rounds

__all__ = ["CHECKPOINT_NAME", "REPORT_NAME", "CalibrationReport", "Settings", "calibrate"]

CHECKPOINT_NAME = "calibrated_checkpoint"
REPORT_NAME = "calibration.json"


@dataclasses.dataclass(frozen=True)
class Settings:
    """How a session is calibrated: ``sentences`` (its first N trials; None: all; 0: no
    training, the borrowed layer alone), ``init_day`` (the layer it starts from; None: the best
    fit), ``replace`` (calibrate a day the model already has), ``unlabelled`` (pseudo-labels:
    ``rounds`` rounds keeping the ``keep`` most confident fraction, decoded greedily or with the
    word decoder of ``lm`` / ``lexicon`` / ``use_cmudict`` / ``cmudict``), ``unlabelled_rest``
    (semi-supervised: the ``sentences`` labelled, then ``rounds`` rounds of pseudo-labels on the
    file's other trials, weighted by confidence, with the labelled sentences in every round),
    the budget (``steps`` of ``batch_size`` trials), ``seed``, and how far the layer may move from
    where each training starts: ``pull_to_start`` (an L2 penalty of that weight on the change)
    and ``update_rank`` (a change of the weights of at most that rank); both off by default."""
    sentences: int | None = None
    init_day: int | None = None
    replace: bool = False
    unlabelled: bool = False
    unlabelled_rest: bool = False
    rounds: int = 3
    keep: float = 0.5
    lm: str | None = None
    lexicon: str | None = None
    use_cmudict: bool = True
    cmudict: str | None = None
    steps: int = Budget.steps
    batch_size: int = Budget.batch_size
    seed: int = 0
    pull_to_start: float = 0.0
    update_rank: int | None = None

    def check(self, val) -> None:
        for name, lo in (("sentences", 0), ("steps", 0), ("batch_size", 1), ("rounds", 1), ("seed", 0),
                         ("pull_to_start", 0), ("update_rank", 1)):
            v = getattr(self, name)
            if v is not None and v < lo:
                raise ConfigError(f"{name.replace('_', ' ')} must be >= {lo}, got {v}")
        if not 0 < self.keep <= 1:
            raise ConfigError(f"keep must be in (0, 1], got {self.keep}")
        if self.unlabelled and self.unlabelled_rest:
            raise ConfigError("--unlabelled (no label at all) and --unlabelled-rest (the first "
                              "--sentences labelled) exclude each other: pass one")
        if self.unlabelled_rest and not self.sentences:
            raise ConfigError("--unlabelled-rest needs --sentences N >= 1, the labelled sentences "
                              "(the file's other trials are the unlabelled rest; without any "
                              "labelled sentence use --unlabelled)")
        if self.lm and not (self.unlabelled or self.unlabelled_rest):
            raise ConfigError("an LM pseudo-labels: it needs unlabelled calibration (--unlabelled "
                              "or --unlabelled-rest)")
        if self.sentences == 0 and not val:
            raise ConfigError("0 sentences (the borrowed layer alone) needs a validation file (--val) "
                              "to score it")


@dataclasses.dataclass
class CalibrationReport:
    """What a calibration did and reached (``calibration.json``)."""
    session: str
    day: int
    checkpoint: str
    config: str
    init_day: int
    init_session: str
    init_choice: str
    init_scores: dict
    n_sentences: int
    n_train: int
    n_heldout: int
    unlabelled: bool
    rounds: list
    seed: int
    steps: int
    heldout: list
    budget: dict
    seconds: float
    seconds_with_loading: float
    per_before: float | None
    per_after: float | None
    loss_after: float | None
    eval_on: str | None
    unlabelled_rest: bool = False
    n_unlabelled: int = 0
    pull_to_start: float = 0.0
    update_rank: int | None = None
    files: dict = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def summary_line(self) -> str:
        """The report in one line."""
        def pct(v):
            return "n/a" if v is None else f"{100 * v:.1f}%"
        if self.unlabelled_rest:
            what = (f"{self.n_sentences} sentences + {self.n_unlabelled} unlabelled trials "
                    f"(semi-supervised, labelled + pseudo-labelled per round: "
                    + ", ".join(f"{x['labelled']}+{x['kept']}" for x in self.rounds) + ")")
        elif self.unlabelled:
            what = (f"{self.n_sentences} sentences (unlabelled, {len(self.rounds)} round(s), kept "
                    + "/".join(str(x["kept"]) for x in self.rounds) + ")")
        else:
            what = f"{self.n_sentences} sentences (labelled)"
        return (f"calibrated {self.session} as day {self.day} from day {self.init_day} "
                f"({self.init_session}): {what}, {self.steps} steps, "
                f"{self.seconds:.1f} s; PER {pct(self.per_before)} -> {pct(self.per_after)}"
                + (f" on {self.eval_on}" if self.eval_on else " (no labels to score)"))


def _split_rows(n: int, budget: Budget, labelled: bool) -> tuple[np.ndarray, np.ndarray]:
    """Train rows and held-out rows of ``n`` calibration trials: the last ``heldout_fraction``
    (at least 2) held out when there are ``min_heldout_sentences`` or more and labels."""
    rows = np.arange(n, dtype=np.int64)
    if not labelled or n < budget.min_heldout_sentences:
        return rows, rows[:0]
    n_held = max(2, int(round(budget.heldout_fraction * n)))
    return rows[:n - n_held], rows[n - n_held:]


def _eval_set(nd: NewDay, val: Path | None, session: Path, held: np.ndarray, device):
    """Where PER is measured: ``(store, rows, description)``, or None without any labels."""
    if val is not None:
        store = load_session(nd.cfg, val, nd.day, None, True, split="val")
        return store, np.arange(store.n_trials), f"--val {val} ({store.n_trials} trials)"
    if len(held):
        return nd.store, held, f"the held-out part of the calibration sentences ({len(held)} trials)"
    if not nd.labelled:
        try:  # the session's own labels, never used for training here
            store = load_session(nd.cfg, session, nd.day, nd.store.n_trials, True)
        except Exception:  # noqa: BLE001 - an unlabelled file: no PER
            return None
        return store, np.arange(store.n_trials), ("the calibration trials' own labels (unused by "
                                                  "the unlabelled training)")
    if nd.store is not None:
        return nd.store, np.arange(nd.store.n_trials), (
            "the calibration sentences themselves (too few for a held-out part: pass --val)")
    return None


def _init_day(nd: NewDay, init_day: int | None, builder, train_rows) -> tuple[int, str, dict]:
    """The day whose layer the new one starts from, how it was chosen, every candidate's score."""
    n_days = len(nd.cfg["dataset"]["sessions"])
    trained = range(n_days) if nd.replaced else range(n_days - 1)  # days with a trained layer
    candidates = [d for d in trained if d != nd.day] or [nd.day]
    if init_day is not None:
        if init_day not in trained:
            raise ConfigError(f"--init-day {init_day} is not a trained day of the model (0.."
                              f"{len(trained) - 1})")
        return init_day, "--init-day", {}
    if nd.store is None:  # no sentence: the most recent trained day
        return candidates[-1], "the model's most recent day (no calibration sentence)", {}
    best, scores = choose_init_day(nd, train_rows, builder, candidates)
    how = "lowest CTC loss on the calibration sentences" if nd.labelled else \
        "most confident outputs on the calibration trials (no labels)"
    return best, how, scores


def _train(nd, builder, train_rows, held, s: Settings, budget, say) -> tuple[dict, list]:
    """The labelled training; ``unlabelled`` rounds of pseudo-labels; or, ``unlabelled_rest``,
    the labelled training (round 0) then rounds on the labelled and the unlabelled rest."""
    if nd.store is None:
        return {"steps": 0, "heldout": [], "best_heldout_loss": None}, []
    decode = _word_decoder(s) if s.lm else None
    moves = dict(pull=s.pull_to_start, rank=s.update_rank)
    plan = Rounds(rounds=s.rounds, keep=s.keep, steps=max(1, budget.steps // s.rounds), **moves)
    if s.unlabelled:
        steps, rounds = run_rounds(nd, nd.store, np.arange(nd.store.n_trials), builder, budget,
                                   dataclasses.replace(plan, weighted=False), s.seed,
                                   decode=decode, say=say)
        return {"steps": steps, "heldout": [], "best_heldout_loss": None}, rounds
    trained = train_layer(nd, nd.store, train_rows, held, builder, budget, s.seed, say=say, **moves)
    if not s.unlabelled_rest:
        return trained, []
    n = nd.store.n_trials
    rest = np.arange(n, nd.whole.n_trials, dtype=np.int64)
    labels = [nd.store.seq_class_ids_np[i][:nd.store.seq_len_np[i]] for i in range(n)]
    rounds = [{"round": 0, "labelled": int(len(train_rows)), "kept": 0, "of": int(len(rest)),
               "mean_confidence_kept": None, "steps": trained["steps"], "heldout": trained["heldout"]}]
    say(f"  round 0: trained on {len(train_rows)} labelled trials")
    steps, more = run_rounds(nd, nd.whole, rest, builder, budget, plan, s.seed + 1,
                             labelled=train_rows, labels=labels, held=held, decode=decode,
                             first_step=trained["steps"], say=say)
    return dict(trained, steps=trained["steps"] + steps), rounds + more


def _word_decoder(s: Settings):
    """``log_probs -> phoneme ids`` through the word decoder and its lexicon (``lm``)."""
    from fastbci.lm import Lexicon, WordDecoder
    lex = Lexicon.load(s.lexicon, cmudict=s.cmudict, use_cmudict=s.use_cmudict)
    dec = WordDecoder(s.lm, lex)

    def decode(log_probs: np.ndarray) -> np.ndarray:
        text = dec.decode(log_probs)
        return np.asarray(lex.sentence_ids(text) if text.strip() else [], dtype=np.int64)
    return decode


@outputs.writes("calibrate")
def calibrate(checkpoint: str | os.PathLike, session: str | os.PathLike, *, out: str | os.PathLike,
              sentences: int | None = None, val: str | os.PathLike | None = None,
              init_day: int | None = None, replace: bool = False, unlabelled: bool = False,
              unlabelled_rest: bool = False, rounds: int = 3, keep: float = 0.5,
              lm: str | None = None, lexicon: str | None = None,
              use_cmudict: bool = True, cmudict: str | None = None, steps: int = Budget.steps,
              batch_size: int = Budget.batch_size, pull_to_start: float = 0.0,
              update_rank: int | None = None, seed: int = 0, config: str | os.PathLike | None = None,
              overrides: Sequence[str] = (),
              trust: bool = False, overwrite: bool = False,
              say: Callable[[str], None] = lambda s: None) -> CalibrationReport:
    """Calibrate the session file ``session`` as one more day of the model of ``checkpoint``
    (the arguments: :class:`Settings`; ``val``: labelled trials of the session to score PER on),
    write the calibrated checkpoint and the report into ``out`` and return the report. ``out``
    follows fastbci's output rule (:mod:`fastbci.outputs`): never a folder holding an input,
    never replacing a file that fastbci's calibration did not write; an earlier calibration
    there is replaced only with ``overwrite``."""
    settings = Settings(sentences=sentences, init_day=init_day, replace=replace, unlabelled=unlabelled,
                        unlabelled_rest=unlabelled_rest, rounds=rounds, keep=keep, lm=lm,
                        lexicon=lexicon, use_cmudict=use_cmudict,
                        cmudict=cmudict, steps=steps, batch_size=batch_size, seed=seed,
                        pull_to_start=pull_to_start, update_rank=update_rank)
    settings.check(val)
    return _calibrate(Path(checkpoint), Path(session), Path(out), settings, val, config, overrides,
                      trust, overwrite, say)


def _calibrate(checkpoint: Path, session: Path, out: Path, settings: Settings, val, config, overrides,
               trust: bool, overwrite: bool, say) -> CalibrationReport:
    t0 = time.perf_counter()
    _check_out(out, [("checkpoint", checkpoint), ("session file", session), ("validation file", val),
                     ("configuration", config), ("LM", settings.lm), ("lexicon", settings.lexicon)],
               overwrite)
    if settings.lm:
        from fastbci.lm.run import check_ready
        check_ready(settings.lm)
    ck = ckpt_io.load(checkpoint, trust=trust)
    cfg, source = resolve_config(checkpoint, ck, config, overrides)
    nd, device = _load(cfg, ck, checkpoint, session, settings)
    budget = Budget(steps=settings.steps, batch_size=settings.batch_size)
    builder = builder_for(nd.cfg, device, settings.seed)
    n = 0 if nd.store is None else nd.store.n_trials
    train_rows, held = _split_rows(n, budget, nd.labelled)
    init, how, scores = _init_day(nd, settings.init_day, builder, train_rows)
    set_layer(nd.model, nd.day, layer_of(nd.model, init))
    evaluation = _eval_set(nd, Path(val) if val else None, session, held, device)
    per_before = _per(nd, evaluation, builder)
    say(f"Calibrating {nd.session} as day {nd.day} from {n} sentence(s), starting from day {init} "
        f"({nd.cfg['dataset']['sessions'][init]}: {how})")
    (trained, rounds), seconds = timed(lambda: _train(nd, builder, train_rows, held, settings,
                                                       budget, say))
    after = _per(nd, evaluation, builder, full=True)
    sessions = nd.cfg["dataset"]["sessions"]
    report = CalibrationReport(
        session=nd.session, day=nd.day, checkpoint=str(checkpoint), config=source,
        init_day=init, init_session=sessions[init], init_choice=how,
        init_scores={sessions[d]: v for d, v in scores.items()}, n_sentences=n,
        n_train=int(len(train_rows)), n_heldout=int(len(held)), unlabelled=settings.unlabelled,
        rounds=rounds, seed=settings.seed, steps=trained["steps"], heldout=trained["heldout"],
        budget=dataclasses.asdict(budget), seconds=seconds,
        seconds_with_loading=time.perf_counter() - t0, per_before=per_before, per_after=after[0],
        loss_after=after[1], eval_on=None if evaluation is None else evaluation[2],
        unlabelled_rest=settings.unlabelled_rest,
        n_unlabelled=0 if nd.whole is None else nd.whole.n_trials - n,
        pull_to_start=settings.pull_to_start, update_rank=settings.update_rank)
    _write(out, nd, report)
    return report


def _check_out(out: Path, inputs, overwrite: bool) -> None:
    why = outputs.meeting(out, inputs, folder=True)
    if why:
        raise outputs.OutputError(f"--out {out}: {why}; refused even with --overwrite: choose "
                                  "another folder")
    outputs.check_files([("--out", out / name) for name in (CHECKPOINT_NAME, "args.yaml", REPORT_NAME)],
                        inputs=inputs, overwrite=overwrite)


def _load(cfg, ck, checkpoint: Path, session: Path, s: Settings):
    from fastbci.devices import select_device
    nd = new_day(cfg, ck["model_state_dict"], session, n=s.sentences, replace=s.replace,
                 labelled=not s.unlabelled, checkpoint=checkpoint, unlabelled_rest=s.unlabelled_rest)
    device = select_device(nd.cfg)
    nd.model.to(device)
    return nd, device


def _per(nd, evaluation, builder, full: bool = False):
    if evaluation is None:
        return (None, None) if full else None
    store, rows, _ = evaluation
    res = evaluate_per(nd, store, rows, builder)
    return (res.per, res.loss) if full else res.per


def _write(out: Path, nd: NewDay, report: CalibrationReport) -> None:
    """``calibrated_checkpoint`` (weights only: official keys, the configuration with the new
    session, the report), ``args.yaml`` beside it and ``calibration.json``."""
    out.mkdir(parents=True, exist_ok=True)
    report.files = {"checkpoint": str(out / CHECKPOINT_NAME), "report": str(out / REPORT_NAME)}
    ck = ckpt_io.build_checkpoint(nd.model.official_state_dict(), None, None, report.per_after,
                                  report.loss_after, {"config": nd.cfg, "calibration": report.to_dict()})
    ckpt_io.atomic_save(ck, out / CHECKPOINT_NAME)
    config_mod.dump(nd.cfg, out / "args.yaml")
    atomic_write_text(out / REPORT_NAME, dumps(report.to_dict(), indent=1))
