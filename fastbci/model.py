"""The GRUDecoder of the Brain-to-Text '25 baseline (docs/recipe.md section 4), with fastbci's fast path.

Architecture, parameters, initialisation and state-dict keys are those of the official model
(``model_training/rnn_model.py`` of nejm-brain-to-text), so an official checkpoint loads as is:

* day layer: per day a ``(C, C)`` weight (identity init) and a ``(1, C)`` bias (zeros), held as
  separate parameters in two ``nn.ParameterList`` (``day_weights``, ``day_biases``), then softsign
  and dropout. Only the days present in a batch are stacked, so an absent day gets no gradient
  (``grad`` stays ``None``) and AdamW leaves it untouched, exactly as in the official model;
* patching: sliding windows of ``patch_size`` steps every ``patch_stride`` steps, time-major;
* ``gru``: ``nn.GRU`` (batch first, ``rnn_dropout`` between layers), orthogonal ``weight_hh``,
  xavier-uniform ``weight_ih``, PyTorch's default biases;
* ``out``: ``nn.Linear(n_units, n_classes)``, xavier-uniform weight;
* ``h0``: learnable initial state ``(1, 1, n_units)``, xavier-uniform, expanded to every layer/trial.

The random initialisation draws from torch's global generator in the official order, so with the
same ``torch.manual_seed`` this model starts from the very weights the official one does.

Randomness of the day-layer dropout (``rng``):

* ``"philox"`` (default): the dropout mask is a pure function of ``(seed, step, element)`` drawn
  inside the fused day projection (see :mod:`fastbci.philox`); the trainer passes ``seed`` and
  ``step`` to :meth:`GRUDecoder.forward`.
* ``"torch"``: the day projection runs without dropout and ``nn.Dropout`` follows it, drawing
  from torch's global generator in the official order (used by :class:`fastbci.compat.GRUDecoder`).

Under ``torch.compile`` the forward has no data-dependent step: the day layer indexes every
day's parameters by the global day index (no ``torch.unique``, no host read) and the absent
days' zero gradients are turned back into ``None`` after the backward (:class:`_AbsentDayGrads`);
the GRU runs eagerly, outside the graph (:func:`_run_gru`). docs/compat.md, "torch.compile".
"""
from __future__ import annotations

import functools
import importlib
import math
import operator
import weakref
from collections import OrderedDict
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from fastbci.errors import CheckpointError  # noqa: F401  (fastbci.model.CheckpointError)
from fastbci.ops.day_projection import present_day_index
from fastbci.ops.dispatch import check_impl
from fastbci.state_dict import check_fit, official_keys, strip_prefixes
from fastbci.ops.patchify import patchify

# the op module, looked up at call time (fastbci.ops re-exports a function of the same name)
_day_op = importlib.import_module("fastbci.ops.day_projection")

RNGS = ("philox", "torch")


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool):
        raise TypeError(f"GRUDecoder: {name} must be an integer, got {value!r}")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"GRUDecoder: {name} must be an integer, got {value!r}") from None
    if value < minimum:
        raise ValueError(f"GRUDecoder: {name} must be >= {minimum}, got {value}")
    return value


def _check_p(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"GRUDecoder: {name} must be a number in [0, 1), got {value!r}")
    if not 0.0 <= float(value) < 1.0:
        raise ValueError(f"GRUDecoder: {name} must be in [0, 1), got {value}")
    return value


