// fastbci::gather_padded: a host batch of whole trials out of the TrialStore's packed features,
// zero-padded to t_max steps, at memory speed.
//
// Trial rows[b] occupies the packed rows offsets[r] .. offsets[r] + lengths[r] - 1 (contiguous),
// and so does its place in the output (out[b, 0:len, :]): the gather is one memcpy of the trial's
// bytes plus one memset of its padding, per trial, the trials spread over the intra-op threads.
// Compared with index_select (one copy per time step, the padding copied from a zero row) it moves
// only the bytes of the batch and writes the padding without reading anything.
//
//   gather_padded(Tensor packed (N, C), Tensor offsets (n + 1,) int64, Tensor lengths (n,) int64,
//                 Tensor rows (B,) int64, int t_max) -> Tensor (B, t_max, C)
//   gather_padded.out(..., *, Tensor(a!) out (B, t_max, C)) -> ()       (into a reused buffer)
// (the out form returns nothing, as torch.library wants of a mutating custom op: then it can be
// functionalised, e.g. under torch.compile)
//
// CPU tensors, packed and out contiguous and of the same dtype (any: bytes are copied). Every
// argument is checked here (rows in range, trials inside packed, no trial longer than t_max).
// The schema is defined once here with its CPU kernel; the fake (shape) implementation is
// registered in Python (fastbci/ops/gather.py), as for fastbci::day_projection.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstring>

namespace fastbci {
namespace {

void check_index(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.dim() == 1 && t.scalar_type() == at::kLong &&
                  t.is_contiguous(),
              "fastbci::gather_padded: ", name,
              " must be a contiguous 1-D int64 CPU tensor, got ", t.scalar_type(), " ",
              t.sizes(), " on ", t.device());
}

void gather_padded_out_cpu(const at::Tensor& packed, const at::Tensor& offsets,
                           const at::Tensor& lengths, const at::Tensor& rows, int64_t t_max,
                           at::Tensor& out) {
  const char* op = "fastbci::gather_padded";
  TORCH_CHECK(packed.device().is_cpu() && packed.dim() == 2 && packed.is_contiguous(), op,
              ": packed must be a contiguous 2-D CPU tensor, got ", packed.sizes(), " on ",
              packed.device());
  check_index(offsets, "offsets");
  check_index(lengths, "lengths");
  check_index(rows, "rows");
  const int64_t n = lengths.numel(), B = rows.numel(), C = packed.size(1);
  TORCH_CHECK(offsets.numel() == n + 1, op, ": offsets must have ", n + 1, " entries, got ",
              offsets.numel());
  TORCH_CHECK(t_max >= 0, op, ": t_max must be >= 0, got ", t_max);
  TORCH_CHECK(out.device().is_cpu() && out.is_contiguous() && out.scalar_type() ==
                  packed.scalar_type() && out.dim() == 3 && out.size(0) == B &&
                  out.size(1) == t_max && out.size(2) == C,
              op, ": out must be a contiguous ", packed.scalar_type(), " CPU tensor of shape (",
              B, ", ", t_max, ", ", C, "), got ", out.scalar_type(), " ", out.sizes());
  const int64_t* off = offsets.data_ptr<int64_t>();
  const int64_t* len = lengths.data_ptr<int64_t>();
  const int64_t* r = rows.data_ptr<int64_t>();
  const int64_t N = packed.size(0);
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK(r[b] >= 0 && r[b] < n, op, ": rows[", b, "] = ", r[b], " is not a trial of the ",
                n, " in the store");
    const int64_t first = off[r[b]], steps = len[r[b]];
    TORCH_CHECK(steps >= 0 && first >= 0 && first + steps <= N, op, ": trial ", r[b],
                " (rows ", first, " .. ", first + steps, ") lies outside the ", N,
                " packed rows");
    TORCH_CHECK(steps <= t_max, op, ": trial ", r[b], " has ", steps,
                " steps, more than t_max = ", t_max);
  }
  const int64_t row_bytes = C * static_cast<int64_t>(packed.element_size());
  const char* src = static_cast<const char*>(packed.data_ptr());
  char* dst = static_cast<char*>(out.data_ptr());
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t steps = len[r[b]];
      char* to = dst + b * t_max * row_bytes;
      std::memcpy(to, src + off[r[b]] * row_bytes, static_cast<size_t>(steps * row_bytes));
      std::memset(to + steps * row_bytes, 0, static_cast<size_t>((t_max - steps) * row_bytes));
    }
  });
}

at::Tensor gather_padded_new_cpu(const at::Tensor& packed, const at::Tensor& offsets,
                                 const at::Tensor& lengths, const at::Tensor& rows,
                                 int64_t t_max) {
  TORCH_CHECK(packed.dim() == 2, "fastbci::gather_padded: packed must be 2-D, got ",
              packed.sizes());
  TORCH_CHECK(t_max >= 0, "fastbci::gather_padded: t_max must be >= 0, got ", t_max);
  at::Tensor out = at::empty({rows.numel(), t_max, packed.size(1)}, packed.options());
  gather_padded_out_cpu(packed, offsets, lengths, rows, t_max, out);
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastbci, m) {
  m.def("gather_padded(Tensor packed, Tensor offsets, Tensor lengths, Tensor rows, int t_max) "
        "-> Tensor");
  m.def("gather_padded.out(Tensor packed, Tensor offsets, Tensor lengths, Tensor rows, "
        "int t_max, *, Tensor(a!) out) -> ()");
}

TORCH_LIBRARY_IMPL(fastbci, CPU, m) {
  m.impl("gather_padded", &gather_padded_new_cpu);
  m.impl("gather_padded.out", &gather_padded_out_cpu);
}

}  // namespace fastbci
