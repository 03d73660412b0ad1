"""scripts/gpu_check.sh without a GPU: its plan, the test files it runs, its result merger.

The plan (``--plan``) must list the stages in order of value within 8 minutes, and every test
file with CUDA cases must be in one of its GPU test stages: a new CUDA test file cannot be left
out. A file has CUDA cases when it uses the conftest ``device`` fixture (whose params include
``cuda`` on a GPU machine), a ``cuda`` marker, ``torch.cuda`` or a ``"cuda"`` device string.
"""
from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gpu_check.sh"
ORDER = ["build", "cuda-tests", "headline", "op-bench", "gpu-tests", "cpu-tests"]
TEST_STAGES = ("cuda-tests", "gpu-tests", "cpu-tests")
CUDA_MARKERS = re.compile(r"torch\.cuda\.|mark\.cuda\b|[\"']cuda[\"']|[\"']cuda:\d")
MAX_SECONDS = 480


def plan() -> dict[str, tuple[int, list[str]]]:
    res = subprocess.run(["bash", str(SCRIPT), "--plan"], capture_output=True, text=True,
                         timeout=60, cwd=ROOT, env={**os.environ, "PATH": os.environ["PATH"]})
    assert res.returncode == 0, res.stderr
    stages, total = {}, None
    for line in res.stdout.splitlines():
        m = re.fullmatch(r"(\d+) (\S+) (\d+) ?(.*)", line)
        if m:
            assert int(m[1]) == len(stages) + 1, f"stage numbers out of order: {line}"
            stages[m[2]] = (int(m[3]), m[4].split())
        elif line.startswith("total "):
            total = int(line.split()[1])
        else:
            raise AssertionError(f"unexpected --plan line: {line!r}")
    assert total == sum(b for b, _ in stages.values()), (total, stages)
    return stages


def uses_device_fixture(path: Path) -> bool:
    tree = ast.parse(path.read_text())
    return any(isinstance(n, ast.FunctionDef) and n.name.startswith("test_")
               and "device" in [a.arg for a in n.args.args] for n in ast.walk(tree))


def cuda_test_files() -> set[str]:
    found = set()
    for p in sorted((ROOT / "tests").glob("test_*.py")):
        if p.name == Path(__file__).name:  # this checker names the markers, it has no CUDA case
            continue
        if uses_device_fixture(p) or CUDA_MARKERS.search(p.read_text()):
            found.add(str(p.relative_to(ROOT)))
    return found


def test_plan_order_and_budgets():
    stages = plan()
    assert list(stages) == ORDER
    total = sum(b for b, _ in stages.values())
    assert total <= MAX_SECONDS, f"the budgets add up to {total} s, more than {MAX_SECONDS}"
    assert all(b > 0 for b, _ in stages.values())


def test_every_cuda_test_file_runs_in_a_gpu_stage():
    stages = plan()
    listed = {s: set(stages[s][1]) for s in TEST_STAGES}
    cuda = cuda_test_files()
    assert {"tests/test_day_projection.py", "tests/test_fused_step.py",
            "tests/test_augment_kernel.py", "tests/test_philox.py"} <= cuda, cuda
    gpu = listed["cuda-tests"] | listed["gpu-tests"]
    missing = sorted(cuda - gpu)
    assert not missing, (f"test files with CUDA cases missing from the GPU test stages of "
                         f"scripts/gpu_check.sh (add them to GPU_TEST_FILES): {missing}")
    assert not listed["cpu-tests"] & cuda
    every = {str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_*.py")}
    runs = [f for s in TEST_STAGES for f in stages[s][1]]
    assert sorted(runs) == sorted(every), "each test file must run exactly once"


def test_bench_stages_name_existing_cases():
    stages = plan()
    for s in ("headline", "op-bench"):
        for item in stages[s][1]:
            path, _, func = item.partition("::")
            func = func.split("[")[0]
            src = (ROOT / path).read_text()
            assert not func or f"def {func}(" in src, f"{item}: no such benchmark"
            assert not re.search(r"^\s*(import matplotlib|from matplotlib)", src, re.M), \
                f"{path} imports matplotlib (the GPU machine may not have it)"


def test_script_needs_no_registry_and_no_gpu_to_say_so(tmp_path):
    text = SCRIPT.read_text()
    for line in text.splitlines():
        if re.search(r"pip install", line) and not line.lstrip().startswith("#"):
            assert "--no-index" in line, line
    res = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=120,
                         cwd=ROOT, env={**os.environ, "PYTHON": sys.executable,
                                        "OUT": str(tmp_path),
                                        "CUDA_VISIBLE_DEVICES": ""})
    assert res.returncode == 2 and "cannot run" in res.stdout + res.stderr, res.stdout + res.stderr


# ---------------------------------------------------------------------------------------------
# the merged result file
# ---------------------------------------------------------------------------------------------
def _bench(name, group, **info):
    return {"name": name, "group": group, "stats": {"median": 0.01}, "extra_info": info}


