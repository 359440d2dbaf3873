// CPU kernel of mlp_potential: the value and input-gradient of U(z) = 0.5 * prior_precision * |z|^2 +
// temperature * f(z), f a stack of Linear layers each followed by an activation (identity, SiLU, ReLU, LeakyReLU,
// tanh), ending in width 1 (kale_fast/ops/mlp_potential.py is the wrapper, kale_fast/reference/mlp_potential.py
// the oracle). One call instead of some 20 dispatched torch ops per gradient: at a sampler's small batches the
// per-op dispatch, not the arithmetic, was the cost.
//
// Two paths, per block of rows (chains): up to kRowLoopMax rows, each row runs through every layer in SIMD loops
// that keep their sums in registers (row_times_weights, row_through_weights; weights stay in cache, nothing is
// allocated per layer); above, blocks of kBlockRows rows go
// through each layer as one register-tiled product of our own (block_product) followed by one pass that applies
// the activation and keeps its derivative. at::mm / at::addmm_out (MKL) into buffers were slower at these widths:
// 1.8x the 7 bare torch GEMMs per call at B = 64 and 1.55x at B = 1024, against 1.25x and 1.34x for the tiles
// (fp32, 1 thread, AMD EPYC Zen 2, interleaved). Row blocks run in parallel (at::parallel_for) above kGrainRows
// rows. No autograd: sampling needs no parameter gradients, and a call where one would be needed is an error
// (no_autograd below).
//
// At a sampler's one or few chains the arithmetic is a few us and the call's fixed cost is what counts: the kernel
// reads its list arguments in place (no copies), keeps its per-layer bookkeeping on the stack and its scratch rows
// in per-thread buffers reused from call to call, allocates its outputs without a second trip through the
// dispatcher, and enters no parallel region for a batch that one task runs. For the same reason mlp_leapfrog runs a
// whole HMC trajectory (n steps of kick, drift and the potential's value and gradient) in one call.
#include <ATen/Dispatch.h>
#include <ATen/EmptyTensor.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/GradMode.h>
#include <c10/util/SmallVector.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <tuple>
#include <utility>
#include <vector>

#include "vec_math.h"

#if defined(__AVX__)
#include <immintrin.h>
#endif

