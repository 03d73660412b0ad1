"""Batched validation metrics: greedy CTC decoding, edit distance, blank fraction, PER.

Everything works on whole batches with tensor operations (no Python loop per trial or per frame),
on the device the logits live on. Semantics follow the official validation (docs/recipe.md): per
trial, over its first ``lengths[b]`` frames, argmax, merge repeats, drop blanks; the phoneme error
rate is the total Levenshtein distance over the total number of true phonemes.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import torch

from fastbci.data.phonemes import PHONEMES  # 0 blank, 1-39 ARPAbet, 40 " | "


def _check_lengths(name: str, lengths: torch.Tensor, B: int, T: int, where: str,
                   check_range: bool = True) -> torch.Tensor:
    """``lengths`` as an int64 tensor after the shape and dtype checks (host facts, no sync);
    ``check_range`` also checks that every value lies in [0, T] (one host read)."""
    if not isinstance(lengths, torch.Tensor):
        lengths = torch.as_tensor(lengths)
    if lengths.dim() != 1 or lengths.shape[0] != B:
        raise ValueError(f"{where}: {name} must have shape ({B},), got {tuple(lengths.shape)}")
    if lengths.dtype.is_floating_point or lengths.dtype == torch.bool:
        raise TypeError(f"{where}: {name} must be integers, got {lengths.dtype}")
    if check_range and B and (int(lengths.min()) < 0 or int(lengths.max()) > T):
        raise ValueError(f"{where}: {name} must lie in [0, {T}], got range "
                         f"[{int(lengths.min())}, {int(lengths.max())}]")
    return lengths.to(torch.int64)


def _check_logits(logits: torch.Tensor, where: str) -> None:
    if not isinstance(logits, torch.Tensor) or logits.dim() != 3:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"{where}: logits must be a (B, T, K) tensor, got {shape}")
    if logits.shape[2] == 0:
        raise ValueError(f"{where}: logits have no class (K=0)")


def greedy_decode(logits: torch.Tensor, lengths, blank: int = 0, *, width: int | None = None,
                  check: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy CTC decoding of a batch.

    Args:
        logits: ``(B, T, K)`` scores (any float dtype; only the argmax matters).
        lengths: ``(B,)`` number of valid frames per trial (the CTC input lengths), in [0, T].
        blank: the blank class id.
        width: the number of token columns to return, an upper bound of every trial's token
            count known on the host (the longest of ``lengths``, or T, always is one). None:
            the longest decoded sequence, read from the device (one host synchronisation).
            With a width the decoding runs without any synchronisation.
        check: check that ``lengths`` lies in [0, T] (one host read); ``False`` for trusted
            internal callers (the trainer's lengths come from the store's metadata).

    Returns:
        ``tokens`` ``(B, L)`` int64, the decoded ids left-aligned and padded with -1 (L is
        ``width``, else the longest decoded sequence, at least 0), and ``n_tokens`` ``(B,)``
        int64.
    """
    where = "greedy_decode"
    _check_logits(logits, where)
    B, T, K = logits.shape
    if not 0 <= blank < K:
        raise ValueError(f"{where}: blank={blank} is not a class id of logits with K={K}")
    if width is not None and (isinstance(width, bool) or not isinstance(width, int) or width < 0):
        raise ValueError(f"{where}: width must be an integer >= 0 or None, got {width!r}")
    lengths = _check_lengths("lengths", lengths, B, T, where, check).to(logits.device)
    ids = logits.argmax(dim=-1)  # (B, T)
    frame = torch.arange(T, device=logits.device)
    valid = frame.unsqueeze(0) < lengths.unsqueeze(1)
    new = torch.ones_like(valid)
    if T > 1:
        new[:, 1:] = ids[:, 1:] != ids[:, :-1]
    keep = valid & new & (ids != blank)
    n_tokens = keep.sum(dim=1)
    if width is None:
        L = int(n_tokens.max()) if B else 0
    else:
        if check and B and int(n_tokens.max()) > width:
            raise ValueError(f"{where}: width={width} is shorter than the longest decoded "
                             f"sequence ({int(n_tokens.max())} tokens)")
        L = width
    # scatter every kept frame to its token position; the others go to a spare last column
    pos = torch.where(keep, keep.cumsum(dim=1) - 1, torch.full_like(ids, max(L, T)))
    tokens = torch.full((B, max(L, T) + 1), -1, dtype=torch.int64, device=logits.device)
    tokens.scatter_(1, pos, torch.where(keep, ids, torch.full_like(ids, -1)).to(torch.int64))
    return tokens[:, :L].contiguous(), n_tokens.to(torch.int64)


