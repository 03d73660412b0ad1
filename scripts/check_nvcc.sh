#!/usr/bin/env bash
# Compile the CUDA kernels of fastbci (csrc/cuda/*.cu) with the plain nvcc for sm_80 and sm_90,
# without torch and without a GPU: a CI check that the kernel sources stay valid CUDA.
# Fails on any compile error or warning. Skips (exit 0) with a message when nvcc is absent.
# Override the compiler with NVCC=/path/to/nvcc and the architectures with CHECK_NVCC_ARCHS="80 90".
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