namespace kale_fast {
namespace {

// The activation codes of the schema's `activations` (kale_fast/ops/mlp_potential.py names them).
enum Activation : int64_t { kIdentity = 0, kSilu = 1, kRelu = 2, kLeakyRelu = 3, kTanh = 4 };

// Row blocks up to this many rows take the row loops, larger ones the tiled products. Measured on the GEBM
// target's widths (16 -> 64 -> 64 -> 64 -> 1, fp32, 1 thread, AMD EPYC Zen 2, interleaved, kernel alone): loops /
// tiles 0.63x at 4 rows, 0.73x at 8, 1.0x at 16, 1.13x at 32 (the tiles need the weights transposed once per
// call; the loops read every weight once per row).
constexpr int64_t kRowLoopMax = 8;
// Rows per parallel task: below this, a thread's share is too small to pay for its task.
constexpr int64_t kGrainRows = 128;

using Biases = c10::List<std::optional<at::Tensor>>;

struct Layer {
  int64_t in, out, activation;
  double parameter;  // LeakyReLU's negative slope
};

// In place, a[j] <- act(a[j]), and d[j] <- act'(a[j]) (d unused for the identity), for n elements.
template <typename scalar_t>
void activate(const Layer& layer, scalar_t* a, scalar_t* d, int64_t n) {
  const scalar_t one(1), zero(0);
  switch (layer.activation) {
    case kSilu:
      for (int64_t j = 0; j < n; ++j) {
        const scalar_t x = a[j], s = one / (one + exp_vec<scalar_t>(-x));
        d[j] = s * (one + x * (one - s));
        a[j] = x * s;
      }
      break;
    case kRelu:
      for (int64_t j = 0; j < n; ++j) {
        const bool positive = a[j] > zero;
        d[j] = positive ? one : zero;
        a[j] = positive ? a[j] : zero;
      }
      break;
    case kLeakyRelu: {
      const scalar_t slope = static_cast<scalar_t>(layer.parameter);
      for (int64_t j = 0; j < n; ++j) {
        const bool positive = a[j] > zero;
        d[j] = positive ? one : slope;
        a[j] = positive ? a[j] : slope * a[j];
      }
      break;
    }
    case kTanh:
      for (int64_t j = 0; j < n; ++j) {
        const scalar_t t = std::tanh(a[j]);
        d[j] = one - t * t;
        a[j] = t;
      }
      break;
    default:
      break;
  }
}

// Networks up to this many layers keep their bookkeeping on the stack (deeper ones allocate it).
constexpr unsigned kInlineLayers = 8;

template <typename scalar_t>
struct Network {
  c10::SmallVector<Layer, kInlineLayers> layers;
  c10::SmallVector<const scalar_t*, kInlineLayers> weights, biases;  // (out, in) row-major; a bias may be nullptr
  scalar_t temperature, prior_precision;
  int64_t widest;
};

// Per layer, its weights transposed to (in, out) (transposed_weights).
template <typename scalar_t>
using Transposed = c10::SmallVector<const scalar_t*, kInlineLayers>;

// Per-thread scratch of at least `n` elements, kept for the thread's next call (slot: which of a call's buffers).
// Its size is the largest a call of this thread has needed: for the GEBM networks 2.4k elements in the row loops,
// 40k in the 64-row blocks.
template <typename scalar_t, int slot>
scalar_t* scratch(size_t n) {
  thread_local std::vector<scalar_t> buffer;
  if (buffer.size() < n) buffer.resize(n);
  return buffer.data();
}

// Offsets of each layer's (activations, derivatives) in a scratch buffer, `rows` rows per layer; the last entry is
// their end.
template <typename scalar_t>
c10::SmallVector<int64_t, kInlineLayers + 1> layer_offsets(const Network<scalar_t>& net, int64_t rows) {
  c10::SmallVector<int64_t, kInlineLayers + 1> offset(net.layers.size() + 1, 0);
  for (size_t i = 0; i < net.layers.size(); ++i) offset[i + 1] = offset[i] + 2 * rows * net.layers[i].out;
  return offset;
}

// The sums of each of kWidth vectors' lanes, as one vector (lane g: the sum of acc[g]).
template <typename T>
inline typename Simd<T>::Vec lane_sums(const typename Simd<T>::Vec* acc) {
  using V = typename Simd<T>::Vec;
#if defined(__AVX__)
  if constexpr (std::is_same_v<T, float>) {
    // Per 128-bit half: pairs, then quadruples summed by two rounds of hadd; then the halves added.
    const __m256 u0 = _mm256_hadd_ps(_mm256_hadd_ps((__m256)acc[0], (__m256)acc[1]),
                                     _mm256_hadd_ps((__m256)acc[2], (__m256)acc[3]));
    const __m256 u1 = _mm256_hadd_ps(_mm256_hadd_ps((__m256)acc[4], (__m256)acc[5]),
                                     _mm256_hadd_ps((__m256)acc[6], (__m256)acc[7]));
    return (V)_mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
  } else {
    const __m256d u0 = _mm256_hadd_pd((__m256d)acc[0], (__m256d)acc[1]);
    const __m256d u1 = _mm256_hadd_pd((__m256d)acc[2], (__m256d)acc[3]);
    return (V)_mm256_add_pd(_mm256_permute2f128_pd(u0, u1, 0x20), _mm256_permute2f128_pd(u0, u1, 0x31));
  }
#else
  V sums{};
  for (int64_t g = 0; g < Simd<T>::kWidth; ++g) {
    for (int64_t l = 0; l < Simd<T>::kWidth; ++l) sums[g] += acc[g][l];
  }
  return sums;
#endif
}

// One row through a layer's weights, a (out,) = b + w (out, in) x (in,): kWidth outputs at a time, each one
// accumulator vector along x (independent chains, not one output's chain of dependent additions), their lanes
// summed together by lane_sums; the outputs past the last whole group and the inputs past the last whole vector
// in plain loops. (One dot product per output, as before, spent its time in the chain and the horizontal sum.)
template <typename T>
void row_times_weights(const T* w, const T* b, const T* x, T* a, int64_t in, int64_t out) {
  using V = typename Simd<T>::Vec;
  constexpr int64_t kW = Simd<T>::kWidth;
  const int64_t whole_in = in / kW * kW, whole_out = out / kW * kW;
  for (int64_t j = 0; j < whole_out; j += kW) {
    V acc[kW] = {};
    for (int64_t k = 0; k < whole_in; k += kW) {
      const V xv = load_vec<T>(x + k);
#pragma GCC unroll 8
      for (int64_t g = 0; g < kW; ++g) acc[g] += load_vec<T>(w + (j + g) * in + k) * xv;
    }
    V sums = lane_sums<T>(acc);
    if (b != nullptr) sums += load_vec<T>(b + j);
    if (whole_in < in) {
      T tail[kW];
      for (int64_t g = 0; g < kW; ++g) {
        tail[g] = T(0);
        for (int64_t k = whole_in; k < in; ++k) tail[g] += w[(j + g) * in + k] * x[k];
      }
      sums += load_vec<T>(tail);
    }
    store_vec<T>(a + j, sums);
  }
  for (int64_t j = whole_out; j < out; ++j) {
    T sum = b ? b[j] : T(0);
    const T* wj = w + j * in;
#pragma omp simd reduction(+ : sum)
    for (int64_t k = 0; k < in; ++k) sum += wj[k] * x[k];
    a[j] = sum;
  }
}

// One row's gradient back through a layer's weights, out (in,) = g (out,) w (out, in) (+ prior_precision * z
// where z is given: the first layer), kN vectors of `out` at a time held in registers over the whole sum (the
// loop over j kept them in memory: a load and a store per product).
template <int64_t kN, typename T>
void through_weights_block(const T* w, const T* g, const T* z, T prior_precision, T* out, int64_t k, int64_t in,
                           int64_t n_out) {
  using V = typename Simd<T>::Vec;
  constexpr int64_t kW = Simd<T>::kWidth;
  V acc[kN];
#pragma GCC unroll 8
  for (int64_t v = 0; v < kN; ++v) acc[v] = z ? prior_precision * load_vec<T>(z + k + v * kW) : V{};
  for (int64_t j = 0; j < n_out; ++j) {
    const V gj = splat<V>(g[j]);
    const T* wj = w + j * in + k;
#pragma GCC unroll 8
    for (int64_t v = 0; v < kN; ++v) acc[v] += gj * load_vec<T>(wj + v * kW);
  }
#pragma GCC unroll 8
  for (int64_t v = 0; v < kN; ++v) store_vec<T>(out + k + v * kW, acc[v]);
}

template <typename T>
void row_through_weights(const T* w, const T* g, const T* z, T prior_precision, T* out, int64_t in, int64_t n_out) {
  constexpr int64_t kW = Simd<T>::kWidth;
  int64_t k = 0;
  for (; k + 8 * kW <= in; k += 8 * kW) through_weights_block<8>(w, g, z, prior_precision, out, k, in, n_out);
  if (k + 4 * kW <= in) {
    through_weights_block<4>(w, g, z, prior_precision, out, k, in, n_out);
    k += 4 * kW;
  }
  if (k + 2 * kW <= in) {
    through_weights_block<2>(w, g, z, prior_precision, out, k, in, n_out);
    k += 2 * kW;
  }
  if (k + kW <= in) {
    through_weights_block<1>(w, g, z, prior_precision, out, k, in, n_out);
    k += kW;
  }
  for (; k < in; ++k) {
    T sum = z ? prior_precision * z[k] : T(0);
    for (int64_t j = 0; j < n_out; ++j) sum += g[j] * w[j * in + k];
    out[k] = sum;
  }
}

// Rows [begin, end) one at a time, every layer in plain loops. `work` holds, per layer, its activations and
// derivatives (2 * out), then two gradient rows of the widest width.
template <typename scalar_t>
void rows_by_loops(const Network<scalar_t>& net, const scalar_t* z, scalar_t* value, scalar_t* grad, int64_t begin,
                   int64_t end) {
  const auto& layers = net.layers;
  const int64_t n_layers = static_cast<int64_t>(layers.size()), dim = layers[0].in;
  const auto offset = layer_offsets(net, 1);
  scalar_t* work = scratch<scalar_t, 0>(offset[n_layers] + 2 * net.widest);
  scalar_t* g = work + offset[n_layers];
  scalar_t* g_next = g + net.widest;
  for (int64_t r = begin; r < end; ++r) {
    const scalar_t* zr = z + r * dim;
    const scalar_t* x = zr;
    for (int64_t i = 0; i < n_layers; ++i) {
      const Layer& layer = layers[i];
      scalar_t* a = work + offset[i];
      const scalar_t *w = net.weights[i], *b = net.biases[i];
      row_times_weights(w, b, x, a, layer.in, layer.out);
      activate(layer, a, a + layer.out, layer.out);
      x = a;
    }
    scalar_t squared = 0;
#pragma omp simd reduction(+ : squared)
    for (int64_t k = 0; k < dim; ++k) squared += zr[k] * zr[k];
    value[r] = scalar_t(0.5) * net.prior_precision * squared + net.temperature * x[0];
    // Backward: g = dU/d(layer output), times the activation's derivative, then through the weights.
    g[0] = net.temperature;
    for (int64_t i = n_layers - 1; i >= 0; --i) {
      const Layer& layer = layers[i];
      if (layer.activation != kIdentity) {
        const scalar_t* d = work + offset[i] + layer.out;
        for (int64_t j = 0; j < layer.out; ++j) g[j] *= d[j];
      }
      scalar_t* out = i == 0 ? grad + r * dim : g_next;
      const scalar_t* w = net.weights[i];
      row_through_weights(w, g, i == 0 ? zr : nullptr, net.prior_precision, out, layer.in, layer.out);
      std::swap(g, g_next);
    }
  }
}

// One register tile of C = start + A B (block_product): rows r .. r + R - 1, columns j .. j + 2 * kWidth - 1.
template <int64_t R, typename T>
void product_tile(const T* A, const T* B, const T* bias, const T* init, T* C, int64_t r, int64_t j, int64_t m,
                  int64_t n) {
  using V = typename Simd<T>::Vec;
  constexpr int64_t kW = Simd<T>::kWidth;
  V acc[R][2];
#pragma GCC unroll 4
  for (int64_t i = 0; i < R; ++i) {
    for (int64_t h = 0; h < 2; ++h) {
      if (init != nullptr) {
        acc[i][h] = load_vec<T>(init + (r + i) * n + j + h * kW);
      } else if (bias != nullptr) {
        acc[i][h] = load_vec<T>(bias + j + h * kW);
      } else {
        acc[i][h] = V{};
      }
    }
  }
  for (int64_t k = 0; k < m; ++k) {
    const V b0 = load_vec<T>(B + k * n + j), b1 = load_vec<T>(B + k * n + j + kW);
#pragma GCC unroll 4
    for (int64_t i = 0; i < R; ++i) {
      const T a = A[(r + i) * m + k];
      acc[i][0] += a * b0;
      acc[i][1] += a * b1;
    }
  }
#pragma GCC unroll 4
  for (int64_t i = 0; i < R; ++i) {
    store_vec<T>(C + (r + i) * n + j, acc[i][0]);
    store_vec<T>(C + (r + i) * n + j + kW, acc[i][1]);
  }
}

// C (rows, n) = start + A (rows, m) B (m, n), all row-major and contiguous; start is init (rows, n) where given
// (C may be init itself), else the bias (n,) on every row where given, else 0. Tiles of 4 rows by 2 SIMD vectors
// of columns accumulate in registers; the columns past the last whole tile in plain loops.
template <typename T>
void block_product(const T* A, const T* B, const T* bias, const T* init, T* C, int64_t rows, int64_t m, int64_t n) {
  constexpr int64_t kCols = 2 * Simd<T>::kWidth;
  const int64_t tiled = n / kCols * kCols;
  for (int64_t j = 0; j < tiled; j += kCols) {
    int64_t r = 0;
    for (; r + 4 <= rows; r += 4) product_tile<4>(A, B, bias, init, C, r, j, m, n);
    for (; r < rows; ++r) product_tile<1>(A, B, bias, init, C, r, j, m, n);
  }
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t j = tiled; j < n; ++j) {
      T sum = init != nullptr ? init[r * n + j] : bias != nullptr ? bias[j] : T(0);
      for (int64_t k = 0; k < m; ++k) sum += A[r * m + k] * B[k * n + j];
      C[r * n + j] = sum;
    }
  }
}

