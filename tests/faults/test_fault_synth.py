"""The synthetic-release family: ``fastbci.synth.write_release`` (what ``fastbci synth`` runs)
checks its session names and numbers before it writes anything. A session name that is a path
(``../../etc``, an absolute path, ``..``, empty) would put files outside ``--out``; a NaN or
infinite noise, signal or drift, a negative seed, an odd feature count give numpy's words or
nonsense data. Each is exit status 2 and a message naming the parameter (and its allowed range)
or the name, with nothing written anywhere."""
from __future__ import annotations

import pytest
from faultkit import Case, check, command

from fastbci.errors import run_command
from fastbci.synth import PRESETS, write_release

SMALL = dict(PRESETS["small"])

CASES = {
    # name: (write_release's arguments over the small preset, the words of the message)
    "session-name-parent-path": (dict(sessions=["t15.2023.08.13", "../../etc"]),
                                 ["session name '../../etc'", "path separator"]),
    # (an absolute path inside this test's folder: the old code wrote there, as root anywhere)
    "session-name-absolute": (dict(sessions=["ELSEWHERE"]), ["session name 'ELSEWHERE'", "absolute path"]),
    "session-name-dot-dot": (dict(sessions=[".."]), ["session name '..'", "not a name"]),
    "session-name-empty": (dict(sessions=["t15.2023.08.13", ""]), ["session name ''", "is empty"]),
    "noise-nan": (dict(noise=float("nan")), ["noise must be a finite number in [0, 100], got nan"]),
    "signal-infinite": (dict(signal=float("inf")), ["signal must be a finite number in [0, 100], got inf"]),
    "drift-negative": (dict(drift=-0.5), ["drift must be a finite number in [0, 100], got -0.5"]),
    "seed-negative": (dict(seed=-1), ["seed must be an integer >= 0, got -1"]),
    "seed-not-an-integer": (dict(seed=1.5), ["seed must be an integer >= 0, got 1.5"]),
    "neural-dim-odd": (dict(neural_dim=31), ["neural_dim must be an even number >= 2", "got 31"]),
    "block-size-reversed": (dict(block_size=(50, 20)), ["block_size must be two integers (lo, hi) with 1 <= lo <= hi"]),
}


@pytest.mark.parametrize("fault", [*CASES, "sessions-option-with-a-path"])
def test_synth_fault(fault, tmp_path, capsys):
    out = tmp_path / "a" / "b" / "release"
    if fault == "sessions-option-with-a-path":  # the command line passes the names on unchanged
        run = lambda: command("synth")(["--out", out, "--small", "--sessions", "t15.2023.08.13,../../etc"])  # noqa: E731
        want = ["session name '../../etc'", "path separator"]
    else:
        kwargs, want = CASES[fault]
        elsewhere = str(tmp_path / "elsewhere")
        kwargs = {k: [elsewhere if s == "ELSEWHERE" else s for s in v] if k == "sessions" else v
                  for k, v in kwargs.items()}
        want = [w.replace("ELSEWHERE", elsewhere) for w in want]
        run = lambda: run_command(lambda: write_release(out, **{**SMALL, **kwargs}) and 0,  # noqa: E731
                                  prog="fastbci.synth")
    (tmp_path / "a").mkdir()
    check(Case(run=run, words=want, inputs=[tmp_path], outputs=[out]), capsys)
