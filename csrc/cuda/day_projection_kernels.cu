// CUDA kernels of fastbci::day_projection: a grouped GEMM over the days of a batch on bf16
// tensor cores (WMMA 16x16x16, float32 accumulation) with fused epilogues. Plain CUDA C++ (no
// ATen), launched through the C-style API of day_projection_kernels.h.
//
// Tiling (the three GEMM kernels): a CTA of 4 warps computes a 64 x 64 output tile, each warp a
// 32 x 32 sub-tile (2 x 2 WMMA fragments); the K dimension advances in slices of 32 that are
// staged in shared memory as bf16 (converted from float32 / bf16 on load, zero-padded at the
// edges so any shape works).
//   forward : CTA per (time tile, C_out tile, trial b); it reads day_idx[b] on the device.
//             A = x[b] (T x C_in), B = weight[d] (C_in x C_out); epilogue: + bias[d], softsign,
//             Philox dropout, cast to the output dtype.
//   dz      : element-wise, once per element: dz = grad_out * mask * softsign'(z), with the mask
//             recomputed from Philox and softsign'(z) = (1 - |out / scale|)^2 taken from the saved
//             output (z and the mask are never stored). dz goes to a float32 scratch tensor
//             that both backward GEMMs read, so each mask bit is drawn once, not once per GEMM
//             tile (the GEMM operand loads stay plain copies), and the bias gradient sums dz
//             unrounded (the GEMMs round it to bf16 when they stage it).
//   dX      : CTA per (time tile, C_in tile, trial b). A = dz[b] (T x C_out), B = weight[d]^T.
//   dW, db  : CTA per (C_in tile, C_out tile, day d); it loops over the trials of the batch and
//             accumulates x[b]^T dz[b] for those of day d in registers: every output tile has one
//             owner, so no atomics and a deterministic result. The CTAs of the first C_in tile
//             also sum the float32 dz over rows (before its bf16 operand rounding) for
//             grad_bias.
#include "day_projection_kernels.h"

#include <cuda_bf16.h>
#include <mma.h>

#include <type_traits>

#include "../philox.h"

#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ < 800)
#error "fastbci day_projection kernels need sm_80 or newer (bf16 WMMA): set FASTBCI_CUDA_ARCH_LIST"
#endif

