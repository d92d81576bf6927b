// What the handlers that work a float32 (rows, D) array one row at a time share
// (layer_norm.cc, bias_gelu.cc): shape checks, the AVX-512 tail mask, the switch to their
// plain loops, and the rows split into blocks over XLA's pool, with per-block column
// sums added in block order. Each handler library includes it once.
#ifndef MELDAE_JAX_OPS_ROW_BLOCKS_H_
#define MELDAE_JAX_OPS_ROW_BLOCKS_H_

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <immintrin.h>
#include <vector>

#include "xla/ffi/api/ffi.h"

#include "parallel_for.h"

namespace meldae {

inline bool IsMatrix(xla::ffi::Span<const int64_t> s, int64_t rows, int64_t d) {
  return s.size() == 2 && s[0] == rows && s[1] == d;
}

inline bool IsVector(xla::ffi::Span<const int64_t> s, int64_t n) {
  return s.size() == 1 && s[0] == n;
}

// The first min(left, 16) lanes.
inline __mmask16 Tail(int64_t left) {
  return left >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << left) - 1);
}

// Whether the rows run the AVX-512 kernels: where the CPU has them, unless
// meldae_plain_loops(1) asked for the plain loops (tests of that path on any CPU).
inline std::atomic<bool> g_avx512{__builtin_cpu_supports("avx512f") != 0};

inline bool UseAvx512() { return g_avx512.load(); }

// Rows per block: at least `min_rows`, and a few blocks per thread (a thread slowed by
// other work leaves its share to the others).
inline int64_t RowsPerBlock(xla::ffi::ThreadPool& pool, int64_t rows, int64_t min_rows) {
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  return std::max<int64_t>(min_rows, (rows + 4 * threads - 1) / (4 * threads));
}

// body(begin, end, block) over [0, rows) in blocks of RowsPerBlock rows.
template <typename Body>
void ForRowBlocks(xla::ffi::ThreadPool& pool, int64_t rows, int64_t min_rows,
                  const Body& body) {
  const int64_t per = RowsPerBlock(pool, rows, min_rows);
  ParallelFor(pool, (rows + per - 1) / per, [&](int64_t blk) {
    body(blk * per, std::min(rows, (blk + 1) * per), blk);
  });
}

// Blocks of a summed pass: a fixed count, not a few per thread, so that the sums' grouping
// (and their bits) are the same on 1, 2 or 16 cores, as XLA's reductions are. 8 is the
// count RowsPerBlock gives on 2 cores, whose figures (docs/performance.md) stay as they were.
constexpr int64_t kSummedBlocks = 8;

// Row blocks over XLA's pool where each block also sums `width` floats: body(begin, end,
// sums) with the block's own zeroed sums. Returns the blocks' sums added in block order:
// the result depends neither on which thread ran which block nor on the thread count.
template <typename Body>
std::vector<float> ForRowBlocksSummed(xla::ffi::ThreadPool& pool, int64_t rows,
                                      int64_t min_rows, int64_t width, const Body& body) {
  const int64_t per = std::max<int64_t>(min_rows, (rows + kSummedBlocks - 1) / kSummedBlocks);
  const int64_t blocks = (rows + per - 1) / per;
  std::vector<float> partial(blocks * width, 0.0f), total(width, 0.0f);
  ParallelFor(pool, blocks, [&](int64_t blk) {
    body(blk * per, std::min(rows, (blk + 1) * per), partial.data() + blk * width);
  });
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const float* part = partial.data() + blk * width;
    for (int64_t j = 0; j < width; ++j) total[j] += part[j];
  }
  return total;
}

}  // namespace meldae

// The plain loops (on != 0) or AVX-512 where the CPU has it (on == 0), for the calls run
// from now on.
extern "C" void meldae_plain_loops(int on) {
  meldae::g_avx512.store(on == 0 && __builtin_cpu_supports("avx512f") != 0);
}

#endif  // MELDAE_JAX_OPS_ROW_BLOCKS_H_