// Rows processed together by rows_by_blocks: their activations and gradients stay in cache between layers.
constexpr int64_t kBlockRows = 64;

// Rows [begin, end) in blocks of kBlockRows, each layer one block_product (the forward with the transposed weights
// (in, out) of `transposed`, the backward with the weights as stored) and one pass for its activation.
template <typename scalar_t>
void rows_by_blocks(const Network<scalar_t>& net, const Transposed<scalar_t>& transposed, const scalar_t* z,
                    scalar_t* value, scalar_t* grad, int64_t begin, int64_t end) {
  const auto& layers = net.layers;
  const int64_t n_layers = static_cast<int64_t>(layers.size()), dim = layers[0].in;
  const auto offset = layer_offsets(net, kBlockRows);
  scalar_t* work = scratch<scalar_t, 1>(offset[n_layers] + 2 * kBlockRows * net.widest);
  for (int64_t first = begin; first < end; first += kBlockRows) {
    const int64_t rows = std::min(kBlockRows, end - first);
    const scalar_t* zb = z + first * dim;
    const scalar_t* x = zb;
    for (int64_t i = 0; i < n_layers; ++i) {
      const Layer& layer = layers[i];
      scalar_t* a = work + offset[i];
      block_product<scalar_t>(x, transposed[i], net.biases[i], nullptr, a, rows, layer.in, layer.out);
      activate(layer, a, a + rows * layer.out, rows * layer.out);
      x = a;
    }
    const Layer& last = layers.back();
    const scalar_t* d_last = work + offset[n_layers - 1] + rows;  // (rows, 1) derivatives
    scalar_t* g = work + offset[n_layers];
    scalar_t* g_next = g + kBlockRows * net.widest;
    for (int64_t r = 0; r < rows; ++r) {
      const scalar_t* zr = zb + r * dim;
      scalar_t squared = 0;
#pragma omp simd reduction(+ : squared)
      for (int64_t k = 0; k < dim; ++k) squared += zr[k] * zr[k];
      value[first + r] = scalar_t(0.5) * net.prior_precision * squared + net.temperature * x[r];
      // The last layer (width 1) back to its input: a row of its weights, scaled.
      const scalar_t scale = net.temperature * (last.activation != kIdentity ? d_last[r] : scalar_t(1));
      for (int64_t k = 0; k < last.in; ++k) g[r * last.in + k] = scale * net.weights.back()[k];
    }
    scalar_t* grad_block = grad + first * dim;
    if (n_layers == 1) {
      for (int64_t j = 0; j < rows * dim; ++j) grad_block[j] = g[j] + net.prior_precision * zb[j];
    }
    for (int64_t i = n_layers - 2; i >= 0; --i) {
      const Layer& layer = layers[i];
      if (layer.activation != kIdentity) {
        const scalar_t* d = work + offset[i] + rows * layer.out;
        for (int64_t j = 0; j < rows * layer.out; ++j) g[j] *= d[j];
      }
      if (i == 0) {  // grad = prior_precision * z + g W
        for (int64_t j = 0; j < rows * dim; ++j) grad_block[j] = net.prior_precision * zb[j];
        block_product<scalar_t>(g, net.weights[0], nullptr, grad_block, grad_block, rows, layer.out, dim);
      } else {
        block_product<scalar_t>(g, net.weights[i], nullptr, nullptr, g_next, rows, layer.out, layer.in);
        std::swap(g, g_next);
      }
    }
  }
}

