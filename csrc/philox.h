// Philox 4x32-10, bit-identical to fastbci.philox (and Triton's tl.randint / tl.rand).
//
// Usable from host C++ and from CUDA device code (FASTBCI_HD = __host__ __device__ under nvcc).
// Plain integer arithmetic plus one int -> float conversion and one float multiply, both in
// round-to-nearest, so the CPU tests of the C++ op also prove the mask the CUDA kernels draw.
//
// Stream contract (see the docstring of fastbci/philox.py):
//   key     = (seed & 0xffffffff, seed >> 32)
//   counter = (index, step * kNumStreams + stream, 0, 0)
//   rand    = first output word, reinterpreted as int32, negatives bit-inverted (-x - 1),
//             converted to float32 and multiplied by 4.6566127342e-10f.
//   dropout keeps element `index` when rand >= (float)p and scales it by (float)(1 / (1 - p)).
#pragma once

#include <stdint.h>

#if defined(__CUDACC__)
#define FASTBCI_HD __host__ __device__ __forceinline__
#else
#define FASTBCI_HD inline
#endif

namespace fastbci {
namespace philox {

constexpr uint32_t kRoundA = 0xD2511F53u;
constexpr uint32_t kRoundB = 0xCD9E8D57u;
constexpr uint32_t kKeyA = 0x9E3779B9u;
constexpr uint32_t kKeyB = 0xBB67AE85u;
constexpr int kRounds = 10;
constexpr uint32_t kNumStreams = 8;
constexpr uint32_t kStreamDropout = 2;
constexpr float kUniformScale = 4.6566127342e-10f;

// High and low 32-bit halves of a * b.
FASTBCI_HD uint32_t mulhi32(uint32_t a, uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __umulhi(a, b);
#else
  return static_cast<uint32_t>((static_cast<uint64_t>(a) * static_cast<uint64_t>(b)) >> 32);
#endif
}

FASTBCI_HD uint32_t mullo32(uint32_t a, uint32_t b) { return a * b; }

// The first output word of Philox 4x32-10 for counter (c0, c1, 0, 0) and the 64-bit key `seed`
// (the only word the fastbci streams use for rand / randint).
FASTBCI_HD uint32_t philox_first_word(uint32_t c0, uint32_t c1, uint64_t seed) {
  uint32_t k0 = static_cast<uint32_t>(seed & 0xffffffffull);
  uint32_t k1 = static_cast<uint32_t>(seed >> 32);
  uint32_t c2 = 0u, c3 = 0u;
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int r = 0; r < kRounds; ++r) {
    const uint32_t hi_b = mulhi32(kRoundB, c2), lo_b = mullo32(kRoundB, c2);
    const uint32_t hi_a = mulhi32(kRoundA, c0), lo_a = mullo32(kRoundA, c0);
    const uint32_t n0 = hi_b ^ c1 ^ k0;
    const uint32_t n2 = hi_a ^ c3 ^ k1;
    c0 = n0;
    c1 = lo_b;
    c2 = n2;
    c3 = lo_a;
    k0 += kKeyA;
    k1 += kKeyB;
  }
  return c0;
}

// uint32 -> [0, 1) exactly as Triton's tl.rand / fastbci.philox.rand.
FASTBCI_HD float uint_to_uniform(uint32_t v) {
  int32_t i = static_cast<int32_t>(v);
  if (i < 0) i = ~i;  // == -i - 1 without overflow at INT32_MIN
#if defined(__CUDA_ARCH__)
  return __fmul_rn(__int2float_rn(i), kUniformScale);
#else
  return static_cast<float>(i) * kUniformScale;  // int -> float rounds to nearest (IEEE)
#endif
}

// The high counter word of (step, stream); callers validate step <= 2**32 / 8 - 1.
FASTBCI_HD uint32_t counter_hi(uint64_t step, uint32_t stream) {
  return static_cast<uint32_t>(step * kNumStreams + stream);
}

// The DROPOUT-stream uniform for element `index` (< 2**32) of step `step`.
FASTBCI_HD float dropout_uniform(uint32_t index, uint32_t hi, uint64_t seed) {
  return uint_to_uniform(philox_first_word(index, hi, seed));
}

}  // namespace philox
}  // namespace fastbci
