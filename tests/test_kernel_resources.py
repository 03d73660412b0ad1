"""sm_90 resources of the hot-path GPU kernels, without a GPU (scripts/kernel_resources.py).

Every Triton kernel of the training hot path is compiled for sm_90 as the JIT would (the
launcher's own arguments, warps and stages; Triton's binder, ptxas and flags), and the CUDA day
projection with nvcc and the extension's flags; the test fails when one of them spills or when
its occupancy on sm_90 drops below its floor (docs/benchmarks.md, "The GPU-version mirror").
It runs in the main suite with CI's Triton and in scripts/gpu_mirror.sh with the GPU machine's
(scripts/gpu_versions.env), where ``FASTBCI_KERNEL_RESOURCES_JSON`` names the file the report is
kept in. It skips when Triton's NVIDIA backend or its ptxas is missing, and on a machine with a
GPU (no TRITON_INTERPRET=1: the JIT compiles the kernels there, and the check belongs to CI).
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "kernel_resources.py"
_spec = importlib.util.spec_from_file_location("kernel_resources", SCRIPT)
kr = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(kr)


# ---------------------------------------------------------------------------------------------
# the occupancy calculator and the ptxas report reader
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("regs,threads,smem,blocks,limited", [
    (127, 128, 32768, 4, ["registers"]),        # 4096 registers a warp: 4 warps per sub-partition
    (128, 128, 0, 4, ["registers"]),
    (129, 128, 0, 3, ["registers"]),            # 4352 a warp: 3 warps per sub-partition
    (246, 128, 32768, 2, ["registers"]),
    (96, 128, 27136, 5, ["registers"]),         # 3072 a warp: 5 per sub-partition, 20 warps
    (64, 128, 27136, 8, ["registers", "shared_memory"]),  # 28160 B a block: 8 blocks in 228 KB
    (24, 256, 0, 8, ["warps"]),
    (16, 32, 0, 32, ["blocks"]),
    (32, 128, 100_000, 2, ["shared_memory"]),   # 101,120 B a block (1 KB reserved, 128 B unit)
    (32, 128, 240_000, 0, ["shared_memory"]),   # above the 227 KB a block may have
    (256, 128, 0, 0, ["registers"]),            # above 255 registers a thread
    (255, 1024, 0, 0, ["registers"]),           # 32 warps x 8192 registers > 65,536 a block
])
def test_occupancy_matches_cuda_occupancy_h(regs, threads, smem, blocks, limited):
    occ = kr.occupancy(regs, threads, smem)
    assert occ["blocks_per_sm"] == blocks, occ
    assert occ["limited_by"] == limited, occ
    assert occ["occupancy"] == blocks * occ["warps_per_block"] / 64


TRITON_LOG = """\
ptxas info    : 52 bytes gmem
ptxas info    : Compiling entry function '_augment_smooth_kernel' for 'sm_90a'
ptxas info    : Function properties for _augment_smooth_kernel
    128 bytes stack frame, 92 bytes spill stores, 92 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers, 128 bytes cumulative stack size