// Each layer's weights transposed to (in, out), the forward's right-hand operand in block_product, in the calling
// thread's scratch (read by every task of its parallel region, which the thread waits for).
template <typename scalar_t>
Transposed<scalar_t> transposed_weights(const Network<scalar_t>& net) {
  size_t total = 0;
  for (const Layer& layer : net.layers) total += layer.in * layer.out;
  scalar_t* t = scratch<scalar_t, 2>(total);
  Transposed<scalar_t> transposed;
  for (size_t i = 0; i < net.layers.size(); ++i) {
    const int64_t in = net.layers[i].in, out = net.layers[i].out;
    for (int64_t j = 0; j < out; ++j) {
      for (int64_t k = 0; k < in; ++k) t[k * out + j] = net.weights[i][j * in + k];
    }
    transposed.push_back(t);
    t += in * out;
  }
  return transposed;
}

// z_name: the positions' name in the op's schema (z, or mlp_leapfrog's y).
void check_arguments(const at::Tensor& z, const char* z_name, at::TensorList weights, const Biases& biases,
                     at::IntArrayRef activations, at::ArrayRef<double> parameters) {
  TORCH_CHECK(z.device().is_cpu() && z.dim() == 2 && z.is_contiguous() &&
                  (z.scalar_type() == at::kFloat || z.scalar_type() == at::kDouble),
              z_name, " must be a contiguous (B, L) fp32 or fp64 CPU tensor");
  const size_t n = weights.size();
  TORCH_CHECK(n > 0 && biases.size() == n && activations.size() == n && parameters.size() == n,
              "weights, biases, activations and activation_parameters must have one entry per layer (at least one)");
  int64_t width = z.size(1);
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& w = weights[i];
    TORCH_CHECK(w.device().is_cpu() && w.dim() == 2 && w.is_contiguous() && w.scalar_type() == z.scalar_type() &&
                    w.size(1) == width,
                "weights[", i, "] must be a contiguous (out, ", width, ") CPU tensor of z's dtype");
    const std::optional<at::Tensor> b = biases.get(i);
    TORCH_CHECK(!b.has_value() || (b->device().is_cpu() && b->dim() == 1 && b->is_contiguous() &&
                                   b->scalar_type() == z.scalar_type() && b->size(0) == w.size(0)),
                "biases[", i, "] must be None or a contiguous (", w.size(0), ",) CPU tensor of z's dtype");
    TORCH_CHECK(activations[i] >= kIdentity && activations[i] <= kTanh, "activations[", i, "] is not a known code");
    width = w.size(0);
  }
  TORCH_CHECK(width == 1, "the last layer must have width 1, has ", width);
}

