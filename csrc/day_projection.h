// Shared argument checks and helpers of the fastbci::day_projection op (CPU and CUDA bindings).
//
// Op contract (schema registered once in csrc/day_projection.cpp):
//   day_projection(x (B, T, C_in), day_idx (B,), weight (D, C_in, C_out), bias (D, C_out),
//                  dropout_p, seed, step) -> (B, T, C_out), dtype of x
//     = dropout(softsign(x[b] @ weight[day_idx[b]] + bias[day_idx[b]]))
//   with the DROPOUT-stream Philox mask of csrc/philox.h at element (b * T + t) * C_out + c.
//   day_projection_backward(grad_out, out, x, day_idx, weight, dropout_p, seed, step, compute_dx)
//     -> (grad_x or an empty tensor when compute_dx is false, grad_weight, grad_bias)
//   works from the op's saved OUTPUT: for a kept element s = out / scale, for a dropped one the
//   gradient is 0, so dz = grad_out * mask * (1 - |s|)^2 and neither z nor the mask is stored.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <string>

#include "philox.h"

namespace fastbci {

constexpr int64_t kMaxStep = (int64_t(1) << 32) / int64_t(philox::kNumStreams) - 1;
constexpr int64_t kMaxElements = int64_t(1) << 32;

struct DayProjSizes {
  int64_t B, T, C_in, C_out, D;
};

// The keep-scale 1 / (1 - p) rounded to float32, as fastbci.philox.dropout_mask produces it.
inline float keep_scale(double p) { return p > 0.0 ? static_cast<float>(1.0 / (1.0 - p)) : 1.0f; }

// The Philox key: the int64 seed reinterpreted as the unsigned 64-bit key (Python passes seeds
// >= 2**63 as their two's-complement int64).
inline uint64_t seed_bits(int64_t seed) { return static_cast<uint64_t>(seed); }

inline std::string shape_str(const at::Tensor& t) {
  std::string s = "(";
  for (int64_t i = 0; i < t.dim(); ++i) s += (i ? ", " : "") + std::to_string(t.size(i));
  return s + (t.dim() == 1 ? ",)" : ")");
}

inline void check_dropout_args(double p, int64_t step, int64_t n_out, const char* op) {
  TORCH_CHECK(p >= 0.0 && p < 1.0, op, ": dropout_p must be in [0, 1), got ", p);
  TORCH_CHECK(step >= 0 && step <= kMaxStep, op, ": step must be in [0, ", kMaxStep, "], got ",
              step);
  TORCH_CHECK(p == 0.0 || n_out <= kMaxElements, op, ": the dropout mask indexes elements with ",
              "32 bits, but the output has ", n_out, " elements (at most 2**32 allowed)");
}

// Checks shared by the forward and backward ops (everything except bias).
inline DayProjSizes check_core_args(const at::Tensor& x, const at::Tensor& day_idx,
                                    const at::Tensor& weight, double p, int64_t step,
                                    const char* op) {
  TORCH_CHECK(x.dim() == 3, op, ": x must be (B, T, C_in), got shape ", shape_str(x));
  TORCH_CHECK(day_idx.dim() == 1 && day_idx.size(0) == x.size(0), op, ": day_idx must be (B,) = (",
              x.size(0), ",), got shape ", shape_str(day_idx));
  TORCH_CHECK(day_idx.scalar_type() == at::kLong || day_idx.scalar_type() == at::kInt, op,
              ": day_idx must be int64 or int32, got ", day_idx.scalar_type());
  TORCH_CHECK(weight.dim() == 3 && weight.size(1) == x.size(2), op,
              ": weight must be (D, C_in=", x.size(2), ", C_out), got shape ", shape_str(weight));
  TORCH_CHECK(x.device() == day_idx.device() && x.device() == weight.device(), op,
              ": x, day_idx and weight must be on one device, got ", x.device(), ", ",
              day_idx.device(), ", ", weight.device());
  const auto xt = x.scalar_type();
  TORCH_CHECK(xt == at::kFloat || xt == at::kBFloat16 || xt == at::kDouble, op,
              ": x must be float32, bfloat16 or float64 (CPU only), got ", xt);
  if (xt == at::kDouble) {
    TORCH_CHECK(weight.scalar_type() == at::kDouble, op,
                ": float64 x needs float64 weight and bias, got ", weight.scalar_type());
  } else {
    TORCH_CHECK(weight.scalar_type() == at::kFloat, op, ": weight and bias must be float32 for ",
                xt, " x (they are cast inside), got ", weight.scalar_type());
  }
  TORCH_CHECK(x.size(0) == 0 || weight.size(0) > 0, op,
              ": weight holds no days (D = 0) but the batch has ", x.size(0), " trials");
  check_dropout_args(p, step, x.size(0) * x.size(1) * weight.size(2), op);
  return {x.size(0), x.size(1), x.size(2), weight.size(2), weight.size(0)};
}

inline DayProjSizes check_forward_args(const at::Tensor& x, const at::Tensor& day_idx,
                                       const at::Tensor& weight, const at::Tensor& bias,
                                       double p, int64_t step, const char* op) {
  const DayProjSizes s = check_core_args(x, day_idx, weight, p, step, op);
  TORCH_CHECK(bias.dim() == 2 && bias.size(0) == s.D && bias.size(1) == s.C_out, op,
              ": bias must be (D, C_out) = (", s.D, ", ", s.C_out, "), got shape ",
              shape_str(bias));
  TORCH_CHECK(bias.device() == x.device(), op, ": bias must be on x's device ", x.device(),
              ", got ", bias.device());
  TORCH_CHECK(bias.scalar_type() == weight.scalar_type(), op,
              ": weight and bias must share a dtype, got ", weight.scalar_type(), " and ",
              bias.scalar_type());
  return s;
}

inline DayProjSizes check_backward_args(const at::Tensor& grad_out, const at::Tensor& out,
                                        const at::Tensor& x, const at::Tensor& day_idx,
                                        const at::Tensor& weight, double p, int64_t step,
                                        const char* op) {
  const DayProjSizes s = check_core_args(x, day_idx, weight, p, step, op);
  TORCH_CHECK(grad_out.dim() == 3 && grad_out.size(0) == s.B && grad_out.size(1) == s.T &&
                  grad_out.size(2) == s.C_out,
              op, ": grad_out must be (B, T, C_out) = (", s.B, ", ", s.T, ", ", s.C_out,
              "), got shape ", shape_str(grad_out));
  TORCH_CHECK(out.sizes() == grad_out.sizes(), op, ": out must have grad_out's shape ",
              shape_str(grad_out), ", got ", shape_str(out));
  TORCH_CHECK(grad_out.device() == x.device() && out.device() == x.device(), op,
              ": grad_out and out must be on x's device ", x.device());
  TORCH_CHECK(out.scalar_type() == x.scalar_type(), op, ": out must have x's dtype ",
              x.scalar_type(), ", got ", out.scalar_type());
  TORCH_CHECK(grad_out.is_floating_point(), op, ": grad_out must be floating point, got ",
              grad_out.scalar_type());
  return s;
}

}  // namespace fastbci
