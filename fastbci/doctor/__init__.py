"""How a configuration departs from the official recipe, and what each departure is known to
risk (``fastbci doctor CONFIG [key=value ...]``; the command line is
:mod:`fastbci.commands.doctor`).

Every official key whose value differs from ``configs/official.yaml`` is reported with its value,
the official value, a severity and the known impact, most severe first:

* ``severe``: a change linked to a reported failure (docs/recipe.md section 8): weaker
  augmentation or a lower peak learning rate (blank collapse), or an AdamW epsilon orders of
  magnitude below 0.1 (NaN);
* ``warning``: a change of the optimisation, regularisation, schedule, architecture or input
  processing that moves training away from the published 10.1 % PER without a reported failure;
* ``info``: bookkeeping (paths, logging, seeds, hardware) with no expected effect on accuracy.

Exit status: 1 when a severe finding is present, 0 otherwise, 2 for a configuration error.
``--keys`` lists every known key. ``--env`` checks this torch instead of a configuration
(:mod:`fastbci.envcheck`): exit 1 when ``torch.compile`` computes the official model's
day-layer gradients wrongly, 0 when it does not, 2 when the check cannot run.
``assess(cfg)`` gives the findings to other tools (the trainer
uses it to explain an all-blank collapse).
"""
from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from fastbci.config import diff_from_official

SEVERE = "severe"
WARNING = "warning"
INFO = "info"
_RANK = {SEVERE: 0, WARNING: 1, INFO: 2}

#: the blank-collapse mechanism, stated once below the findings that carry the risk
COLLAPSE_WHY = ("Why blank collapse: CTC lowers its loss fastest by predicting blank everywhere; "
                "with weak input noise the network settles there before it learns phonemes, and a "
                "low peak learning rate under AdamW's epsilon of 0.1 takes steps too small to "
                "leave (the configuration white noise 0.25, offset 0.05, lr_max 0.002, warm-up "
                "2000, batch 48 is reported to end 100% blank). Restore the official values "
                "(docs/recipe.md section 8). To test which change does it, each alone and "
                "over seeds, against the official values (docs/sweeps.md): fastbci sweep "
                "ablate CONFIG --group augmentation --keys augmentation,lr_max --seeds 3 --out "
                "ablation")
_AUG = "dataset.data_transforms."


@dataclass(frozen=True)
class Finding:
    """One departure from the official configuration."""
    key: str
    value: Any
    official: Any
    severity: str  # "severe" | "warning" | "info"
    impact: str

    @property
    def collapse_risk(self) -> bool:
        """Part of the blank-collapse pattern (explained once by :data:`COLLAPSE_WHY`)."""
        return "blank" in self.impact


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v)


def _lower_higher(lower: tuple[str, str], higher: tuple[str, str]) -> Callable:
    """A rule giving (severity, impact) depending on whether the value is below or above."""
    def rule(value, off):
        v, o = _num(value), _num(off)
        if v is None or o is None:
            return WARNING, "not a number: the official value is a number"
        return lower if v < o else higher
    return rule


def _epsilon(value, off):
    v, o = _num(value), _num(off)
    if v is None or o is None or v <= 0:
        return SEVERE, "AdamW epsilon must be a positive number"
    ratio = v / o
    if ratio <= 1e-2:
        return SEVERE, ("NaN risk: AdamW epsilon far below the official 0.1 makes steps on "
                        "parameters with tiny second moments huge; eps 1e-8 with lr 0.002 is "
                        "reported to explode to NaN; restore 0.1")
    if ratio < 1.0:
        return WARNING, ("smaller AdamW epsilon than 0.1: larger effective steps, less stable "
                         "training (eps 1e-8 is reported to explode to NaN)")
    if ratio >= 1e2:
        return WARNING, ("AdamW epsilon far above 0.1: the update shrinks to plain SGD-like steps, "
                         "much slower training")
    return WARNING, "larger AdamW epsilon than 0.1: smaller effective steps, slower training"


def _grad_clip(value, off):
    v = _num(value)
    if v is not None and v <= 0:
        return WARNING, ("gradient clipping off: no protection against exploding gradients "
                         "(the official trainer also crashes logging an undefined grad_norm; "
                         "fastbci fixes that)")
    return WARNING, "different gradient-norm clip: changes the effective step on large gradients"


def _extra_aug(what: str) -> Callable:
    def rule(value, off):
        v = _num(value)
        if v is not None and v > 0:
            return WARNING, f"{what} augmentation enabled (off in the official recipe): untested"
        return WARNING, f"{what} augmentation setting differs from the official one"
    return rule


_ARCH = ("architecture differs from the official model: the published accuracy does not apply and "
         "official checkpoints will not load")