template <typename scalar_t>
Network<scalar_t> network(at::TensorList weights, const Biases& biases, at::IntArrayRef activations,
                          at::ArrayRef<double> parameters, double temperature, double prior_precision) {
  Network<scalar_t> net;
  net.temperature = static_cast<scalar_t>(temperature);
  net.prior_precision = static_cast<scalar_t>(prior_precision);
  net.widest = 1;
  for (size_t i = 0; i < weights.size(); ++i) {
    net.layers.push_back({weights[i].size(1), weights[i].size(0), activations[i], parameters[i]});
    net.weights.push_back(weights[i].const_data_ptr<scalar_t>());
    const std::optional<at::Tensor> b = biases.get(i);
    net.biases.push_back(b.has_value() ? b->const_data_ptr<scalar_t>() : nullptr);
    net.widest = std::max({net.widest, weights[i].size(0), weights[i].size(1)});
  }
  return net;
}

// Value and gradient of rows [begin, end) of z: the row loops for a few rows, else the tiled products (whose
// transposed weights the caller made when the batch has more than kRowLoopMax rows).
template <typename scalar_t>
void evaluate_rows(const Network<scalar_t>& net, const Transposed<scalar_t>& transposed, const scalar_t* z,
                   scalar_t* value, scalar_t* grad, int64_t begin, int64_t end) {
  if (end - begin <= kRowLoopMax) {
    rows_by_loops(net, z, value, grad, begin, end);
  } else {
    rows_by_blocks(net, transposed, z, value, grad, begin, end);
  }
}

