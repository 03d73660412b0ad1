// C-style launcher API of the fastbci day-projection CUDA kernels.
//
// Plain CUDA C++: no ATen / torch headers, so `nvcc -c` compiles the kernels on any machine with
// the CUDA toolkit (scripts/check_nvcc.sh). csrc/cuda/day_projection_cuda.cpp binds them to the
// fastbci::day_projection op.
//
// Layouts (all contiguous, row-major):
//   x, grad_x          (B, T, C_in)   float32 or bfloat16 (`dtype`)
//   out, grad_out      (B, T, C_out)  same dtype as x
//   dz                 (B, T, C_out)  float32 (backward scratch)
//   day_idx            (B,)           int64, values in [0, D)
//   weight, grad_weight (D, C_in, C_out) float32
//   bias, grad_bias    (D, C_out)     float32
// The GEMMs run on bf16 tensor cores (WMMA 16x16x16) with float32 accumulation; bias, softsign,
// the Philox dropout mask and the output cast are fused into the forward GEMM's epilogue. The
// backward first forms dz = grad_out * mask * softsign' in one element-wise pass (mask recomputed,
// softsign' from the saved output), then runs the dX and dW/db GEMMs on it. No host
// synchronisation: each CTA reads the day of its trial on the device. A day index outside
// [0, D) writes NaN to that trial's output / grad_x instead of reading out of bounds.
// Every launcher returns the launch status (cudaGetLastError after the launch).
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

namespace fastbci {
namespace cuda {

enum DayProjDType : int { kDayProjFloat32 = 0, kDayProjBFloat16 = 1 };

struct DayProjShape {
  int64_t B;      // trials
  int64_t T;      // time steps per trial
  int64_t C_in;   // input channels
  int64_t C_out;  // output channels
  int64_t D;      // stacked days in weight / bias
};

struct DayProjDropout {
  int enabled;          // 0: no dropout (p == 0)
  float p;              // keep an element when its uniform >= p (p rounded to float32)
  float scale;          // (float)(1 / (1 - p))
  uint64_t seed;        // Philox key
  uint32_t counter_hi;  // step * 8 + DROPOUT stream (csrc/philox.h)
};

// out = dropout(softsign(x[b] @ weight[day_idx[b]] + bias[day_idx[b]]))
cudaError_t day_projection_forward(const void* x, DayProjDType dtype, const int64_t* day_idx,
                                   const float* weight, const float* bias, void* out,
                                   DayProjShape shape, DayProjDropout dropout,
                                   cudaStream_t stream);

// dz = grad_out * mask * (1 - |out / scale|)^2 (0 where dropped; (1 - |out|)^2 without dropout)
// for the n = B * T * C_out elements, in float32 (grad_out and out in `dtype`). The mask is
// recomputed from Philox.
cudaError_t day_projection_backward_dz(const void* grad_out, const void* out, DayProjDType dtype,
                                       float* dz, int64_t n, DayProjDropout dropout,
                                       cudaStream_t stream);

// grad_x[b] = dz[b] @ weight[day_idx[b]]^T (grad_x in `dtype`, dz float32).
cudaError_t day_projection_backward_dx(const float* dz, DayProjDType dtype, const int64_t* day_idx,
                                       const float* weight, void* grad_x, DayProjShape shape,
                                       cudaStream_t stream);

// grad_weight[d] = sum over trials b of day d of x[b]^T dz[b], grad_bias[d] = column sums of dz
// (float32 dz, summed in float32 before the GEMM's bf16 operand rounding);
// one CTA per (day, weight tile) loops over the batch (no atomics, deterministic). Days without
// trials get zeros.
cudaError_t day_projection_backward_dw(const float* dz, const void* x, DayProjDType dtype,
                                       const int64_t* day_idx, float* grad_weight,
                                       float* grad_bias, DayProjShape shape, cudaStream_t stream);

}  // namespace cuda
}  // namespace fastbci
