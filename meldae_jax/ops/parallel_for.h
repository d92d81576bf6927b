// ParallelFor over XLA's intra-op thread pool, shared by the FFI handlers in this folder.
#ifndef MELDAE_JAX_OPS_PARALLEL_FOR_H_
#define MELDAE_JAX_OPS_PARALLEL_FOR_H_

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>

#include "xla/ffi/api/ffi.h"

namespace meldae {

// Runs body(i) for i in [0, count) on the calling thread and on helpers scheduled on
// XLA's intra-op pool, in chunks claimed one at a time; the caller never waits for a
// chunk nobody has started, so a busy pool cannot deadlock it (as blas_gemm.cc's Job).
template <typename Body>
void ParallelFor(xla::ffi::ThreadPool& pool, int64_t count, const Body& body) {
  struct State {
    std::atomic<int64_t> next{0}, done{0};
    int64_t chunks = 0, per_chunk = 1, count = 0;
    std::mutex mu;
    std::condition_variable cv;
  };
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  auto st = std::make_shared<State>();
  st->count = count;
  // A few chunks per thread, so a thread slowed by other work leaves its share to others.
  st->per_chunk = std::max<int64_t>(1, count / (4 * threads));
  st->chunks = (count + st->per_chunk - 1) / st->per_chunk;
  auto run = [st, &body] {
    for (int64_t c; (c = st->next.fetch_add(1)) < st->chunks;) {
      const int64_t end = std::min(st->count, (c + 1) * st->per_chunk);
      for (int64_t i = c * st->per_chunk; i < end; ++i) body(i);
      if (st->done.fetch_add(1) + 1 == st->chunks) {
        std::lock_guard<std::mutex> lock(st->mu);
        st->cv.notify_all();
      }
    }
  };
  // Helpers hold `st` and a reference to `body`, which outlives them: the caller waits
  // until every chunk is done, and a helper that starts later finds none left.
  for (int64_t i = 1; i < std::min(threads, st->chunks); ++i) {
    pool.Schedule([run] { run(); });
  }
  run();
  std::unique_lock<std::mutex> lock(st->mu);
  st->cv.wait(lock, [&] { return st->done.load() == st->chunks; });
}

}  // namespace meldae

#endif  // MELDAE_JAX_OPS_PARALLEL_FOR_H_
