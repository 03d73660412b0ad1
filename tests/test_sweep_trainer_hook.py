"""The trainer's ``on_validation`` hook, which a search prunes through: called after every
validation with its record; a returned reason stops the run as ``pruned``, resumable, in
run_status.json; None changes nothing."""
import json

import pytest

from fastbci.config import load_config
from fastbci.errors import EXIT_OK, exit_code_of
from fastbci.training import Trainer
from sweep_helpers import write_config, write_release


@pytest.fixture(scope="module")
def cfg_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("hook")
    return write_config(root / "tiny.yaml", write_release(root / "data"))


def test_every_validation_is_reported_and_none_changes_nothing(cfg_file, tmp_path):
    seen = []
    cfg = load_config(cfg_file, [f"output_dir={tmp_path}/a", f"checkpoint_dir={tmp_path}/a/ck",
                                 "fastbci.progress=false"])
    res = Trainer(cfg, console=False, on_validation=lambda k, r: seen.append((k, r)) and None).fit()
    assert res.status == "finished", res.message
    assert [k for k, _ in seen] == [0, 4, 8, 11], "every validation, at the official cadence"
    assert [r["per"] for _, r in seen] == [v["per"] for v in res.val_history]
    assert all(r["split"] == "val" and "blank_fraction" in r for _, r in seen)


def test_a_reason_stops_the_run_as_pruned_with_a_resumable_checkpoint(cfg_file, tmp_path):
    out = tmp_path / "b"
    cfg = load_config(cfg_file, [f"output_dir={out}", f"checkpoint_dir={out}/ck",
                                 "fastbci.progress=false"])
    res = Trainer(cfg, console=False,
                  on_validation=lambda k, r: "worse than the median" if k >= 4 else None).fit()
    assert res.status == "pruned" and res.last_batch == 4, (res.status, res.last_batch)
    assert "worse than the median" in res.message and "batch 4" in res.message
    status = json.loads((out / "run_status.json").read_text())
    assert status["status"] == "pruned" and status["last_batch"] == 4
    assert (out / "ck" / "resume_checkpoint").is_file(), "pruned like any stop: resumable"
    assert not list((out / "ck").glob("final_checkpoint*")), "no final model for a pruned run"
    assert "Pruned at batch 4" in (out / "train.log").read_text()
    assert exit_code_of("pruned") == EXIT_OK
    # resumed without the hook, the run goes on from batch 5 to the end
    cfg2 = load_config(cfg_file, [f"output_dir={out}", f"checkpoint_dir={out}/ck",
                                  "fastbci.progress=false", "fastbci.resume=true"])
    res2 = Trainer(cfg2, console=False).fit()
    assert res2.status == "finished" and res2.last_batch == 11
