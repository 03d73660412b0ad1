#!/usr/bin/env bash
# The GPU-version mirror: build and check fastbci, without a GPU, with the versions a lent GPU
# machine comes with (scripts/gpu_versions.env: Python 3.12, torch 2.11.0 for CUDA 13.0, triton
# 3.6.0), so that a change that works only with CI's versions (torch 2.13.0 CPU, triton 3.7.1)
# fails here, not in the first minute of a GPU window. Stages, in order:
#   venv     make or reuse a venv with those versions and the test requirements: the wheels are
#            downloaded first (the only step that needs the registry), then installed offline;
#            torch's CUDA libraries are the ones torch pins, less those it does not load
#            (scripts/gpu_mirror_env.py)
#   build    copy the working tree to $VENV/src and `pip install -e` it there with the CUDA kernels
#            for sm_90 and this machine's nvcc (FASTBCI_FORCE_CUDA_BUILD=1); fails unless the day
#            projection has its CUDA kernel registered
#   compile  every Triton kernel of the hot path compiled for sm_90 as the JIT would, and the CUDA
#            day projection with nvcc: registers, spills, shared memory, occupancy; fails on a
#            compile error, a spill or an occupancy below the floor (tests/test_kernel_resources.py,
#            scripts/kernel_resources.py); the table is printed
#   tests    the kernel and compile tests (MIRROR_TESTS) under the Triton interpreter
#
#   bash scripts/gpu_mirror.sh          # results in $OUT (default ./gpu_mirror_out)
#
# Environment: FASTBCI_MIRROR_VENV (default .venv-gpu-mirror; reused when it holds the versions,
# so a second run downloads nothing, and the build is reused while setup.py and csrc/ are
# unchanged), FASTBCI_MIRROR_PYTHON (a Python 3.12; default: python3.12, else pyenv's),
# NVCC or CUDA_HOME (the CUDA toolkit; default: nvcc on PATH), FASTBCI_MIRROR_OFFLINE_OK=1 (a
# failed download exits 0 instead of 3, with the same banner).
# $OUT: gpu_mirror.json (outcome, versions, stage times, download and install figures, resource
# table, test summary), kernel_resources.json, tests.xml, venv.json, log.txt, venv-pip.log.
# Exit status: 0 passed; 1 a stage failed; 2 cannot run here (no Python 3.12, no nvcc, bad
# usage); 3 NOT RUN: a download failed (the banner names it; 0 with FASTBCI_MIRROR_OFFLINE_OK=1).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# The kernel and compile tests, chosen for what can differ on the GPU machine's versions within
# about 2.5 minutes of the 2-core CI (docs/benchmarks.md): the day projection op (opcheck,
# autograd, registration with torch 2.11), the patchify and augment kernels' tests (launchers,
# Triton's binder and specialisation, the sm_90 compile tests), the fused ops under
# torch.compile, the kernel launch, Philox and gather tests. Left to the main suite: the
# augment kernel's interpreter numerics (the GPU machine compiles the kernels, it does not
# interpret them) and the model- and trainer-level compile tests.
MIRROR_TESTS=(tests/test_day_projection.py tests/test_patchify.py tests/test_augment_kernel.py
              tests/test_compile.py::test_fused_ops_have_no_graph_break
              tests/test_compile.py::test_fused_ops_fullgraph_equal_eager
              tests/test_compile.py::test_fastbci_step_up_to_the_gru_fullgraph_equals_eager
              tests/test_compile.py::test_no_recompile_across_lengths_and_steps
              tests/test_compile.py::test_bad_day_index_is_a_clear_error
              tests/test_kernel_launch.py tests/test_philox.py tests/test_gather.py)
MIRROR_DESELECT_K="not test_fused_matches_reference_fp32 and not test_fused_bf16_output_2x_rule"

