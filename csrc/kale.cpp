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

#include "kale_cpu.h"
#include "log_sum_exp.h"
#include "kale_fast/op_checks.h"
#include "reused_buffers.h"

namespace kale_fast {
namespace {

constexpr int64_t kGrainBlocks = (1 << 15) / kBlock;  // blocks per parallel task: enough to amortise a task

// The few scalar operations that finish a reduction (means, the loss, gradient scales) run in long double
// (x86: 64-bit mantissa, 15-bit exponent), so that they add no rounding of their own and cannot overflow.
using wide_t = long double;

template <typename acc_t>
LogSumExpState<acc_t> merged(LogSumExpState<acc_t> a, const LogSumExpState<acc_t>& b) {
  a.merge(b);
  return a;
}

template <typename acc_t>
acc_t plus(acc_t a, acc_t b) {
  return a + b;
}

template <typename acc_t>
struct KaleSums {
  LogSumExpState<acc_t> gen;  // of t = -e_gen - A (A absent: -e_gen)
  acc_t data = 0;             // of e_data * data_scale
};

// One parallel region over the blocks of both inputs: block b of e_gen and block b of e_data in the same task,
// so that reading e_data overlaps the exp work on e_gen. Pairwise within tasks (Cascade), tasks (one per
// thread) combined in order. zero_ref_max: block_log_sum_exp's. kKeep: e_gen's exp terms kept for the backward
// (block_log_sum_exp), block b's in kept[b * kBlock:], what they are relative to (or NaN) in kept_ref[b].
template <bool kKeep = false, typename scalar_t, typename acc_t>
KaleSums<acc_t> kale_sums(const scalar_t* gen, int64_t n_gen, acc_t offset, const scalar_t* data, int64_t n_data,
                          acc_t data_scale, acc_t zero_ref_max, scalar_t* kept = nullptr,
                          acc_t* kept_ref = nullptr) {
  const int64_t n_blocks = (std::max(n_gen, n_data) + kBlock - 1) / kBlock;
  return at::parallel_reduce(
      0, n_blocks, kGrainBlocks, KaleSums<acc_t>{},
      [&](int64_t begin, int64_t end, KaleSums<acc_t> partial) {
        Cascade<LogSumExpState<acc_t>> gen_blocks;
        Cascade<acc_t> data_blocks;
        for (int64_t b = begin; b < end; ++b) {
          const int64_t start = b * kBlock;
          if (start < n_gen)
            gen_blocks.push(block_log_sum_exp<kKeep>(gen + start, std::min(kBlock, n_gen - start), acc_t(-1), offset,
                                                     ReadAhead<scalar_t>::of(gen, n_gen, data, n_data, start),
                                                     zero_ref_max,
                                                     kKeep ? kept + start : nullptr, kKeep ? kept_ref + b : nullptr),
                            merged<acc_t>);
          if (start < n_data) data_blocks.push(block_sum(data + start, std::min(kBlock, n_data - start), data_scale),
                                               plus<acc_t>);
        }
        partial.gen.merge(gen_blocks.total(LogSumExpState<acc_t>{}, merged<acc_t>));
        partial.data += data_blocks.total(acc_t(0), plus<acc_t>);
        return partial;
      },
      [](KaleSums<acc_t> a, const KaleSums<acc_t>& b) {
        a.gen.merge(b.gen);
        a.data += b.data;
        return a;
      });
}

// The value of a one-element tensor as acc_t: read in place where it is a CPU acc_t tensor (item() is a dispatcher
// call, a few microseconds beside kernels of a few microseconds at N ~ 1e3), else by item().
template <typename acc_t>
acc_t scalar_value(const at::Tensor& t) {
  return t.is_cpu() && t.scalar_type() == c10::CppTypeToScalarType<acc_t>::value ? *t.const_data_ptr<acc_t>()
                                                                                  : t.item<acc_t>();
}

// Scaling by 2^-64 (exact) keeps the sum of any int64 count of finite values finite; used when the plain sum
// overflowed, so that the mean of finite values is finite.
constexpr int kOverflowScaleBits = 64;

// mean(e_data) without overflow: the pairwise sum, redone on e_data * 2^-64 when it is not finite (which
// leaves infinities and NaN as they were, and finite values finite).
template <typename scalar_t, typename acc_t>
wide_t data_mean(const scalar_t* data, int64_t n_data, acc_t data_sum) {
  if (std::isfinite(data_sum)) return wide_t(data_sum) / wide_t(n_data);
  const acc_t scale = std::ldexp(acc_t(1), -kOverflowScaleBits);
  const acc_t scaled = kale_sums<false, scalar_t, acc_t>(data, 0, acc_t(0), data, n_data, scale,
                                                          -std::numeric_limits<acc_t>::infinity()).data;
  return std::ldexp(wide_t(scaled), kOverflowScaleBits) / wide_t(n_data);
}

// mean_i exp(t_i) = (sum / n) * exp(max) of a log-sum-exp state over n terms, in long double (no overflow where
// the mean is finite, no rounding of log n).
template <typename acc_t>
wide_t mean_exp(const LogSumExpState<acc_t>& state, int64_t n) {
  return wide_t(state.sum) / wide_t(n) * std::exp(wide_t(state.max));
}

// (loss, state) in the accumulation dtype: state = (max, sum) of the log-sum-exp of t_i = -e_gen_i - A (A absent:
// -e_gen_i), and loss = mean(e_data) + A + mean(exp(t)) - 1 (A absent: mean(e_data) + log mean exp(t)). With A,
// the state's max is a reference at most the max of t (0 where the t allow it: block_log_sum_exp's zero_ref_max),
// with sum the sum of exp(t - max): the same log-sum-exp.
// kept (fp32/fp64 energies only): kept.terms and kept.block_ref, allocated here and filled (kale_sums).
template <bool kKeep>
std::tuple<at::Tensor, at::Tensor> forward(const at::Tensor& e_data, const at::Tensor& e_gen,
                                           const std::optional<at::Tensor>& log_partition, KeptExps* kept) {
  check_flat(e_data, c10::kCPU, "e_data");
  check_flat(e_gen, c10::kCPU, "e_gen");
  const auto acc_dtype = acc_type_of(e_gen.scalar_type());
  auto loss = at::empty({}, e_gen.options().dtype(acc_dtype));
  auto state = at::empty({2}, e_gen.options().dtype(acc_dtype));
  if constexpr (kKeep) {
    TORCH_CHECK(keeps_exps(e_gen), "kale_fast: kept exp terms need fp32 or fp64 CPU energies");
    kept->terms = reusable_empty_like(e_gen);
    kept->block_ref = at::empty({(e_gen.numel() + kBlock - 1) / kBlock}, e_gen.options());
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, e_gen.scalar_type(), "kale_loss_forward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* gen = e_gen.const_data_ptr<scalar_t>();
    const scalar_t* data = e_data.const_data_ptr<scalar_t>();
    const int64_t n_gen = e_gen.numel(), n_data = e_data.numel();
    const acc_t a = log_partition.has_value() ? scalar_value<acc_t>(*log_partition) : acc_t(0);
    // with A, the terms relative to 0 where they allow it (block_log_sum_exp), so that kept terms keep the
    // gradient's exponent (without, t_i - max is as close as the gradient's t_i - lse)
    const acc_t zero_ref_max =
        log_partition.has_value() ? zero_ref_max_for<acc_t>(n_gen) : -std::numeric_limits<acc_t>::infinity();
    KaleSums<acc_t> sums;
    if constexpr (kKeep) {
      if constexpr (std::is_same_v<scalar_t, acc_t>)
        sums = kale_sums<true, scalar_t, acc_t>(gen, n_gen, a, data, n_data, acc_t(1), zero_ref_max,
                                                kept->terms.mutable_data_ptr<scalar_t>(),
                                                kept->block_ref.mutable_data_ptr<acc_t>());
      else
        TORCH_INTERNAL_ASSERT(false, "kale_fast: kept exp terms need fp32 or fp64 (checked above)");
    } else {
      sums = kale_sums<false, scalar_t, acc_t>(gen, n_gen, a, data, n_data, acc_t(1), zero_ref_max);
    }
    const wide_t mean = data_mean<scalar_t, acc_t>(data, n_data, sums.data);
    const wide_t loss_value =
        log_partition.has_value()
            ? mean + wide_t(a) + mean_exp(sums.gen, n_gen) - 1
            : mean + wide_t(sums.gen.max) + (std::log(wide_t(sums.gen.sum)) - std::log(wide_t(n_gen)));
    *loss.mutable_data_ptr<acc_t>() = static_cast<acc_t>(loss_value);
    acc_t* state_out = state.mutable_data_ptr<acc_t>();
    state_out[0] = sums.gen.max;
    state_out[1] = sums.gen.sum;
  });
  return {loss, state};
}

std::tuple<at::Tensor, at::Tensor> kale_loss_forward(const at::Tensor& e_data, const at::Tensor& e_gen,
                                                const std::optional<at::Tensor>& log_partition) {
  return forward<false>(e_data, e_gen, log_partition, nullptr);
}

// The gradient's map: d e_gen_i = scale * exp((-e_gen_i - shift) - post_shift); the lean exp where the exponent is at
// most the max (<= kLeanExpMax).
template <typename acc_t>
struct GenGradient {
  acc_t shift, post_shift, scale;
  bool lean;
};

// (d e_data, d e_gen, d A), from the forward's state (max, sum):
// d e_data = grad / N (one value, expanded: no N-element write), d e_gen_i = -grad/M * exp(-e_gen_i - A)
// (A absent: -grad/sum * exp(-e_gen_i - max)), d A = grad * (1 - mean(exp(-e_gen - A))) (zero without A).
// 1/M and 1/sum multiply the exp instead of entering its exponent as log M, which |A| would round away.
// kept (fp32/fp64): the forward's exp terms, turned into d e_gen (a block's terms times one factor, the block's
// scale * exp(ref + A - shift - post_shift), computed in long double, where the factor is a normal number and the
// block's terms exact) or recomputed from e_gen (elsewhere).
template <bool kKeep>
std::tuple<at::Tensor, at::Tensor, at::Tensor> backward(const at::Tensor& grad, const at::Tensor& e_data,
                                                        const at::Tensor& e_gen,
                                                        const std::optional<at::Tensor>& log_partition,
                                                        const at::Tensor& state, const KeptExps* kept) {
  check_flat(e_data, c10::kCPU, "e_data");
  check_flat(e_gen, c10::kCPU, "e_gen");
  check_kale_state(grad, state, e_gen);
  if constexpr (kKeep)
    TORCH_CHECK(keeps_exps(e_gen) && kept->terms.sizes() == e_gen.sizes() &&
                    kept->block_ref.numel() == (e_gen.numel() + kBlock - 1) / kBlock,
                "kale_fast: kept exp terms do not match e_gen");
  auto grad_gen = reusable_empty_like(e_gen);
  auto grad_data_value = at::empty({}, e_data.options());
  auto grad_log_partition = at::empty({}, state.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, e_gen.scalar_type(), "kale_loss_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const wide_t g = scalar_value<acc_t>(grad);
    const acc_t* st = state.const_data_ptr<acc_t>();
    const LogSumExpState<acc_t> gen_state{st[0], st[1]};
    const int64_t n_gen = e_gen.numel();
    *grad_data_value.mutable_data_ptr<scalar_t>() = static_cast<scalar_t>(g / wide_t(e_data.numel()));
    GenGradient<acc_t> map{gen_state.max, 0, static_cast<acc_t>(-g / wide_t(gen_state.sum)), true};
    acc_t grad_a = 0, offset = 0;  // offset: the forward's A (0 without)
    if (log_partition.has_value()) {
      offset = map.shift = scalar_value<acc_t>(*log_partition);
      grad_a = static_cast<acc_t>(g * (1 - mean_exp(gen_state, n_gen)));
      map.lean = gen_state.max <= kLeanExpMax<acc_t>;
      // beyond, exp(t) alone would overflow where exp(t) / M need not: log M moves into the exponent
      map.post_shift = map.lean ? acc_t(0) : static_cast<acc_t>(std::log(wide_t(n_gen)));
      map.scale = static_cast<acc_t>(map.lean ? -g / wide_t(n_gen) : -g);
    }
    *grad_log_partition.mutable_data_ptr<acc_t>() = grad_a;
    const scalar_t* gen = e_gen.const_data_ptr<scalar_t>();
    scalar_t* gen_out = grad_gen.mutable_data_ptr<scalar_t>();
    auto recompute = [&](int64_t begin, int64_t end) {
      if (map.lean)
        write_scaled_exp<true>(gen + begin, gen_out + begin, end - begin, acc_t(-1), map.shift, map.post_shift,
                               map.scale);
      else
        write_scaled_exp<false>(gen + begin, gen_out + begin, end - begin, acc_t(-1), map.shift, map.post_shift,
                                map.scale);
    };
    if constexpr (kKeep) {
      const acc_t* block_ref = kept->block_ref.const_data_ptr<acc_t>();
      const scalar_t* terms = kept->terms.const_data_ptr<scalar_t>();
      at::parallel_for(0, kept->block_ref.numel(), kGrainBlocks, [&](int64_t begin, int64_t end) {
        for (int64_t b = begin; b < end; ++b) {
          const int64_t start = b * kBlock, stop = std::min(start + kBlock, n_gen);
          // exp(t_i - ref_b) was kept; the gradient's exponent is t_i + A - shift - post_shift
          const acc_t factor = static_cast<acc_t>(
              wide_t(map.scale) *
              std::exp(wide_t(block_ref[b]) + wide_t(offset) - wide_t(map.shift) - wide_t(map.post_shift)));
          if (std::isfinite(factor) && std::abs(factor) >= std::numeric_limits<acc_t>::min())  // NaN max: no
            write_scaled(terms + start, gen_out + start, stop - start, factor);
          else
            recompute(start, stop);
        }
      });
    } else {
      at::parallel_for(0, n_gen, kGrainBlocks * kBlock, recompute);
    }
  });
  return {grad_data_value.expand({e_data.numel()}), grad_gen, grad_log_partition};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> kale_loss_backward(const at::Tensor& grad, const at::Tensor& e_data,
                                                             const at::Tensor& e_gen,
                                                             const std::optional<at::Tensor>& log_partition,
                                                             const at::Tensor& state) {
  return backward<false>(grad, e_data, e_gen, log_partition, state, nullptr);
}

// The log-sum-exp state of one row (or a slice of it), pairwise over its blocks.
template <typename scalar_t, typename acc_t>
LogSumExpState<acc_t> row_log_sum_exp(const scalar_t* x, int64_t n) {
  Cascade<LogSumExpState<acc_t>> blocks;
  for (int64_t start = 0; start < n; start += kBlock)
    blocks.push(block_log_sum_exp(x + start, std::min(kBlock, n - start), acc_t(1), acc_t(0),
                                  ReadAhead<scalar_t>::of(x, n, x, n, start)),
                merged<acc_t>);
  return blocks.total(LogSumExpState<acc_t>{}, merged<acc_t>);
}

// log(mean(exp)) of a row from its state: max + log(sum) - log K, in long double.
template <typename acc_t>
acc_t log_mean_exp_value(const LogSumExpState<acc_t>& state, int64_t cols) {
  return static_cast<acc_t>(wide_t(state.max) + (std::log(wide_t(state.sum)) - std::log(wide_t(cols))));
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
    if (rows == 1) {  // one long row: its blocks split across threads
      const auto state = at::parallel_reduce(
          0, (cols + kBlock - 1) / kBlock, kGrainBlocks, LogSumExpState<acc_t>{},
          [&](int64_t begin, int64_t end, LogSumExpState<acc_t> partial) {
            const int64_t start = begin * kBlock;
            partial.merge(row_log_sum_exp<scalar_t, acc_t>(in + start, std::min(end * kBlock, cols) - start));
            return partial;
          },
          merged<acc_t>);
      result[0] = log_mean_exp_value(state, cols);
      return;
    }
    at::parallel_for(0, rows, std::max<int64_t>(1, kGrainBlocks * kBlock / cols), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r)
        result[r] = log_mean_exp_value(row_log_sum_exp<scalar_t, acc_t>(in + r * cols, cols), cols);
    });
  });
  return out;
}

