// Launch geometry shared by the CUDA kernels: the block size and the grid of grid-stride loops.
#pragma once

#include <c10/cuda/CUDAException.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

namespace kale_fast {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

// Streaming multiprocessors of the current device.
inline int multiprocessor_count() {
  int device = 0, count = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
  return count;
}

// Blocks of a grid-stride loop over `total` elements: one thread per element, at most 32 blocks per SM.
inline int grid_stride_blocks(int64_t total) {
  const int64_t wanted = (total + kThreads - 1) / kThreads;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(32 * multiprocessor_count(), wanted)));
}

}  // namespace kale_fast
