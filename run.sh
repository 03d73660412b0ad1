#!/usr/bin/env bash
# fastbci's one entry point for a fresh machine.
#   ./run.sh demo   set up (if needed) and train configs/demo.yaml on built-in synthetic data
#   ./run.sh test   set up (if needed) and run the whole test suite
#   ./run.sh bench  set up (if needed) and run the benchmark suite (pytest bench --benchmark-only)
#   ./run.sh setup  only set up: a virtual environment in .venv (override with FASTBCI_VENV)
# On a CPU machine the setup installs torch==2.13.0 (CPU wheel) and triton==3.7.1; a GPU user
# who already has a CUDA build of torch uses FASTBCI_VENV=/path/to/their/env, where the
# requirements below are satisfied and nothing is downloaded for torch.
set -euo pipefail
cd "$(dirname "$0")"
VENV=${FASTBCI_VENV:-.venv}
PY="$VENV/bin/python"

# the extras every setup installs (pyproject.toml's [project.optional-dependencies]); a CPU
# machine adds `cpu`, the pins of torch's CPU wheel and its triton, installed first
EXTRAS="lm,llm,tensorboard,sweep,dev"

setup() {
  if [ ! -x "$PY" ]; then
    echo "[fastbci] creating virtual environment $VENV" >&2
    python3 -m venv "$VENV"
  fi
  local extras="$EXTRAS"
  if "$PY" -c "import torch, sys; sys.exit(0 if torch.version.cuda else 1)" 2>/dev/null; then
    echo "[fastbci] CUDA torch found in $VENV: keeping it" >&2
  else
    "$PY" -m pip install -q -r requirements-cpu.txt
    extras="cpu,$extras"
  fi
  "$PY" -m pip install -q "setuptools>=64" wheel ninja
  local stamp="$VENV/.fastbci-build"
  local want
  want=$( (echo "$extras"; cat setup.py pyproject.toml csrc/*.cpp csrc/*.h csrc/cuda/* 2>/dev/null) | sha1sum | cut -c1-40)
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || ! "$PY" -c "import fastbci._C" 2>/dev/null; then
    echo "[fastbci] building and installing fastbci (pip install -e '.[$extras]' --no-build-isolation)" >&2
    "$PY" -m pip install -q -e ".[$extras]" --no-build-isolation
    echo "$want" > "$stamp"
  fi
}

case "${1:-}" in
  setup) setup ;;
  demo)
    setup
    shift
    exec "$PY" -m fastbci.demo "$@"
    ;;
  test)
    setup
    shift
    exec "$PY" -m pytest -q "$@"
    ;;
  bench)
    setup
    shift
    exec "$PY" -m pytest bench --benchmark-only -q "$@"
    ;;
  *)
    echo "usage: ./run.sh demo|test|bench|setup [args...]" >&2
    exit 2
    ;;
esac
