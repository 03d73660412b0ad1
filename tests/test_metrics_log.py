"""MetricsLog: metrics.jsonl, and TensorBoard event files with the same numbers when asked."""
from __future__ import annotations

import builtins
import logging

import pytest

from fastbci.training.metrics_log import MetricsLog

RECORDS = [{"batch": 0, "split": "train", "loss": 3.0, "per": 0.9, "lr": 0.001, "grad_norm": 2.0,
            "blank_fraction": 0.5, "per_by_day": {}},
           {"batch": 5, "split": "val", "loss": 2.5, "per": 0.7, "blank_fraction": 0.4,
            "per_by_day": {"t15.2023.08.13": 0.6, "t15.2023.08.18": None}}]


def test_tensorboard_scalars_equal_the_jsonl_records(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    log = MetricsLog(tmp_path / "metrics.jsonl", tensorboard_dir=tmp_path / "tb")
    assert log.tensorboard
    for r in RECORDS:
        log.append(r)
    log.close()
    assert log.records() == RECORDS
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    got = {tag: [(e.step, round(e.value, 6)) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    assert got == {"train/loss": [(0, 3.0)], "train/per": [(0, 0.9)], "train/lr": [(0, 0.001)],
                   "train/grad_norm": [(0, 2.0)], "train/blank_fraction": [(0, 0.5)],
                   "val/loss": [(5, 2.5)], "val/per": [(5, 0.7)], "val/blank_fraction": [(5, 0.4)],
                   "val_per_by_day/t15.2023.08.13": [(5, 0.6)]}


def test_without_tensorboard_it_says_so_once_and_keeps_the_jsonl(tmp_path, monkeypatch, caplog):
    real_import = builtins.__import__

    def no_tensorboard(name, *a, **k):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError("No module named 'tensorboard'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    logger = logging.getLogger("test_metrics_log")
    with caplog.at_level(logging.WARNING, logger="test_metrics_log"):
        log = MetricsLog(tmp_path / "metrics.jsonl", tensorboard_dir=tmp_path / "tb", log=logger)
        for r in RECORDS:
            log.append(r)
    assert not log.tensorboard and log.records() == RECORDS
    warnings = [r.message for r in caplog.records if "TensorBoard" in r.message]
    assert len(warnings) == 1 and "pip install tensorboard" in warnings[0]
    assert not (tmp_path / "tb").exists()


def test_other_ranks_write_nothing(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl", enabled=False, tensorboard_dir=tmp_path / "tb")
    log.append(RECORDS[0])
    assert not (tmp_path / "metrics.jsonl").exists() and not (tmp_path / "tb").exists()