namespace fastbci {
namespace cuda {
namespace {

using namespace nvcuda;

constexpr int kBM = 64;       // output tile rows
constexpr int kBN = 64;       // output tile columns
constexpr int kBK = 32;       // K slice staged in shared memory
constexpr int kThreads = 128; // 4 warps, 2 x 2 over the tile
constexpr int kWarpM = 32;
constexpr int kWarpN = 32;
constexpr int kF = 16;        // WMMA fragment edge
constexpr int kPadH = 8;      // bf16 padding: keeps rows 16-byte aligned, spreads banks
constexpr int kPadF = 4;      // float padding

static_assert(kBM == 2 * kWarpM && kBN == 2 * kWarpN, "2 x 2 warps cover the tile");
static_assert(kThreads == 4 * 32, "4 warps");
static_assert(kBK % kF == 0 && kWarpM % kF == 0 && kWarpN % kF == 0, "fragment multiples");
static_assert(kThreads % kBN == 0 && kThreads / kBN == 2, "bias partial sums: 2 threads a column");

using FragAcc = wmma::fragment<wmma::accumulator, kF, kF, kF, float>;

// Shared memory of the forward and dX kernels: A row-major (m, k), B row-major (k, n).
// Every array starts at a multiple of 32 bytes, as WMMA loads and stores require.
struct __align__(32) SmemRowA {
  __nv_bfloat16 a[kBM][kBK + kPadH];  // 64 * 40 * 2 = 5120 bytes
  __nv_bfloat16 b[kBK][kBN + kPadH];  // 32 * 72 * 2 = 4608 bytes
  float c[kBM][kBN + kPadF];          // 64 * 68 * 4 = 17408 bytes
};

// Shared memory of the dW kernel: A = x^T stored column-major, i.e. as at[k][m].
struct __align__(32) SmemColA {
  __nv_bfloat16 at[kBK][kBM + kPadH];  // 32 * 72 * 2 = 4608 bytes
  __nv_bfloat16 b[kBK][kBN + kPadH];   // 4608 bytes
  float c[kBM][kBN + kPadF];           // 17408 bytes
  float bias_part[kThreads / kBN][kBN];
};

static_assert(sizeof(__nv_bfloat16) * kBM * (kBK + kPadH) % 32 == 0, "alignment of b");
static_assert(sizeof(__nv_bfloat16) * kBK * (kBN + kPadH) % 32 == 0, "alignment of c");
static_assert(sizeof(__nv_bfloat16) * kBK * (kBM + kPadH) % 32 == 0, "alignment of b (dW)");
static_assert(((kBK + kPadH) * 2) % 16 == 0 && ((kBN + kPadH) * 2) % 16 == 0 &&
                  ((kBM + kPadH) * 2) % 16 == 0 && ((kBN + kPadF) * 4) % 16 == 0,
              "WMMA leading dimensions must be multiples of 16 bytes");

__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_f32(float v);
template <>
__device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <>
__device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// softsign(z) * mask for element `index` of the output.
__device__ __forceinline__ float softsign_dropout(float z, int64_t index,
                                                  const DayProjDropout& dp) {
  float s = __fdiv_rn(z, 1.0f + fabsf(z));
  if (dp.enabled) {
    const float u = philox::dropout_uniform(static_cast<uint32_t>(index), dp.counter_hi, dp.seed);
    s = s * (u >= dp.p ? dp.scale : 0.0f);
  }
  return s;
}

// dz = grad * mask * softsign'(z), from the saved output y = softsign(z) * mask: for a kept
// element softsign(z) = y / scale and softsign'(z) = (1 - |softsign(z)|)^2; a dropped one gives 0.
// The same expression as the CPU implementation (csrc/day_projection.cpp).
__device__ __forceinline__ float grad_z(float g, float y, int64_t index, const DayProjDropout& dp) {
  if (dp.enabled) {
    const float u = philox::dropout_uniform(static_cast<uint32_t>(index), dp.counter_hi, dp.seed);
    if (!(u >= dp.p)) return 0.0f;
    const float a = 1.0f - fabsf(__fdiv_rn(y, dp.scale));
    return g * dp.scale * a * a;
  }
  const float a = 1.0f - fabsf(y);
  return g * a * a;
}

// acc += A_tile(warp rows, kBK) * B_tile(kBK, warp cols) from shared memory.
// LayoutA row_major: element (m, k) at a[m * lda + k]; col_major: at a[k * lda + m].
template <typename LayoutA>
__device__ __forceinline__ void warp_mma(const __nv_bfloat16* a, int lda, const __nv_bfloat16* b,
                                         int ldb, int warp_m, int warp_n, FragAcc (&acc)[2][2]) {
#pragma unroll
  for (int kk = 0; kk < kBK; kk += kF) {
    wmma::fragment<wmma::matrix_a, kF, kF, kF, __nv_bfloat16, LayoutA> fa[2];
    wmma::fragment<wmma::matrix_b, kF, kF, kF, __nv_bfloat16, wmma::row_major> fb[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int row = warp_m * kWarpM + i * kF;
      if constexpr (std::is_same<LayoutA, wmma::row_major>::value) {
        wmma::load_matrix_sync(fa[i], a + row * lda + kk, lda);
      } else {
        wmma::load_matrix_sync(fa[i], a + kk * lda + row, lda);
      }
    }
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      wmma::load_matrix_sync(fb[j], b + kk * ldb + warp_n * kWarpN + j * kF, ldb);
    }
#pragma unroll
    for (int i = 0; i < 2; ++i) {
#pragma unroll
      for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
    }
  }
}

__device__ __forceinline__ void zero_acc(FragAcc (&acc)[2][2]) {
#pragma unroll
  for (int i = 0; i < 2; ++i) {
#pragma unroll
    for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.0f);
  }
}

template <int LDC>
__device__ __forceinline__ void store_acc(float (*c)[LDC], int warp_m, int warp_n,
                                          const FragAcc (&acc)[2][2]) {
#pragma unroll
  for (int i = 0; i < 2; ++i) {
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      wmma::store_matrix_sync(&c[warp_m * kWarpM + i * kF][warp_n * kWarpN + j * kF], acc[i][j],
                              LDC, wmma::mem_row_major);
    }
  }
}

