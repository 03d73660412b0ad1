"""TrialStore: a loaded split (:class:`~fastbci.data.load.PackedSplit`) where the training path
reads it, holding each field once.

The split's metadata stays on the host, in the split's own tensors, read through numpy views
(``*_np``): lengths, days, labels, block and trial numbers, so that planning and building a batch
never read the device. A store on a GPU also holds there the features and the index fields its
gathers read (``offsets``, ``lengths``, ``day``, ``seq_class_ids``, ``seq_len``); on the CPU
these are the split's own tensors, not copies. :meth:`TrialStore.gather` assembles a zero-padded
batch with one op (``fastbci.ops.gather_padded``: a memcpy per trial on the host). Where a split
lives is one rule, :func:`placement`.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np
import torch

from fastbci.devices import to_device
from fastbci.ops.gather import gather_padded

from .load import PackedSplit, SessionSource, load_sources, load_split

__all__ = ["TrialStore", "SessionSource", "placement", "GPU_SHARE"]

#: a split goes to the GPU when it fits in this share of the free GPU memory (the rest is for
#: the model, its optimiser state, the activations and the other split)
GPU_SHARE = 0.5


def placement(nbytes: int, device: torch.device, want: str = "auto") -> torch.device:
    """Where a split of ``nbytes`` lives when training on ``device``: the one placement rule.

    ``want`` (``fastbci.store_device``): ``"cpu"`` keeps it in host memory; ``"auto"`` puts it on
    a CUDA ``device`` when it fits in :data:`GPU_SHARE` of the free memory there, else the host
    (pinned); ``"cuda"`` (or ``device``) requires it on the GPU and says so when it cannot fit.
    Off CUDA every split lives on the host."""
    device = torch.device(device)
    if device.type != "cuda" or want == "cpu":
        return torch.device("cpu")
    free, _ = torch.cuda.mem_get_info(device)
    if nbytes <= GPU_SHARE * free:
        return device
    if want == "auto":
        return torch.device("cpu")
    raise RuntimeError(f"TrialStore: the split needs {nbytes / 2**30:.2f} GiB but {device} has "
                       f"{free / 2**30:.2f} GiB free ({GPU_SHARE:.0%} of it may hold data); use "
                       "fastbci.store_device=auto or cpu to keep it in pinned host memory")


def _on(t: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    """A split's tensor on ``device``: itself on the CPU, a copy elsewhere."""
    return t if t is None or device.type == "cpu" else t.to(device)


def _host(name: str):
    """A numpy view of the split's tensor ``name`` (None where the split has none)."""
    def get(self):
        t = getattr(self.data, name)
        return None if t is None else t.numpy()
    return property(get, doc=f"The split's ``{name}`` on the host (a numpy view, not a copy).")


