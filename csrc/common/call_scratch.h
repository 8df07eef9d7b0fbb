// Temporaries of one op call, carved from one block of memory.
//
// Why: a decode token makes a few hundred calls of ops such as gemma4::qgemm on one row of x, and each ATen
// allocation (at::empty, at::zeros, a dtype copy) costs about a microsecond of host time, as much as a small
// GEMV's work. A call that needs at most kReusedBytes takes them from a per-thread block kept from call to call;
// a larger one (prefill) gets an ATen buffer that is freed when the scratch goes out of scope, so the block kept
// stays small. The memory is only valid during the call, and a thread holds one scratch at a time (the ops that
// use it do not call each other while one is live).
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include <ATen/ATen.h>

namespace gemma4 {

class CallScratch {
 public:
  static constexpr size_t kReusedBytes = size_t{8} << 20;
  static constexpr size_t kAlign = 64;  // each piece starts on a cache line

  // bytes: the sum of round_up(piece) over the pieces the call will take.
  explicit CallScratch(size_t bytes) {
    if (bytes <= kReusedBytes) {
      static thread_local std::vector<uint8_t> block;
      if (block.size() < bytes + kAlign) block.resize(bytes + kAlign);
      base_ = block.data();
    } else {
      owned_ = at::empty({static_cast<int64_t>(bytes + kAlign)}, at::TensorOptions().dtype(at::kByte));
      base_ = owned_.data_ptr<uint8_t>();
    }
    base_ += (kAlign - reinterpret_cast<uintptr_t>(base_) % kAlign) % kAlign;
  }

  static size_t round_up(size_t bytes) { return (bytes + kAlign - 1) / kAlign * kAlign; }
  template <class T>
  static size_t bytes_for(int64_t count) { return round_up(static_cast<size_t>(count) * sizeof(T)); }

  // The next count values of T (uninitialized); bytes_for<T>(count) of the constructor's total.
  template <class T>
  T* take(int64_t count) {
    T* p = reinterpret_cast<T*>(base_ + used_);
    used_ += bytes_for<T>(count);
    return p;
  }

 private:
  uint8_t* base_ = nullptr;
  size_t used_ = 0;
  at::Tensor owned_;
};

}  // namespace gemma4