def edit_distance(hyp: torch.Tensor, hyp_len, ref: torch.Tensor, ref_len, *,
                  max_hyp_len: int | None = None, max_ref_len: int | None = None,
                  check: bool = True) -> torch.Tensor:
    """Levenshtein distance (unit insert / delete / substitute) between padded sequence pairs.

    Args:
        hyp: ``(B, Lh)`` integer ids, row b valid up to ``hyp_len[b]`` (the rest is ignored).
        hyp_len: ``(B,)``.
        ref: ``(B, Lr)`` integer ids, row b valid up to ``ref_len[b]``.
        ref_len: ``(B,)``.
        max_hyp_len, max_ref_len: upper bounds of ``hyp_len`` / ``ref_len`` known on the host
            (e.g. the longest label from the store's metadata); each one given spares reading
            that maximum from the device. With both, no host synchronisation at all.
        check: check that the lengths lie in [0, L] and below the bounds (host reads);
            ``False`` for trusted internal callers.

    Returns:
        ``(B,)`` int64 distances. The dynamic programme runs row by row over the shorter side
        (after trimming the padding) for the whole batch at once; insertions along a row are
        resolved with a cumulative minimum.
    """
    where = "edit_distance"
    for name, t in (("hyp", hyp), ("ref", ref)):
        if not isinstance(t, torch.Tensor) or t.dim() != 2:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{where}: {name} must be a (B, L) tensor, got {shape}")
        if t.dtype.is_floating_point:
            raise TypeError(f"{where}: {name} must hold integer ids, got {t.dtype}")
    if hyp.shape[0] != ref.shape[0]:
        raise ValueError(f"{where}: hyp has {hyp.shape[0]} rows but ref has {ref.shape[0]}")
    if hyp.device != ref.device:
        raise ValueError(f"{where}: hyp is on {hyp.device} but ref is on {ref.device}")
    B, Lh = hyp.shape
    Lr = ref.shape[1]
    dev = hyp.device
    hyp_len = _check_lengths("hyp_len", hyp_len, B, Lh, where, check).to(dev)
    ref_len = _check_lengths("ref_len", ref_len, B, Lr, where, check).to(dev)
    # Trim the padding and run the programme over the shorter side (the distance is symmetric):
    # validation labels are padded to 500 while early, untrained outputs can be long.
    Lh = _longest("hyp_len", hyp_len, Lh, max_hyp_len, check, where)
    Lr = _longest("ref_len", ref_len, Lr, max_ref_len, check, where)
    hyp = hyp[:, :Lh].to(torch.int64)
    ref = ref[:, :Lr].to(torch.int64)
    if Lh > Lr:
        hyp, ref, hyp_len, ref_len, Lh, Lr = ref, hyp, ref_len, hyp_len, Lr, Lh

    cols = torch.arange(Lr + 1, device=dev, dtype=torch.int64)  # (Lr + 1,)
    row = cols.unsqueeze(0).expand(B, Lr + 1).clone()            # D[0, j] = j
    result = row.gather(1, ref_len.unsqueeze(1)).squeeze(1)      # hyp_len == 0
    for i in range(1, Lh + 1):
        sub = row[:, :-1] + (hyp[:, i - 1:i] != ref).to(torch.int64)  # diagonal
        dele = row[:, 1:] + 1                                        # from the row above
        cand = torch.empty_like(row)
        cand[:, 0] = i
        cand[:, 1:] = torch.minimum(sub, dele)
        # insertions: D[i, j] = min_k<=j (cand[k] + j - k)
        row = torch.cummin(cand - cols, dim=1).values + cols
        done = hyp_len == i
        result = torch.where(done, row.gather(1, ref_len.unsqueeze(1)).squeeze(1), result)
    return result


def _longest(name: str, lengths: torch.Tensor, width: int, bound: int | None, check: bool,
             where: str) -> int:
    """The number of columns the programme needs: ``bound`` (capped at the padded width) when
    the host knows it, else the longest length read from the device."""
    B = lengths.shape[0]
    if bound is None:
        return int(lengths.max()) if B else 0
    if isinstance(bound, bool) or not isinstance(bound, int) or bound < 0:
        raise ValueError(f"{where}: max_{name} must be an integer >= 0 or None, got {bound!r}")
    if check and B and int(lengths.max()) > bound:
        raise ValueError(f"{where}: {name} reaches {int(lengths.max())}, above "
                         f"max_{name}={bound}")
    return min(bound, width)


