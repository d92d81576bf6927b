// What the handlers that work a float32 (rows, D) array one row at a time share
// (layer_norm.cc, bias_gelu.cc): shape checks, the AVX-512 tail mask, stores of float32
// or rounded bf16 output, the switch to their plain loops, and the rows split into blocks
// over XLA's pool, with per-block column sums added in block order. Each handler library
// includes it once.
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

// float32 -> bfloat16 bits, rounded to nearest even as XLA's convert does (NaN stays a
// quiet NaN of its sign): for handlers whose output only feeds a product that rounds its
// operands to bf16 anyway, so they write half the bytes and XLA's convert goes.
inline uint16_t RoundToBf16(float v) {
  uint32_t u;
  __builtin_memcpy(&u, &v, 4);
  if (v != v) return static_cast<uint16_t>((u >> 16) | 0x40);
  return static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

inline void StorePlain(float* y, float v) { *y = v; }
inline void StorePlain(uint16_t* y, float v) { *y = RoundToBf16(v); }

// The first `k` lanes of v to y (float32), or rounded to bf16 as RoundToBf16.
__attribute__((target("avx512f"))) inline void Store512(float* y, __mmask16 k, __m512 v) {
  _mm512_mask_storeu_ps(y, k, v);
}

__attribute__((target("avx512f"))) inline void Store512(uint16_t* y, __mmask16 k,
                                                        __m512 v) {
  const __m512i u = _mm512_castps_si512(v);
  const __m512i hi = _mm512_srli_epi32(u, 16);
  const __m512i odd = _mm512_and_si512(hi, _mm512_set1_epi32(1));
  __m512i r = _mm512_srli_epi32(
      _mm512_add_epi32(u, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7FFF))), 16);
  const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  r = _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(hi, _mm512_set1_epi32(0x40)));
  _mm512_mask_cvtepi32_storeu_epi16(y, k, r);
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

// ForRowBlocks where each block also sums `width` floats: body(begin, end, sums) with the
// block's own zeroed sums. Returns the blocks' sums added in block order, so the result
// does not depend on which thread ran which block.
template <typename Body>
std::vector<float> ForRowBlocksSummed(xla::ffi::ThreadPool& pool, int64_t rows,
                                      int64_t min_rows, int64_t width, const Body& body) {
  const int64_t per = RowsPerBlock(pool, rows, min_rows), blocks = (rows + per - 1) / per;
  std::vector<float> partial(blocks * width, 0.0f), total(width, 0.0f);
  ForRowBlocks(pool, rows, min_rows, [&](int64_t begin, int64_t end, int64_t blk) {
    body(begin, end, partial.data() + blk * width);
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