_SCHEDULE = "learning-rate schedule differs from the official cosine schedule"
_DATA = "different data selection: results are not comparable with the published figures"
_BOOK = "bookkeeping only: no expected effect on accuracy"

# key -> (order of appearance among equal severities, rule or (severity, impact))
_RULES: dict[str, tuple[int, Any]] = {
    _AUG + "white_noise_std": (0, _lower_higher(
        (SEVERE, "weaker white noise than official: blank-collapse risk; restore 1.0"),
        (WARNING, "stronger white noise than official: slower learning, untested"))),
    _AUG + "constant_offset_std": (1, _lower_higher(
        (SEVERE, "weaker constant offset than official: blank-collapse risk; restore 0.2"),
        (WARNING, "stronger constant offset than official: untested"))),
    "lr_max": (2, _lower_higher(
        (SEVERE, "lower peak learning rate than official: blank-collapse risk; restore 0.005"),
        (WARNING, "higher peak learning rate than official: instability / NaN risk"))),
    "lr_warmup_steps": (3, _lower_higher(
        (WARNING, "shorter warm-up than official: early instability risk"),
        (WARNING, "longer warm-up than official: slower start; part of the all-blank "
                  "collapse pattern; restore 1000"))),
    "dataset.batch_size": (4, _lower_higher(
        (WARNING, "smaller batch than official: noisier gradients; part of the all-blank "
                  "collapse pattern; restore 64"),
        (WARNING, "larger batch than official: fewer updates per trial seen, untested with these "
                  "learning rates"))),
    "epsilon": (5, _epsilon),
    "lr_max_day": (6, _lower_higher(
        (WARNING, "lower day-layer peak learning rate: day layers adapt more slowly"),
        (WARNING, "higher day-layer peak learning rate: instability risk"))),
    "lr_min": (7, (WARNING, _SCHEDULE)),
    "lr_min_day": (7, (WARNING, _SCHEDULE + " (day layers)")),
    "lr_decay_steps": (7, (WARNING, _SCHEDULE)),
    "lr_decay_steps_day": (7, (WARNING, _SCHEDULE + " (day layers)")),
    "lr_warmup_steps_day": (7, (WARNING, _SCHEDULE + " (day-layer warm-up)")),
    "lr_scheduler_type": (7, (WARNING, _SCHEDULE)),
    "num_training_batches": (8, _lower_higher(
        (WARNING, "shorter training than official: expect a higher PER than 10.1% "
                  "(published: 22.5% at 2k, 13.9% at 6k, 12.1% at 20k, 10.5% at 60k batches)"),
        (WARNING, "longer training than official: untested beyond 120k batches"))),
    "weight_decay": (9, (WARNING, "different weight decay on GRU/output weights: changes "
                                  "regularisation")),
    "weight_decay_day": (9, (WARNING, "weight decay on the day layers (0 officially): pulls them "
                                      "away from identity")),
    "beta0": (9, (WARNING, "different AdamW beta1: changes the momentum")),
    "beta1": (9, (WARNING, "different AdamW beta2: changes second-moment averaging")),
    "grad_norm_clip_value": (9, _grad_clip),
    "model.rnn_dropout": (10, (WARNING, "different dropout between GRU layers: changes "
                                        "regularisation")),
    "model.input_network.input_layer_dropout": (10, (WARNING, "different day-layer dropout: "
                                                              "changes regularisation")),
    _AUG + "random_cut": (11, (WARNING, "different random time cut: changes augmentation")),
    _AUG + "smooth_data": (11, (WARNING, "smoothing switched off: the model sees different "
                                         "inputs than official (and than official checkpoints)")),
    _AUG + "smooth_kernel_std": (11, (WARNING, "different smoothing width: different inputs")),
    _AUG + "smooth_kernel_size": (11, (WARNING, "different smoothing kernel support: different "
                                                "inputs")),
    _AUG + "static_gain_std": (11, _extra_aug("static gain")),
    _AUG + "random_walk_std": (11, _extra_aug("random walk")),
    _AUG + "random_walk_axis": (11, (INFO, "random-walk axis only matters when random_walk_std "
                                           "> 0")),
    "dataset.days_per_batch": (12, (WARNING, "different number of days per batch: changes the "
                                             "batch composition")),
    "dataset.must_include_days": (12, (WARNING, "forced days in every batch: changes the batch "
                                                "composition")),
    "fastbci.init_blank_bias": (12, (WARNING, "the output layer starts with this blank bias, "
                                              "not the official initialisation: the demo's 3.0 "
                                              "made every measured seed leave the blank plateau "
                                              "by batch 100; untested at the official size")),
    "model.n_units": (13, (WARNING, _ARCH)),
    "model.n_layers": (13, (WARNING, _ARCH)),
    "model.patch_size": (13, (WARNING, _ARCH)),
    "model.patch_stride": (13, (WARNING, _ARCH)),
    "model.n_input_features": (13, (WARNING, _ARCH)),
    "model.input_network.input_layer_sizes": (13, (WARNING, _ARCH)),
    "model.input_network.n_input_layers": (13, (WARNING, _ARCH)),
    "dataset.neural_dim": (13, (WARNING, _ARCH)),
    "dataset.n_classes": (13, (WARNING, _ARCH)),
    "model.rnn_trainable": (13, (WARNING, "frozen GRU: only other parameters learn")),
    "model.input_network.input_trainable": (13, (WARNING, "frozen day layers: they stay identity")),
    "dataset.sessions": (14, (WARNING, _DATA)),
    "dataset.dataset_probability_val": (14, (WARNING, "different validation days: the PER is "
                                                      "not comparable with the published one")),
    "dataset.feature_subset": (14, (WARNING, _DATA + " (feature subset)")),
    "dataset.bad_trials_dict": (14, (WARNING, _DATA + " (trials excluded)")),
    "dataset.test_percentage": (14, (INFO, "test_percentage is unused by the official trainer")),
    "dataset.max_seq_elements": (14, (INFO, "maximum phoneme-sequence length of the loader")),
    "use_amp": (15, (INFO, "mixed precision setting differs: fp32 is slower; numerics differ "
                           "slightly from the official bf16 run")),
    "seed": (16, (INFO, "different model seed: different initial weights (seed-to-seed noise)")),
    "dataset.seed": (16, (INFO, "different data seed: different batch plan and noise draws "
                                "(seed-to-seed noise)")),
    "early_stopping": (17, (INFO, "early stopping changes when training ends, not how it "
                                  "learns")),
    "early_stopping_val_steps": (17, (INFO, "early-stopping patience")),
    "batches_per_val_step": (17, (INFO, "validation frequency: affects which checkpoint is "
                                        "selected as best, not training")),
}


