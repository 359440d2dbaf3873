// CPU kernels of the KALE objective and of log-mean-exp (kale_fast/ops/kale.py is the autograd
// wrapper, kale_fast/reference/kale.py the oracle; kernels/kale.cu and kale_fast/triton_kernels/kale.py the
// same functions for CUDA). Inputs arrive 1-D (kale) or 2-D rows (log-mean-exp),
// contiguous and validated by the Python layer; the checks here only guard the kernel's own assumptions.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <cmath>
#include <optional>
#include <tuple>

#include "log_sum_exp.h"
#include "op_checks.h"

namespace kale_fast {
namespace {

constexpr int64_t kGrain = 1 << 15;  // elements per parallel task: large enough to amortise a task

// Returns (loss, lse) in the accumulation dtype: lse = log sum exp(-e_gen) and
// loss = mean(e_data) + lse - log M (A absent) or mean(e_data) + A + exp(lse - A - log M) - 1.
std::tuple<at::Tensor, at::Tensor> kale_loss_forward(const at::Tensor& e_data, const at::Tensor& e_gen,
                                                const std::optional<at::Tensor>& log_partition) {
  check_flat(e_data, c10::kCPU, "e_data");
  check_flat(e_gen, c10::kCPU, "e_gen");
  const auto acc_dtype = acc_type_of(e_gen.scalar_type());
  auto loss = at::empty({}, e_gen.options().dtype(acc_dtype));
  auto lse = at::empty({}, e_gen.options().dtype(acc_dtype));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, e_gen.scalar_type(), "kale_loss_forward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* gen = e_gen.const_data_ptr<scalar_t>();
    const scalar_t* data = e_data.const_data_ptr<scalar_t>();
    const int64_t n_gen = e_gen.numel(), n_data = e_data.numel();
    const auto state = at::parallel_reduce(
        0, n_gen, kGrain, LogSumExpState<acc_t>{},
        [&](int64_t begin, int64_t end, LogSumExpState<acc_t> partial) {
          accumulate_log_sum_exp<scalar_t, acc_t>(gen + begin, end - begin, acc_t(-1), partial);
          return partial;
        },
        [](LogSumExpState<acc_t> a, const LogSumExpState<acc_t>& b) {
          a.merge(b);
          return a;
        });
    const acc_t data_sum = at::parallel_reduce(
        0, n_data, kGrain, acc_t(0),
        [&](int64_t begin, int64_t end, acc_t partial) { return partial + lane_sum<scalar_t, acc_t>(data + begin, end - begin); },
        [](acc_t a, acc_t b) { return a + b; });
    const acc_t log_n_gen = std::log(static_cast<acc_t>(n_gen));
    const acc_t lse_value = state.value();
    acc_t loss_value = data_sum / static_cast<acc_t>(n_data);
    if (log_partition.has_value()) {
      const acc_t a = log_partition->item<acc_t>();
      loss_value += a + std::exp(lse_value - a - log_n_gen) - acc_t(1);
    } else {
      loss_value += lse_value - log_n_gen;
    }
    *loss.mutable_data_ptr<acc_t>() = loss_value;
    *lse.mutable_data_ptr<acc_t>() = lse_value;
  });
  return {loss, lse};
}

