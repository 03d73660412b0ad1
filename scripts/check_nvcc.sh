#!/usr/bin/env bash
# Compile the CUDA kernels of fastbci (csrc/cuda/*.cu) with the plain nvcc for sm_80 and sm_90,
# without torch and without a GPU: a CI check that the kernel sources stay valid CUDA.
# Fails on any compile error or warning. Skips (exit 0) with a message when nvcc is absent.
# Override the compiler with NVCC=/path/to/nvcc and the architectures with CHECK_NVCC_ARCHS="80 90".
# Then, when a Python with torch is found (PYTHON, default .venv/bin/python, else python3), the
# torch binding csrc/cuda/*.cpp is syntax-checked with the host compiler against torch's headers
# and the CUDA toolkit's (a CPU wheel of torch lacks only c10/cuda's generated cmake-macros
# header, which the check supplies).
set -euo pipefail
cd "$(dirname "$0")/.."

NVCC=${NVCC:-}
if [ -z "$NVCC" ]; then
  if command -v nvcc >/dev/null 2>&1; then
    NVCC=$(command -v nvcc)
  elif [ -n "${CUDA_HOME:-}" ] && [ -x "$CUDA_HOME/bin/nvcc" ]; then
    NVCC="$CUDA_HOME/bin/nvcc"
  elif [ -x /usr/local/cuda/bin/nvcc ]; then
    NVCC=/usr/local/cuda/bin/nvcc
  fi
fi
if [ -z "$NVCC" ]; then
  echo "[check_nvcc] SKIPPED: nvcc not found (PATH, \$CUDA_HOME/bin, /usr/local/cuda/bin);" \
       "the CUDA kernels were not compile-checked" >&2
  exit 0
fi

shopt -s nullglob
sources=(csrc/cuda/*.cu)
if [ ${#sources[@]} -eq 0 ]; then
  echo "[check_nvcc] no csrc/cuda/*.cu sources: nothing to check" >&2
  exit 0
fi

out=$(mktemp -d /tmp/fastbci_check_nvcc.XXXXXX)
trap 'rm -rf "$out"' EXIT
echo "[check_nvcc] $("$NVCC" --version | tail -n 1)" >&2
for arch in ${CHECK_NVCC_ARCHS:-80 90}; do
  for src in "${sources[@]}"; do
    obj="$out/$(basename "$src" .cu).sm_$arch.o"
    cmd=("$NVCC" -std=c++17 -O3 --use_fast_math -lineinfo -arch="sm_$arch" -Icsrc
         --Werror all-warnings -Xcompiler -Wall,-Wextra -c "$src" -o "$obj")
    echo "[check_nvcc] ${cmd[*]}" >&2
    "${cmd[@]}"
  done
done
echo "[check_nvcc] OK: ${#sources[@]} CUDA source(s) compiled for sm_${CHECK_NVCC_ARCHS:-80 90}" >&2

PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
if ! torch_inc=$("$PY" -c "from torch.utils.cpp_extension import include_paths; \
print(' '.join('-isystem ' + p for p in include_paths()))" 2>/dev/null); then
  echo "[check_nvcc] binding check SKIPPED: no torch in $PY" >&2
  exit 0
fi
cuda_inc="$(dirname "$(dirname "$(readlink -f "$NVCC")")")/include"
for d in "$cuda_inc" "${CUDA_HOME:-/nonexistent}/include" /usr/local/cuda/include; do
  if [ -f "$d/cuda_runtime.h" ]; then cuda_inc=$d; break; fi
done
mkdir -p "$out/c10/cuda/impl"
if ! "$PY" -c "import torch, os, sys; sys.exit(0 if os.path.exists(os.path.join(os.path.dirname(torch.__file__), 'include/c10/cuda/impl/cuda_cmake_macros.h')) else 1)"; then
  printf '#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n' > "$out/c10/cuda/impl/cuda_cmake_macros.h"
fi
for src in csrc/cuda/*.cpp; do
  # shellcheck disable=SC2086  # torch_inc is a list of -I flags
  cmd=("${CXX:-g++}" -std=c++17 -fsyntax-only $torch_inc -isystem "$cuda_inc" -I"$out" -Icsrc -Wall -Wextra -Werror
       -DFASTBCI_WITH_CUDA=1 "$src")
  echo "[check_nvcc] ${cmd[0]} -fsyntax-only ... $src" >&2
  "${cmd[@]}"
done
echo "[check_nvcc] OK: the torch binding csrc/cuda/*.cpp compiles against $("$PY" -c 'import torch; print(torch.__version__)')" >&2
