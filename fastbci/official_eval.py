"""The official evaluation's per-trial semantics (``fastbci evaluate --official-eval``).

The official ``model_training/evaluate_model.py`` does not batch: for every trial of every
session that has the split's file it

1. makes a ``(1, T, C)`` tensor of the trial's features in bfloat16 (``dtype=torch.bfloat16``,
   on whatever device);
2. inside ``torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp)`` smooths it with the
   Gaussian kernel (``gauss_smooth(..., padding='valid')``: a grouped ``conv1d`` without padding,
   so T - K + 1 steps remain) and runs the model on it with the trial's day layer
   (``runSingleDecodingStep``);
3. decodes greedily over every output frame: argmax, blanks removed, repeats merged.

It reports no PER itself (it prints the greedy and the true phonemes); the PER here is the
trainer's formula on those greedy sequences: the total edit distance over the total number of
true phonemes. fastbci's default evaluation instead follows the trainer's validation (batches of
a day's trials, 'same' smoothing, outputs cut at each trial's CTC input length), so the two PERs
of one checkpoint differ: docs/words.md says how.

Here, on CUDA with ``use_amp``, the features go to the device in bfloat16 and the smoothing and the
model run under bfloat16 autocast, as officially. Elsewhere everything is float32: the official
script cannot run on the CPU (its bfloat16 input meets a float32 kernel in ``conv1d`` outside CUDA
autocast), and float32 is what it would compute there with the input cast made consistent.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from fastbci.data.phonemes import BLANK_ID
from fastbci.errors import FastbciError
from fastbci.lm.text import word_edit_distance

__all__ = ["OfficialEvalError", "greedy_tokens", "per_report", "trial_logits", "run_trials"]


class OfficialEvalError(FastbciError, ValueError):
    """A trial the official per-trial evaluation cannot run (named by session, block, trial)."""


def greedy_tokens(logits: np.ndarray) -> np.ndarray:
    """The official greedy decoding of a ``(P, K)`` array: argmax per frame, repeats merged,
    blanks removed (int64)."""
    best = np.asarray(logits).argmax(axis=-1)
    if best.size == 0:
        return best.astype(np.int64)
    keep = np.concatenate([[True], best[1:] != best[:-1]])
    best = best[keep]
    return best[best != BLANK_ID].astype(np.int64)


def per_report(tokens: Sequence[np.ndarray], labels: Sequence[np.ndarray],
               keys: Sequence) -> tuple[float | None, dict]:
    """PER = total edit distance / total true phonemes, overall and per ``keys`` value (e.g. the
    session of each trial); None where there is no true phoneme."""
    if not (len(tokens) == len(labels) == len(keys)):
        raise ValueError(f"{len(tokens)} decodings, {len(labels)} labels and {len(keys)} keys")
    sums: dict = {}
    for tok, lab, key in zip(tokens, labels, keys):
        e, n = sums.get(key, (0, 0))
        sums[key] = (e + word_edit_distance(list(map(int, lab)), list(map(int, tok))), n + len(lab))
    edits, total = sum(e for e, _ in sums.values()), sum(n for _, n in sums.values())
    return (edits / total if total else None), {k: (e / n if n else None) for k, (e, n) in sums.items()}


def trial_logits(model: torch.nn.Module, features: torch.Tensor, day: int, taps: torch.Tensor,
                 device: torch.device, amp: bool) -> torch.Tensor:
    """One official decoding step: ``(T, C)`` features of one trial -> ``(P, K)`` float32 logits
    on the host ('valid' smoothing with ``taps``, then the model with day layer ``day``)."""
    bf16 = bool(amp) and device.type == "cuda"
    x = features.to(device=device, dtype=torch.bfloat16 if bf16 else torch.float32).unsqueeze(0)
    C, K = x.shape[-1], taps.numel()
    kernel = taps.to(device=device, dtype=torch.float32).view(1, 1, K).repeat(C, 1, 1)
    with torch.no_grad(), torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=bf16):
        smoothed = F.conv1d(x.permute(0, 2, 1), kernel, padding="valid", groups=C).permute(0, 2, 1)
        logits = model(smoothed, torch.tensor([int(day)], device=device))
    return logits.float()[0].cpu()


def run_trials(model: torch.nn.Module, trials: Sequence[torch.Tensor], days: Sequence[int],
               names: Sequence[str], taps: torch.Tensor, device: torch.device, amp: bool,
               patch: Mapping[str, int]) -> list[np.ndarray]:
    """:func:`trial_logits` of every trial, one at a time (``model`` in eval mode); ``names``
    say which trial a too-short one is; ``patch``: the model's ``patch_size`` / ``patch_stride``."""
    need = taps.numel() - 1 + max(int(patch["patch_size"]), 1)
    was_training = model.training
    model.eval()
    out = []
    try:
        for x, d, name in zip(trials, days, names):
            if x.shape[0] < need:
                raise OfficialEvalError(
                    f"{name} has {x.shape[0]} time steps: the official evaluation's 'valid' smoothing "
                    f"({taps.numel()} taps) and patching ({patch['patch_size']} steps) need {need}")
            out.append(trial_logits(model, x, d, taps, device, amp).numpy())
    finally:
        model.train(was_training)
    return out
