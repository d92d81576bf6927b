// XLA FFI handler: C = round(op(A)) @ round(op(B)) for float32 A, B, C, the operands
// rounded to bfloat16 (round to nearest even) and the products summed in float32 on
// Intel's AMX tiles (TDPBF16PS). What `blas_dot.rounded_gemm` computes with XLA's bf16
// dot, and what PyTorch's bf16 autocast computes with oneDNN.
// Why: on an Intel Xeon with AMX (docs/performance.md, session 19) XLA's bf16 dots ran
// the ViT's shapes at 0.85-1.4 TFLOP/s, PyTorch's oneDNN at 1.6-2.9; the S112 bf16 train
// step was decided by that rate. The rounding is done here while the operands are packed
// into tiles, so XLA's separate converts to bf16 are not needed either. Same FLOPs.
//
// Layouts. op(A) is M x K, op(B) is K x N, C is M x N row-major; trans_a / trans_b say
// that A, B lie transposed (K x M, N x K). Both are packed into 1 KiB tiles per call:
//   A: [M/16][K/32] tiles of 16 rows x 32 bf16 (a row's k's side by side);
//   B: [N/16][K/32] tiles of 16 k-pairs x 16 columns x 2 bf16 (AMX's "VNNI" layout);
// zero-padded at the edges (M, N to 16, K to 32). C is computed in 32 x 32 blocks of
// four float32 tiles (two A tiles, two B tiles: all eight tile registers).
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "xla/ffi/api/ffi.h"

#include "gemm_call.h"
#include "parallel_for.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kTile = 512;  // bf16 elements in one packed tile (1 KiB)

struct TileConfig {  // LDTILECFG's 64-byte operand, palette 1
  uint8_t palette_id = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

inline __mmask16 FirstLanes(int64_t n) {
  return n >= 16 ? __mmask16(0xFFFF) : n <= 0 ? __mmask16(0) : __mmask16((1u << n) - 1);
}

#pragma GCC push_options  // these functions only; called where the CPU has AMX
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512bf16,amx-tile,amx-bf16")

// Two rows of 16 floats rounded to bf16 and interleaved: dword i = (lo[i], hi[i]).
inline __m512i PairRows(__m512 lo, __m512 hi) {
  const __m512i interleave = _mm512_set_epi16(
      31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8,
      23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  return _mm512_permutexvar_epi16(interleave, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
}

// 32 consecutive floats from `src` (the first `n` of them; zeros after) as 32 bf16.
inline __m512i Run32(const float* src, int64_t n) {
  const __m512 lo = _mm512_maskz_loadu_ps(FirstLanes(n), src);
  const __m512 hi = _mm512_maskz_loadu_ps(FirstLanes(n - 16), src + 16);
  return (__m512i)_mm512_cvtne2ps_pbh(hi, lo);
}

// 16 floats of row `r` (of `rows`) at `src`, `cols` of them valid; zeros elsewhere.
inline __m512 Row16(const float* src, int64_t r, int64_t rows, int64_t ld, int64_t cols) {
  return r < rows ? _mm512_maskz_loadu_ps(FirstLanes(cols), src + r * ld)
                  : _mm512_setzero_ps();
}

// r[i][j] <-> r[j][i] for a 16 x 16 matrix of dwords in 16 registers.
inline void Transpose16(__m512i r[16]) {
  __m512i t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
    r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
    r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
    r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
  }
  for (int h = 0; h < 16; h += 8) {
    for (int i = 0; i < 4; ++i) {
      t[h + i] = _mm512_shuffle_i32x4(r[h + i], r[h + i + 4], 0x88);
      t[h + i + 4] = _mm512_shuffle_i32x4(r[h + i], r[h + i + 4], 0xdd);
    }
  }
  for (int i = 0; i < 8; ++i) {
    r[i] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0x88);
    r[i + 8] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0xdd);
  }
}

