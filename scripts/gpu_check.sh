#!/usr/bin/env bash
# One command for a machine with a GPU: build fastbci's CUDA extension, run the test suite on the
# GPU, run the benchmark suite at the official shapes, and leave every log and result in $OUT.
#
#   OUT=/some/dir bash scripts/gpu_check.sh        # from anywhere; $OUT defaults to ./gpu_check_out
#
# Made for an offline machine (no package registry): it never downloads anything. torch (with
# CUDA), triton, pytest and pytest-benchmark must already be installed; the script reports which
# of fastbci's runtime dependencies (numpy, scipy, h5py, pyyaml, tqdm) and build tools
# (setuptools, wheel, ninja) are missing, then installs fastbci itself with
# `pip install -e . --no-build-isolation --no-deps --no-index`.
#
# Stages, each with its own time limit (seconds, environment overrides) so the whole run stays
# within 10 minutes on an H100 and a slow stage cannot eat the next one's time:
#   1. environment report                        -> $OUT/env.txt
#   2. build (FASTBCI_FORCE_CUDA_BUILD=1, only this GPU's architecture) -> $OUT/build.log
#        GPU_CHECK_BUILD_S (default 180)
#   3. tests: pytest -q                          -> $OUT/tests.log, $OUT/tests-junit.xml
#        GPU_CHECK_TEST_S (default 180)
#   4. benchmarks: pytest bench --benchmark-only -> $OUT/bench.log, $OUT/bench-<gpu>.json
#        GPU_CHECK_BENCH_S (default 200)
# A summary (one line per stage with its status and seconds) goes to $OUT/summary.txt and stdout.
# Exit status: 0 when every stage passed, 1 when a stage failed or timed out (later stages still
# run, except that nothing runs after a failed build), 2 for a machine that cannot run it at all.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
OUT="${OUT:-$ROOT/gpu_check_out}"
mkdir -p "$OUT"
BUILD_S="${GPU_CHECK_BUILD_S:-180}"
TEST_S="${GPU_CHECK_TEST_S:-180}"
BENCH_S="${GPU_CHECK_BENCH_S:-200}"
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
STATUS=0
T_ALL=$SECONDS

say() { echo "[gpu_check] $*" | tee -a "$SUMMARY"; }

# run_stage NAME LIMIT LOG CMD...: run with a time limit, tee the output, record the outcome
run_stage() {
  local name="$1" limit="$2" log="$3"
  shift 3
  local t0=$SECONDS rc
  echo "[gpu_check] $name: $* (limit ${limit}s, log $log)"
  timeout --signal=INT --kill-after=20 "$limit" "$@" 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  local dt=$((SECONDS - t0))
  if [ "$rc" -eq 0 ]; then
    say "$name: OK (${dt}s)"
  elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    say "$name: TIMED OUT after ${dt}s (limit ${limit}s; raise it with the GPU_CHECK_*_S variables)"
    STATUS=1
  else
    say "$name: FAILED with status $rc (${dt}s): see $log"
    STATUS=1
  fi
  return "$rc"
}

# ---------------------------------------------------------------------------- 1. environment
if ! command -v "$PY" > /dev/null 2>&1; then
  echo "[gpu_check] no Python interpreter '$PY' (set PYTHON=...)" >&2
  exit 2
fi
GPU_INFO=$("$PY" - <<'EOF' 2>&1
import torch
if not torch.cuda.is_available():
    raise SystemExit(f"torch {torch.__version__} sees no CUDA device (torch.version.cuda="
                     f"{torch.version.cuda})")
name = torch.cuda.get_device_name(0)
major, minor = torch.cuda.get_device_capability(0)
safe = "".join(ch if ch.isalnum() or ch in "-." else "_" for ch in name).strip("_")
print(f"{safe} {major}.{minor}")
EOF
)
if [ $? -ne 0 ]; then
  echo "[gpu_check] cannot run: $GPU_INFO" | tee -a "$SUMMARY" >&2
  exit 2
fi
GPU_NAME="${GPU_INFO% *}"
GPU_ARCH="${GPU_INFO##* }"