// Runs rows(begin, end) over [0, batch): in one task up to kGrainRows rows, else in parallel row blocks.
template <typename F>
void over_rows(int64_t batch, const F& rows) {
  if (batch <= kGrainRows) {
    rows(0, batch);
  } else {
    at::parallel_for(0, batch, kGrainRows, rows);
  }
}

// Returns (U (B,), dU/dz (B, L)).
std::tuple<at::Tensor, at::Tensor> mlp_potential(const at::Tensor& z, at::TensorList weights, const Biases& biases,
                                                 at::IntArrayRef activations, at::ArrayRef<double> parameters,
                                                 double temperature, double prior_precision) {
  check_arguments(z, "z", weights, biases, activations, parameters);
  const int64_t batch = z.size(0);
  at::Tensor value = at::detail::empty_cpu({batch}, z.scalar_type());
  at::Tensor grad = at::detail::empty_cpu(z.sizes(), z.scalar_type());
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "mlp_potential", [&] {
    const auto net = network<scalar_t>(weights, biases, activations, parameters, temperature, prior_precision);
    const scalar_t* zp = z.const_data_ptr<scalar_t>();
    scalar_t *up = value.mutable_data_ptr<scalar_t>(), *gp = grad.mutable_data_ptr<scalar_t>();
    if (batch <= kRowLoopMax) {  // a sampler's one or two chains: no transposed weights, no parallel region
      rows_by_loops(net, zp, up, gp, 0, batch);
      return;
    }
    const Transposed<scalar_t> transposed = transposed_weights(net);
    over_rows(batch, [&](int64_t begin, int64_t end) { evaluate_rows(net, transposed, zp, up, gp, begin, end); });
  });
  return {value, grad};
}

