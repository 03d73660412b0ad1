#!/usr/bin/env bash
# The first-GPU-run check: build, prove correctness, measure the headline figures, in <= 8 min.
#
#   bash scripts/gpu_check.sh --plan            # the stages, in order, with budgets; runs nothing
#   OUT=/some/dir bash scripts/gpu_check.sh     # run them ($OUT defaults to ./gpu_check_out)
#
# Stages run in order of value, each under its own time budget (seconds; `timeout`: TERM, then KILL),
# and each writes its own result file to $OUT as it finishes, so a run cut off at any point still
# returns what finished:
#   build       pip install -e . for this GPU's architecture only       -> log.txt
#   cuda-tests  the CUDA extension and the fused step, fused vs ref.    -> cuda-tests.xml (junit)
#   headline    one training step at the official shapes, fused vs reference, and 200 batches of
#               real training through `python -m fastbci.train`          -> headline.json
#   op-bench    per-op benchmarks (augment with a plain copy for the GB/s yardstick, the tile
#               sweep, day projection, patchify)                        -> op-bench.json
#   gpu-tests   the other test files with CUDA cases                    -> gpu-tests.xml
#   cpu-tests   the test files without CUDA cases                       -> cpu-tests.xml
# After every stage: summary.txt (environment, one line per stage, key figures) and
# <gpu-name>.json, the merged result to commit as bench/results/<gpu-name>.json (device,
# versions, the headline figures against their targets, "unmeasured" where a stage did not
# finish). All console output goes to log.txt. That is 8 files at most, each under 16 MB.
#
# Offline by design (no package registry): torch with CUDA, triton, pytest and pytest-benchmark
# must be installed; pytest-xdist, when present, runs the test stages in parallel (the Triton
# compiles are CPU-bound). Nothing imports matplotlib. The Triton kernels launch with one fixed
# tile per shape (kernels/augment.py gpu_tile: no autotuning), so compile counts are bounded and
# results are bitwise reproducible; only the op-bench tile sweep times the other tiles.
# Budgets: GPU_CHECK_<STAGE>_S (e.g. GPU_CHECK_HEADLINE_S=150) overrides one stage's.
# Exit status: 0 when every stage passed, 1 when one failed or ran out of time (later stages still
# run, except after a failed build), 2 when this machine cannot run the check at all.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

STAGES=(build cuda-tests headline op-bench gpu-tests cpu-tests)
declare -A BUDGET=([build]=110 [cuda-tests]=90 [headline]=110 [op-bench]=90 [gpu-tests]=55
                   [cpu-tests]=25)
CUDA_TEST_FILES=(tests/test_day_projection.py tests/test_fused_step.py)
# every other test file with CUDA cases (a CUDA marker, torch.cuda, a "cuda" device or the
# conftest `device` fixture): tests/test_gpu_check_plan.py fails when one is missing here
GPU_TEST_FILES=(tests/test_augment_kernel.py tests/test_patchify.py tests/test_philox.py
                tests/test_kernel_launch.py tests/test_hot_path.py tests/test_model.py
                tests/test_compat_model.py tests/test_trialstore.py tests/test_compat_dataset.py
                tests/test_reference_layers.py tests/test_reference_smoothing.py
                tests/test_train.py tests/test_devices.py)
# the fused step (with its speedups over the reference and official steps, measured in that case)
# and the reference step; the official step's own case and the validation pass are not needed
HEADLINE=("bench/test_bench_step.py::test_bench_train_step[fused]"
          "bench/test_bench_step.py::test_bench_train_step[reference]" bench/test_bench_training.py)
OP_BENCH=(bench/test_bench_augment.py bench/test_bench_day_projection.py
          bench/test_bench_patchify.py)

cpu_test_files() {  # tests/test_*.py minus the two lists above, space-separated
  local f g skip files=()
  for f in tests/test_*.py; do
    skip=0
    for g in "${CUDA_TEST_FILES[@]}" "${GPU_TEST_FILES[@]}"; do [ "$f" = "$g" ] && skip=1; done
    [ "$skip" -eq 0 ] && files+=("$f")
  done
  echo "${files[*]}"
}

budget() {  # the budget of a stage, with its GPU_CHECK_<STAGE>_S override
  local var="GPU_CHECK_$(echo "$1" | tr 'a-z-' 'A-Z_')_S"
  echo "${!var:-${BUDGET[$1]}}"
}

what() {
  case "$1" in
    build) echo "pip install -e . --no-build-isolation --no-deps --no-index (FASTBCI_CUDA_ARCH_LIST: this GPU's)" ;;
    cuda-tests) echo "${CUDA_TEST_FILES[*]}" ;;
    headline) echo "${HEADLINE[*]}" ;;
    op-bench) echo "${OP_BENCH[*]}" ;;
    gpu-tests) echo "${GPU_TEST_FILES[*]}" ;;
    cpu-tests) cpu_test_files ;;
  esac
}

