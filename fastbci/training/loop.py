"""The training loop: :func:`fit` over the parts of a run (:func:`fastbci.training.build.build`),
and :class:`Trainer`, the handle a user or the command line holds (``Trainer(cfg).fit()``)."""
from __future__ import annotations

import copy
import dataclasses
from typing import Callable, Mapping

import numpy as np
import torch

from fastbci import checkpoint as ckpt_io
from fastbci import metrics as metrics_mod
from fastbci import outputs
from fastbci.devices import numerics, to_device
from fastbci.errors import ConfigError, NonFiniteError
from fastbci.training import report
from fastbci.training.build import RunParts, build
from fastbci.training.diagnostics import nonfinite_message
from fastbci.training.signals import StopRequest
from fastbci.training.step import StepResult
from fastbci.training.validator import emulate_loader_draw


@dataclasses.dataclass
class FitSummary:
    """How :func:`fit` ended: ``status`` is ``finished``, ``early_stopped``, ``collapsed``,
    ``nonfinite``, ``pruned`` (the trainer's ``on_validation`` callback asked to stop, e.g. a
    hyperparameter search's pruner) or ``interrupted``."""
    status: str
    message: str
    last_batch: int
    best_val_per: float | None
    best_val_loss: float | None
    nonfinite_skipped: int
    train_losses: np.ndarray
    val_history: list[dict]
    seconds: float


def fit(p: RunParts, stop: StopRequest, *, stop_after: int | None = None,
        resume_command: str | None = None) -> FitSummary:
    """Train from the current batch to ``num_training_batches``: for each batch the step, the
    train log, maybe a validation, maybe a checkpoint. A stop request (Ctrl-C, SIGTERM: ``stop``)
    or ``stop_after`` batches run end it after the batch with a resumable checkpoint."""
    n_batches, st, fb = int(p.cfg["num_training_batches"]), p.state, p.cfg["fastbci"]
    log_every, ck_every = int(p.cfg["batches_per_train_log"]), int(fb["checkpoint_every"])
    st.restart_clock()
    status, message, ran = "finished", "", 0
    bar = report.progress_bar(p.parallel.is_main and fb["progress"] and p.console, n_batches,
                              st.next_batch)
    if not p.loader_drawn:
        emulate_loader_draw(p.builder.rng)  # the official train DataLoader's iterator
        p.loader_drawn = True
    timer = report.StepTimer(p.device)
    try:
        with stop, numerics(p.device):
            for k in range(st.next_batch, n_batches):
                res = train_batch(p, k, timer if k % log_every == 0 else None, stop.reason)
                ran += 1
                if bar is not None:
                    bar.update(1)
                due = p.validator.due(k)
                ended = p.validator.step(k) if due else None
                if due or (ck_every > 0 and (k + 1) % ck_every == 0):
                    p.checkpointer.save(ckpt_io.RESUME_NAME)
                if ended is not None:
                    status, message = ended
                    break
                halt = (stop_after is not None and ran >= stop_after) or \
                    p.parallel.stop_agreed(stop.reason, res.stop_voted)
                if halt and k < n_batches - 1:
                    status, message = "interrupted", _interrupted(p, k, resume_command)
                    break
    except NonFiniteError as e:
        status, message = "nonfinite", str(e)
    except KeyboardInterrupt:
        status, message = "interrupted", _interrupted_mid_batch(p)
    finally:
        if bar is not None:
            bar.close()
    return finish(p, status, message, st.next_batch - 1)


def run_step(p: RunParts, k: int, stop_reason: str | None) -> StepResult:
    """One optimisation step on training batch ``k``, its loss recorded in the run state."""
    with numerics(p.device):
        res = p.step(k, np.asarray(p.plan[k]), stop_reason is not None)
    p.state.train_losses[k] = res.loss.float()
    return res