{
  echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  echo "repository: $ROOT ($(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo 'not a git checkout'))"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 || true
  command -v nvcc > /dev/null 2>&1 && nvcc --version | tail -n 2
  "$PY" - <<'EOF'
import importlib, platform, sys
import torch
print(f"python {platform.python_version()} ({sys.executable})")
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")
from torch.utils import cpp_extension
print(f"CUDA_HOME {cpp_extension.CUDA_HOME}")
missing = []
for mod, pkg, why in [("triton", "triton", "fused kernels"), ("pytest", "pytest", "tests"),
                      ("pytest_benchmark", "pytest-benchmark", "benchmarks"),
                      ("numpy", "numpy", "runtime"), ("scipy", "scipy", "runtime"),
                      ("h5py", "h5py", "runtime: every data test and the benchmarks"),
                      ("yaml", "pyyaml", "runtime: configs"), ("tqdm", "tqdm", "runtime: progress"),
                      ("setuptools", "setuptools", "build"), ("wheel", "wheel", "build"),
                      ("ninja", "ninja", "build (optional: parallel compile)"),
                      ("matplotlib", "matplotlib", "optional: training curves")]:
    try:
        m = importlib.import_module(mod)
        print(f"  {pkg:17s} {getattr(m, '__version__', 'present')}")
    except Exception as e:  # noqa: BLE001 - report anything that fails to import
        print(f"  {pkg:17s} MISSING ({why}): {type(e).__name__}: {e}")
        missing.append(pkg)
print("MISSING: " + (" ".join(missing) if missing else "none"))
EOF
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
say "GPU: $GPU_NAME (sm_${GPU_ARCH/./}); environment in $OUT/env.txt"
MISSING_LINE=$(grep '^MISSING: ' "$OUT/env.txt" | tail -n 1)
say "missing packages (no registry here, not installed): ${MISSING_LINE#MISSING: }"

# ---------------------------------------------------------------------------- 2. build
export FASTBCI_FORCE_CUDA_BUILD=1
export FASTBCI_CUDA_ARCH_LIST="${FASTBCI_CUDA_ARCH_LIST:-$GPU_ARCH}"
export MAX_JOBS="${MAX_JOBS:-$(nproc 2>/dev/null || echo 4)}"
export PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1
if ! run_stage build "$BUILD_S" "$OUT/build.log" \
    "$PY" -m pip install -e . --no-build-isolation --no-deps --no-index -v; then
  say "build failed: tests and benchmarks skipped"
  say "total ${SECONDS}s"
  exit 1
fi
if ! "$PY" - >> "$OUT/build.log" 2>&1 <<'EOF'
import torch
import fastbci.ops.day_projection as dp
assert dp.fused_available(), "fastbci._C does not import"
assert dp._has_kernel("cuda"), "fastbci._C was built without its CUDA kernels"
print("fastbci._C: CPU and CUDA kernels registered")
EOF
then
  say "build: fastbci._C lacks its CUDA kernels (see the end of $OUT/build.log)"
  STATUS=1
fi

# ---------------------------------------------------------------------------- 3. tests
run_stage tests "$TEST_S" "$OUT/tests.log" \
  "$PY" -m pytest -q -p no:cacheprovider --junitxml="$OUT/tests-junit.xml" -o junit_family=xunit2
grep -E '^(FAILED|ERROR)|[0-9]+ (passed|failed)' "$OUT/tests.log" | tail -n 30 >> "$SUMMARY" || true

# ---------------------------------------------------------------------------- 4. benchmarks
JSON="$OUT/bench-${GPU_NAME}.json"
run_stage bench "$BENCH_S" "$OUT/bench.log" \
  "$PY" -m pytest bench --benchmark-only -q -p no:cacheprovider --benchmark-json="$JSON" \
  --benchmark-columns=min,median,mean,rounds
grep -E '^(FAILED|ERROR)|[0-9]+ (passed|failed)' "$OUT/bench.log" | tail -n 10 >> "$SUMMARY" || true
if [ -s "$JSON" ]; then
  mkdir -p "$ROOT/bench/results"
  cp "$JSON" "$ROOT/bench/results/${GPU_NAME}.json" 2>/dev/null || true
  "$PY" - "$JSON" >> "$SUMMARY" 2>&1 <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
for b in d["benchmarks"]:
    e = b.get("extra_info", {})
    keys = [k for k in ("step_s", "pre_gru_share", "speedup_vs_reference", "speedup_vs_official",
                        "projected_120k_batches_h", "val_s")
            if k in e]
    extra = " ".join(f"{k}={e[k]:.4g}" for k in keys if isinstance(e[k], (int, float)))
    print(f"  {b['group'] or '':32s} {b['name']:60s} median {b['stats']['median'] * 1e3:9.3f} ms {extra}")
EOF
  say "benchmark results: $JSON (copy it to bench/results/${GPU_NAME}.json in the repository)"
fi

say "total $((SECONDS - T_ALL))s, status $STATUS"
exit "$STATUS"
