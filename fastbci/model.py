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
"""
from __future__ import annotations

import importlib
import operator
from collections import OrderedDict
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from fastbci.checkpoint import CheckpointError as _CheckpointFileError

IMPLS = ("auto", "fused", "reference")
RNGS = ("philox", "torch")
_PREFIXES = ("_orig_mod.", "module.")


class CheckpointError(_CheckpointFileError, ValueError):
    """A state dict that does not fit the model (missing/unexpected keys, wrong shapes).

    A :class:`fastbci.checkpoint.CheckpointError` (and a ``ValueError``), so callers catching
    either see it."""


# ---------------------------------------------------------------------------------------------
# state-dict helpers
# ---------------------------------------------------------------------------------------------
def strip_prefixes(state_dict: Mapping[str, Any]) -> "OrderedDict[str, Any]":
    """Remove the leading ``_orig_mod.`` (torch.compile) and ``module.`` (DataParallel /
    DistributedDataParallel) prefixes from every key, in any nesting order.

    Values are passed through unchanged (same objects) and the key order is kept. Two keys that
    become equal after stripping are an error (the checkpoint would be ambiguous).
    """
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"strip_prefixes expects a mapping of parameter names to tensors, "
                        f"got {type(state_dict).__name__}")
    out: "OrderedDict[str, Any]" = OrderedDict()
    origin: dict[str, str] = {}
    for key, value in state_dict.items():
        if not isinstance(key, str):
            raise TypeError(f"state-dict keys must be strings, got {key!r}")
        new = key
        changed = True
        while changed:
            changed = False
            for p in _PREFIXES:
                if new.startswith(p):
                    new = new[len(p):]
                    changed = True
        if new in out:
            raise CheckpointError(f"state-dict keys '{origin[new]}' and '{key}' both become "
                                  f"'{new}' once the '_orig_mod.'/'module.' prefixes are removed")
        out[new] = value
        origin[new] = key
    return out


def official_keys(n_days: int, n_layers: int) -> list[str]:
    """The official model's state-dict keys, in the official order."""
    keys = ["h0"]
    keys += [f"day_weights.{i}" for i in range(n_days)]
    keys += [f"day_biases.{i}" for i in range(n_days)]
    for k in range(n_layers):
        keys += [f"gru.weight_ih_l{k}", f"gru.weight_hh_l{k}", f"gru.bias_ih_l{k}",
                 f"gru.bias_hh_l{k}"]
    keys += ["out.weight", "out.bias"]
    return keys