// A trial whose day index is outside [0, D): fill its (rows x cols) tile with NaN so the error
// shows instead of reading another day's weights or out of bounds.
template <typename T>
__device__ void fill_nan_tile(T* dst, int64_t row0, int64_t rows, int64_t col0, int64_t cols) {
  const T nan = from_f32<T>(__int_as_float(0x7fc00000));
  for (int i = threadIdx.x; i < kBM * kBN; i += kThreads) {
    const int64_t r = row0 + i / kBN, c = col0 + i % kBN;
    if (r < rows && c < cols) dst[r * cols + c] = nan;
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(const T* __restrict__ x, const int64_t* __restrict__ day_idx,
                   const float* __restrict__ weight, const float* __restrict__ bias,
                   T* __restrict__ out, DayProjShape s, DayProjDropout dp) {
  __shared__ SmemRowA sm;
  const int64_t b = blockIdx.z;
  const int64_t t0 = static_cast<int64_t>(blockIdx.x) * kBM;
  const int64_t n0 = static_cast<int64_t>(blockIdx.y) * kBN;
  const int tid = threadIdx.x, warp = tid / 32, warp_m = warp / 2, warp_n = warp % 2;
  T* out_b = out + b * s.T * s.C_out;
  const int64_t d = day_idx[b];  // the same for the whole CTA: uniform branch
  if (d < 0 || d >= s.D) {
    fill_nan_tile(out_b, t0, s.T, n0, s.C_out);
    return;
  }
  const T* x_b = x + b * s.T * s.C_in;
  const float* w_d = weight + d * s.C_in * s.C_out;

  FragAcc acc[2][2];
  zero_acc(acc);
  for (int64_t k0 = 0; k0 < s.C_in; k0 += kBK) {
    for (int i = tid; i < kBM * kBK; i += kThreads) {
      const int r = i / kBK, c = i % kBK;
      const int64_t t = t0 + r, k = k0 + c;
      const float v = (t < s.T && k < s.C_in) ? to_f32(x_b[t * s.C_in + k]) : 0.0f;
      sm.a[r][c] = __float2bfloat16_rn(v);
    }
    for (int i = tid; i < kBK * kBN; i += kThreads) {
      const int r = i / kBN, c = i % kBN;
      const int64_t k = k0 + r, n = n0 + c;
      const float v = (k < s.C_in && n < s.C_out) ? w_d[k * s.C_out + n] : 0.0f;
      sm.b[r][c] = __float2bfloat16_rn(v);
    }
    __syncthreads();
    warp_mma<wmma::row_major>(&sm.a[0][0], kBK + kPadH, &sm.b[0][0], kBN + kPadH, warp_m, warp_n,
                              acc);
    __syncthreads();
  }
  store_acc<kBN + kPadF>(sm.c, warp_m, warp_n, acc);
  __syncthreads();
  const float* b_d = bias + d * s.C_out;
  for (int i = tid; i < kBM * kBN; i += kThreads) {
    const int r = i / kBN, c = i % kBN;
    const int64_t t = t0 + r, n = n0 + c;
    if (t < s.T && n < s.C_out) {
      const int64_t index = (b * s.T + t) * s.C_out + n;
      out[index] = from_f32<T>(softsign_dropout(sm.c[r][c] + b_d[n], index, dp));
    }
  }
}

constexpr int kEltThreads = 256;
constexpr int kEltPerThread = 4;

// dz[i] = grad_z(grad_out[i], out[i], i) in float32 for the n elements of (B, T, C_out);
// consecutive threads take consecutive elements (coalesced), each thread kEltPerThread of them.
template <typename T>
__global__ void __launch_bounds__(kEltThreads)
    backward_dz_kernel(const T* __restrict__ grad_out, const T* __restrict__ out,
                       float* __restrict__ dz, int64_t n, DayProjDropout dp) {
  const int64_t base =
      static_cast<int64_t>(blockIdx.x) * kEltThreads * kEltPerThread + threadIdx.x;
#pragma unroll
  for (int j = 0; j < kEltPerThread; ++j) {
    const int64_t i = base + static_cast<int64_t>(j) * kEltThreads;
    if (i < n) dz[i] = grad_z(to_f32(grad_out[i]), to_f32(out[i]), i, dp);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    backward_dx_kernel(const float* __restrict__ dz, const int64_t* __restrict__ day_idx,
                       const float* __restrict__ weight, T* __restrict__ grad_x, DayProjShape s) {
  __shared__ SmemRowA sm;
  const int64_t b = blockIdx.z;
  const int64_t t0 = static_cast<int64_t>(blockIdx.x) * kBM;
  const int64_t n0 = static_cast<int64_t>(blockIdx.y) * kBN;  // over C_in
  const int tid = threadIdx.x, warp = tid / 32, warp_m = warp / 2, warp_n = warp % 2;
  T* gx_b = grad_x + b * s.T * s.C_in;
  const int64_t d = day_idx[b];
  if (d < 0 || d >= s.D) {
    fill_nan_tile(gx_b, t0, s.T, n0, s.C_in);
    return;
  }
  const float* w_d = weight + d * s.C_in * s.C_out;

  FragAcc acc[2][2];
  zero_acc(acc);
  for (int64_t k0 = 0; k0 < s.C_out; k0 += kBK) {
    // A = dz[b, t0:t0+BM, k0:k0+BK]
    for (int i = tid; i < kBM * kBK; i += kThreads) {
      const int r = i / kBK, c = i % kBK;
      const int64_t t = t0 + r, k = k0 + c;
      const float v =
          (t < s.T && k < s.C_out) ? dz[(b * s.T + t) * s.C_out + k] : 0.0f;
      sm.a[r][c] = __float2bfloat16_rn(v);
    }
    // B = weight[d]^T: element (k, n) = weight[d][n][k]; threads walk k (contiguous in memory)
    for (int i = tid; i < kBK * kBN; i += kThreads) {
      const int c = i / kBK, r = i % kBK;
      const int64_t k = k0 + r, n = n0 + c;
      const float v = (k < s.C_out && n < s.C_in) ? w_d[n * s.C_out + k] : 0.0f;
      sm.b[r][c] = __float2bfloat16_rn(v);
    }
    __syncthreads();
    warp_mma<wmma::row_major>(&sm.a[0][0], kBK + kPadH, &sm.b[0][0], kBN + kPadH, warp_m, warp_n,
                              acc);
    __syncthreads();
  }
  store_acc<kBN + kPadF>(sm.c, warp_m, warp_n, acc);
  __syncthreads();
  for (int i = tid; i < kBM * kBN; i += kThreads) {
    const int r = i / kBN, c = i % kBN;
    const int64_t t = t0 + r, n = n0 + c;
    if (t < s.T && n < s.C_in) gx_b[t * s.C_in + n] = from_f32<T>(sm.c[r][c]);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    backward_dw_kernel(const float* __restrict__ dz, const T* __restrict__ x,
                       const int64_t* __restrict__ day_idx, float* __restrict__ grad_weight,
                       float* __restrict__ grad_bias, DayProjShape s) {
  __shared__ SmemColA sm;
  const int64_t d = blockIdx.z;
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * kBM;  // over C_in
  const int64_t n0 = static_cast<int64_t>(blockIdx.y) * kBN;  // over C_out
  const int tid = threadIdx.x, warp = tid / 32, warp_m = warp / 2, warp_n = warp % 2;
  const bool with_bias = blockIdx.x == 0;

  FragAcc acc[2][2];
  zero_acc(acc);
  float bias_sum = 0.0f;  // column n0 + tid % kBN (the B-tile loop below keeps that column)
  for (int64_t b = 0; b < s.B; ++b) {
    if (day_idx[b] != d) continue;  // the same for the whole CTA: uniform branch
    const T* x_b = x + b * s.T * s.C_in;
    for (int64_t t0 = 0; t0 < s.T; t0 += kBK) {
      // A = x[b, t0:t0+BK, m0:m0+BM]^T, stored as at[k][m]; threads walk m (contiguous)
      for (int i = tid; i < kBK * kBM; i += kThreads) {
        const int k = i / kBM, m = i % kBM;
        const int64_t t = t0 + k, c = m0 + m;
        const float v = (t < s.T && c < s.C_in) ? to_f32(x_b[t * s.C_in + c]) : 0.0f;
        sm.at[k][m] = __float2bfloat16_rn(v);
      }
      // B = dz[b, t0:t0+BK, n0:n0+BN]
      for (int i = tid; i < kBK * kBN; i += kThreads) {
        const int k = i / kBN, n = i % kBN;
        const int64_t t = t0 + k, c = n0 + n;
        const float v =
            (t < s.T && c < s.C_out) ? dz[(b * s.T + t) * s.C_out + c] : 0.0f;
        bias_sum += v;
        sm.b[k][n] = __float2bfloat16_rn(v);
      }
      __syncthreads();
      warp_mma<wmma::col_major>(&sm.at[0][0], kBM + kPadH, &sm.b[0][0], kBN + kPadH, warp_m,
                                warp_n, acc);
      __syncthreads();
    }
  }
  store_acc<kBN + kPadF>(sm.c, warp_m, warp_n, acc);
  sm.bias_part[tid / kBN][tid % kBN] = bias_sum;
  __syncthreads();
  float* gw_d = grad_weight + d * s.C_in * s.C_out;
  for (int i = tid; i < kBM * kBN; i += kThreads) {
    const int r = i / kBN, c = i % kBN;
    const int64_t m = m0 + r, n = n0 + c;
    if (m < s.C_in && n < s.C_out) gw_d[m * s.C_out + n] = sm.c[r][c];
  }
  if (with_bias && tid < kBN && n0 + tid < s.C_out) {
    grad_bias[d * s.C_out + n0 + tid] = sm.bias_part[0][tid] + sm.bias_part[1][tid];
  }
}

inline int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

bool valid_shape(const DayProjShape& s) {
  return s.B >= 0 && s.T >= 0 && s.C_in >= 0 && s.C_out >= 0 && s.D >= 0 && (s.B == 0 || s.D > 0);
}

// Grid (x, y, z) within CUDA's limits (x < 2**31, y and z <= 65535).
bool make_grid(int64_t gx, int64_t gy, int64_t gz, dim3* grid) {
  if (gx > 0x7fffffffLL || gy > 65535 || gz > 65535) return false;
  *grid = dim3(static_cast<unsigned>(gx), static_cast<unsigned>(gy), static_cast<unsigned>(gz));
  return true;
}

}  // namespace

cudaError_t day_projection_forward(const void* x, DayProjDType dtype, const int64_t* day_idx,
                                   const float* weight, const float* bias, void* out,
                                   DayProjShape shape, DayProjDropout dropout,
                                   cudaStream_t stream) {
  if (!valid_shape(shape)) return cudaErrorInvalidValue;
  if (shape.B == 0 || shape.T == 0 || shape.C_out == 0) return cudaSuccess;
  if (!x || !day_idx || !weight || !bias || !out) return cudaErrorInvalidValue;
  dim3 grid;
  if (!make_grid(cdiv(shape.T, kBM), cdiv(shape.C_out, kBN), shape.B, &grid)) {
    return cudaErrorInvalidConfiguration;
  }
  if (dtype == kDayProjBFloat16) {
    forward_kernel<__nv_bfloat16><<<grid, kThreads, 0, stream>>>(
        static_cast<const __nv_bfloat16*>(x), day_idx, weight, bias,
        static_cast<__nv_bfloat16*>(out), shape, dropout);
  } else if (dtype == kDayProjFloat32) {
    forward_kernel<float><<<grid, kThreads, 0, stream>>>(static_cast<const float*>(x), day_idx,
                                                         weight, bias, static_cast<float*>(out),
                                                         shape, dropout);
  } else {
    return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

cudaError_t day_projection_backward_dz(const void* grad_out, const void* out, DayProjDType dtype,
                                       float* dz, int64_t n, DayProjDropout dropout,
                                       cudaStream_t stream) {
  if (n < 0) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  if (!grad_out || !out || !dz) return cudaErrorInvalidValue;
  const int64_t blocks = cdiv(n, static_cast<int64_t>(kEltThreads) * kEltPerThread);
  dim3 grid;
  if (!make_grid(blocks, 1, 1, &grid)) return cudaErrorInvalidConfiguration;
  if (dtype == kDayProjBFloat16) {
    backward_dz_kernel<__nv_bfloat16><<<grid, kEltThreads, 0, stream>>>(
        static_cast<const __nv_bfloat16*>(grad_out), static_cast<const __nv_bfloat16*>(out), dz,
        n, dropout);
  } else if (dtype == kDayProjFloat32) {
    backward_dz_kernel<float><<<grid, kEltThreads, 0, stream>>>(
        static_cast<const float*>(grad_out), static_cast<const float*>(out), dz, n, dropout);
  } else {
    return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

cudaError_t day_projection_backward_dx(const float* dz, DayProjDType dtype, const int64_t* day_idx,
                                       const float* weight, void* grad_x, DayProjShape shape,
                                       cudaStream_t stream) {
  if (!valid_shape(shape)) return cudaErrorInvalidValue;
  if (shape.B == 0 || shape.T == 0 || shape.C_in == 0) return cudaSuccess;
  if (!grad_x || !day_idx || (shape.C_out > 0 && (!dz || !weight))) return cudaErrorInvalidValue;
  dim3 grid;
  if (!make_grid(cdiv(shape.T, kBM), cdiv(shape.C_in, kBN), shape.B, &grid)) {
    return cudaErrorInvalidConfiguration;
  }
  if (dtype == kDayProjBFloat16) {
    backward_dx_kernel<__nv_bfloat16><<<grid, kThreads, 0, stream>>>(
        dz, day_idx, weight, static_cast<__nv_bfloat16*>(grad_x), shape);
  } else if (dtype == kDayProjFloat32) {
    backward_dx_kernel<float><<<grid, kThreads, 0, stream>>>(dz, day_idx, weight,
                                                            static_cast<float*>(grad_x), shape);
  } else {
    return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

cudaError_t day_projection_backward_dw(const float* dz, const void* x, DayProjDType dtype,
                                       const int64_t* day_idx, float* grad_weight,
                                       float* grad_bias, DayProjShape shape, cudaStream_t stream) {
  if (!valid_shape(shape)) return cudaErrorInvalidValue;
  if (shape.D == 0 || shape.C_out == 0) return cudaSuccess;
  if (!grad_bias || (shape.B > 0 && !day_idx) ||
      (shape.B > 0 && shape.T > 0 && (!dz || (shape.C_in > 0 && !x)))) {
    return cudaErrorInvalidValue;
  }
  if (shape.C_in > 0 && !grad_weight) return cudaErrorInvalidValue;
  // At least one C_in tile, so that grad_bias is written even when C_in == 0.
  const int64_t m_tiles = shape.C_in > 0 ? cdiv(shape.C_in, kBM) : 1;
  dim3 grid;
  if (!make_grid(m_tiles, cdiv(shape.C_out, kBN), shape.D, &grid)) {
    return cudaErrorInvalidConfiguration;
  }
  if (dtype == kDayProjBFloat16) {
    backward_dw_kernel<__nv_bfloat16><<<grid, kThreads, 0, stream>>>(
        dz, static_cast<const __nv_bfloat16*>(x), day_idx, grad_weight, grad_bias, shape);
  } else if (dtype == kDayProjFloat32) {
    backward_dw_kernel<float><<<grid, kThreads, 0, stream>>>(
        dz, static_cast<const float*>(x), day_idx, grad_weight, grad_bias, shape);
  } else {
    return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace fastbci