def train_batch(p: RunParts, k: int, timer: report.StepTimer | None,
                stop_reason: str | None) -> StepResult:
    """:func:`run_step` (batch ``k`` is then done: ``next_batch`` moves on), the non-finite policy,
    and with a ``timer`` the train log line."""
    if timer is not None:
        timer.start()
    res = run_step(p, k, stop_reason)
    p.state.next_batch = k + 1
    if not res.finite:
        msg = nonfinite_message(k, res, p.parallel.all_gather(res.per_trial.float()),
                                p.train_store, p.cfg)
        if p.cfg["fastbci"]["nonfinite_policy"] != "skip":
            p.log.error(msg + "\n  Training stopped (fastbci.nonfinite_policy=stop; use "
                        "=skip to skip such batches)")
            raise NonFiniteError(msg)
        p.state.nonfinite_skipped += 1
        p.log.warning(msg + f"\n  fastbci.nonfinite_policy=skip: batch {k} skipped "
                      f"({p.state.nonfinite_skipped} so far)")
    if timer is not None:
        _train_log(p, k, res, timer.stop())
    return res


def _train_log(p: RunParts, k: int, res: StepResult, step_seconds: float) -> None:
    b = res.batch
    st = metrics_mod.greedy_stats(res.logits, res.lens, b.labels, b.label_lens,
                                  width=b.max_input_len, max_label_len=b.max_label_len)
    # edits, blank frames, valid frames, true phonemes: summed over the processes' shares
    dev = res.logits.device
    stats = torch.cat([torch.stack([st.edits.sum(), st.blank, st.frames]).to(torch.float64),
                       to_device(np.array([float(b.n_label_total)]), dev)])
    edits, n_blank, n_frames, n_labels = p.parallel.all_sum(stats).tolist()
    loss, gnorm, lr = float(res.loss), float(res.grad_norm), res.lr
    bf = n_blank / n_frames if n_frames else float("nan")
    per = metrics_mod.phoneme_error_rate(edits, n_labels) if n_labels else None
    p.log.info(f"Train batch {k}: loss: {loss:.2f} grad norm: {gnorm:.2f} lr: {lr:.3g} "
               f"PER: {report.fmt(per)} blank: {bf:.3f} time: {step_seconds:.3f}"
               f"{p.compile_watch.note()}")
    p.metrics.append({"batch": k, "split": "train", "loss": loss, "per": per, "per_by_day": {},
                      "blank_fraction": bf, "lr": lr, "grad_norm": gnorm,
                      "seconds": p.state.seconds()})


def _interrupted(p: RunParts, k: int, resume_command: str | None) -> str:
    path = p.checkpointer.save(ckpt_io.RESUME_NAME)
    d = p.run_dir
    command = resume_command or (f"{p.parallel.launch_hint} CONFIG output_dir={d.output_dir} "
                                 f"checkpoint_dir={d.checkpoint_dir} fastbci.resume=true")
    message = f"Interrupted after batch {k}; resumable checkpoint saved to {path}. Resume with: {command}"
    p.log.info(message)
    return message


def _interrupted_mid_batch(p: RunParts) -> str:
    path = ckpt_io.find_resume_checkpoint(p.run_dir.checkpoint_dir)
    message = ("Interrupted in the middle of a batch: nothing saved now; " +
               (f"the last resumable checkpoint is {path} (resume with fastbci.resume=true)"
                if path else "no resumable checkpoint exists yet"))
    p.log.info(message)
    return message


def finish(p: RunParts, status: str, message: str, last: int) -> FitSummary:
    """The end of a ``fit``: the final model (``save_final_model``), the summary lines,
    ``run_status.json``, the curves, the :class:`FitSummary`."""
    st = p.state
    if status in ("finished", "early_stopped") and p.cfg["save_final_model"]:
        v = st.val_history[-1] if st.val_history else {}
        path = p.checkpointer.save(f"final_checkpoint_batch_{last}", v.get("per"), v.get("loss"))
        p.log.info(f"Saved final model to {path}")
    elapsed = st.seconds()
    p.log.info(f"Best avg val PER achieved: {report.fmt(st.best_val_per, '.5f')}")
    p.log.info(f"Total training time: {elapsed / 60:.2f} minutes (status: {status})")
    if st.nonfinite_skipped:
        p.log.info(f"Skipped {st.nonfinite_skipped} batch(es) with a non-finite loss or gradient")
    losses = st.train_losses.cpu().numpy()
    p.run_dir.write_status(status, last, int(p.cfg["num_training_batches"]),
                           st.summary_value("best_val_per"))
    p.metrics.close()
    if p.parallel.is_main and p.cfg["fastbci"]["plot"]:
        try:
            report.plot_curves(p.metrics.records(), p.run_dir.output_dir / "training_curves.png",
                               losses, title=f"{p.run_dir.output_dir.name}: {status}")
        except Exception as e:  # a plot must never fail a finished run
            p.log.info(f"Could not draw the curves: {e}")
    return FitSummary(status=status, message=message, last_batch=last,
                      best_val_per=st.summary_value("best_val_per"),
                      best_val_loss=st.summary_value("best_val_loss"),
                      nonfinite_skipped=st.nonfinite_skipped, train_losses=losses,
                      val_history=list(st.val_history), seconds=elapsed)


