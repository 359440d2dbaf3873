// Gradient buffers of the CPU kernels whose memory outlives their tensor, for the next call of the same size.
//
// Why: glibc serves allocations above 32 MiB with mmap and unmaps them on free, so each backward's fresh gradient
// is first touched page by page (2^24 fp32 elements: 16k page faults of 4 KiB, a large share of the call on one
// thread). A training loop frees last step's gradient before the next backward; keeping its memory (mapped,
// already faulted in) and handing it to the next request of the same byte size removes the faults.
//
// Safety: a buffer is reused only after the tensor that owned it is gone (its deleter returns it here), so no
// two live tensors ever share memory. At most kKeptBuffers freed buffers are kept (the most recently freed);
// buffers below kMinBytes go through the ordinary allocator.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/from_blob.h>

#include <cstdlib>
#include <mutex>
#include <vector>

namespace kale_fast {

class FreedBuffers {
 public:
  static constexpr size_t kKeptBuffers = 2;
  static constexpr size_t kMinBytes = size_t(1) << 20;

  // A kept buffer of exactly `bytes`, or nullptr.
  void* take(size_t bytes) {
    const std::lock_guard<std::mutex> lock(mutex_);
    for (auto it = kept_.begin(); it != kept_.end(); ++it) {
      if (it->bytes != bytes) continue;
      void* ptr = it->ptr;
      kept_.erase(it);
      return ptr;
    }
    return nullptr;
  }

  // Keeps a freed buffer, dropping the oldest kept one beyond kKeptBuffers.
  void keep(void* ptr, size_t bytes) {
    const std::lock_guard<std::mutex> lock(mutex_);
    if (kept_.size() == kKeptBuffers) {
      std::free(kept_.front().ptr);
      kept_.erase(kept_.begin());
    }
    kept_.push_back({ptr, bytes});
  }

  // Never destroyed: tensors may be freed after static destructors have run.
  static FreedBuffers& instance() {
    static auto* buffers = new FreedBuffers();
    return *buffers;
  }

 private:
  struct Buffer {
    void* ptr;
    size_t bytes;
  };
  std::mutex mutex_;
  std::vector<Buffer> kept_;
};

// at::empty_like(t) for a contiguous CPU tensor t, reusing a freed buffer of the same size where one is kept.
inline at::Tensor reusable_empty_like(const at::Tensor& t) {
  const size_t bytes = static_cast<size_t>(t.numel()) * t.element_size();
  if (bytes < FreedBuffers::kMinBytes) return at::empty_like(t);
  void* ptr = FreedBuffers::instance().take(bytes);
  if (ptr == nullptr) {
    ptr = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
    TORCH_CHECK(ptr != nullptr, "kale_fast: out of memory allocating a ", bytes, "-byte gradient");
  }
  return at::from_blob(ptr, t.sizes(), [bytes](void* p) { FreedBuffers::instance().keep(p, bytes); }, t.options());
}

}  // namespace kale_fast
