"""Whether a trial is long enough for the model, and which key to change when it is not.

A training trial loses up to ``dataset.data_transforms.random_cut - 1`` leading steps to the
random cut, then needs one patch of ``model.patch_size`` steps and, with labels, as many patched
frames as CTC needs to emit its phonemes (one per phoneme plus a blank between repeats). A
trial that fails only because of the cut names ``dataset.data_transforms.random_cut`` and the
largest value that keeps it; one too short even uncut names the patching.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from .t15 import TrialMeta

CUT_KEY = "dataset.data_transforms.random_cut"


def _frames(t: int, patch_size: int, patch_stride: int) -> int:
    """Patched frames of a trial of ``t`` steps (``t`` itself without patching)."""
    if patch_size <= 0:
        return t
    return (t - patch_size) // patch_stride + 1 if t >= patch_size else 0


def _longest_cut(T: int, patch_size: int, patch_stride: int, need: int) -> int:
    """The largest number of leading steps a cut may take from a trial of ``T`` steps and still
    leave one patch and ``need`` frames."""
    keep = max(patch_size, 1)
    if need > 0:
        keep = max(keep, patch_size + (need - 1) * patch_stride if patch_size > 0 else need)
    return T - keep


def trial_length_rule(patch_size: int, patch_stride: int, max_cut: int = 0):
    """A check that a trial is long enough for the model after the largest random cut
    (``max_cut`` = ``random_cut - 1`` steps); returns ``check(meta) -> reason | None``."""
    def check(m: TrialMeta) -> str | None:
        T = int(m.n_time_steps)
        t_min = T - max_cut
        after = f" after a random cut of up to {max_cut} steps" if max_cut else ""
        need = 0
        if m.seq_class_ids is not None and m.seq_len is not None:
            ids = np.asarray(m.seq_class_ids)[:int(m.seq_len)]
            need = len(ids) + int(np.count_nonzero(ids[1:] == ids[:-1]))
        frames = _frames(t_min, patch_size, patch_stride)
        short_patch = t_min < max(patch_size, 1)
        if not short_patch and frames >= need:
            return None
        longest = _longest_cut(T, patch_size, patch_stride, need)
        if max_cut and longest >= 0:  # long enough uncut: the cut is what is too long
            what = (f"shorter than one patch of {max(patch_size, 1)} steps" if short_patch else
                    f"{frames} output frames for {len(ids)} phonemes, which need {need}")
            return (f"n_time_steps {T} leaves {t_min} steps{after} ({CUT_KEY} = {max_cut + 1}): "
                    f"{what}; set {CUT_KEY} to at most {longest + 1} to keep this trial")
        if short_patch:
            return (f"n_time_steps {T} leaves {t_min} steps{after}, shorter than one patch of "
                    f"{max(patch_size, 1)} steps (model.patch_size)")
        return (f"too short for CTC: n_time_steps {T} gives {frames} output frames{after} "
                f"for {len(ids)} phonemes, which need {need} (a blank between repeats); "
                "its loss would be infinite")
    return check


def length_rule_of(cfg: Mapping, split: str):
    """:func:`trial_length_rule` for a configuration's patching and (train split) random cut."""
    m = cfg["model"]
    cut = int(cfg["dataset"]["data_transforms"]["random_cut"]) if split == "train" else 0
    return trial_length_rule(int(m["patch_size"]), int(m["patch_stride"]), max(cut - 1, 0))
