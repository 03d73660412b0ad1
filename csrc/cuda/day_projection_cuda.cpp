// CUDA binding of fastbci::day_projection: argument checks, output allocation and stream
// selection around the plain-CUDA launchers of day_projection_kernels.h. Compiled only in the
// CUDA build (setup.py adds csrc/cuda/*.cpp when it compiles csrc/cuda/*.cu).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>

#include "../day_projection.h"
#include "day_projection_kernels.h"

namespace fastbci {
namespace {

cuda::DayProjShape to_shape(const DayProjSizes& s) { return {s.B, s.T, s.C_in, s.C_out, s.D}; }

cuda::DayProjDropout to_dropout(double p, int64_t seed, int64_t step) {
  cuda::DayProjDropout dp;
  dp.enabled = p > 0.0 ? 1 : 0;
  dp.p = static_cast<float>(p);
  dp.scale = keep_scale(p);
  dp.seed = seed_bits(seed);
  dp.counter_hi = philox::counter_hi(static_cast<uint64_t>(step), philox::kStreamDropout);
  return dp;
}

cuda::DayProjDType kernel_dtype(const at::Tensor& x, const char* op) {
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16, op,
              ": on CUDA x must be float32 or bfloat16 (float64 is CPU-only), got ",
              x.scalar_type());
  return x.scalar_type() == at::kBFloat16 ? cuda::kDayProjBFloat16 : cuda::kDayProjFloat32;
}

void check_launch(cudaError_t err, const char* op, const char* kernel) {
  TORCH_CHECK(err == cudaSuccess, op, ": launching the ", kernel, " kernel failed: ",
              cudaGetErrorString(err));
}

at::Tensor day_projection_cuda(const at::Tensor& x, const at::Tensor& day_idx,
                               const at::Tensor& weight, const at::Tensor& bias, double dropout_p,
                               int64_t seed, int64_t step) {
  const char* op = "fastbci::day_projection (CUDA)";
  const DayProjSizes s = check_forward_args(x, day_idx, weight, bias, dropout_p, step, op);
  const auto dtype = kernel_dtype(x, op);
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor xc = x.contiguous();
  const at::Tensor dc = day_idx.to(at::kLong).contiguous();
  const at::Tensor wc = weight.contiguous();
  const at::Tensor bc = bias.contiguous();
  at::Tensor out = at::empty({s.B, s.T, s.C_out}, x.options());
  check_launch(cuda::day_projection_forward(xc.data_ptr(), dtype, dc.data_ptr<int64_t>(),
                                            wc.data_ptr<float>(), bc.data_ptr<float>(),
                                            out.data_ptr(), to_shape(s),
                                            to_dropout(dropout_p, seed, step),
                                            c10::cuda::getCurrentCUDAStream().stream()),
               op, "forward");
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> day_projection_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& out, const at::Tensor& x,
    const at::Tensor& day_idx, const at::Tensor& weight, double dropout_p, int64_t seed,
    int64_t step, bool compute_dx) {
  const char* op = "fastbci::day_projection_backward (CUDA)";
  const DayProjSizes s =
      check_backward_args(grad_out, out, x, day_idx, weight, dropout_p, step, op);
  const auto dtype = kernel_dtype(x, op);
  const c10::cuda::CUDAGuard guard(x.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  const at::Tensor gc = grad_out.to(x.scalar_type()).contiguous();
  const at::Tensor yc = out.contiguous();
  const at::Tensor xc = x.contiguous();
  const at::Tensor dc = day_idx.to(at::kLong).contiguous();
  const at::Tensor wc = weight.contiguous();
  const auto shape = to_shape(s);
  const auto dp = to_dropout(dropout_p, seed, step);
  // dz = grad_out * mask * softsign' in float32: one element-wise pass, read by both GEMMs and
  // summed unrounded for grad_bias (freed on return)
  at::Tensor dz = at::empty({s.B, s.T, s.C_out}, x.options().dtype(at::kFloat));
  check_launch(cuda::day_projection_backward_dz(gc.data_ptr(), yc.data_ptr(), dtype,
                                                dz.data_ptr<float>(), dz.numel(), dp, stream),
               op, "dz");
  at::Tensor grad_w = at::empty({s.D, s.C_in, s.C_out}, weight.options());
  at::Tensor grad_b = at::empty({s.D, s.C_out}, weight.options());
  check_launch(cuda::day_projection_backward_dw(dz.data_ptr<float>(), xc.data_ptr(), dtype,
                                                dc.data_ptr<int64_t>(), grad_w.data_ptr<float>(),
                                                grad_b.data_ptr<float>(), shape, stream),
               op, "grad_weight");
  at::Tensor grad_x;
  if (compute_dx) {
    grad_x = at::empty({s.B, s.T, s.C_in}, x.options());
    check_launch(cuda::day_projection_backward_dx(dz.data_ptr<float>(), dtype, dc.data_ptr<int64_t>(),
                                                  wc.data_ptr<float>(), grad_x.data_ptr(), shape,
                                                  stream),
                 op, "grad_x");
  } else {
    grad_x = at::empty({0}, x.options());
  }
  return {grad_x, grad_w, grad_b};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastbci, CUDA, m) {
  m.impl("day_projection", &day_projection_cuda);
  m.impl("day_projection_backward", &day_projection_backward_cuda);
}

}  // namespace fastbci
