"""Drop-in ``GRUDecoder`` with the official name, signature, state-dict keys and outputs.

For users who keep the official trainer (``model_training/rnn_trainer.py``): replace

    from rnn_model import GRUDecoder

with

    from fastbci.compat import GRUDecoder

and nothing else changes: same constructor arguments, same ``forward(x, day_idx, states=None,
return_state=False)``, same parameters (so ``AdamW`` parameter groups built from names, and the
official checkpoints, work unchanged), same initial weights for the same ``torch.manual_seed``.
The day-layer dropout draws from torch's global generator in the official order, so with the same
generator state the outputs are the official ones (up to float rounding of the matrix products).

It is faster because the day layer stacks one weight per day present in the batch (at most
``days_per_batch``, 4 officially) instead of one (C, C) copy per trial (64), and runs the fused
day projection (grouped per day) where available.
"""
from __future__ import annotations

import torch

from fastbci.model import GRUDecoder as _FastGRUDecoder


class GRUDecoder(_FastGRUDecoder):
    """The official ``GRUDecoder`` interface on fastbci's implementation (``rng="torch"``).

    Args are the official ones: ``neural_dim``, ``n_units``, ``n_days``, ``n_classes``,
    ``rnn_dropout``, ``input_dropout``, ``n_layers``, ``patch_size`` (0 disables patching),
    ``patch_stride``. The fused ops are chosen automatically (``impl="auto"``).
    """

    def __init__(self, neural_dim, n_units, n_days, n_classes, rnn_dropout=0.0,
                 input_dropout=0.0, n_layers=5, patch_size=0, patch_stride=0):
        super().__init__(neural_dim, n_units, n_days, n_classes, rnn_dropout=rnn_dropout,
                         input_dropout=input_dropout, n_layers=n_layers, patch_size=patch_size,
                         patch_stride=patch_stride, impl="auto", rng="torch")

    def forward(self, x: torch.Tensor, day_idx, states: torch.Tensor | None = None,
                return_state: bool = False):
        """``x`` (B, T, neural_dim), ``day_idx`` (B,) day of each trial -> logits
        (B, P, n_classes), plus the final GRU state (n_layers, B, n_units) if ``return_state``."""
        return super().forward(x, day_idx, states, return_state)