// One 1 KiB tile of "16 rows x 32 contraction" bf16, as 16 x 16 dwords (r, p): row r's
// k-pair p. `x` is row-major with the contraction along its rows (`along_rows`:
// x[r * ld + k]) or down its columns (x[k * ld + r]); the tile covers rows r0.. (of
// `rows`) and contraction k0.. (of `depth`), zeros beyond. The A layout stores dword
// (r, p) at r * 16 + p; `pairs_major` stores it at p * 16 + r: the B layout.
void PackTile(const float* x, int64_t ld, bool along_rows, int64_t r0, int64_t rows,
              int64_t k0, int64_t depth, bool pairs_major, uint16_t* dst) {
  __m512i v[16];
  if (along_rows) {  // each row r: 32 consecutive floats, its 16 pairs
    for (int64_t r = 0; r < 16; ++r) {
      v[r] = r0 + r < rows ? Run32(x + (r0 + r) * ld + k0, depth - k0)
                           : _mm512_setzero_si512();
    }
  } else {  // each pair p: two rows of x, 16 consecutive floats each (r = 0..15)
    const int64_t cols = rows - r0;
    for (int64_t p = 0; p < 16; ++p) {
      const int64_t k = k0 + 2 * p;
      v[p] = PairRows(Row16(x + r0, k, depth, ld, cols),
                      Row16(x + r0, k + 1, depth, ld, cols));
    }
  }
  if (along_rows == pairs_major) Transpose16(v);  // v[i] is the tile's row i now
  for (int i = 0; i < 16; ++i) _mm512_storeu_si512(dst + 32 * i, v[i]);
}

// A 16 x 16 float32 tile register stored at C's rows r0.., columns c0.. (clipped).
#define MELDAE_STORE_TILE(t, r0, c0)                                                    \
  do {                                                                                  \
    if ((r0) + 16 <= m && (c0) + 16 <= n) {                                             \
      _tile_stored(t, c + (r0) * ldc + (c0), ldc * sizeof(float));                      \
    } else if ((r0) < m && (c0) < n) {                                                  \
      alignas(64) float tmp[256];                                                       \
      _tile_stored(t, tmp, 64);                                                         \
      asm volatile("" ::: "memory");                                                    \
      for (int64_t i = 0; i < std::min<int64_t>(16, m - (r0)); ++i) {                    \
        std::memcpy(c + ((r0) + i) * ldc + (c0), tmp + 16 * i,                          \
                    sizeof(float) * std::min<int64_t>(16, n - (c0)));                  \
      }                                                                                 \
    }                                                                                   \
  } while (0)

// A 16 x 16 float32 tile register loaded from C's rows r0.., columns c0.. (zeros past
// C's edges): to go on summing into it.
#define MELDAE_LOAD_TILE(t, r0, c0)                                                     \
  do {                                                                                  \
    if ((r0) + 16 <= m && (c0) + 16 <= n) {                                             \
      _tile_loadd(t, c + (r0) * ldc + (c0), ldc * sizeof(float));                       \
    } else {                                                                            \
      alignas(64) float tmp[256] = {};                                                  \
      for (int64_t i = 0; i < std::min<int64_t>(16, m - (r0)); ++i) {                    \
        std::memcpy(tmp + 16 * i, c + ((r0) + i) * ldc + (c0),                          \
                    sizeof(float) * std::max<int64_t>(0, std::min<int64_t>(16, n - (c0)))); \
      }                                                                                 \
      asm volatile("" ::: "memory");                                                    \
      _tile_loadd(t, tmp, 64);                                                          \
    }                                                                                   \
  } while (0)

