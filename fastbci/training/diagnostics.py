"""What the trainer says when training goes wrong: the non-finite report (batch, days, trials,
likely cause), the blank-collapse watch and the doctor's findings for the configuration."""
from __future__ import annotations

from typing import Mapping

import torch

from fastbci.training.step import StepResult


def doctor_lines(cfg: Mapping) -> list[str]:
    """The configuration's risky differences from the official recipe, as indented lines."""
    try:
        from fastbci import doctor
        findings = doctor.assess(cfg)
    except Exception as e:  # the diagnosis must not hide the original problem
        return [f"  (fastbci.doctor could not assess the configuration: {e})"]
    risky = [f for f in findings if f.severity in ("severe", "warning")]
    if not risky:
        return ["  No configuration difference from the official recipe is known to cause "
                f"this (fastbci.doctor: {len(findings)} informational finding(s))."]
    out = ["  Configuration differences from the official recipe that carry a risk "
           "(fastbci.doctor, most severe first):"]

    def short(v):
        r = repr(v)
        return r if len(r) <= 60 else r[:57] + "..."

    for f in risky:
        out.append(f"    [{f.severity}] {f.key} = {short(f.value)} (official {short(f.official)}): "
                   f"{f.impact}")
    if len(findings) > len(risky):
        out.append(f"    (+{len(findings) - len(risky)} informational; run python -m "
                   "fastbci.doctor CONFIG for the full table)")
    return out


def nonfinite_message(k: int, res: StepResult, per_trial_all: torch.Tensor, store,
                      cfg: Mapping) -> str:
    """The report of a non-finite step ``k``: which trials of the whole batch (``per_trial_all``:
    the CTC losses of every process's trials, in batch order) have a non-finite loss, or, with
    a finite loss, that the gradient overflowed; their ids, lengths and whether their input
    features hold NaN/inf; the likely cause and the doctor's findings."""
    batch = res.full_batch
    pt = per_trial_all.float().cpu()
    bad = (~torch.isfinite(pt)).nonzero().flatten().tolist()
    feats_bad = (~torch.isfinite(batch.features.float())).flatten(1).any(1).cpu().tolist()
    if bad:
        what = f"non-finite CTC loss in {len(bad)} of {len(pt)} trial(s)"
        idx = bad
    else:
        what = (f"finite loss {float(res.loss):.4f} but a non-finite gradient norm "
                f"({float(res.grad_norm)}): an overflow in the backward pass")
        idx = list(range(len(pt)))
    sessions = cfg["dataset"]["sessions"]
    lines = [f"Non-finite loss or gradient at batch {k}: {what}; days in the batch: "
             + ", ".join(f"{d} ({sessions[d]})" for d in batch.days_present)]
    for i in idx[:16]:
        r = int(batch.rows[i])
        flag = " [input features hold NaN/inf]" if feats_bad[i] else ""
        lines.append(f"  day {int(store.day_np[r])}: {store.trial_ids([r])[0]} "
                     f"(store row {r}, T={int(store.lengths_np[r])}, phonemes "
                     f"{int(store.seq_len_np[r])}){flag}")
    if len(idx) > 16:
        lines.append(f"  ... and {len(idx) - 16} more")
    if bad:
        lines.append("  A CTC loss is infinite when a trial's output is shorter than its "
                     "phoneme sequence (with repeats): check n_time_steps vs seq_len, "
                     "patch_size/patch_stride and random_cut.")
    return "\n".join(lines + doctor_lines(cfg))


def startup_warnings(cfg: Mapping) -> list[str]:
    """What a run should hear before it starts: the doctor's severe findings (the collapse
    mechanism once), and a warm-up that the run never leaves."""
    from fastbci import doctor
    out = []
    severe = [f for f in doctor.assess(cfg) if f.severity == doctor.SEVERE]
    for f in severe:
        out.append(f"Configuration risk: {f.key} = {f.value!r} (official {f.official!r}): {f.impact}")
    if any(f.collapse_risk for f in severe):
        out.append(doctor.COLLAPSE_WHY)
    n = int(cfg["num_training_batches"])
    for key in ("lr_warmup_steps", "lr_warmup_steps_day"):
        w = int(cfg[key])
        if w >= n:
            out.append(f"{key} = {w} is not shorter than the run (num_training_batches = {n}): "
                       "the learning rate never leaves warm-up and never reaches its peak")
    return out


class CollapseWatch:
    """Stops a run whose validation outputs stay (almost) all blank: after warm-up when the
    blank fraction stays at or above ``collapse_blank_fraction`` for ``collapse_patience``
    validations; during warm-up when the outputs are 100% blank for
    ``collapse_warmup_patience`` validations (``fastbci.collapse_watch`` turns both off)."""

    def __init__(self, cfg: Mapping, warmup: int):
        fb = cfg["fastbci"]
        self.enabled = bool(fb["collapse_watch"])
        self.threshold = float(fb["collapse_blank_fraction"])
        self.patience = int(fb["collapse_patience"])
        self.warmup_patience = int(fb["collapse_warmup_patience"])
        self.warmup = warmup
        self.cfg = cfg

    def check(self, k: int, blank_fraction: float, state) -> str | None:
        """Count the validation at batch ``k`` in ``state`` (``collapse_count`` after warm-up,
        ``warmup_blank_count`` during it); the stop message once a count reaches its
        patience, else None."""
        if not self.enabled or blank_fraction != blank_fraction:  # NaN: no valid frame
            return None
        if k < self.warmup:
            state.warmup_blank_count = state.warmup_blank_count + 1 if blank_fraction >= 1.0 else 0
            if state.warmup_blank_count < self.warmup_patience:
                return None
            count, where = state.warmup_blank_count, "during warm-up (all blank)"
        else:
            state.collapse_count = state.collapse_count + 1 if blank_fraction >= self.threshold else 0
            if state.collapse_count < self.patience:
                return None
            count, where = state.collapse_count, (f"after warm-up (threshold "
                                                  f"fastbci.collapse_blank_fraction={self.threshold})")
        from fastbci import doctor
        return "\n".join([
            f"Blank collapse: the validation outputs have been {100 * blank_fraction:.1f}% blank "
            f"for {count} validation(s) {where}; stopping at batch {k}.",
            *doctor_lines(self.cfg), "  " + doctor.COLLAPSE_WHY,
            "  Turn the watch off with fastbci.collapse_watch=false."])