class _AbsentDayGrads:
    """Keeps the official per-day gradients when the day layer runs inside torch.compile.

    Eager, the day layer stacks only the days of the batch, so an absent day is not in the
    autograd graph: its ``grad`` stays ``None`` and AdamW skips it. A compiled graph cannot
    depend on the data, so it indexes every day's parameters and the absent days receive exact
    zeros. Hooks on each day parameter undo that: after a compiled forward, a day the batch did
    not hold whose ``grad`` was ``None`` before this backward gets ``None`` back (one that
    already held a gradient keeps it unchanged: accumulation adds zeros). The days of the batch
    come from the host when the caller gives them (:meth:`GRUDecoder.note_batch_days`), else from
    the mask the compiled forward writes (then one device read per backward).
    """

    def __init__(self, model: "GRUDecoder"):
        self._model = weakref.ref(model)
        self.compiled = False      # set by the compiled forward (a dynamo side effect)
        self.present: frozenset[int] | None = None
        self._had_grad: dict[int, bool] = {}
        for d, (w, b) in enumerate(zip(model.day_weights, model.day_biases)):
            for p in (w, b):
                if p.requires_grad:
                    p.register_hook(functools.partial(self._before, p))
                    p.register_post_accumulate_grad_hook(functools.partial(self._after, d))

    def _before(self, param: torch.Tensor, grad: torch.Tensor) -> None:
        if self.compiled:
            self._had_grad[id(param)] = param.grad is not None

    def _after(self, day: int, param: torch.Tensor) -> None:
        if not self.compiled or self._had_grad.pop(id(param), True):
            return
        if self.present is None:
            model = self._model()
            if model is None:
                return
            self.present = frozenset(torch.nonzero(model._days_seen).flatten().tolist())
        if day not in self.present:
            param.grad = None


@torch.compiler.disable(recursive=True)
def _run_gru(model: "GRUDecoder", x: torch.Tensor, states: torch.Tensor):
    """The cuDNN / ATen GRU, run eagerly: the one deliberate graph break of a compiled forward.

    Dynamo either refuses ``nn.GRU`` or, with ``torch._dynamo.config.allow_rnn``, decomposes it
    into one cell per time step: every new length recompiles and that decomposition leaves out
    the dropout between layers in training. The break reads nothing from the device."""
    return model.gru(x, states)


def _checked_day_idx(model: "GRUDecoder", x, day_idx) -> torch.Tensor:
    """``x``'s shape checked and ``day_idx`` as an int64 tensor on ``x``'s device."""
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"GRUDecoder.forward: x must be a (B, T, {model.neural_dim}) tensor, "
                         f"got {shape}")
    B, T, C = x.shape
    if C != model.neural_dim:
        raise ValueError(f"GRUDecoder.forward: x has {C} channels, the model expects "
                         f"neural_dim={model.neural_dim}")
    if B == 0:
        raise ValueError("GRUDecoder.forward: empty batch (B=0)")
    if model.patch_size > 0 and T < model.patch_size:
        raise ValueError(f"GRUDecoder.forward: patching needs at least patch_size="
                         f"{model.patch_size} time steps, got T={T}")
    if not isinstance(day_idx, torch.Tensor):
        try:
            day_idx = torch.as_tensor([int(d) for d in day_idx], dtype=torch.long)
        except (TypeError, ValueError):
            raise TypeError("GRUDecoder.forward: day_idx must be a tensor or a sequence of "
                            f"ints, got {day_idx!r}") from None
    if day_idx.dim() != 1 or day_idx.shape[0] != B:
        raise ValueError(f"GRUDecoder.forward: day_idx must have shape ({B},), got "
                         f"{tuple(day_idx.shape)}")
    if day_idx.dtype.is_floating_point or day_idx.dtype == torch.bool:
        raise TypeError(f"GRUDecoder.forward: day_idx must be an integer tensor, got "
                        f"{day_idx.dtype}")
    return day_idx.to(device=x.device, dtype=torch.long)