// A whole leapfrog trajectory on the potential in the unit coordinates of a diagonal metric (scale S, or the
// identity): n steps from (y, p) with g = S grad U(S y) known, each p <- p - k h g (k = 1/2 on the first step, else
// 1), y <- y + h p, then U and g at the new y; the result taken before the closing half kick, as
// kale_fast/samplers/leapfrog.py's contract. One call per trajectory instead of one per step: at one chain the
// per-call cost of mlp_potential inside a compiled sampler (the boxed dispatch, its outputs, the compiled graph's
// own work around it) was about three quarters of a gradient's time. Each row's trajectory is independent, so
// row blocks run whole trajectories in parallel. Returns (y, p, U (B,), g), new tensors.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> mlp_leapfrog(
    const at::Tensor& y, const at::Tensor& p, const at::Tensor& grad, const at::Tensor& step_size,
    const at::Tensor& n_steps, const std::optional<at::Tensor>& scale, at::TensorList weights, const Biases& biases,
    at::IntArrayRef activations, at::ArrayRef<double> parameters, double temperature, double prior_precision) {
  check_arguments(y, "y", weights, biases, activations, parameters);
  const int64_t batch = y.size(0), dim = y.size(1);
  for (const auto& [t, name] : {std::pair<const at::Tensor&, const char*>{p, "p"}, {grad, "grad"}}) {
    TORCH_CHECK(t.device().is_cpu() && t.sizes() == y.sizes() && t.is_contiguous() &&
                    t.scalar_type() == y.scalar_type(),
                name, " must be a contiguous CPU tensor of y's shape and dtype");
  }
  TORCH_CHECK(step_size.device().is_cpu() && step_size.dim() == 1 && step_size.size(0) == batch &&
                  step_size.is_contiguous() && step_size.scalar_type() == y.scalar_type(),
              "step_size must be a contiguous (", batch, ",) CPU tensor of y's dtype");
  TORCH_CHECK(n_steps.device().is_cpu() && n_steps.dim() == 0 && n_steps.scalar_type() == at::kLong,
              "n_steps must be a 0-d int64 CPU tensor");
  const int64_t n = n_steps.item<int64_t>();
  TORCH_CHECK(n >= 1, "n_steps must be >= 1, got ", n);
  TORCH_CHECK(!scale.has_value() || (scale->device().is_cpu() && scale->dim() == 1 && scale->size(0) == dim &&
                                     scale->is_contiguous() && scale->scalar_type() == y.scalar_type()),
              "scale must be None or a contiguous (", dim, ",) CPU tensor of y's dtype");
  at::Tensor y_out = at::detail::empty_cpu(y.sizes(), y.scalar_type());
  at::Tensor p_out = at::detail::empty_cpu(y.sizes(), y.scalar_type());
  at::Tensor g_out = at::detail::empty_cpu(y.sizes(), y.scalar_type());
  at::Tensor value = at::detail::empty_cpu({batch}, y.scalar_type());
  // The positions the networks see, z = S y (y itself without a metric).
  at::Tensor z = scale.has_value() ? at::detail::empty_cpu(y.sizes(), y.scalar_type()) : y_out;
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "mlp_leapfrog", [&] {
    const auto net = network<scalar_t>(weights, biases, activations, parameters, temperature, prior_precision);
    const Transposed<scalar_t> transposed = batch > kRowLoopMax ? transposed_weights(net) : Transposed<scalar_t>();
    const scalar_t *y0 = y.const_data_ptr<scalar_t>(), *p0 = p.const_data_ptr<scalar_t>(),
                   *g0 = grad.const_data_ptr<scalar_t>(), *h = step_size.const_data_ptr<scalar_t>();
    const scalar_t* s = scale.has_value() ? scale->const_data_ptr<scalar_t>() : nullptr;
    scalar_t *yp = y_out.mutable_data_ptr<scalar_t>(), *pp = p_out.mutable_data_ptr<scalar_t>(),
             *gp = g_out.mutable_data_ptr<scalar_t>(), *up = value.mutable_data_ptr<scalar_t>(),
             *zp = z.mutable_data_ptr<scalar_t>();
    over_rows(batch, [&](int64_t begin, int64_t end) {
      const int64_t first = begin * dim, last = end * dim;
      std::copy(y0 + first, y0 + last, yp + first);
      std::copy(p0 + first, p0 + last, pp + first);
      std::copy(g0 + first, g0 + last, gp + first);
      for (int64_t step = 0; step < n; ++step) {
        const scalar_t kick = step == 0 ? scalar_t(0.5) : scalar_t(1);
        for (int64_t r = begin; r < end; ++r) {
          const scalar_t hr = h[r], kh = kick * hr;
          scalar_t *yr = yp + r * dim, *pr = pp + r * dim;
          const scalar_t* gr = gp + r * dim;
          for (int64_t j = 0; j < dim; ++j) {
            pr[j] = pr[j] - kh * gr[j];
            yr[j] = yr[j] + hr * pr[j];
          }
        }
        if (s != nullptr) {
          for (int64_t r = begin; r < end; ++r) {
            for (int64_t j = 0; j < dim; ++j) zp[r * dim + j] = yp[r * dim + j] * s[j];
          }
        }
        evaluate_rows(net, transposed, zp, up, gp, begin, end);
        if (s != nullptr) {
          for (int64_t r = begin; r < end; ++r) {
            for (int64_t j = 0; j < dim; ++j) gp[r * dim + j] *= s[j];
          }
        }
      }
    });
  });
  return {y_out, p_out, value, g_out};
}