MODE=all
if [ "${1:-}" = "--prepare" ] && [ $# -eq 1 ]; then
  MODE=prepare
elif [ $# -gt 0 ]; then
  echo "usage: [OUT=DIR] [FASTBCI_MIRROR_VENV=DIR] bash scripts/gpu_mirror.sh [--prepare]" >&2
  exit 2
fi
OUT="${OUT:-$ROOT/gpu_mirror_out}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
if [ "$MODE" = prepare ]; then  # its stage lines go into the next full run's summary
  LOG="$OUT/prepare-log.txt"
  STAGES="$OUT/prepare.tsv"
  VENV_RECORD="$OUT/prepare-venv.json"
else
  LOG="$OUT/log.txt"
  STAGES="$OUT/stages.tsv"
  VENV_RECORD="$OUT/venv.json"
  rm -f "$OUT"/{gpu_mirror.json,kernel_resources.json,tests.xml,registration.txt}
fi
rm -f "$VENV_RECORD" "$OUT/venv-pip.log"
: > "$LOG"
: > "$STAGES"
T_ALL=$SECONDS
say() { echo "[gpu_mirror] $*" | tee -a "$LOG"; }
record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >> "$STAGES"; }
finish() {  # the summary (gpu_mirror.json) and the exit status (--prepare: the stage lines only)
  if [ "$MODE" = prepare ]; then
    cat "$STAGES"
    grep -qv $'\tOK\t' "$STAGES" && exit 1
    exit 0
  fi
  python3 "$ROOT/scripts/gpu_mirror_env.py" summary "$OUT" | tee -a "$LOG"
  exit "${PIPESTATUS[0]}"
}

# ---------------------------------------------------------------------------------- versions
if ! versions=$(python3 scripts/gpu_mirror_env.py versions); then
  say "cannot run: scripts/gpu_versions.env is malformed"
  exit 2
fi
eval "$versions"  # GPU_PYTHON, GPU_TORCH, GPU_TORCH_CUDA, GPU_TRITON, GPU_CUDA_ARCH (checked)
say "GPU machine's versions (scripts/gpu_versions.env): Python $GPU_PYTHON, torch $GPU_TORCH" \
    "(CUDA $GPU_TORCH_CUDA), triton $GPU_TRITON, sm_${GPU_CUDA_ARCH/./}"

find_python() {  # a Python $GPU_PYTHON: FASTBCI_MIRROR_PYTHON, python3.X on PATH, pyenv's
  local c
  for c in "${FASTBCI_MIRROR_PYTHON:-}" "python$GPU_PYTHON" \
           $(ls -d "${PYENV_ROOT:-$HOME/.pyenv}/versions/$GPU_PYTHON".*/bin/python"$GPU_PYTHON" \
             2>/dev/null | sort -V -r); do
    [ -n "$c" ] || continue
    if [ "$("$c" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" \
         = "$GPU_PYTHON" ]; then
      echo "$c"
      return 0
    fi
  done
  return 1
}
find_cuda() {  # sets NVCC and CUDA_HOME (the toolkit root nvcc itself reports)
  if [ -z "${NVCC:-}" ]; then
    if [ -n "${CUDA_HOME:-}" ] && [ -x "$CUDA_HOME/bin/nvcc" ]; then NVCC="$CUDA_HOME/bin/nvcc"
    elif command -v nvcc > /dev/null 2>&1; then NVCC="$(command -v nvcc)"
    elif [ -x /usr/local/cuda/bin/nvcc ]; then NVCC=/usr/local/cuda/bin/nvcc
    else return 1
    fi
  fi
  local top
  top=$("$NVCC" --dryrun -c -x cu /dev/null -o /dev/null 2>&1 | sed -n 's/^#\$ TOP=//p' | head -n 1)
  [ -n "$top" ] && [ -f "$top/include/cuda_runtime.h" ] || return 1
  CUDA_HOME="$(cd "$top" && pwd -P)"
  NVCC="$CUDA_HOME/bin/nvcc"
  export NVCC CUDA_HOME
}
if ! PY312=$(find_python); then
  say "cannot run: no Python $GPU_PYTHON (set FASTBCI_MIRROR_PYTHON=/path/to/python$GPU_PYTHON)"
  exit 2
fi
if ! find_cuda; then
  say "cannot run: no CUDA toolkit (nvcc on PATH, \$NVCC or \$CUDA_HOME/bin/nvcc with its headers)"
  exit 2
fi
say "Python: $PY312 ($("$PY312" --version 2>&1)); nvcc: $NVCC ($("$NVCC" --version | tail -n 1))"

# ---------------------------------------------------------------------------------- 1. venv
VENV="${FASTBCI_MIRROR_VENV:-$ROOT/.venv-gpu-mirror}"
VENV="${VENV%/}"
VPY="$VENV/bin/python"
exec 9> "$VENV.lock"  # one run at a time per venv (CI's --prepare in the background, then the run)
if ! flock -n 9; then
  say "waiting for another scripts/gpu_mirror.sh on $VENV to finish"
  flock 9
fi
t0=$SECONDS
if [ -e "$VENV" ] && [ ! -f "$VENV/pyvenv.cfg" ]; then
  say "cannot run: $VENV exists and is not a virtual environment (not touching it)"
  exit 2
fi
if [ -x "$VPY" ] && [ "$("$VPY" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" \
     != "$GPU_PYTHON" ]; then
  say "venv: $VENV is not a Python $GPU_PYTHON venv: making it again"
  rm -rf "$VENV"
fi
[ -x "$VPY" ] || "$PY312" -m venv "$VENV" >> "$LOG" 2>&1
say "venv: $VENV (downloads, then an offline install, when it lacks the versions)"
"$VPY" scripts/gpu_mirror_env.py venv "$VENV" "$VENV_RECORD" >> "$LOG" 2>&1
rc=$?
venv_detail=$(python3 - "$VENV_RECORD" <<'EOF'
import json, sys
try:
    r = json.load(open(sys.argv[1]))
except (OSError, ValueError):
    sys.exit(0)
parts = [r.get("action", "?")]
if "download_s" in r:
    parts.append(f"download {r['download_s']} s ({r['download_mb']} MB)")
if "install_s" in r:
    parts.append(f"install {r['install_s']} s, venv {r.get('venv_mb', '?')} MB")
why = r.get("error") or (f"not reused: {r['why_not_reused']}" if "why_not_reused" in r else "")
print(", ".join(parts) + (f"; {why}" if why else ""))
EOF
)
if [ "$rc" -eq 3 ]; then
  record venv "NOT RUN" $((SECONDS - t0)) "a download failed: see $(basename "$VENV_RECORD")"
  {
    echo "################################################################################"
    echo "## GPU-VERSION MIRROR NOT RUN: a download from the package registry failed."
    python3 -c "import json,sys; f=json.load(open(sys.argv[1]))['download_failed']; \
print('## could not download:', f['what']); print('## registry:', f['registry']); \
[print('##   pip:', l) for l in f['pip_says']]" \
      "$VENV_RECORD" 2>/dev/null
    echo "## Nothing was built or tested with torch $GPU_TORCH / triton $GPU_TRITON."
    echo "################################################################################"
  } | tee -a "$LOG"
  [ "$MODE" = prepare ] && exit 3
  python3 "$ROOT/scripts/gpu_mirror_env.py" summary "$OUT" | tee -a "$LOG"
  if [ "${FASTBCI_MIRROR_OFFLINE_OK:-0}" = "1" ]; then
    say "FASTBCI_MIRROR_OFFLINE_OK=1: exiting 0 although the mirror did not run"
    exit 0
  fi
  exit 3
elif [ "$rc" -ne 0 ]; then
  record venv FAILED $((SECONDS - t0)) "$venv_detail"
  say "venv FAILED: $venv_detail (see $OUT/venv-pip.log)"
  finish
fi
record venv OK $((SECONDS - t0)) "$venv_detail"
say "venv: $venv_detail ($((SECONDS - t0)) s)"

# ---------------------------------------------------------------------------------- 2. build
SRC="$VENV/src"
CUDA_OPS="fastbci::day_projection fastbci::day_projection_backward"
registered() {  # fastbci._C of the copy has CUDA kernels for the day projection ops
  (cd "$SRC" && "$VPY" - $CUDA_OPS <<'EOF_PY'
import sys
import torch
import fastbci._C  # noqa: F401  (its TORCH_LIBRARY registrations)
missing = [op for op in sys.argv[1:]
           if not torch._C._dispatch_has_kernel_for_dispatch_key(op, "CUDA")]
print(f"fastbci._C ({fastbci._C.__file__}): CUDA kernels for {' '.join(sys.argv[1:])}: "
      + ("missing for " + " ".join(missing) if missing else "registered"))
sys.exit(1 if missing else 0)
EOF_PY
  ) > "$OUT/registration.txt" 2>&1
  local rc=$?
  cat "$OUT/registration.txt" >> "$LOG"
  return "$rc"
}
t0=$SECONDS
build_ok=0
if ! "$VPY" scripts/gpu_mirror_env.py sync "$SRC" >> "$LOG" 2>&1; then
  build_detail="could not copy the working tree to $SRC (see log.txt)"
else
  want=$( (cd "$SRC" && cat setup.py pyproject.toml csrc/*.cpp csrc/*.h csrc/cuda/* \
           && "$VPY" -c 'import torch; print(torch.__version__)' \
           && echo "$CUDA_HOME $GPU_CUDA_ARCH") 2>/dev/null | sha1sum | cut -c1-40)
  stamp="$VENV/.fastbci-mirror-build"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && registered; then
    build_ok=1
    build_detail="reused: setup.py, pyproject.toml and csrc/ unchanged since the last build"
  else
    rm -f "$stamp"
    say "build: pip install -e . in $SRC (FASTBCI_FORCE_CUDA_BUILD=1, FASTBCI_CUDA_ARCH_LIST=$GPU_CUDA_ARCH, CUDA_HOME=$CUDA_HOME)"
    (cd "$SRC" && FASTBCI_FORCE_CUDA_BUILD=1 FASTBCI_CUDA_ARCH_LIST="$GPU_CUDA_ARCH" \
       MAX_JOBS="${MAX_JOBS:-$(nproc 2>/dev/null || echo 2)}" PIP_DISABLE_PIP_VERSION_CHECK=1 \
       "$VPY" -m pip install -e . --no-build-isolation --no-deps --no-index) >> "$LOG" 2>&1
    rc=$?
    if [ "$rc" -ne 0 ]; then
      build_detail="pip install -e . exited $rc"
      grep -v "^WARNING: Location" "$LOG" | tail -n 40
    elif ! registered; then
      build_detail="built, but the CUDA kernels of $CUDA_OPS are not registered"
    else
      build_ok=1
      echo "$want" > "$stamp"
      build_detail="built with the CUDA kernels for sm_${GPU_CUDA_ARCH/./} ($NVCC)"
    fi
  fi
  [ -f "$OUT/registration.txt" ] && say "build: $(tail -n 1 "$OUT/registration.txt")"
fi
if [ "$build_ok" -eq 1 ]; then
  record build OK $((SECONDS - t0)) "$build_detail"
else
  record build FAILED $((SECONDS - t0)) "$build_detail"
  say "build FAILED: $build_detail; the compile and test stages are skipped"
  finish
fi
say "build: $build_detail ($((SECONDS - t0)) s)"
[ "$MODE" = prepare ] && finish

# ---------------------------------------------------------------------------------- 3. compile
t0=$SECONDS
say "compile: every hot-path kernel for sm_90 (tests/test_kernel_resources.py)"
(cd "$SRC" && FASTBCI_KERNEL_RESOURCES_JSON="$OUT/kernel_resources.json" \
   "$VPY" -m pytest -q -p no:cacheprovider tests/test_kernel_resources.py) 2>&1 \
   | tail -n 25 | tee -a "$LOG"
rc=${PIPESTATUS[0]}
if [ -f "$OUT/kernel_resources.json" ]; then
  "$VPY" "$SRC/scripts/kernel_resources.py" --show "$OUT/kernel_resources.json" | tee -a "$LOG"
fi
if [ "$rc" -eq 0 ]; then
  record compile OK $((SECONDS - t0)) "no spill, every occupancy at or above its floor"
else
  record compile FAILED $((SECONDS - t0)) "a kernel did not compile, spills or is below its floor"
fi

# ---------------------------------------------------------------------------------- 4. tests
t0=$SECONDS
say "tests (TRITON_INTERPRET=1): ${MIRROR_TESTS[*]} -k '$MIRROR_DESELECT_K'"
(cd "$SRC" && TRITON_INTERPRET=1 "$VPY" -m pytest -q -p no:cacheprovider \
   --junitxml="$OUT/tests.xml" -k "$MIRROR_DESELECT_K" "${MIRROR_TESTS[@]}") 2>&1 | tee -a "$LOG"
rc=${PIPESTATUS[0]}
if [ "$rc" -eq 0 ]; then
  record tests OK $((SECONDS - t0)) "the kernel and compile tests"
else
  record tests FAILED $((SECONDS - t0)) "pytest exited $rc"
fi
say "total $((SECONDS - T_ALL)) s"
finish
