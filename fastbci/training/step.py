"""One optimisation step of the official recipe: forward under autocast, CTC per trial, the
loss over the global batch, backward (with DistributedDataParallel, the gradient all-reduce
overlaps it), clipping, the non-finite check, AdamW and the schedule. The same step serves one
process and many."""
from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import torch

from fastbci.data.batch import Batch, BatchBuilder
from fastbci.devices import autocast
from fastbci.validation import ctc_per_trial, forward_logits


@dataclasses.dataclass
class StepResult:
    """What one step leaves for the log and the diagnosis (device tensors, no host read)."""
    loss: torch.Tensor        # 0-d: mean CTC loss of the global batch
    grad_norm: torch.Tensor   # 0-d: global gradient norm before clipping
    per_trial: torch.Tensor   # (B_local,) CTC losses of this process's trials
    logits: torch.Tensor      # (B_local, P, K)
    lens: torch.Tensor        # (B_local,) CTC input lengths
    batch: Batch              # this process's share of the batch
    full_batch: Batch         # the whole global batch
    lr: float                 # learning rate of the last parameter group, before the step
    finite: bool              # loss and gradient norm finite (the update was applied)
    stop_voted: bool          # some process asked to stop after this batch


def clip_gradients(params: list[torch.nn.Parameter], clip: float) -> torch.Tensor:
    """Clip the global gradient norm to ``clip`` (no host read); returns the norm before
    clipping (computed also when clipping is off, where the official one is undefined)."""
    params = [p for p in params if p.grad is not None]
    if clip > 0:
        return torch.nn.utils.clip_grad_norm_(params, max_norm=clip, error_if_nonfinite=False,
                                              foreach=True)
    return torch.nn.utils.get_total_norm([p.grad for p in params], foreach=True)


def apply_update(optimizer, scheduler, finite: bool) -> None:
    """Optimiser and scheduler step; for a non-finite step, skip the update but advance the
    schedule so that the rate stays tied to the batch index."""
    if finite:
        optimizer.step()
        scheduler.step()
        return
    optimizer.zero_grad(set_to_none=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)`")
        scheduler.step()


class TrainStep:
    """``step(k, rows, stop_request)`` runs one optimisation step on the store ``rows`` of
    training batch ``k`` and returns a :class:`StepResult`.

    ``net`` is the module the forward runs through (the model, or DistributedDataParallel /
    torch.compile around it); ``parallel`` supplies this process's share of the batch, its part
    of the global mean loss, the sum of the loss and of the stop vote over processes and the
    dropout key of this process (from ``dropout_seed``, the Philox key of the day-layer
    dropout). The only host read is the joint non-finite check and stop vote, one per step."""

    def __init__(self, net, optimizer, scheduler, parallel, builder: BatchBuilder, store,
                 clip: float, dropout_seed: int, params: list[torch.nn.Parameter]):
        self.net = net
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.parallel = parallel
        self.builder = builder
        self.store = store
        self.clip = float(clip)
        self.dropout_seed = int(dropout_seed)
        self.params = list(params)

    def __call__(self, k: int, rows: np.ndarray, stop_request: bool) -> StepResult:
        parallel = self.parallel
        self.net.train()
        self.optimizer.zero_grad(set_to_none=True)
        full = self.builder.batch(self.store, rows, mode="train", step=k)
        batch = parallel.shard(full, min_time=max(1, self.builder.patch[0]))
        with autocast(self.builder.device, self.builder.amp):
            logits, lens = forward_logits(self.net, batch, step=k,
                                          seed=parallel.dropout_seed(self.dropout_seed))
            per_trial = ctc_per_trial(logits, lens, batch)
            local = parallel.local_loss(per_trial, len(full.rows))
        vote = torch.full((), float(stop_request), device=local.device)
        # the loss and the stop vote summed over the processes while the backward runs
        pending = parallel.all_sum(torch.stack([local.detach().float(), vote]), async_op=True)
        local.backward()
        summed = pending.wait()
        loss = summed[0]
        grad_norm = clip_gradients(self.params, self.clip)
        # one host read for the non-finite check and the stop vote together
        flags = (torch.isfinite(loss) & torch.isfinite(grad_norm)).to(torch.int64) + 2 * (summed[1] > 0)
        code = int(flags)
        finite, voted = bool(code & 1), bool(code & 2)
        lr = self.optimizer.param_groups[-1]["lr"]
        apply_update(self.optimizer, self.scheduler, finite)
        return StepResult(loss=loss.detach(), grad_norm=grad_norm.detach(),
                          per_trial=per_trial.detach(), logits=logits.detach(), lens=lens,
                          batch=batch, full_batch=full, lr=lr, finite=finite, stop_voted=voted)