// C's 32 x 32 block at rows r0.., columns c0.. (RM, RN: 1 or 2 tiles of 16 valid in
// the packing): the sum over `kcount` k-tiles of the packed A tiles from `ap` (the
// second row tile `stride` tiles further) and B tiles from `bp` (likewise), added to
// C's values when `accumulate` (a later part of a split contraction).
template <int RM, int RN>
void Block(const uint16_t* ap, const uint16_t* bp, int64_t stride, int64_t kcount,
           bool accumulate, float* c, int64_t ldc, int64_t m, int64_t n, int64_t r0,
           int64_t c0) {
  if (accumulate) {
    MELDAE_LOAD_TILE(0, r0, c0);
    if constexpr (RN == 2) MELDAE_LOAD_TILE(1, r0, c0 + 16);
    if constexpr (RM == 2) MELDAE_LOAD_TILE(2, r0 + 16, c0);
    if constexpr (RM == 2 && RN == 2) MELDAE_LOAD_TILE(3, r0 + 16, c0 + 16);
  } else {
    _tile_zero(0);
    if constexpr (RN == 2) _tile_zero(1);
    if constexpr (RM == 2) _tile_zero(2);
    if constexpr (RM == 2 && RN == 2) _tile_zero(3);
  }
  for (int64_t kt = 0; kt < kcount; ++kt) {
    // Each load as late as its first reader allows: AMX does not rename tile
    // registers, so a load waits for the products still reading its register.
    _tile_loadd(4, ap + kt * kTile, 64);
    _tile_loadd(6, bp + kt * kTile, 64);
    _tile_dpbf16ps(0, 4, 6);
    if constexpr (RN == 2) {
      _tile_loadd(7, bp + (stride + kt) * kTile, 64);
      _tile_dpbf16ps(1, 4, 7);
    }
    if constexpr (RM == 2) {
      _tile_loadd(5, ap + (stride + kt) * kTile, 64);
      _tile_dpbf16ps(2, 5, 6);
    }
    if constexpr (RM == 2 && RN == 2) _tile_dpbf16ps(3, 5, 7);
  }
  MELDAE_STORE_TILE(0, r0, c0);
  if constexpr (RN == 2) MELDAE_STORE_TILE(1, r0, c0 + 16);
  if constexpr (RM == 2) MELDAE_STORE_TILE(2, r0 + 16, c0);
  if constexpr (RM == 2 && RN == 2) MELDAE_STORE_TILE(3, r0 + 16, c0 + 16);
}

// Block<RM, RN> for the row and column tiles left at this block.
void AnyBlock(int64_t rm, int64_t rn, const uint16_t* ap, const uint16_t* bp,
              int64_t stride, int64_t kcount, bool accumulate, float* c, int64_t ldc,
              int64_t m, int64_t n, int64_t r0, int64_t c0) {
  if (rm == 2 && rn == 2) {
    Block<2, 2>(ap, bp, stride, kcount, accumulate, c, ldc, m, n, r0, c0);
  } else if (rm == 2) {
    Block<2, 1>(ap, bp, stride, kcount, accumulate, c, ldc, m, n, r0, c0);
  } else if (rn == 2) {
    Block<1, 2>(ap, bp, stride, kcount, accumulate, c, ldc, m, n, r0, c0);
  } else {
    Block<1, 1>(ap, bp, stride, kcount, accumulate, c, ldc, m, n, r0, c0);
  }
}

#undef MELDAE_LOAD_TILE
#undef MELDAE_STORE_TILE

// Eight 16 x 64-byte tiles. A constant in memory: GCC's _tile_loadconfig declares only
// 8 of its 64 bytes as read, so a config built on the stack could lose its stores.
constexpr TileConfig kEightTiles = [] {
  TileConfig cfg;
  for (int t = 0; t < 8; ++t) {
    cfg.rows[t] = 16;
    cfg.colsb[t] = 64;
  }
  return cfg;
}();

void ConfigureTiles() { _tile_loadconfig(&kEightTiles); }

void ReleaseTiles() { _tile_release(); }

#pragma GCC pop_options