# ---------------------------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------------------------
class GRUDecoder(nn.Module):
    """Day layers -> patching -> multi-layer GRU -> linear phoneme logits (official architecture).

    Args:
        neural_dim: channels per time step (512).
        n_units: GRU hidden size (768).
        n_days: number of sessions, one day layer each (45).
        n_classes: output classes including the CTC blank (41).
        rnn_dropout: dropout between GRU layers (0.4 officially).
        input_dropout: dropout after the day layer (0.2 officially).
        n_layers: GRU layers (5).
        patch_size: window length in steps (14); 0 disables patching.
        patch_stride: window stride in steps (4); must be > 0 when ``patch_size > 0``.
        impl: ``"auto" | "fused" | "reference"``, passed to the fused ops.
        rng: ``"philox"`` (counter-based day dropout) or ``"torch"`` (official draw order).
        init_blank_bias: None (official: the ``nn.Linear`` default, near 0) or the blank
            class's output bias at initialisation. Set after every random draw, so the other
            initial weights are the official ones for the same seed.
    """

    def __init__(self, neural_dim: int, n_units: int, n_days: int, n_classes: int,
                 rnn_dropout: float = 0.0, input_dropout: float = 0.0, n_layers: int = 5,
                 patch_size: int = 0, patch_stride: int = 0, impl: str = "auto",
                 rng: str = "philox", init_blank_bias: float | None = None):
        super().__init__()
        neural_dim = _check_int("neural_dim", neural_dim, 1)
        n_units = _check_int("n_units", n_units, 1)
        n_days = _check_int("n_days", n_days, 1)
        n_classes = _check_int("n_classes", n_classes, 1)
        n_layers = _check_int("n_layers", n_layers, 1)
        patch_size = _check_int("patch_size", patch_size, 0)
        patch_stride = _check_int("patch_stride", patch_stride, 0)
        if patch_size > 0 and patch_stride == 0:
            raise ValueError("GRUDecoder: patch_stride must be > 0 when patch_size > 0 "
                             f"(got patch_size={patch_size}, patch_stride=0)")
        _check_p("rnn_dropout", rnn_dropout)
        _check_p("input_dropout", input_dropout)
        check_impl(impl, "GRUDecoder")
        if rng not in RNGS:
            raise ValueError(f"GRUDecoder: rng must be one of {RNGS}, got {rng!r}")
        if init_blank_bias is not None and not (
                isinstance(init_blank_bias, (int, float)) and not isinstance(init_blank_bias, bool)
                and math.isfinite(init_blank_bias)):
            raise ValueError(f"GRUDecoder: init_blank_bias must be a finite number or None, "
                             f"got {init_blank_bias!r}")

        self.neural_dim = neural_dim
        self.n_units = n_units
        self.n_classes = n_classes
        self.n_layers = n_layers
        self.n_days = n_days
        self.rnn_dropout = rnn_dropout
        self.input_dropout = input_dropout
        self.patch_size = patch_size
        self.patch_stride = patch_stride
        self.impl = impl
        self.rng = rng

        # Construction and initialisation follow the official order, so that the same torch
        # seed gives the same initial weights: day layers (no random draw), GRU default init,
        # then per GRU parameter in registration order xavier (weight_ih) / orthogonal
        # (weight_hh), the Linear default init, xavier on its weight, and h0 last.
        self.day_layer_activation = nn.Softsign()
        self.day_weights = nn.ParameterList(
            [nn.Parameter(torch.eye(neural_dim)) for _ in range(n_days)])
        self.day_biases = nn.ParameterList(
            [nn.Parameter(torch.zeros(1, neural_dim)) for _ in range(n_days)])
        self.day_layer_dropout = nn.Dropout(input_dropout)

        self.input_size = neural_dim * patch_size if patch_size > 0 else neural_dim
        self.gru = nn.GRU(input_size=self.input_size, hidden_size=n_units, num_layers=n_layers,
                          dropout=rnn_dropout, batch_first=True, bidirectional=False)
        for name, param in self.gru.named_parameters():
            if "weight_hh" in name:
                nn.init.orthogonal_(param)
            if "weight_ih" in name:
                nn.init.xavier_uniform_(param)
        self.out = nn.Linear(n_units, n_classes)
        nn.init.xavier_uniform_(self.out.weight)
        self.h0 = nn.Parameter(nn.init.xavier_uniform_(torch.zeros(1, 1, n_units)))
        if init_blank_bias is not None:     # no random draw: the rest stays the official init
            with torch.no_grad():
                self.out.bias[0] = float(init_blank_bias)
        # which days the latest compiled forward saw (not in the state dict)
        self.register_buffer("_days_seen", torch.zeros(n_days, dtype=torch.bool), persistent=False)
        self._day_grads = _AbsentDayGrads(self)

    # -----------------------------------------------------------------------------------------
    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], impl: str | None = None,
                    rng: str | None = None) -> "GRUDecoder":
        """Build the model from a fastbci / official configuration dict (as the official
        trainer does: ``n_days = len(dataset.sessions)``). ``impl``/``rng`` default to
        ``fastbci.impl`` / ``fastbci.rng`` of the config (an official configuration without a
        ``fastbci`` section gets fastbci's defaults)."""
        try:
            m = cfg["model"]
            ds = cfg["dataset"]
            kwargs = dict(
                neural_dim=m["n_input_features"], n_units=m["n_units"],
                n_days=len(ds["sessions"]), n_classes=ds["n_classes"],
                rnn_dropout=m["rnn_dropout"],
                input_dropout=m["input_network"]["input_layer_dropout"],
                n_layers=m["n_layers"], patch_size=m["patch_size"],
                patch_stride=m["patch_stride"])
        except (KeyError, TypeError) as e:
            raise ValueError(f"GRUDecoder.from_config: the configuration lacks {e}") from None
        from fastbci.config import defaults
        extra = cfg["fastbci"] if "fastbci" in cfg else defaults()["fastbci"]
        return cls(**kwargs, impl=impl or extra["impl"], rng=rng or extra["rng"],
                   init_blank_bias=extra.get("init_blank_bias"))

    def extra_repr(self) -> str:
        return (f"neural_dim={self.neural_dim}, n_days={self.n_days}, "
                f"patch_size={self.patch_size}, patch_stride={self.patch_stride}, "
                f"impl={self.impl!r}, rng={self.rng!r}")

    # -----------------------------------------------------------------------------------------
    def _day_layer(self, x: torch.Tensor, day_idx: torch.Tensor, days_present, local_day_idx,
                   seed: int, step: int) -> torch.Tensor:
        if torch.compiler.is_compiling():
            # a static graph: every day's parameters, indexed by the global day of each trial
            # (the C++ CPU op range-checks day_idx; the CUDA kernel gives NaN for a bad day)
            weight = torch.stack(list(self.day_weights), dim=0)
            bias = torch.cat(list(self.day_biases), dim=0)
            local = day_idx
            if torch.is_grad_enabled():
                days = torch.arange(self.n_days, device=day_idx.device)
                self._days_seen.copy_((day_idx.unsqueeze(1) == days).any(0))
                self._day_grads.compiled = True
                self._day_grads.present = None
        else:
            present, local = present_day_index(day_idx, self.n_days, days_present, local_day_idx,
                                               where="GRUDecoder.forward")
            weight = torch.stack([self.day_weights[d] for d in present], dim=0)
            bias = torch.cat([self.day_biases[d] for d in present], dim=0)
            self._day_grads.compiled = False
        philox_p = self.input_dropout if (self.training and self.rng == "philox") else 0.0
        y = _day_op.day_projection(x, local, weight, bias, philox_p, seed, step, impl=self.impl)
        if self.rng == "torch" and self.input_dropout > 0:
            y = self.day_layer_dropout(y)
        return y

    def note_batch_days(self, days_present: Sequence[int]) -> None:
        """Tell the model the days of the batch it just ran forward (host ints), e.g. a
        :class:`fastbci.data.batch.Batch`'s ``days_present``: after a compiled forward the
        absent-day gradients are then cleared without reading the device (see
        :class:`_AbsentDayGrads`). Optional; harmless after an eager forward."""
        self._day_grads.present = frozenset(int(d) for d in days_present)

    def gru_inputs(self, x: torch.Tensor, day_idx, states: torch.Tensor | None = None, *,
                   days_present: Sequence[int] | None = None,
                   local_day_idx: torch.Tensor | None = None, seed: int = 0, step: int = 0
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """Everything before the GRU: day layer and patching of ``x``, and the initial state.

        Returns ``(inputs (B, P, input_size), states (n_layers, B, n_units))``; the arguments
        are those of :meth:`forward`. Compiles as one graph (``fullgraph=True``)."""
        day_idx = _checked_day_idx(self, x, day_idx)
        B = x.shape[0]
        x = self._day_layer(x, day_idx, days_present, local_day_idx, seed, step)
        if self.patch_size > 0:
            x = patchify(x, self.patch_size, self.patch_stride, impl=self.impl)
        if states is None:
            states = self.h0.expand(self.n_layers, B, self.n_units).contiguous()
        elif tuple(states.shape) != (self.n_layers, B, self.n_units):
            raise ValueError(f"GRUDecoder.forward: states must have shape "
                             f"{(self.n_layers, B, self.n_units)}, got {tuple(states.shape)}")
        return x, states

    def forward(self, x: torch.Tensor, day_idx, states: torch.Tensor | None = None,
                return_state: bool = False, *, days_present: Sequence[int] | None = None,
                local_day_idx: torch.Tensor | None = None, seed: int = 0, step: int = 0):
        """Phoneme logits ``(B, P, n_classes)`` (and the final GRU state when ``return_state``).

        Args:
            x: ``(B, T, neural_dim)`` features.
            day_idx: ``(B,)`` day index of every trial (tensor, or a sequence of ints).
            states: initial GRU state ``(n_layers, B, n_units)``; ``None``: the learned ``h0``.
            return_state: also return the final state ``(n_layers, B, n_units)``.
            days_present: the distinct days of the batch as a host sequence (the trainer knows
                them, which spares a device sync); ``None``: computed with ``torch.unique``.
            local_day_idx: ``(B,)`` position of each trial's day in ``days_present`` (needs
                ``days_present``), e.g. :class:`fastbci.data.batch.Batch` ``local_day_idx``:
                spares the model building and uploading its day lookup table every step.
                Checked against ``day_idx`` with a device assertion (asynchronous on CUDA).
            seed, step: the Philox key and step of the day-layer dropout (``rng="philox"``).

        Under torch.compile ``days_present`` and ``local_day_idx`` are not read (the graph
        indexes every day); :meth:`note_batch_days` passes the days instead.
        """
        x, states = self.gru_inputs(x, day_idx, states, days_present=days_present,
                                    local_day_idx=local_day_idx, seed=seed, step=step)
        output, hidden = _run_gru(self, x, states)
        logits = self.out(output)
        if return_state:
            return logits, hidden
        return logits

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_day_grads", None)  # hooks and a weak reference: rebuilt on load
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self._day_grads = _AbsentDayGrads(self)

    # -----------------------------------------------------------------------------------------
    def official_keys(self) -> list[str]:
        """The state-dict keys of the official model of this size, in the official order."""
        return official_keys(self.n_days, self.n_layers)

    def official_state_dict(self) -> "OrderedDict[str, torch.Tensor]":
        """A state dict with exactly the official keys (loadable by the official model)."""
        sd = self.state_dict()
        return OrderedDict((k, sd[k]) for k in self.official_keys())

    def load_official_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True):
        """Load an official (or fastbci) state dict; ``_orig_mod.`` / ``module.`` prefixes are
        removed first. A whole official checkpoint (a dict holding ``model_state_dict``) is
        accepted too.

        ``strict=True``: missing or unexpected keys are an error listing them all; shape
        mismatches are always an error. Returns ``torch.nn.modules.module._IncompatibleKeys``
        (missing / unexpected keys; empty when strict).
        """
        if isinstance(state_dict, Mapping) and "model_state_dict" in state_dict \
                and isinstance(state_dict["model_state_dict"], Mapping):
            state_dict = state_dict["model_state_dict"]
        sd = strip_prefixes(state_dict)
        check_fit(self, sd, strict)
        return self.load_state_dict(sd, strict=strict)