class TrialStore:
    """A :class:`PackedSplit` on a device (``device``: ``"cpu"`` or a CUDA device).

    Host (numpy views of the split's tensors): ``offsets_np``, ``lengths_np``, ``day_np``,
    ``block_num_np``, ``trial_num_np``, ``n_time_steps_np``, ``trial_index`` and, with labels,
    ``seq_len_np``, ``seq_class_ids_np``, ``transcriptions_np``; ``session`` and
    ``sentence_label`` per trial; ``sessions``, ``files``, ``trials_by_day`` per day;
    ``skipped``, ``excluded``. Device (torch; on the CPU the split's own tensors):
    ``features`` ``(N_total_steps, C)``, ``offsets``, ``lengths``, ``day``, ``seq_class_ids``,
    ``seq_len``.
    """

    def __init__(self, split: PackedSplit, device: str | torch.device = "cpu"):
        self.data = split
        self.device = torch.device(device)
        packed = split.packed
        self._packed = _on(packed, self.device)
        self.offsets = _on(split.offsets, self.device)
        self.lengths = _on(split.lengths, self.device)
        self.day = _on(split.day, self.device)
        self.seq_class_ids = _on(split.seq_class_ids, self.device)
        self.seq_len = _on(split.seq_len, self.device)

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def from_config(cls, cfg: Mapping, split: str, device: str | torch.device = "cpu",
                    progress: bool = True, *, pin_memory: bool | None = None) -> "TrialStore":
        """:func:`~fastbci.data.load.load_split` of ``split`` on ``device`` (``pin_memory``,
        default: CUDA is available and the store stays on the host)."""
        dev = torch.device(device)
        pin = (torch.cuda.is_available() and dev.type == "cpu") if pin_memory is None else pin_memory
        return cls(load_split(cfg, split, progress=progress, pin_memory=pin), dev)

    @classmethod
    def from_sources(cls, sources: Sequence[SessionSource], split: str, *,
                     device: str | torch.device = "cpu", pin_memory: bool | None = None,
                     **kwargs) -> "TrialStore":
        """:func:`~fastbci.data.load.load_sources` on ``device`` (same keyword arguments)."""
        dev = torch.device(device)
        pin = (torch.cuda.is_available() and dev.type == "cpu") if pin_memory is None else pin_memory
        return cls(load_sources(sources, split, pin_memory=pin, **kwargs), dev)

    def to(self, device: str | torch.device) -> "TrialStore":
        """The same split on ``device`` (the host arrays are shared, not copied)."""
        return TrialStore(self.data, device)

    def placed(self, device: torch.device, want: str = "auto") -> "TrialStore":
        """This store where :func:`placement` puts it for training on ``device`` (pinned when
        it stays on the host beside a GPU)."""
        where = placement(self.nbytes(), device, want)
        if where.type == "cpu":
            return self.pin_memory() if torch.device(device).type == "cuda" else self
        return self.to(where)

    def pin_memory(self) -> "TrialStore":
        """This split with its features in page-locked host memory (needs CUDA), as a new store
        (like ``Tensor.pin_memory``): the unpinned features go once nothing else holds them."""
        if self.device.type != "cpu" or not torch.cuda.is_available() or self._packed.is_pinned():
            return self
        return TrialStore(dataclasses.replace(self.data, packed=self._packed.pin_memory()), "cpu")

    def share_memory_(self) -> "TrialStore":
        """Move the split's tensors to shared memory (in place: every holder of them sees it), so
        that DataLoader workers index the same storage instead of receiving copies, whatever the
        multiprocessing start method."""
        if self.device.type == "cpu":
            for name in PackedSplit.TENSORS:
                t = getattr(self.data, name)
                if t is not None:
                    t.share_memory_()
        return self

    # -- the split's facts ----------------------------------------------------------------
    @property
    def features(self) -> torch.Tensor:
        """``(N_total_steps, C)`` float32: every trial's features back to back."""
        return self._packed[:-1]

    offsets_np = _host("offsets")
    lengths_np = _host("lengths")
    day_np = _host("day")
    block_num_np = _host("block_num")
    trial_num_np = _host("trial_num")
    n_time_steps_np = _host("n_time_steps")
    seq_len_np = _host("seq_len")
    seq_class_ids_np = _host("seq_class_ids")
    transcriptions_np = _host("transcriptions")
    trial_index = _host("trial_index")
    split = property(lambda self: self.data.split)
    session = property(lambda self: self.data.session)
    sentence_label = property(lambda self: self.data.sentence_label)
    sessions = property(lambda self: self.data.sessions)
    files = property(lambda self: self.data.files)
    trials_by_day = property(lambda self: self.data.trials_by_day)
    skipped = property(lambda self: list(self.data.skipped))
    excluded = property(lambda self: list(self.data.excluded))
    has_labels = property(lambda self: self.data.has_labels)
    n_trials = property(lambda self: self.data.n_trials)

    @property
    def n_days(self) -> int:
        return len(self.data.sessions)

    @property
    def n_features(self) -> int:
        return int(self._packed.shape[1])

    def __len__(self) -> int:
        return self.n_trials

    def __repr__(self) -> str:
        return (f"TrialStore({self.split}: {self.n_trials} trials, {self.n_days} days, "
                f"{int(self.offsets_np[-1])} steps x {self.n_features} features, {self.device}"
                + (f", {len(self.skipped)} skipped" if self.skipped else "") + ")")

    def nbytes(self) -> int:
        return self._packed.numel() * self._packed.element_size()

    def summary(self) -> str:
        """A one-paragraph report: trials per day, skipped and excluded trials with reasons."""
        per_day = [len(t) for t in self.trials_by_day]
        lines = [f"{self.split}: {self.n_trials} trials from {sum(1 for n in per_day if n)} of "
                 f"{self.n_days} sessions, {int(self.offsets_np[-1])} time steps, "
                 f"{self.nbytes() / 2**30:.2f} GiB on {self.device}"]
        if self.skipped:
            lines.append(f"  {len(self.skipped)} bad trial(s) skipped (bad_trial_policy: skip):")
            lines += [f"    {b}" for b in self.skipped[:20]]
            if len(self.skipped) > 20:
                lines.append(f"    ... and {len(self.skipped) - 20} more (see store.skipped)")
        if self.excluded:
            lines.append(f"  {len(self.excluded)} trial(s) excluded by dataset.bad_trials_dict")
        return "\n".join(lines)

    def trial_ids(self, rows: Sequence[int]) -> list[str]:
        """``"SESSION block B trial T"`` for each store row (for messages)."""
        return [f"{self.session[r]} block {int(self.block_num_np[r])} trial "
                f"{int(self.trial_num_np[r])}" for r in rows]

    def trial(self, row: int) -> torch.Tensor:
        """The ``(T, C)`` features of one trial (a view)."""
        o = self.offsets_np
        return self._packed[o[row]:o[row + 1]]

    # -- batches --------------------------------------------------------------------------
    def gather(self, rows: Sequence[int] | np.ndarray | torch.Tensor, pad_to: int | None = None,
               out: torch.Tensor | None = None) -> torch.Tensor:
        """The features of store ``rows`` (in that order), zero-padded to the longest of them (or
        to ``pad_to`` steps): ``(B, T_max, C)`` float32 on the store's device.

        ``out``: a contiguous float32 buffer on the store's device with at least ``B * T_max *
        C`` elements to gather into (reusing one buffer spares the page faults of a fresh
        allocation on the CPU); the result is then a view of it."""
        rows_np = self.check_rows(rows)
        lens = self.lengths_np[rows_np]
        t_max = int(lens.max()) if lens.size else 0
        if pad_to is not None:
            if pad_to < t_max:
                raise ValueError(f"pad_to = {pad_to} is shorter than the longest trial of the "
                                 f"batch ({t_max})")
            t_max = int(pad_to)
        shape = (len(rows_np), t_max, self.n_features)
        if out is not None:
            need = shape[0] * shape[1] * shape[2]
            if (out.dtype != torch.float32 or out.device != self.device or not out.is_contiguous()
                    or out.numel() < need):
                raise ValueError(f"out must be a contiguous float32 tensor on {self.device} with "
                                 f"at least {need} elements, got {out.dtype} {tuple(out.shape)} on "
                                 f"{out.device}")
            out = out.view(-1)[:need].view(shape)
        if self.device.type == "cpu":
            rows_t = torch.from_numpy(rows_np)
        else:  # device index tensors: no pageable (synchronising) upload of the lengths
            rows_t = to_device(rows_np, self.device)
        return gather_padded(self.features, self.offsets, self.lengths, rows_t, t_max, out=out)

    def check_rows(self, rows) -> np.ndarray:
        """``rows`` as a checked 1-D int64 numpy array of store rows."""
        if isinstance(rows, torch.Tensor):
            rows_np = rows.detach().to("cpu", torch.int64).numpy()
        else:
            rows_np = np.asarray(rows, dtype=np.int64) if len(rows) else np.zeros(0, np.int64)
        if rows_np.ndim != 1:
            raise ValueError(f"rows must be 1-D, got shape {rows_np.shape}")
        n = self.n_trials
        if rows_np.size and (rows_np.min() < 0 or rows_np.max() >= n):
            bad = rows_np[(rows_np < 0) | (rows_np >= n)][:5].tolist()
            raise IndexError(f"rows {bad} out of range for a store of {n} trials")
        return rows_np