def _rule_for(key: str):
    if key in _RULES:
        return _RULES[key]
    return 18, (INFO, _BOOK)


def assess(cfg: Mapping[str, Any]) -> list[Finding]:
    """Findings for every official key whose value differs from the official configuration,
    most severe first (then by the order of the known risks, then by key)."""
    if not isinstance(cfg, Mapping):
        raise TypeError(f"assess expects a configuration dict, got {type(cfg).__name__}")
    found = []
    for key, (value, off) in diff_from_official(cfg).items():
        order, rule = _rule_for(key)
        severity, impact = rule(value, off) if callable(rule) else rule
        found.append((order, Finding(key, value, off, severity, impact)))
    found.sort(key=lambda of: (_RANK[of[1].severity], of[0], of[1].key))
    return [f for _, f in found]


# ---------------------------------------------------------------------------------------------
# the report
# ---------------------------------------------------------------------------------------------
def fmt_value(v: Any, width: int = 24) -> str:
    if isinstance(v, (list, tuple)) and len(v) > 4:
        s = f"[{len(v)} items: {v[0]!r}, {v[1]!r}, ...]"
    elif isinstance(v, float) and v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5) \
            and math.isfinite(v):
        s = f"{v:.3g}"
    else:
        s = repr(v) if isinstance(v, str) else str(v)
    return s if len(s) <= width else s[:width - 3] + "..."


def format_findings(findings: Sequence[Finding]) -> str:
    """The findings as a plain-text table (one row per key, the impact wrapped below)."""
    if not findings:
        return "No difference from the official configuration."
    kw = max(3, max(len(f.key) for f in findings))
    head = f"{'SEVERITY':<8}  {'KEY':<{kw}}  {'VALUE':<24}  OFFICIAL"
    lines = [head, "-" * (len(head) + 16)]
    for f in findings:
        lines.append(f"{f.severity:<8}  {f.key:<{kw}}  {fmt_value(f.value):<24}  {fmt_value(f.official)}")
        lines += textwrap.wrap(f.impact, width=max(70, len(head) + 6),
                               initial_indent=" " * 10, subsequent_indent=" " * 10)
    counts = {s: sum(f.severity == s for f in findings) for s in (SEVERE, WARNING, INFO)}
    if any(f.collapse_risk for f in findings):
        lines += [""] + textwrap.wrap(COLLAPSE_WHY, width=max(70, len(head) + 6))
    lines.append("")
    lines.append(f"{counts[SEVERE]} severe, {counts[WARNING]} warning(s), {counts[INFO]} info")
    return "\n".join(lines)
