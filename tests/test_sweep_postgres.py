"""A search on a real PostgreSQL server: two worker processes join one study (the advisory lock
keeps them at the trials asked), and optuna reads the trials back from the server.

The test starts its own server: ``initdb`` in a temporary folder, ``pg_ctl`` on a Unix socket
there, as the ``postgres`` user when run as root (the server refuses root). It skips, saying
why, only where the server binaries or the driver are missing (``.ci/run`` installs the
``postgresql`` package when ``initdb`` is not found)."""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna", reason="the search needs optuna")
pytest.importorskip("psycopg2", reason="the PostgreSQL driver psycopg2 is not installed "
                                       "(pip install 'fastbci[sweep]')")

from sweep_helpers import sweep, write_config, write_release  # noqa: E402


def _binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres():
    initdb, pg_ctl = _binary("initdb"), _binary("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed here; "
                    ".ci/run installs them (apt-get install postgresql)")
    prefix: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="fastbci-pg-"))
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run the server as")
        os.chown(folder, user.pw_uid, user.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    data, port = folder / "data", _free_port()

    def run(*cmd: str) -> None:
        res = subprocess.run([*prefix, *cmd], capture_output=True, text=True, timeout=120)
        if res.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)}: {res.stdout}\n{res.stderr}")

    run(initdb, "-D", str(data), "-A", "trust", "-U", "fastbci", "--no-sync")
    run(pg_ctl, "-D", str(data), "-l", str(folder / "server.log"), "-w", "-t", "60", "-o",
        f"-k {folder} -p {port} -c listen_addresses='' -c fsync=off", "start")
    try:
        yield f"postgresql+psycopg2://fastbci@/postgres?host={folder}&port={port}"
    finally:
        run(pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(folder, ignore_errors=True)


def test_two_workers_join_one_study_on_postgresql(postgres, tmp_path):
    cfg = write_config(tmp_path / "tiny.yaml", write_release(tmp_path / "data"))
    space = tmp_path / "space.yaml"
    space.write_text("lr_max: {low: 1.0e-4, high: 5.0e-2, log: true}\n")
    out = tmp_path / "pg"
    rc = sweep("search", cfg, "--space", space, "--trials", 3, "--out", out, "--storage",
               postgres, "--study", "pg-study", "--workers", 2, "--pruner", "none", "--quiet")
    assert rc == 0
    assert not (out / "study.db").exists(), "the study lives on the server"
    trials = optuna.load_study(study_name="pg-study", storage=postgres).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    assert {t.user_attrs["pid"] for t in trials} - {os.getpid()} == \
        {t.user_attrs["pid"] for t in trials}, "run by the worker processes"
    assert sorted(p.name for p in (out / "workers").iterdir()) == ["worker-0.log", "worker-1.log"]
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["trial-0", "trial-1", "trial-2"]
    # a worker joining later finds the study done and runs nothing
    assert sweep("worker", "--storage", postgres, "--study", "pg-study", "--quiet") == 0
    assert len(optuna.load_study(study_name="pg-study", storage=postgres).get_trials()) == 3
