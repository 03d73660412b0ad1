"""Merge the benchmark JSON files of a scripts/gpu_check.sh run into one result file.

    python scripts/gpu_results.py OUT_DIR RESULT_JSON [--print]

Reads OUT_DIR/headline.json and OUT_DIR/op-bench.json (pytest-benchmark JSON, either may be
missing: a stage cut off or not reached) and OUT_DIR/summary.txt (the stage lines), and writes
RESULT_JSON: the device and versions, each headline figure against its target (``"unmeasured"``
when its benchmark did not finish), and every benchmark's median and extra_info. ``--print``
also prints the figures, one a line. Standard library only (plus torch / triton for versions,
when importable), so it runs even where the benchmarks failed.
"""
from __future__ import annotations

import datetime
import json
import platform
import subprocess
import sys
from pathlib import Path

UNMEASURED = "unmeasured"
# figure -> (target as text, test of the value), from the targets
TARGETS = {
    "fused_step_speedup_vs_reference": (">= 1.5", lambda v: v >= 1.5),
    "pre_gru_share": ("<= 0.10", lambda v: v <= 0.10),
    "day_projection_fwd_bwd_speedup_vs_official": (">= 5", lambda v: v >= 5),
}


def _load(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    try:
        return json.loads(path.read_text()).get("benchmarks", [])
    except (OSError, ValueError):  # a file cut off while being written
        return []


def _versions() -> dict:
    info = {"python": platform.python_version()}
    try:
        import torch
        info.update(torch=torch.__version__, cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version())
        if torch.cuda.is_available():
            info["device"] = torch.cuda.get_device_name(0)
            info["capability"] = "{}.{}".format(*torch.cuda.get_device_capability(0))
            info["memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    except Exception as e:  # noqa: BLE001 - versions are informative only
        info["torch"] = f"not importable: {e}"
    try:
        import triton
        info["triton"] = triton.__version__
    except Exception:  # noqa: BLE001
        info["triton"] = None
    try:
        info["commit"] = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True,
                                        text=True, cwd=Path(__file__).resolve().parent,
                                        timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        info["commit"] = None
    return info


def _find(benchmarks: list[dict], **want) -> dict | None:
    """The first benchmark whose extra_info (or group, for key ``group``) matches ``want``;
    among augment cases of several T, the smallest T (800 on a GPU)."""
    hits = [b for b in benchmarks
            if all((b.get("group") if k == "group" else b.get("extra_info", {}).get(k)) == v
                   for k, v in want.items())]
    hits.sort(key=lambda b: b.get("extra_info", {}).get("T", 0))
    return hits[0] if hits else None


def _value(bench: dict | None, key: str):
    if bench is None:
        return UNMEASURED
    v = bench.get("extra_info", {}).get(key)
    return UNMEASURED if v is None else v


def figures(benchmarks: list[dict]) -> dict:
    step = next((b for b in benchmarks if b.get("group") == "train_step"
                 and "speedup_vs_reference" in b.get("extra_info", {})), None)
    ref_step = next((b for b in benchmarks if b.get("group") == "train_step"
                     and b.get("name", "").endswith("[reference]")), None)
    aug = _find(benchmarks, case="fused_gather", out_dtype="bf16")
    tiles = _find(benchmarks, group="augment_smooth-tiles")
    day = next((b for b in benchmarks if b.get("extra_info", {}).get("mode") == "forward_backward"
                and "speedup_vs_official" in b.get("extra_info", {})), None)
    cli = _find(benchmarks, group="training_cli")
    f = {
        "fused_step_speedup_vs_reference": _value(step, "speedup_vs_reference"),
        "fused_step_speedup_vs_official": _value(step, "speedup_vs_official"),
        "fused_step_s": _value(step, "step_s"),
        "reference_step_s": _value(ref_step, "step_s"),
        "pre_gru_share": _value(step, "pre_gru_share"),
        "host_syncs_per_step": _value(step, "host_syncs_per_step"),
        "augment_gb_per_s": _value(aug, "gb_per_s"),
        "copy_gb_per_s": _value(aug, "copy_gb_per_s"),
        "augment_fraction_of_copy_bandwidth": _value(aug, "fraction_of_copy_bandwidth"),
        "augment_tile_table_vs_best": _value(tiles, "table_vs_best"),
        "augment_best_tile": _value(tiles, "best_tile"),
        "day_projection_fwd_bwd_speedup_vs_official": _value(day, "speedup_vs_official"),
        "training_s_per_batch": _value(cli, "s_per_batch"),
        "projected_120k_batches_h": _value(cli, "projected_120k_batches_h"),
        "projected_120k_batches_h_from_step_bench": _value(step, "projected_120k_batches_h"),
    }
    cpu = any(b.get("extra_info", {}).get("cpu_figures") for b in benchmarks)
    f["cpu_figures"] = cpu
    return f


def targets(fig: dict) -> dict:
    out = {}
    for name, (text, ok) in TARGETS.items():
        v = fig.get(name, UNMEASURED)
        out[name] = {"target": text, "value": v,
                     "met": UNMEASURED if not isinstance(v, (int, float)) else bool(ok(v))}
    return out


def _stages(summary: Path) -> dict:
    stages = {}
    if summary.is_file():
        for line in summary.read_text().splitlines():
            if "] stage " in line:
                name, _, status = line.split("] stage ", 1)[1].partition(": ")
                stages[name] = status
    return stages


def merge(out_dir: Path) -> dict:
    benchmarks = _load(out_dir / "headline.json") + _load(out_dir / "op-bench.json")
    fig = figures(benchmarks)
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        **_versions(),
        "stages": _stages(out_dir / "summary.txt"),
        "figures": fig,
        "targets": targets(fig),
        "benchmarks": [{"name": b.get("name"), "group": b.get("group"),
                        "median_s": b.get("stats", {}).get("median"),
                        "extra_info": b.get("extra_info", {})} for b in benchmarks],
    }


def main(argv: list[str]) -> int:
    args = [a for a in argv if a != "--print"]
    if len(args) != 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    result = merge(Path(args[0]))
    Path(args[1]).write_text(json.dumps(result, indent=1, default=str) + "\n")
    if "--print" in argv:
        for k, v in result["figures"].items():
            print(f"  {k}: {v:.4g}" if isinstance(v, float) else f"  {k}: {v}")
        for k, t in result["targets"].items():
            print(f"  target {k} {t['target']}: {t['met']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