def _run_merge(out: Path) -> dict:
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_results.py"), str(out),
                          str(out / "NVIDIA_X.json"), "--print"], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    return json.loads((out / "NVIDIA_X.json").read_text())


def test_merge_of_a_cut_off_run_says_unmeasured(tmp_path):
    (tmp_path / "summary.txt").write_text("[gpu_check] stage build: OK (50s of 110s)\n"
                                          "[gpu_check] stage headline: CUT OFF at its budget\n")
    r = _run_merge(tmp_path)
    assert r["stages"] == {"build": "OK (50s of 110s)", "headline": "CUT OFF at its budget"}
    for k in ("fused_step_speedup_vs_reference", "pre_gru_share", "augment_gb_per_s",
              "day_projection_fwd_bwd_speedup_vs_official", "projected_120k_batches_h"):
        assert r["figures"][k] == "unmeasured", k
    assert all(t["met"] == "unmeasured" for t in r["targets"].values())
    assert "torch" in r and "triton" in r and "python" in r


def test_merge_picks_the_headline_figures(tmp_path):
    head = [_bench("test_bench_train_step[fused]", "train_step", speedup_vs_reference=1.8,
                   speedup_vs_official=3.0, step_s=0.05, pre_gru_share=0.08,
                   projected_120k_batches_h=1.7),
            _bench("test_bench_train_step[reference]", "train_step", step_s=0.09),
            _bench("test_bench_training_throughput", "training_cli", s_per_batch=0.06,
                   projected_120k_batches_h=2.0)]
    ops = [_bench("a", "augment_smooth-T1600-bf16", case="fused_gather", out_dtype="bf16", T=1600,
                  gb_per_s=1.0, copy_gb_per_s=4.0, fraction_of_copy_bandwidth=0.25),
           _bench("b", "augment_smooth-T800-bf16", case="fused_gather", out_dtype="bf16", T=800,
                  gb_per_s=2.0, copy_gb_per_s=4.0, fraction_of_copy_bandwidth=0.5),
           _bench("c", "day_projection-forward_backward", mode="forward_backward",
                  speedup_vs_official=4.0),
           _bench("d", "augment_smooth-tiles", table_vs_best=1.1, best_tile="64x128/8w")]
    (tmp_path / "headline.json").write_text(json.dumps({"benchmarks": head}))
    (tmp_path / "op-bench.json").write_text(json.dumps({"benchmarks": ops}))
    r = _run_merge(tmp_path)
    f = r["figures"]
    assert f["fused_step_speedup_vs_reference"] == 1.8 and f["pre_gru_share"] == 0.08
    assert f["reference_step_s"] == 0.09 and f["projected_120k_batches_h"] == 2.0
    assert f["augment_fraction_of_copy_bandwidth"] == 0.5 and f["augment_gb_per_s"] == 2.0
    assert f["day_projection_fwd_bwd_speedup_vs_official"] == 4.0
    assert f["augment_best_tile"] == "64x128/8w"
    t = r["targets"]
    assert t["fused_step_speedup_vs_reference"]["met"] is True
    assert t["pre_gru_share"]["met"] is True
    assert t["day_projection_fwd_bwd_speedup_vs_official"]["met"] is False
    assert len(r["benchmarks"]) == 7


@pytest.mark.parametrize("content", ["", "{not json", '{"benchmarks": []}'])
def test_merge_survives_a_truncated_json(tmp_path, content):
    (tmp_path / "headline.json").write_text(content)
    assert _run_merge(tmp_path)["figures"]["fused_step_speedup_vs_reference"] == "unmeasured"


# ---------------------------------------------------------------------------------------------
# partial results of a stage killed at its budget
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_partial_junit_survives_a_kill(tmp_path):
    import time
    import xml.etree.ElementTree as ET

    (tmp_path / "test_tiny.py").write_text(
        "import time, pytest\n"
        "def test_ok(): pass\n"
        "def test_bad(): assert 1 == 2, 'one is not two'\n"
        "def test_skip(): pytest.skip('not here')\n"
        "def test_slow(): time.sleep(120)\n")
    junit = tmp_path / "out.xml"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "scripts")}
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             "-p", "pytest_partial", f"--partial-junit={junit}",
                             "-o", "junit_duration_report=call", str(tmp_path / "test_tiny.py")],
                            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while time.time() < deadline:  # until the three quick tests are in the file
            if junit.is_file() and junit.read_text().count("<testcase") >= 3:
                break
            time.sleep(0.2)
    finally:
        proc.kill()
        proc.wait()
    suite = ET.parse(junit).getroot().find("testsuite")
    names = {c.get("name"): c for c in suite.iter("testcase")}
    assert {"test_ok", "test_bad", "test_skip"} <= set(names), names
    assert names["test_bad"].find("failure").get("message").startswith("AssertionError: one is not two")
    assert names["test_skip"].find("skipped") is not None
    assert int(suite.get("failures")) == 1 and int(suite.get("skipped")) == 1