def _upload(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small host tensor on ``device`` without a synchronising copy: through pinned (page-
    locked) memory with ``non_blocking`` on CUDA (the pinned block is held until the copy has
    run), as is on the CPU."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def _import_op(name: str):
    """``fastbci.ops.<name>`` or None when that module is not part of this installation."""
    try:
        return importlib.import_module(f"fastbci.ops.{name}")
    except ModuleNotFoundError as e:
        if e.name in (f"fastbci.ops.{name}",):
            return None
        raise


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
    """

    def __init__(self, neural_dim: int, n_units: int, n_days: int, n_classes: int,
                 rnn_dropout: float = 0.0, input_dropout: float = 0.0, n_layers: int = 5,
                 patch_size: int = 0, patch_stride: int = 0, impl: str = "auto",
                 rng: str = "philox"):
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
        if impl not in IMPLS:
            raise ValueError(f"GRUDecoder: impl must be one of {IMPLS}, got {impl!r}")
        if rng not in RNGS:
            raise ValueError(f"GRUDecoder: rng must be one of {RNGS}, got {rng!r}")

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
        return cls(**kwargs, impl=impl or extra["impl"], rng=rng or extra["rng"])

    def extra_repr(self) -> str:
        return (f"neural_dim={self.neural_dim}, n_days={self.n_days}, "
                f"patch_size={self.patch_size}, patch_stride={self.patch_stride}, "
                f"impl={self.impl!r}, rng={self.rng!r}")

    # -----------------------------------------------------------------------------------------
    def _local_days(self, day_idx: torch.Tensor, days_present,
                    local_day_idx: torch.Tensor | None = None) -> tuple[list[int], torch.Tensor]:
        """The distinct days (host list) and ``day_idx`` remapped to positions in that list.

        With ``local_day_idx`` (and ``days_present``) given, the remapping is taken as is and only
        checked with an asynchronous device assertion (no host synchronisation, no copy from
        pageable host memory); otherwise it is computed through a small lookup table."""
        if local_day_idx is not None:
            return self._given_local_days(day_idx, days_present, local_day_idx)
        given = days_present is not None
        present = self._check_present(days_present if given
                                      else torch.unique(day_idx).tolist())
        lut = torch.full((self.n_days,), -1, dtype=torch.long)
        lut[torch.tensor(present, dtype=torch.long)] = torch.arange(len(present))
        local = _upload(lut, day_idx.device)[day_idx.clamp(0, self.n_days - 1)]
        if given:
            inside = (day_idx >= 0) & (day_idx < self.n_days) & (local >= 0)
            if day_idx.device.type == "cpu":
                if not bool(inside.all()):
                    missing = sorted(set(day_idx[~inside].tolist()))
                    raise ValueError(f"GRUDecoder.forward: day_idx holds days {missing} that are "
                                     f"not in days_present={present}")
            else:
                torch._assert_async(inside.all(), "GRUDecoder.forward: day_idx holds a day that is "
                                                  "not in days_present")
        return present, local

    def _check_present(self, days_present) -> list[int]:
        """``days_present`` as a list of distinct day indices of this model, or a clear error."""
        where = "GRUDecoder.forward"
        try:
            present = [int(d) for d in days_present]
        except (TypeError, ValueError):
            raise TypeError(f"{where}: days_present must be a sequence of day indices, got "
                            f"{days_present!r}") from None
        if not present:
            raise ValueError(f"{where}: the batch holds no trial (days_present is empty)")
        if len(set(present)) != len(present):
            raise ValueError(f"{where}: days_present has repeated days: {present}")
        bad = [d for d in present if not 0 <= d < self.n_days]
        if bad:
            raise ValueError(f"{where}: day indices {bad} are outside [0, {self.n_days - 1}] "
                             f"(the model has {self.n_days} day layers)")
        return present

    def _given_local_days(self, day_idx: torch.Tensor, days_present,
                          local_day_idx) -> tuple[list[int], torch.Tensor]:
        """Check a caller's ``(days_present, local_day_idx)`` pair (see :meth:`_local_days`)."""
        where = "GRUDecoder.forward"
        if days_present is None:
            raise ValueError(f"{where}: local_day_idx needs days_present (the days its entries "
                             "index)")
        present = self._check_present(days_present)
        if not isinstance(local_day_idx, torch.Tensor) or local_day_idx.dim() != 1 \
                or local_day_idx.shape[0] != day_idx.shape[0]:
            shape = tuple(local_day_idx.shape) if isinstance(local_day_idx, torch.Tensor) \
                else type(local_day_idx).__name__
            raise ValueError(f"{where}: local_day_idx must be a ({day_idx.shape[0]},) tensor, "
                             f"got {shape}")
        if local_day_idx.dtype.is_floating_point or local_day_idx.dtype == torch.bool \
                or local_day_idx.is_complex():
            raise TypeError(f"{where}: local_day_idx must be an integer tensor, got "
                            f"{local_day_idx.dtype}")
        local = local_day_idx.to(device=day_idx.device, dtype=torch.long, non_blocking=True)
        # every entry must point at its trial's day in days_present; checked on the device,
        # asynchronously on CUDA (the C++ check runs at once on the CPU)
        present_t = _upload(torch.tensor(present, dtype=torch.long), day_idx.device)
        in_range = (local >= 0) & (local < len(present))
        agrees = present_t[local.clamp(0, len(present) - 1)] == day_idx
        try:
            torch._assert_async((in_range & agrees).all(),
                                f"{where}: local_day_idx does not map day_idx onto "
                                f"days_present={present}")
        except RuntimeError:
            if day_idx.device.type != "cpu":
                raise
            raise ValueError(f"{where}: local_day_idx {local.tolist()} does not map day_idx "
                             f"{day_idx.tolist()} onto days_present={present} (entry i must be "
                             "the position of day_idx[i] in days_present)") from None
        return present, local

    def _day_layer(self, x: torch.Tensor, day_idx: torch.Tensor, days_present, seed: int,
                   step: int, local_day_idx: torch.Tensor | None = None) -> torch.Tensor:
        present, local = self._local_days(day_idx, days_present, local_day_idx)
        weight = torch.stack([self.day_weights[d] for d in present], dim=0)
        bias = torch.cat([self.day_biases[d] for d in present], dim=0)
        philox_p = self.input_dropout if (self.training and self.rng == "philox") else 0.0
        mod = _import_op("day_projection")
        if mod is not None:
            y = mod.day_projection(x, local, weight, bias, philox_p, seed, step, impl=self.impl)
        elif self.impl == "reference":
            from fastbci.reference import day_projection_ref
            y = day_projection_ref(x, local, weight, bias, philox_p, seed, step)
        else:
            raise RuntimeError(
                f"GRUDecoder(impl={self.impl!r}): fastbci.ops.day_projection is not available in "
                "this installation; use impl='reference'")
        if self.rng == "torch" and self.input_dropout > 0:
            y = self.day_layer_dropout(y)
        return y

    def _patch(self, x: torch.Tensor) -> torch.Tensor:
        T = x.shape[1]
        if T < self.patch_size:
            raise ValueError(f"GRUDecoder.forward: patching needs at least patch_size="
                             f"{self.patch_size} time steps, got T={T}")
        mod = _import_op("patchify")
        if mod is not None:
            return mod.patchify(x, self.patch_size, self.patch_stride, impl=self.impl)
        from fastbci.reference import patchify_ref
        return patchify_ref(x, self.patch_size, self.patch_stride)

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
                ``days_present``), e.g. :class:`fastbci.train.Batch` ``local_day_idx``: spares
                the model building and uploading its day lookup table every step. Checked
                against ``day_idx`` with a device assertion (asynchronous on CUDA).
            seed, step: the Philox key and step of the day-layer dropout (``rng="philox"``).
        """
        if not isinstance(x, torch.Tensor) or x.dim() != 3:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"GRUDecoder.forward: x must be a (B, T, {self.neural_dim}) tensor, "
                             f"got {shape}")
        B, T, C = x.shape
        if C != self.neural_dim:
            raise ValueError(f"GRUDecoder.forward: x has {C} channels, the model expects "
                             f"neural_dim={self.neural_dim}")
        if B == 0:
            raise ValueError("GRUDecoder.forward: empty batch (B=0)")
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
        day_idx = day_idx.to(device=x.device, dtype=torch.long)

        x = self._day_layer(x, day_idx, days_present, seed, step, local_day_idx)
        if self.patch_size > 0:
            x = self._patch(x)

        if states is None:
            states = self.h0.expand(self.n_layers, B, self.n_units).contiguous()
        elif tuple(states.shape) != (self.n_layers, B, self.n_units):
            raise ValueError(f"GRUDecoder.forward: states must have shape "
                             f"{(self.n_layers, B, self.n_units)}, got {tuple(states.shape)}")
        output, hidden = self.gru(x, states)
        logits = self.out(output)
        if return_state:
            return logits, hidden
        return logits

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
        own = self.state_dict()
        missing = [k for k in own if k not in sd]
        unexpected = [k for k in sd if k not in own]
        shapes = []
        for k, v in sd.items():
            if k in own:
                if not isinstance(v, torch.Tensor):
                    shapes.append(f"{k}: not a tensor ({type(v).__name__})")
                elif tuple(v.shape) != tuple(own[k].shape):
                    shapes.append(f"{k}: checkpoint {tuple(v.shape)}, model {tuple(own[k].shape)}")
        problems = []
        if shapes:
            problems.append("shape mismatches: " + "; ".join(shapes))
        if strict and missing:
            problems.append(f"missing keys ({len(missing)}): " + ", ".join(missing))
        if strict and unexpected:
            problems.append(f"unexpected keys ({len(unexpected)}): " + ", ".join(unexpected))
        if problems:
            raise CheckpointError(
                f"the state dict does not fit GRUDecoder(neural_dim={self.neural_dim}, "
                f"n_units={self.n_units}, n_days={self.n_days}, n_classes={self.n_classes}, "
                f"n_layers={self.n_layers}, patch_size={self.patch_size}):\n  "
                + "\n  ".join(problems))
        return self.load_state_dict(sd, strict=strict)