ptxas info    : Compile time = 2442.803 ms
"""
NVCC_LOG = """\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_ZN7fastbci4cuda14forward_kernelIfEEvPKT_' for 'sm_90'
ptxas info    : Function properties for _ZN7fastbci4cuda14forward_kernelIfEEvPKT_
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 102 registers, used 1 barriers, 27136 bytes smem, 400 bytes cmem[0]
ptxas info    : Compiling entry function '_ZN7fastbci4cuda18backward_dz_kernelIfEEvPKT_' for 'sm_90'
ptxas info    : Function properties for _ZN7fastbci4cuda18backward_dz_kernelIfEEvPKT_
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 24 registers, used 0 barriers
"""


def test_ptxas_reports_are_read():
    (name, e), = kr.parse_ptxas(TRITON_LOG).items()
    assert name == "_augment_smooth_kernel"
    assert e == {"target": "sm_90a", "registers": 255, "spill_stores": 92, "spill_loads": 92,
                 "stack_frame": 128, "static_smem": 0}
    nv = kr.parse_ptxas(NVCC_LOG)
    assert [v["registers"] for v in nv.values()] == [102, 24]
    assert [v["static_smem"] for v in nv.values()] == [27136, 0]
    assert kr._short_name("_ZN7fastbci4cuda14forward_kernelIfEEvPKT_") in (
        "forward_kernel<float>", "_ZN7fastbci4cuda14forward_kernelIfEEvPKT_")  # no c++filt


def test_launches_are_read_from_the_cuda_source():
    launches = kr._launches(kr.CU_SOURCE.read_text())
    assert set(kr.CUDA_KERNELS) <= set(launches), sorted(launches)
    assert all(threads % 32 == 0 and smem >= 0 for threads, smem in launches.values())


def test_nvcc_flags_are_the_extension_builds():
    m = re.search(r'"nvcc":\s*\[([^\]]*)\]', (ROOT / "setup.py").read_text())
    assert m, "setup.py: no nvcc flag list found"
    assert re.findall(r'"([^"]+)"', m[1]) == kr.SETUP_NVCC_FLAGS, (
        "scripts/kernel_resources.py SETUP_NVCC_FLAGS differ from setup.py's nvcc flags")


# ---------------------------------------------------------------------------------------------
# the check can fail
# ---------------------------------------------------------------------------------------------
def _entry(regs=127, spills=0, threads=128, smem=32768, floor=kr.OCCUPANCY_FLOOR):
    """A report entry as scripts/kernel_resources.py writes one (the augment kernel's, by default)."""
    return {"registers": regs, "spill_stores": spills, "spill_loads": spills, "stack_frame": spills,
            "static_smem": 0, "num_warps": threads // 32, "num_stages": 1,
            "threads_per_block": threads, "shared_bytes": smem, "floor": floor,
            "occupancy": kr.occupancy(regs, threads, smem)}


def assert_within_budget(report: dict) -> None:
    """The assertion of the hot-path test: no compile error, spill or occupancy below a floor."""
    bad = kr.violations(report)
    assert not bad, ("hot-path kernels over their sm_90 budget (docs/benchmarks.md, \"The "
                     "GPU-version mirror\"):\n" + "\n".join(
                         f"  {k}: {w}" for k, ws in bad.items() for w in ws)
                     + "\n" + kr.table(report))


@pytest.mark.parametrize("planted,why", [
    (_entry(spills=64), "spills 64 bytes"),
    (_entry(regs=168), "occupancy 18.8% (12 warps/SM, limited by registers) is below the floor"),
    (_entry(regs=246, floor=kr.PER_ELEMENT_FLOOR, smem=200_000),
     "occupancy 6.2% (4 warps/SM, limited by shared_memory) is below the floor 12.5%"),
    ({"error": "CompilationError: at 12:4: unsupported"}, "did not compile: CompilationError"),
])
def test_a_planted_spill_or_low_occupancy_fails(planted, why):
    report = {"occupancy_floor": kr.OCCUPANCY_FLOOR, "per_element_floor": kr.PER_ELEMENT_FLOOR,
              "versions": {}, "kernels": {"ok": _entry(), "planted": planted}, "missing": []}
    with pytest.raises(AssertionError, match=re.escape(why)):
        assert_within_budget(report)
    report["kernels"].pop("planted")
    assert_within_budget(report)
    report["missing"] = ["day_projection.forward_kernel<float>"]
    with pytest.raises(AssertionError, match="not found in the compiler's report"):
        assert_within_budget(report)


# ---------------------------------------------------------------------------------------------
# the real kernels
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("a GPU machine: the Triton JIT compiles these kernels itself there; the "
                    "sm_90 resource check runs in CI and in scripts/gpu_mirror.sh")
    try:
        from triton.backends.nvidia.compiler import get_ptxas
        get_ptxas(90)
    except (ImportError, RuntimeError) as e:
        pytest.skip(f"no ptxas for sm_90 (Triton's NVIDIA backend): {e}")
    out = os.environ.get("FASTBCI_KERNEL_RESOURCES_JSON") or str(
        tmp_path_factory.mktemp("resources") / "kernel_resources.json")
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    res = subprocess.run([sys.executable, str(SCRIPT), "--json", out], capture_output=True,
                         text=True, timeout=900, cwd=ROOT, env=env)
    if not Path(out).is_file():
        raise AssertionError(f"scripts/kernel_resources.py wrote no report (exit "
                             f"{res.returncode}):\n{res.stdout}\n{res.stderr[-3000:]}")
    return json.loads(Path(out).read_text())


@pytest.mark.slow  # compiles every hot-path kernel for sm_90 with ptxas
def test_hot_path_kernels_do_not_spill_and_keep_their_occupancy_floor(report):
    assert set(kr.TRITON_CASES) <= set(report["kernels"]), sorted(report["kernels"])
    assert_within_budget(report)


@pytest.mark.slow  # compiles every hot-path kernel for sm_90 with ptxas
def test_the_day_projection_kernels_are_all_checked(report):
    if "day_projection" in report["skipped"]:
        pytest.skip(f"CUDA day projection not compiled: {report['skipped']['day_projection']}")
    found = {k.removeprefix("day_projection.") for k in report["kernels"]
             if k.startswith("day_projection.")}
    assert set(kr.CUDA_KERNELS) <= found, sorted(found)


@pytest.mark.slow  # compiles every hot-path kernel for sm_90 with ptxas
def test_the_report_names_the_versions_and_the_launch_configurations(report):
    import triton

    assert report["versions"]["triton"] == triton.__version__
    e = report["kernels"]["augment_train_aligned"]
    assert (e["num_warps"], e["num_stages"], e["threads_per_block"]) == (4, 1, 128), e
    assert e["shared_bytes"] > 0 and e["floor"] == kr.OCCUPANCY_FLOOR
    assert report["kernels"]["augment_train_per_element"]["floor"] == kr.PER_ELEMENT_FLOOR
