// fastbci::day_projection: op schema (TORCH_LIBRARY), CPU implementation, Python module init.
//
// CPU strategy: trials are grouped by day on the host (day_idx is a CPU tensor here), each
// day's trials go through one GEMM (at::addmm / at::mm, multi-threaded by ATen), and the
// element-wise parts (softsign, Philox dropout, the backward's softsign' and mask) run in
// at::parallel_for loops. float32 and bfloat16 x compute in float32, float64 x in float64.
// The CUDA implementation lives in csrc/cuda/ and registers itself for the same schema.
#include <Python.h>

#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <tuple>
#include <vector>

#include "day_projection.h"

namespace fastbci {
namespace {

constexpr int64_t kGrain = 1 << 14;

// Trials of each day: indices into the batch, validated against the D stacked days.
struct DayGroup {
  int64_t day;
  at::Tensor index;  // int64 (n,) trial indices
  int64_t first;     // first trial index
  bool contiguous;   // the trials are first, first + 1, ..., first + n - 1
};

std::vector<DayGroup> group_by_day(const at::Tensor& day_idx, int64_t D, const char* op) {
  const at::Tensor days = day_idx.to(at::kLong).contiguous();
  const int64_t* d = days.data_ptr<int64_t>();
  const int64_t B = days.numel();
  std::vector<std::vector<int64_t>> members(static_cast<size_t>(D));
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK(d[b] >= 0 && d[b] < D, op, ": day_idx[", b, "] = ", d[b],
                " does not index the ", D, " stacked days (weight.shape[0])");
    members[static_cast<size_t>(d[b])].push_back(b);
  }
  std::vector<DayGroup> groups;
  for (int64_t day = 0; day < D; ++day) {
    auto& m = members[static_cast<size_t>(day)];
    if (m.empty()) continue;
    bool contiguous = true;
    for (size_t i = 1; i < m.size(); ++i) contiguous = contiguous && (m[i] == m[0] + int64_t(i));
    at::Tensor index = at::tensor(m, at::TensorOptions().dtype(at::kLong));
    groups.push_back({day, index, m[0], contiguous});
  }
  return groups;
}

// The rows of `t` (B, ...) belonging to a day group, as (n * T, C) without a copy when possible.
at::Tensor gather_rows(const at::Tensor& t, const DayGroup& g) {
  const int64_t n = g.index.numel();
  at::Tensor rows = g.contiguous ? t.narrow(0, g.first, n) : t.index_select(0, g.index);
  return rows.reshape({n * t.size(1), t.size(2)});
}

void scatter_rows(at::Tensor& dst, const DayGroup& g, const at::Tensor& rows) {
  const int64_t n = g.index.numel();
  const at::Tensor src = rows.view({n, dst.size(1), dst.size(2)});
  if (g.contiguous) {
    dst.narrow(0, g.first, n).copy_(src);
  } else {
    dst.index_copy_(0, g.index, src);
  }
}

// out = softsign(z) * mask, mask = scale where the DROPOUT uniform >= p, else 0.
template <typename acc_t, typename out_t>
void softsign_dropout(const acc_t* z, out_t* out, int64_t n, double p, uint64_t seed,
                      uint32_t hi) {
  const bool drop = p > 0.0;
  const float pf = static_cast<float>(p);
  const acc_t scale = static_cast<acc_t>(keep_scale(p));
  at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const acc_t v = z[i];
      acc_t s = v / (acc_t(1) + std::abs(v));
      if (drop) {
        const float u = philox::dropout_uniform(static_cast<uint32_t>(i), hi, seed);
        s = s * (u >= pf ? scale : acc_t(0));
      }
      out[i] = static_cast<out_t>(s);
    }
  });
}

// dz = grad * mask * (1 - |s|)^2 with s = out / scale for kept elements (0 where dropped).
template <typename acc_t>
void softsign_dropout_backward(const acc_t* grad, const acc_t* out, acc_t* dz, int64_t n, double p,
                               uint64_t seed, uint32_t hi) {
  const bool drop = p > 0.0;
  const float pf = static_cast<float>(p);
  const acc_t scale = static_cast<acc_t>(keep_scale(p));
  at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      if (drop) {
        const float u = philox::dropout_uniform(static_cast<uint32_t>(i), hi, seed);
        if (!(u >= pf)) {
          dz[i] = acc_t(0);
          continue;
        }
        const acc_t a = acc_t(1) - std::abs(out[i] / scale);
        dz[i] = grad[i] * scale * a * a;
      } else {
        const acc_t a = acc_t(1) - std::abs(out[i]);
        dz[i] = grad[i] * a * a;
      }
    }
  });
}