class Trainer:
    """Official-recipe training with fastbci's data path, resume and diagnostics:
    ``Trainer(cfg).fit()``. ``parallel``: :class:`~fastbci.training.parallel.SingleProcess`
    (default) or :class:`~fastbci.training.parallel.DataParallel`; only the main process writes
    files, logs and shows progress. After :meth:`setup` the run's parts are attributes
    (``model``, ``optimizer``, ``builder``, ``train_store``, ``plan``, ``state``, ...: see
    :class:`~fastbci.training.build.RunParts`). Exit statuses of the CLI: :mod:`fastbci.errors`.

    ``on_validation(k, record) -> str | None``: called after every validation (batch ``k``, the
    validation's ``metrics.jsonl`` record); a returned reason stops the run with the status
    ``pruned`` and a resumable checkpoint (:class:`~fastbci.training.validator.Validator`). In a
    distributed run every process calls it and must return the same answer.
    """

    def __init__(self, cfg: Mapping, parallel=None, *, console: bool = True,
                 resume_command: str | None = None,
                 on_validation: Callable[[int, dict], str | None] | None = None):
        if cfg["mode"] != "train":
            raise ConfigError(f"mode is {cfg['mode']!r}: the trainer needs mode=train "
                              "(use fastbci evaluate to evaluate a checkpoint)")
        self.cfg = copy.deepcopy(dict(cfg))
        self._parallel = parallel
        self.console = console
        self.resume_command = resume_command  # what an interrupted run tells the user to run
        self.on_validation = on_validation  # called after each validation; a reason: "pruned"
        self.parts: RunParts | None = None
        self.stop = StopRequest()

    @outputs.writes("train")
    def setup(self) -> "Trainer":
        """Build the run's parts (output folder, data, model, optimiser, resume); once."""
        if self.parts is None:
            self.parts = build(self.cfg, self._parallel, console=self.console)
            self.parts.validator.on_validation = self.on_validation
            self.stop = StopRequest(self.parts.log.info)
        return self

    def __getattr__(self, name: str):
        # the run's parts, once set up (model, optimizer, builder, train_store, plan, ...)
        parts = self.__dict__.get("parts")
        if parts is not None and hasattr(parts, name):
            return getattr(parts, name)
        raise AttributeError(f"Trainer has no attribute {name!r}"
                             + ("" if parts is not None else " (call setup() first)"))

    def request_stop(self, reason: str = "interrupt") -> None:
        """Stop after the current batch with a resumable checkpoint (what Ctrl-C and SIGTERM do)."""
        self.stop.ask(reason)

    @outputs.writes("train")
    def fit(self, stop_after: int | None = None) -> FitSummary:
        """Train to ``num_training_batches`` (``stop_after``: stop, as on Ctrl-C, once this many
        batches have run in this call; for wall-time-limited jobs and tests)."""
        self.setup()
        return fit(self.parts, self.stop, stop_after=stop_after, resume_command=self.resume_command)

    def train_step(self, k: int) -> StepResult:
        """One optimisation step on training batch ``k`` (no log, no checkpoint)."""
        self.setup()
        return run_step(self.parts, k, self.stop.reason)

    def validate(self, collect: bool = False):
        """The model on the whole validation plan."""
        self.setup()
        return self.parts.validator.run(collect)

    @outputs.writes("train")
    def save_checkpoint(self, name: str, val_per=None, val_loss=None):
        """Write ``checkpoint_dir/name`` (a collective call in a distributed run)."""
        self.setup()
        return self.parts.checkpointer.save(name, val_per, val_loss)