// grad_x[r, k] = grad[r] / K * exp(x[r, k] - out[r]), with out the forward's (R,) result (log-mean-exp, so the
// exponent is at most log K: lean exp); grad and out in the accumulation dtype. 1/K multiplies the exp instead of
// entering its exponent as log K, which a large |out| would round away.
at::Tensor log_mean_exp_backward(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& out) {
  check_rows(x, c10::kCPU);
  check_row_values(grad, out, x);
  auto grad_x = reusable_empty_like(x);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "log_mean_exp_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t rows = x.size(0), cols = x.size(1);
    const acc_t* g = grad.const_data_ptr<acc_t>();
    const acc_t* o = out.const_data_ptr<acc_t>();
    const scalar_t* in = x.const_data_ptr<scalar_t>();
    scalar_t* result = grad_x.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, rows * cols, kGrainBlocks * kBlock, [&](int64_t begin, int64_t end) {
      while (begin < end) {  // the flat range may start and end inside rows
        const int64_t r = begin / cols, row_end = std::min(end, (r + 1) * cols);
        const acc_t scale = static_cast<acc_t>(wide_t(g[r]) / wide_t(cols));
        write_scaled_exp<true>(in + begin, result + begin, row_end - begin, acc_t(1), o[r], acc_t(0), scale);
        begin = row_end;
      }
    });
  });
  return grad_x;
}

}  // namespace

bool keeps_exps(const at::Tensor& e_gen) {
  return e_gen.is_cpu() && (e_gen.scalar_type() == at::kFloat || e_gen.scalar_type() == at::kDouble);
}

std::tuple<at::Tensor, at::Tensor> kale_loss_forward_keeping_exps(const at::Tensor& e_data, const at::Tensor& e_gen,
                                                                  const std::optional<at::Tensor>& log_partition,
                                                                  KeptExps& kept) {
  return forward<true>(e_data, e_gen, log_partition, &kept);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> kale_loss_backward_from_kept_exps(
    const at::Tensor& grad, const at::Tensor& e_data, const at::Tensor& e_gen,
    const std::optional<at::Tensor>& log_partition, const at::Tensor& state, const KeptExps& kept) {
  return backward<true>(grad, e_data, e_gen, log_partition, state, &kept);
}

TORCH_LIBRARY_IMPL(kale_fast, CPU, m) {
  m.impl("kale_loss_forward", &kale_loss_forward);
  m.impl("kale_loss_backward", &kale_loss_backward);
  m.impl("log_mean_exp_forward", &log_mean_exp_forward);
  m.impl("log_mean_exp_backward", &log_mean_exp_backward);
}

}  // namespace kale_fast