at::ScalarType acc_type_of(const at::Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

at::Tensor day_projection_cpu(const at::Tensor& x, const at::Tensor& day_idx,
                              const at::Tensor& weight, const at::Tensor& bias, double dropout_p,
                              int64_t seed, int64_t step) {
  const char* op = "fastbci::day_projection (CPU)";
  const DayProjSizes s = check_forward_args(x, day_idx, weight, bias, dropout_p, step, op);
  const auto acc = acc_type_of(x);
  const at::Tensor xa = x.to(acc).contiguous();
  const at::Tensor wa = weight.to(acc).contiguous();
  const at::Tensor ba = bias.to(acc).contiguous();
  at::Tensor z = at::empty({s.B, s.T, s.C_out}, xa.options());
  for (const DayGroup& g : group_by_day(day_idx, s.D, op)) {
    if (g.contiguous) {  // the official layout: write the day's rows in place
      at::Tensor rows = z.narrow(0, g.first, g.index.numel()).view({-1, s.C_out});
      at::addmm_out(rows, ba[g.day], gather_rows(xa, g), wa[g.day]);
    } else {
      scatter_rows(z, g, at::addmm(ba[g.day], gather_rows(xa, g), wa[g.day]));
    }
  }
  at::Tensor out = at::empty({s.B, s.T, s.C_out}, x.options());
  const uint32_t hi = philox::counter_hi(static_cast<uint64_t>(step), philox::kStreamDropout);
  const uint64_t key = seed_bits(seed);
  const int64_t n = z.numel();
  if (x.scalar_type() == at::kDouble) {
    softsign_dropout<double, double>(z.data_ptr<double>(), out.data_ptr<double>(), n, dropout_p,
                                     key, hi);
  } else if (x.scalar_type() == at::kBFloat16) {
    softsign_dropout<float, at::BFloat16>(z.data_ptr<float>(), out.data_ptr<at::BFloat16>(), n,
                                          dropout_p, key, hi);
  } else {
    softsign_dropout<float, float>(z.data_ptr<float>(), out.data_ptr<float>(), n, dropout_p, key,
                                   hi);
  }
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> day_projection_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& out, const at::Tensor& x,
    const at::Tensor& day_idx, const at::Tensor& weight, double dropout_p, int64_t seed,
    int64_t step, bool compute_dx) {
  const char* op = "fastbci::day_projection_backward (CPU)";
  const DayProjSizes s =
      check_backward_args(grad_out, out, x, day_idx, weight, dropout_p, step, op);
  const auto acc = acc_type_of(x);
  const at::Tensor g = grad_out.to(acc).contiguous();
  const at::Tensor y = out.to(acc).contiguous();
  at::Tensor dz = at::empty_like(g);
  const uint32_t hi = philox::counter_hi(static_cast<uint64_t>(step), philox::kStreamDropout);
  if (acc == at::kDouble) {
    softsign_dropout_backward<double>(g.data_ptr<double>(), y.data_ptr<double>(),
                                      dz.data_ptr<double>(), dz.numel(), dropout_p,
                                      seed_bits(seed), hi);
  } else {
    softsign_dropout_backward<float>(g.data_ptr<float>(), y.data_ptr<float>(),
                                     dz.data_ptr<float>(), dz.numel(), dropout_p,
                                     seed_bits(seed), hi);
  }
  const at::Tensor xa = x.to(acc).contiguous();
  const at::Tensor wa = weight.to(acc).contiguous();
  at::Tensor grad_w = at::zeros({s.D, s.C_in, s.C_out}, wa.options());
  at::Tensor grad_b = at::zeros({s.D, s.C_out}, wa.options());
  at::Tensor grad_x = compute_dx ? at::empty({s.B, s.T, s.C_in}, xa.options())
                                 : at::empty({0}, x.options());
  for (const DayGroup& grp : group_by_day(day_idx, s.D, op)) {
    const at::Tensor dz_d = gather_rows(dz, grp);
    const at::Tensor x_d = gather_rows(xa, grp);
    at::Tensor gw = grad_w[grp.day];
    at::mm_out(gw, x_d.t(), dz_d);
    grad_b[grp.day].copy_(dz_d.sum(0));
    if (compute_dx && grp.contiguous) {
      at::Tensor rows = grad_x.narrow(0, grp.first, grp.index.numel()).view({-1, s.C_in});
      at::mm_out(rows, dz_d, wa[grp.day].t());
    } else if (compute_dx) {
      scatter_rows(grad_x, grp, at::mm(dz_d, wa[grp.day].t()));
    }
  }
  if (compute_dx) grad_x = grad_x.to(x.scalar_type());
  return {grad_x, grad_w.to(weight.scalar_type()), grad_b.to(weight.scalar_type())};
}

}  // namespace

// seed and step are SymInt so that torch.compile passes the training step as a symbol instead
// of specialising (recompiling) on every value; the kernels receive them as plain int64.
TORCH_LIBRARY(fastbci, m) {
  m.def(
      "day_projection(Tensor x, Tensor day_idx, Tensor weight, Tensor bias, float dropout_p, "
      "SymInt seed, SymInt step) -> Tensor",
      {at::Tag::pt2_compliant_tag});
  m.def(
      "day_projection_backward(Tensor grad_out, Tensor out, Tensor x, Tensor day_idx, "
      "Tensor weight, float dropout_p, SymInt seed, SymInt step, bool compute_dx) "
      "-> (Tensor, Tensor, Tensor)",
      {at::Tag::pt2_compliant_tag});
}

TORCH_LIBRARY_IMPL(fastbci, CPU, m) {
  m.impl("day_projection", &day_projection_cpu);
  m.impl("day_projection_backward", &day_projection_backward_cpu);
}

}  // namespace fastbci

extern "C" {
// An empty Python module: importing fastbci._C loads this library, whose static initialisers
// (TORCH_LIBRARY above, and the CUDA registrations when built) register the ops with torch.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C",
                                          "fastbci C++/CUDA ops: torch.ops.fastbci.*", -1,
                                          nullptr, nullptr, nullptr, nullptr, nullptr};
  return PyModule_Create(&module_def);
}
}
