// ExecuTorch's threadpool, or (with MMOE_NO_EXECUTORCH, for the standalone self-test in
// tests_native/ and cross builds without an ExecuTorch install) a serial stand-in with the
// same signatures. Results do not depend on the thread count either way.
#pragma once

#ifndef MMOE_NO_EXECUTORCH
#include <executorch/runtime/kernel/thread_parallel_interface.h>
#else
#include <cstdint>
namespace executorch {
namespace extension {
inline int64_t get_thread_count() { return 1; }
template <typename F>
inline bool parallel_for(int64_t begin, int64_t end, int64_t, const F& f) {
  if (begin < end) f(begin, end);
  return true;
}
}  // namespace extension
}  // namespace executorch
#endif
