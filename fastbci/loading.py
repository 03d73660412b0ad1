"""A trained model from a checkpoint, in one place (evaluation, calibration and a training run
that starts from a checkpoint all load through here).

* :func:`resolve_config`: the configuration a checkpoint is evaluated with: the one given,
  else the one a fastbci checkpoint carries (what it was trained with), else the ``args.yaml``
  beside it (the official layout);
* :func:`load_weights`: a checkpoint's weights into a model, a mismatch a
  :class:`~fastbci.checkpoint.CheckpointError` naming the file;
* :func:`load_model`: both, plus the model built from the configuration.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Mapping, Sequence

from fastbci import checkpoint as ckpt_io
from fastbci import config as config_mod
from fastbci.errors import ConfigError
from fastbci.model import GRUDecoder

__all__ = ["Loaded", "resolve_config", "load_weights", "load_model"]


@dataclasses.dataclass
class Loaded:
    """A model with the weights of ``path`` (on the CPU, in eval mode), its configuration, where
    that configuration came from, and the checkpoint's contents."""
    model: GRUDecoder
    cfg: dict
    source: str
    checkpoint: dict
    path: Path


def resolve_config(checkpoint: str | os.PathLike, ck: Mapping, config: str | os.PathLike | None = None,
                   overrides: Sequence[str] = ()) -> tuple[dict, str]:
    """The configuration of ``checkpoint`` (its contents ``ck``) and where it came from:
    ``config``, else the one a fastbci checkpoint carries, else the ``args.yaml`` beside it. An
    empty args.yaml is never read as "the defaults"."""
    checkpoint = Path(checkpoint)
    if config is not None:
        return config_mod.load_config(config, overrides), str(config)
    embedded = (ck.get("fastbci") or {}).get("config")
    if isinstance(embedded, dict):
        where = f"the configuration stored in {checkpoint}"
        return config_mod.from_mapping(embedded, overrides, where=where), where
    beside = checkpoint.parent / "args.yaml"
    if beside.is_file():
        if config_mod.read_yaml(beside):
            return config_mod.load_config(beside, overrides), str(beside)
        raise ConfigError(f"{beside} is empty and {checkpoint} carries no configuration: pass "
                          "--config CFG (the configuration the model was trained with)")
    raise ConfigError(f"no configuration for {checkpoint}: pass --config CFG (there is no args.yaml "
                      "beside the checkpoint and it carries no fastbci configuration)")


def load_weights(model: GRUDecoder, ck: Mapping, path: str | os.PathLike, source: str = "") -> None:
    """The checkpoint's weights (``model_state_dict``, official keys or fastbci's, wrapper
    prefixes stripped) into ``model``; a checkpoint that does not fit is an error naming it."""
    try:
        model.load_official_state_dict(ck["model_state_dict"])
    except Exception as e:  # noqa: BLE001 - every mismatch is the file's problem
        of = f" of {source}" if source else ""
        raise ckpt_io.CheckpointError(f"{path} does not fit the model{of}: {e}") from None


def load_model(checkpoint: str | os.PathLike, *, config: str | os.PathLike | None = None,
               overrides: Sequence[str] = (), trust: bool = False) -> Loaded:
    """Read ``checkpoint`` (weights only unless ``trust``; its checksum verified), resolve its
    configuration (:func:`resolve_config`) and build the model with its weights."""
    path = Path(checkpoint)
    ck = ckpt_io.load(path, trust=trust)
    cfg, source = resolve_config(path, ck, config, overrides)
    model = GRUDecoder.from_config(cfg)
    load_weights(model, ck, path, source)
    return Loaded(model.eval(), cfg, source, ck, path)