if [ "${1:-}" = "--plan" ]; then
  total=0
  i=0
  for s in "${STAGES[@]}"; do
    i=$((i + 1))
    b=$(budget "$s")
    total=$((total + b))
    echo "$i $s $(budget "$s") $(what "$s")"
  done
  echo "total $total"
  exit 0
fi
if [ $# -gt 0 ]; then
  echo "usage: [OUT=DIR] bash scripts/gpu_check.sh [--plan]" >&2
  exit 2
fi

PY="${PYTHON:-python3}"
OUT="${OUT:-$ROOT/gpu_check_out}"
mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"
LOG="$OUT/log.txt"
rm -f "$SUMMARY" "$LOG" "$OUT"/{cuda-tests,gpu-tests,cpu-tests}.xml "$OUT"/{headline,op-bench}.json
: > "$SUMMARY"
: > "$LOG"
STATUS=0
T_ALL=$SECONDS
say() { echo "[gpu_check] $*" | tee -a "$SUMMARY" "$LOG"; }
cap_log() {  # keep log.txt under 15 MB (the tail)
  if [ "$(stat -c %s "$LOG" 2>/dev/null || echo 0)" -gt 15000000 ]; then
    tail -c 14000000 "$LOG" > "$LOG.tmp" && mv "$LOG.tmp" "$LOG"
  fi
}

# the versions CI's GPU-version mirror (scripts/gpu_mirror.sh) builds and tests with: one line each
VERSIONS_FILE="$ROOT/scripts/gpu_versions.env"
if [ -f "$VERSIONS_FILE" ]; then
  say "versions CI mirrors (scripts/gpu_versions.env): $(grep -E '^[A-Z_]+=' "$VERSIONS_FILE" | tr '\n' ' ')"
else
  say "scripts/gpu_versions.env is missing: the versions CI's mirror builds with are unknown"
fi

# ---------------------------------------------------------------------------- the machine
if ! command -v "$PY" > /dev/null 2>&1; then
  say "cannot run: no Python interpreter '$PY' (set PYTHON=...)"
  exit 2
fi
if ! GPU_INFO=$("$PY" - 2>&1 <<'EOF'
import torch
if not torch.cuda.is_available():
    raise SystemExit(f"torch {torch.__version__} sees no CUDA device (torch.version.cuda="
                     f"{torch.version.cuda})")
name = torch.cuda.get_device_name(0)
major, minor = torch.cuda.get_device_capability(0)
safe = "".join(ch if ch.isalnum() or ch in "-." else "_" for ch in name).strip("_")
print(f"{safe} {major}.{minor}")
EOF
); then
  say "cannot run: $GPU_INFO"
  exit 2
fi
GPU_NAME="${GPU_INFO% *}"
GPU_ARCH="${GPU_INFO##* }"
RESULT="$OUT/$GPU_NAME.json"
{
  echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  echo "repository: $ROOT ($(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo 'not a git checkout'))"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>&1 || true
  "$PY" - <<'EOF'
import importlib, platform
import torch
print(f"python {platform.python_version()}; torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"cuDNN {torch.backends.cudnn.version()}")
have, missing = [], []
for mod in ("triton", "pytest", "pytest_benchmark", "xdist", "numpy", "scipy", "h5py", "yaml",
            "tqdm", "setuptools", "wheel", "ninja", "matplotlib"):
    try:
        have.append(f"{mod} {getattr(importlib.import_module(mod), '__version__', '')}".strip())
    except Exception:  # noqa: BLE001 - report anything that fails to import
        missing.append(mod)
print("present: " + ", ".join(have))
print("MISSING: " + (" ".join(missing) if missing else "none"))
EOF
} >> "$SUMMARY" 2>&1
"$PY" - "$VERSIONS_FILE" "$GPU_ARCH" >> "$SUMMARY" 2>&1 <<'EOF'
import platform, re, sys
import torch, triton
try:
    want = dict(re.findall(r"^([A-Z_]+)=(\S+)", open(sys.argv[1]).read(), re.M))
except OSError:
    sys.exit(0)
have = {"GPU_PYTHON": ".".join(platform.python_version().split(".")[:2]),
        "GPU_TORCH": torch.__version__.split("+")[0], "GPU_TORCH_CUDA": torch.version.cuda,
        "GPU_TRITON": triton.__version__, "GPU_CUDA_ARCH": sys.argv[2]}
diff = [f"{k} {have[k]} (file: {want.get(k)})" for k in have if str(have[k]) != want.get(k)]
print("versions: as scripts/gpu_versions.env says" if not diff else
      "VERSIONS DIFFER from scripts/gpu_versions.env, which CI's mirror builds with: "
      + "; ".join(diff) + ": update that file")
EOF
cat "$SUMMARY" | tee -a "$LOG"
say "GPU: $GPU_NAME (sm_${GPU_ARCH/./}); plan:"
bash "${BASH_SOURCE[0]}" --plan | sed 's/^/  /' | tee -a "$SUMMARY" "$LOG"
export PYTHONPATH="$ROOT/scripts${PYTHONPATH:+:$PYTHONPATH}"  # the pytest_partial plugin
HAVE_XDIST=0
"$PY" -c "import xdist" 2>/dev/null && HAVE_XDIST=1

merge() {  # the merged result file, from whatever finished (merge --print: figures to summary)
  "$PY" "$ROOT/scripts/gpu_results.py" "$OUT" "$RESULT" "$@" >> "$SUMMARY" 2>> "$LOG" \
    || say "merging the results into $RESULT failed (see log.txt)"
}

# run_stage NAME CMD...: run under the stage's budget, log everything, record the outcome
run_stage() {
  local name="$1" limit t0=$SECONDS rc dt
  shift
  limit=$(budget "$name")
  echo "[gpu_check] $name (budget ${limit}s): $*" >> "$LOG"
  # TERM, not INT: the trainer under test turns Ctrl-C into a graceful stop, which would report
  # the tests running at the cut as failures; the partial result files hold what finished
  timeout --signal=TERM --kill-after=10 "$limit" "$@" >> "$LOG" 2>&1
  rc=$?
  dt=$((SECONDS - t0))
  if [ "$rc" -eq 0 ]; then
    say "stage $name: OK (${dt}s of ${limit}s)"
  elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    say "stage $name: CUT OFF at its budget (${dt}s of ${limit}s): what finished is kept"
    STATUS=1
  else
    say "stage $name: FAILED, status $rc (${dt}s of ${limit}s): see log.txt"
    STATUS=1
  fi
  cap_log
  return "$rc"
}

pytest_stage() {  # pytest_stage NAME JUNIT_FILE WORKERS DIST FILES... (xdist: -n WORKERS --dist DIST)
  local name="$1" junit="$2" workers="$3" dist="$4"
  shift 4
  local par=()
  [ "$HAVE_XDIST" -eq 1 ] && par=(-n "$workers" --dist "$dist")
  run_stage "$name" "$PY" -m pytest -q -p no:cacheprovider -p pytest_partial \
    --partial-junit="$junit" "${par[@]}" "$@"
  if [ -f "$junit" ]; then
    "$PY" - "$junit" >> "$SUMMARY" 2>> "$LOG" <<'EOF'
import sys, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
suite = root if root.tag == "testsuite" else root.find("testsuite")
a = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
print(f"  {a['tests']} tests: {a['tests'] - a['failures'] - a['errors'] - a['skipped']} passed, "
      f"{a['failures']} failed, {a['errors']} errors, {a['skipped']} skipped")
for case in suite.iter("testcase"):
    for bad in list(case.findall("failure")) + list(case.findall("error")):
        msg = (bad.get("message") or "").splitlines()
        print(f"  FAILED {case.get('classname')}::{case.get('name')}: {msg[0][:200] if msg else ''}")
EOF
  fi
}

bench_stage() {  # bench_stage NAME JSON_FILE FILES...
  local name="$1" json="$2"
  shift 2
  run_stage "$name" "$PY" -m pytest -q -p no:cacheprovider -p pytest_partial --benchmark-only \
    --partial-benchmark-json="$json" --benchmark-json="$json" --benchmark-columns=min,median,rounds \
    "$@"
  merge
}

# ---------------------------------------------------------------------------- 1. build
export FASTBCI_FORCE_CUDA_BUILD=1
export FASTBCI_CUDA_ARCH_LIST="${FASTBCI_CUDA_ARCH_LIST:-$GPU_ARCH}"
export MAX_JOBS="${MAX_JOBS:-$(nproc 2>/dev/null || echo 4)}"
export PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1
if ! run_stage build "$PY" -m pip install -e . --no-build-isolation --no-deps --no-index; then
  say "build failed: nothing else can run"
  merge
  exit 1
fi
if ! "$PY" -c "import importlib, sys; d = importlib.import_module('fastbci.ops.day_projection'); \
sys.exit(0 if d._has_kernel('cuda') else 1)" >> "$LOG" 2>&1; then
  say "build: fastbci._C has no CUDA kernels (see log.txt)"
  STATUS=1
fi

# ---------------------------------------------------------------------------- 2-6
pytest_stage cuda-tests "$OUT/cuda-tests.xml" 2 loadfile "${CUDA_TEST_FILES[@]}"
bench_stage headline "$OUT/headline.json" "${HEADLINE[@]}"
bench_stage op-bench "$OUT/op-bench.json" "${OP_BENCH[@]}"
pytest_stage gpu-tests "$OUT/gpu-tests.xml" 8 load "${GPU_TEST_FILES[@]}"
# shellcheck disable=SC2046  # the file list is split on purpose
pytest_stage cpu-tests "$OUT/cpu-tests.xml" 8 loadfile $(cpu_test_files)
merge --print

say "total $((SECONDS - T_ALL))s, status $STATUS; commit $RESULT as bench/results/$GPU_NAME.json"
exit "$STATUS"