// The Autograd key's kernel of both ops, boxed: they have no derivative formula (their gradient outputs are
// themselves derivatives, and the samplers need none of them), so a call that autograd would have to differentiate
// is an error, not a silently detached result; otherwise the call goes on below autograd, unboxed once by the CPU
// kernel's own wrapper (a typed wrapper here had unboxed the lists a second time: about 0.3 us of a 5 us call).
void no_autograd(const c10::OperatorHandle& op, c10::DispatchKeySet keys, torch::jit::Stack* stack) {
  if (c10::GradMode::is_enabled()) {
    bool requires_grad = false;
    for (const c10::IValue& argument : torch::jit::last(*stack, op.schema().arguments().size())) {
      if (argument.isTensor()) {
        requires_grad = requires_grad || argument.toTensor().requires_grad();
      } else if (argument.isList()) {
        for (const c10::IValue& element : argument.toListRef()) {
          requires_grad = requires_grad || (element.isTensor() && element.toTensor().requires_grad());
        }
      }
    }
    TORCH_CHECK(!requires_grad, op.schema().name(),
                " has no autograd: an input requires grad while grad mode is on. Call it under torch.no_grad() "
                "(it returns the input-gradient itself; samplers need no parameter gradients)");
  }
  op.redispatchBoxed(keys & c10::after_autograd_keyset, stack);
}

}  // namespace

TORCH_LIBRARY_IMPL(kale_fast, CPU, m) {
  m.impl("mlp_potential", &mlp_potential);
  m.impl("mlp_leapfrog", &mlp_leapfrog);
}

TORCH_LIBRARY_IMPL(kale_fast, Autograd, m) {
  m.impl("mlp_potential", torch::CppFunction::makeFromBoxedFunction<&no_autograd>());
  m.impl("mlp_leapfrog", torch::CppFunction::makeFromBoxedFunction<&no_autograd>());
}

}  // namespace kale_fast