def blank_counts(logits: torch.Tensor, lengths: torch.Tensor,
                 blank: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(blank frames, valid frames)`` as 0-d int64 device tensors: the valid frames are
    ``t < lengths[b]``, a blank frame is a valid one whose argmax is ``blank``. No host read
    (the lengths are trusted: :func:`blank_fraction` is the checked form)."""
    T = logits.shape[1]
    valid = torch.arange(T, device=logits.device).unsqueeze(0) < lengths.to(logits.device).unsqueeze(1)
    return ((logits.argmax(dim=-1) == blank) & valid).sum(), valid.sum()


def blank_fraction(logits: torch.Tensor, lengths, blank: int = 0) -> float:
    """Fraction of the valid frames (``t < lengths[b]``) whose argmax is ``blank``.

    Returns ``nan`` when no frame is valid.
    """
    where = "blank_fraction"
    _check_logits(logits, where)
    B, T, K = logits.shape
    if not 0 <= blank < K:
        raise ValueError(f"{where}: blank={blank} is not a class id of logits with K={K}")
    lengths = _check_lengths("lengths", lengths, B, T, where)
    n_blank, n = (int(v) for v in blank_counts(logits, lengths, blank))
    return n_blank / n if n else float("nan")


@dataclasses.dataclass
class GreedyStats:
    """What a training log and validation read off a batch's logits (all on the device)."""
    tokens: torch.Tensor        # (B, width) greedy decoding, padded with -1
    n_tokens: torch.Tensor      # (B,)
    edits: torch.Tensor | None  # (B,) edit distance to the labels (None without labels)
    blank: torch.Tensor         # 0-d: blank frames among the valid ones
    frames: torch.Tensor        # 0-d: valid frames


def greedy_stats(logits: torch.Tensor, lengths: torch.Tensor, labels: torch.Tensor | None = None,
                 label_lens: torch.Tensor | None = None, *, width: int,
                 max_label_len: int | None = None) -> GreedyStats:
    """Greedy decoding, edit distances and blank counts of a batch without any host read.

    ``lengths`` are the valid frames per trial; ``width`` (at least the longest of them, capped
    at the frame count) and ``max_label_len`` are bounds the caller knows on the host. Trusted
    inputs: the checked forms are :func:`greedy_decode` and :func:`edit_distance`."""
    width = max(0, min(int(width), logits.shape[1]))
    lengths = lengths.to(torch.int64)
    tokens, n_tok = greedy_decode(logits, lengths, width=width, check=False)
    edits = None
    if labels is not None:
        edits = edit_distance(tokens, n_tok, labels, label_lens, max_hyp_len=width,
                              max_ref_len=max_label_len, check=False)
    blank, frames = blank_counts(logits, lengths)
    return GreedyStats(tokens, n_tok, edits, blank, frames)


def phoneme_error_rate(total_edits, total_ref) -> float:
    """``total_edits / total_ref`` as a float (ints or 0-d tensors accepted).

    ``total_ref`` must be positive: a PER over no reference phoneme is undefined.
    """
    edits = float(total_edits.item() if isinstance(total_edits, torch.Tensor) else total_edits)
    ref = float(total_ref.item() if isinstance(total_ref, torch.Tensor) else total_ref)
    if edits < 0:
        raise ValueError(f"phoneme_error_rate: total_edits must be >= 0, got {edits:g}")
    if ref <= 0:
        raise ValueError(f"phoneme_error_rate: total_ref must be > 0 (the number of true "
                         f"phonemes), got {ref:g}")
    return edits / ref


def decode_to_text(tokens: torch.Tensor, n_tokens, symbols: Sequence[str] = PHONEMES) -> list[str]:
    """Phoneme strings, one per row: the symbols of the first ``n_tokens[b]`` ids joined by
    spaces, as the official evaluation prints them (e.g. ``"HH AH L OW  |  W ER L D  | "``)."""
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2:
        shape = tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
        raise ValueError(f"decode_to_text: tokens must be a (B, L) tensor, got {shape}")
    B, L = tokens.shape
    n = _check_lengths("n_tokens", n_tokens, B, L, "decode_to_text").tolist()
    rows = tokens.to("cpu", torch.int64).tolist()
    out = []
    for b, (row, k) in enumerate(zip(rows, n)):
        ids = row[:k]
        bad = [i for i in ids if not 0 <= i < len(symbols)]
        if bad:
            raise ValueError(f"decode_to_text: row {b} holds ids {sorted(set(bad))} outside "
                             f"[0, {len(symbols) - 1}]")
        out.append(" ".join(symbols[i] for i in ids))
    return out