// Per-thread scratch, two slots (0: a call's packed operands, on the calling thread; 1:
// a row block's A panel, on whichever thread runs it), kept between calls; they only grow.
uint16_t* Scratch(int64_t elements, int slot) {
  struct Free {
    void operator()(uint16_t* p) const { std::free(p); }
  };
  thread_local std::unique_ptr<uint16_t, Free> bufs[2];
  thread_local int64_t sizes[2] = {0, 0};
  if (elements > sizes[slot]) {
    const int64_t bytes = (elements * 2 + 63) / 64 * 64;
    bufs[slot].reset(static_cast<uint16_t*>(std::aligned_alloc(64, bytes)));
    sizes[slot] = bufs[slot] ? elements : 0;
  }
  return bufs[slot].get();
}

bool g_permitted = false;  // set by meldae_amx_init

ffi::Error AmxGemm(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> b,
                   ffi::ResultBuffer<ffi::F32> out, bool trans_a, bool trans_b) {
  auto ad = a.dimensions(), bd = b.dimensions();
  meldae::GemmShape shape;
  if (auto e = meldae::CheckGemm("meldae_amx_gemm", ad, bd, out->dimensions(), trans_a,
                                 trans_b, &shape);
      e.failure()) {
    return e;
  }
  const int64_t m = shape.m, n = shape.n, k = shape.k;
  if (!g_permitted) {
    return ffi::Error::Internal("meldae_amx_gemm: AMX not enabled (meldae_amx_init)");
  }
  float* c = out->typed_data();
  if (m == 0 || n == 0) return ffi::Error::Success();
  if (k == 0) {
    std::fill(c, c + m * n, 0.0f);
    return ffi::Error::Success();
  }
  const int64_t mts = (m + 15) / 16, nts = (n + 15) / 16, kts = (k + 31) / 32;
  const int64_t mblocks = (mts + 1) / 2, nblocks = (nts + 1) / 2;
  // C is computed in 32 x 32 blocks; within a row block a long contraction goes in
  // parts of up to 512 (16 k-tiles) over a group of column blocks, so that the row
  // block's A tiles of one part (32 KiB) stay in L1 and the group's C (summing the
  // parts) in L1 or L2. Two plans keep B's packed tiles in a core's L2 (up to 1.5 MiB):
  // - B fits (the step's forward and input-gradient shapes): B is packed once, then
  //   each task is a row block, which packs its own 32 rows of A just before it
  //   multiplies them, while they are in cache;
  // - B does not (weight gradients, whose K is the tokens): A is packed once, then each
  //   task is a group of columns, whose B it packs itself and passes every row block
  //   over, so B stays in the cache of the core that packed it. The groups are a
  //   multiple of the threads in number.
  const int64_t parts = (kts + 15) / 16, kpart = (kts + parts - 1) / parts;
  const int64_t fit = std::max<int64_t>(1, (1536 << 10) / (2 * kts * 2 * kTile));
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  const bool by_group = nblocks > fit;
  const int64_t per_group = by_group ? [&] {
    const int64_t groups = (nblocks + fit - 1) / fit;
    const int64_t rounded = (groups + threads - 1) / threads * threads;
    return (nblocks + rounded - 1) / rounded;
  }() : nblocks;
  const int64_t groups = (nblocks + per_group - 1) / per_group;
  uint16_t* bp = Scratch(((by_group ? mts : 0) + nts) * kts * kTile, 0);
  if (bp == nullptr) return ffi::Error::Internal("meldae_amx_gemm: out of memory");
  uint16_t* ap = bp + nts * kts * kTile;
  const float *x = a.typed_data(), *y = b.typed_data();
  // A's tile (row strip i, k-tile kt): A is M x K along rows, or transposed (K x M).
  auto pack_a = [&](int64_t i, int64_t kt, uint16_t* dst) {
    PackTile(x, ad[1], !trans_a, 16 * i, m, 32 * kt, k, false, dst);
  };
  // B's tile (column strip j, k-tile kt): B is K x N (k-pairs down columns), or N x K.
  auto pack_b = [&](int64_t j, int64_t kt) {
    PackTile(y, bd[1], trans_b, 16 * j, n, 32 * kt, k, true, bp + (j * kts + kt) * kTile);
  };
  // An operand whose contraction runs along its rows is packed a strip at a time (each
  // row read in order); one whose contraction runs down its columns a k-tile at a time
  // over its strips (32 rows read in order), not down 32 x kts rows per strip.
  auto pack_b_strips = [&](int64_t j0, int64_t j1) {
    if (trans_b) {
      for (int64_t j = j0; j < j1; ++j) {
        for (int64_t kt = 0; kt < kts; ++kt) pack_b(j, kt);
      }
    } else {
      for (int64_t kt = 0; kt < kts; ++kt) {
        for (int64_t j = j0; j < j1; ++j) pack_b(j, kt);
      }
    }
  };
  // C's row block mb over the column blocks [nb0, nb1), all parts, from A's row tiles
  // at `arow` (two strips of kts tiles).
  auto row_block = [&](int64_t mb, const uint16_t* arow, int64_t nb0, int64_t nb1) {
    const int64_t rt = 2 * mb, rm = std::min<int64_t>(2, mts - rt);
    for (int64_t k0 = 0; k0 < kts; k0 += kpart) {  // the parts in turn: C sums them
      const int64_t kcount = std::min(kpart, kts - k0);
      for (int64_t nb = nb0; nb < nb1; ++nb) {
        const int64_t ct = 2 * nb, rn = std::min<int64_t>(2, nts - ct);
        AnyBlock(rm, rn, arow + k0 * kTile, bp + (ct * kts + k0) * kTile, kts, kcount,
                 k0 > 0, c, n, m, n, 16 * rt, 16 * ct);
      }
    }
  };
  if (!by_group) {
    meldae::ParallelFor(pool, trans_b ? nts : kts, [&](int64_t t) {
      if (trans_b) {  // strip t
        pack_b_strips(t, t + 1);
      } else {  // k-tile t of every strip
        for (int64_t j = 0; j < nts; ++j) pack_b(j, t);
      }
    });
    meldae::ParallelFor(pool, mblocks, [&](int64_t mb) {
      const int64_t rt = 2 * mb, rm = std::min<int64_t>(2, mts - rt);
      uint16_t* panel = Scratch(2 * kts * kTile, 1);
      if (panel == nullptr) std::abort();  // 2 x K bf16 rows: a few hundred KiB at most
      for (int64_t kt = 0; kt < kts; ++kt) {
        for (int64_t r = 0; r < rm; ++r) pack_a(rt + r, kt, panel + (r * kts + kt) * kTile);
      }
      ConfigureTiles();
      row_block(mb, panel, 0, nblocks);
      ReleaseTiles();
    });
  } else {
    const bool a_by_strip = !trans_a;
    meldae::ParallelFor(pool, a_by_strip ? mts : kts, [&](int64_t t) {
      for (int64_t u = 0; u < (a_by_strip ? kts : mts); ++u) {
        const int64_t i = a_by_strip ? t : u, kt = a_by_strip ? u : t;
        pack_a(i, kt, ap + (i * kts + kt) * kTile);
      }
    });
    meldae::ParallelFor(pool, groups, [&](int64_t g) {
      const int64_t nb0 = g * per_group, nb1 = std::min(nblocks, nb0 + per_group);
      pack_b_strips(2 * nb0, std::min(nts, 2 * nb1));
      ConfigureTiles();
      for (int64_t mb = 0; mb < mblocks; ++mb) {
        row_block(mb, ap + 2 * mb * kts * kTile, nb0, nb1);
      }
      ReleaseTiles();
    });
  }
  return ffi::Error::Success();
}

}  // namespace

// Asks Linux for this process's permission to use AMX tile data (arch_prctl
// ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA); 1 if granted. Call once before the handler.
extern "C" int meldae_amx_init() {
  constexpr long kReqXcompPerm = 0x1023, kXtiledata = 18;
  g_permitted = syscall(SYS_arch_prctl, kReqXcompPerm, kXtiledata) == 0;
  return g_permitted ? 1 : 0;
}

MELDAE_DEFINE_GEMM_HANDLER(MeldaeAmxGemm, AmxGemm);