// Returns (d e_data, d e_gen, d A): grad / N, -grad * exp(-e_gen - shift) with shift = lse (A absent)
// or A + log M, and grad * (1 - exp(lse - shift)) (zero when A is absent; the caller drops it).
std::tuple<at::Tensor, at::Tensor, at::Tensor> kale_loss_backward(const at::Tensor& grad, const at::Tensor& e_data,
                                                             const at::Tensor& e_gen,
                                                             const std::optional<at::Tensor>& log_partition,
                                                             const at::Tensor& lse) {
  check_flat(e_data, c10::kCPU, "e_data");
  check_flat(e_gen, c10::kCPU, "e_gen");
  const auto acc_dtype = acc_type_of(e_gen.scalar_type());
  auto grad_gen = at::empty_like(e_gen);
  auto grad_data = at::empty_like(e_data);
  auto grad_log_partition = at::empty({}, e_gen.options().dtype(acc_dtype));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, e_gen.scalar_type(), "kale_loss_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t g = grad.item<acc_t>();
    const acc_t lse_value = lse.item<acc_t>();
    const int64_t n_gen = e_gen.numel();
    const acc_t shift = log_partition.has_value()
                            ? log_partition->item<acc_t>() + std::log(static_cast<acc_t>(n_gen))
                            : lse_value;
    const int64_t n_data = e_data.numel();
    const scalar_t data_grad = static_cast<scalar_t>(g / static_cast<acc_t>(n_data));
    const scalar_t* gen = e_gen.const_data_ptr<scalar_t>();
    scalar_t* gen_out = grad_gen.mutable_data_ptr<scalar_t>();
    scalar_t* data_out = grad_data.mutable_data_ptr<scalar_t>();
    // One parallel region writes both gradients: [begin, end) indexes e_gen and e_data alike.
    at::parallel_for(0, std::max(n_gen, n_data), kGrain, [&](int64_t begin, int64_t end) {
      if (begin < n_gen) {
        const int64_t gen_end = std::min(end, n_gen);
        write_scaled_exp<scalar_t, acc_t>(gen + begin, gen_out + begin, gen_end - begin, acc_t(-1), shift, -g);
      }
      if (begin < n_data) std::fill(data_out + begin, data_out + std::min(end, n_data), data_grad);
    });
    *grad_log_partition.mutable_data_ptr<acc_t>() = g * (acc_t(1) - std::exp(lse_value - shift));
  });
  return {grad_data, grad_gen, grad_log_partition};
}

// Row-wise log(mean(exp(x))) of a (R, K) tensor, in the accumulation dtype, shape (R,).
at::Tensor log_mean_exp_forward(const at::Tensor& x) {
  check_rows(x, c10::kCPU);
  auto out = at::empty({x.size(0)}, x.options().dtype(acc_type_of(x.scalar_type())));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "log_mean_exp_forward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t rows = x.size(0), cols = x.size(1);
    const scalar_t* in = x.const_data_ptr<scalar_t>();
    acc_t* result = out.mutable_data_ptr<acc_t>();
    const acc_t log_cols = std::log(static_cast<acc_t>(cols));
    if (rows == 1) {  // one long row: split it across threads
      const auto state = at::parallel_reduce(
          0, cols, kGrain, LogSumExpState<acc_t>{},
          [&](int64_t begin, int64_t end, LogSumExpState<acc_t> partial) {
            accumulate_log_sum_exp<scalar_t, acc_t>(in + begin, end - begin, acc_t(1), partial);
            return partial;
          },
          [](LogSumExpState<acc_t> a, const LogSumExpState<acc_t>& b) {
            a.merge(b);
            return a;
          });
      result[0] = state.value() - log_cols;
      return;
    }
    at::parallel_for(0, rows, std::max<int64_t>(1, kGrain / cols), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        LogSumExpState<acc_t> state;
        accumulate_log_sum_exp<scalar_t, acc_t>(in + r * cols, cols, acc_t(1), state);
        result[r] = state.value() - log_cols;
      }
    });
  });
  return out;
}

// grad_x[r, k] = grad[r] * exp(x[r, k] - out[r] - log K), with out the forward's (R,) result;
// grad and out in the accumulation dtype.
at::Tensor log_mean_exp_backward(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& out) {
  check_rows(x, c10::kCPU);
  check_row_values(grad, out, x);
  auto grad_x = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "log_mean_exp_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t rows = x.size(0), cols = x.size(1);
    const acc_t* g = grad.const_data_ptr<acc_t>();
    const acc_t* o = out.const_data_ptr<acc_t>();
    const scalar_t* in = x.const_data_ptr<scalar_t>();
    scalar_t* result = grad_x.mutable_data_ptr<scalar_t>();
    const acc_t log_cols = std::log(static_cast<acc_t>(cols));
    at::parallel_for(0, rows * cols, kGrain, [&](int64_t begin, int64_t end) {
      while (begin < end) {  // the flat range may start and end inside rows
        const int64_t r = begin / cols, row_end = std::min(end, (r + 1) * cols);
        write_scaled_exp<scalar_t, acc_t>(in + begin, result + begin, row_end - begin, acc_t(1), o[r] + log_cols, g[r]);
        begin = row_end;
      }
    });
  });
  return grad_x;
}

}  // namespace

TORCH_LIBRARY_IMPL(kale_fast, CPU, m) {
  m.impl("kale_loss_forward", &kale_loss_forward);
  m.impl("kale_loss_backward", &kale_loss_backward);
  m.impl("log_mean_exp_forward", &log_mean_exp_forward);
  m.impl("log_mean_exp_backward", &log_mean_exp_backward);
}

}  // namespace kale_fast
