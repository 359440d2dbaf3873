// The CPU KALE kernels' variant for csrc/kale_autograd.cpp's eager autograd (no op schema: internal to the
// extension): the forward keeps e_gen's exp terms, and the backward scales them into the gradient instead of
// evaluating M exps again (on one core the exps bound the op: the kept terms cost one extra write and read of M
// elements, much less than M exps).
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

namespace kale_fast {

// What the forward keeps for the backward: terms, e_gen's shape, exp(t_i - ref_b) for t_i = -e_gen_i - A (A
// absent: -e_gen_i), with ref_b per block b of kBlock elements (csrc/log_sum_exp.h: 0 where the block's t lie in
// the lean exp's normal range, else the block's max of t); block_ref, (ceil(M / kBlock),), ref_b, or NaN where the
// backward must recompute the block from e_gen.
struct KeptExps {
  at::Tensor terms;
  at::Tensor block_ref;
};

// Whether the variant runs for these energies: fp32 or fp64 on the CPU (bf16/fp16 gradients are rounded to their
// dtype, so their terms cannot be kept in the gradient's buffer).
bool keeps_exps(const at::Tensor& e_gen);

// kale_loss_forward's (loss, state), filling `kept`.
std::tuple<at::Tensor, at::Tensor> kale_loss_forward_keeping_exps(const at::Tensor& e_data, const at::Tensor& e_gen,
                                                                  const std::optional<at::Tensor>& log_partition,
                                                                  KeptExps& kept);

// kale_loss_backward's (d e_data, d e_gen, d A) from the kept terms (left as they are: repeated calls agree).
std::tuple<at::Tensor, at::Tensor, at::Tensor> kale_loss_backward_from_kept_exps(
    const at::Tensor& grad, const at::Tensor& e_data, const at::Tensor& e_gen,
    const std::optional<at::Tensor>& log_partition, const at::Tensor& state, const KeptExps& kept);

}  // namespace kale_fast
