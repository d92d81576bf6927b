// The attention's per-head products as an AVX-512 kernel that reads its operands where
// they lie: C (m x n) = alpha op(A) B, started from zero, from C itself or from one row
// vector repeated down C's rows.
// Why: the products are small ((L x dh x L) and (L x L x dh), L = 50 at 112 px, dh = 64)
// and there are H per frame; a BLAS call per head pays its checks and its packing each
// time, and OpenBLAS ran them at 54-118 GFLOP/s on a 234 GFLOP/s Zen 4 (two threads,
// docs/performance.md, session 29). Here A is read in place by its two strides (no
// packing), B's rows in place (they are q, k, v or a gradient: dh contiguous floats, or
// the scores' rows), and only the scores' k^T is made, once per head, by `Transpose`.
// Sums are float32 in k order, as a BLAS's are within a block.
#ifndef MELDAE_JAX_OPS_SMALL_GEMM_H_
#define MELDAE_JAX_OPS_SMALL_GEMM_H_

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <utility>

namespace meldae::small_gemm {

// What C holds before the product is added: zeros, its own values, or `row` (n floats)
// in every row.
enum class Start { kZero, kC, kRow };

// op(A) is m x k with element (r, kk) at a[r * sr + kk * sk]; B is k x n with row kk at
// b + kk * ldb (n contiguous floats); C is m x n with row stride ldc.
struct Product {
  int64_t m, n, k;
  float alpha;
  const float* a;
  int64_t sr, sk;
  const float* b;
  int64_t ldb;
  float* c;
  int64_t ldc;
  Start start = Start::kZero;
  const float* row = nullptr;
};

constexpr int kMaxRows = 12;  // rows per register tile: 12 x 2 vectors = 24 accumulators

// C's rows [i0, i0 + R) and its columns [j0, j0 + 16 V), the last vector's lanes limited
// to `last` where kMasked (the columns past n are neither read nor written).
template <int R, int V, bool kMasked>
__attribute__((target("avx512f"))) inline void Tile(const Product& p, int64_t i0, int64_t j0,
                                                    __mmask16 last) {
  __m512 acc[R][V];
#pragma GCC unroll 12
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 2
    for (int v = 0; v < V; ++v) acc[r][v] = _mm512_setzero_ps();
  }
  const float* a = p.a + i0 * p.sr;
  const float* b = p.b + j0;
  for (int64_t kk = 0; kk < p.k; ++kk, a += p.sk, b += p.ldb) {
    __m512 bv[V];
#pragma GCC unroll 2
    for (int v = 0; v < V; ++v) {
      bv[v] = (kMasked && v == V - 1) ? _mm512_maskz_loadu_ps(last, b + 16 * v)
                                      : _mm512_loadu_ps(b + 16 * v);
    }
#pragma GCC unroll 12
    for (int r = 0; r < R; ++r) {
      const __m512 ar = _mm512_set1_ps(a[r * p.sr]);
#pragma GCC unroll 2
      for (int v = 0; v < V; ++v) acc[r][v] = _mm512_fmadd_ps(ar, bv[v], acc[r][v]);
    }
  }
  const __m512 alpha = _mm512_set1_ps(p.alpha);
#pragma GCC unroll 12
  for (int r = 0; r < R; ++r) {
    float* c = p.c + (i0 + r) * p.ldc + j0;
    const float* from = p.start == Start::kC ? c : p.row + j0;
#pragma GCC unroll 2
    for (int v = 0; v < V; ++v) {
      const __mmask16 lanes = (kMasked && v == V - 1) ? last : __mmask16{0xFFFF};
      __m512 x = _mm512_mul_ps(alpha, acc[r][v]);
      if (p.start != Start::kZero) {
        x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(lanes, from + 16 * v));
      }
      if (kMasked && v == V - 1) {
        _mm512_mask_storeu_ps(c + 16 * v, last, x);
      } else {
        _mm512_storeu_ps(c + 16 * v, x);
      }
    }
  }
}

using TileFn = void (*)(const Product&, int64_t, int64_t, __mmask16);

template <int V, bool kMasked, int... R>
constexpr TileFn kTiles[] = {&Tile<R + 1, V, kMasked>...};

template <int V, bool kMasked, int... R>
constexpr const TileFn* TileTable(std::integer_sequence<int, R...>) {
  return kTiles<V, kMasked, R...>;
}

// The tile function for R rows (1..kMaxRows), V vectors, masked or not.
inline TileFn TileFor(int rows, int vectors, bool masked) {
  constexpr auto kRows = std::make_integer_sequence<int, kMaxRows>{};
  static const TileFn* const table[2][2] = {
      {TileTable<1, false>(kRows), TileTable<1, true>(kRows)},
      {TileTable<2, false>(kRows), TileTable<2, true>(kRows)}};
  return table[vectors - 1][masked ? 1 : 0][rows - 1];
}

// C = alpha op(A) B (+ the start) for the whole product, single-threaded: 32-column
// panels of B, each down C's rows in tiles of at most kMaxRows, the rows spread evenly
// over the tiles (50 rows: five tiles of 10, not four of 12 and one of 2).
inline void Run(const Product& p) {
  if (p.m <= 0 || p.n <= 0) return;
  const int64_t tiles = (p.m + kMaxRows - 1) / kMaxRows;
  const int64_t base = p.m / tiles, extra = p.m % tiles;
  for (int64_t j0 = 0; j0 < p.n; j0 += 32) {
    const int64_t w = std::min<int64_t>(32, p.n - j0);
    const int vectors = w > 16 ? 2 : 1;
    const int64_t tail = w - 16 * (vectors - 1);
    const bool masked = tail < 16;
    const __mmask16 last = masked ? static_cast<__mmask16>((1u << tail) - 1) : 0xFFFF;
    int64_t i0 = 0;
    for (int64_t t = 0; t < tiles; ++t) {
      const int rows = static_cast<int>(base + (t < extra ? 1 : 0));
      TileFor(rows, vectors, masked)(p, i0, j0, last);
      i0 += rows;
    }
  }
}

// out (cols x rows, row stride ldo) = x^T for x (rows x cols, row stride ld).
inline void Transpose(const float* x, int64_t rows, int64_t cols, int64_t ld, float* out,
                      int64_t ldo) {
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) out[c * ldo + r] = x[r * ld + c];
  }
}

}  // namespace meldae::small_gemm

#endif  // MELDAE_JAX_OPS_SMALL_GEMM_H_
