// One XLA FFI handler: a row-major float32 GEMM, C = op(A) @ op(B), done by the CBLAS
// sgemm whose address Python hands over once (numpy's bundled OpenBLAS by default).
// Why: on 2-core AVX2 hosts OpenBLAS runs the ViT's skinny matmuls 20-80 % faster than
// XLA's own dot emitters; see docs/performance.md. Same FLOPs, same maths.
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// cblas_sgemm with 64-bit integers (OpenBLAS ILP64 builds); the 32-bit flavour is
// wrapped below so both builds work.
using Sgemm64 = void (*)(int, int, int, int64_t, int64_t, int64_t, float, const float*,
                         int64_t, const float*, int64_t, float, float*, int64_t);
using Sgemm32 = void (*)(int, int, int, int, int, int, float, const float*, int,
                         const float*, int, float, float*, int);

Sgemm64 g_sgemm64 = nullptr;
Sgemm32 g_sgemm32 = nullptr;

constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;

void Sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const float* a,
           int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc) {
  const int ta = trans_a ? kTrans : kNoTrans, tb = trans_b ? kTrans : kNoTrans;
  if (g_sgemm64 != nullptr) {
    g_sgemm64(kRowMajor, ta, tb, m, n, k, 1.0f, a, lda, b, ldb, 0.0f, c, ldc);
  } else {
    g_sgemm32(kRowMajor, ta, tb, static_cast<int>(m), static_cast<int>(n),
              static_cast<int>(k), 1.0f, a, static_cast<int>(lda), b,
              static_cast<int>(ldb), 0.0f, c, static_cast<int>(ldc));
  }
}

// Whether a GEMM with fewer rows than columns is split by columns (see Gemm).
std::atomic<bool> g_column_split{true};

// C in `tiles` blocks of rows (or of columns), claimed one at a time by the calling
// thread and by helpers scheduled on XLA's own intra-op pool. The caller never waits
// for a block that nobody has started, so a busy pool cannot deadlock it, and the BLAS
// itself runs single-threaded: no second thread pool fighting XLA's for the same cores.
struct Job {
  bool trans_a, trans_b, by_cols;
  int64_t m, n, k, lda, ldb, per_tile, tiles;
  const float* a;
  const float* b;
  float* c;
  std::atomic<int64_t> next{0}, done{0};
  std::mutex mu;
  std::condition_variable cv;

  void RunTiles() {
    for (int64_t t; (t = next.fetch_add(1)) < tiles;) {
      const int64_t i0 = t * per_tile;
      if (by_cols) {  // columns i0.. of op(B) and of C
        const int64_t cols = std::min(per_tile, n - i0);
        const float* b0 = trans_b ? b + i0 * ldb : b + i0;
        Sgemm(trans_a, trans_b, m, cols, k, a, lda, b0, ldb, c + i0, n);
      } else {  // rows i0.. of op(A) and of C
        const int64_t rows = std::min(per_tile, m - i0);
        const float* a0 = trans_a ? a + i0 : a + i0 * lda;
        Sgemm(trans_a, trans_b, rows, n, k, a0, lda, b, ldb, c + i0 * n, n);
      }
      if (done.fetch_add(1) + 1 == tiles) {
        std::lock_guard<std::mutex> lock(mu);
        cv.notify_all();
      }
    }
  }
};

ffi::Error Gemm(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> b,
                ffi::ResultBuffer<ffi::F32> c, bool trans_a, bool trans_b) {
  auto ad = a.dimensions(), bd = b.dimensions(), cd = c->dimensions();
  if (ad.size() != 2 || bd.size() != 2 || cd.size() != 2) {
    return ffi::Error::InvalidArgument("meldae_gemm: operands must be 2-D");
  }
  const int64_t m = trans_a ? ad[1] : ad[0], k = trans_a ? ad[0] : ad[1];
  const int64_t kb = trans_b ? bd[1] : bd[0], n = trans_b ? bd[0] : bd[1];
  if (k != kb || cd[0] != m || cd[1] != n) {
    return ffi::Error::InvalidArgument("meldae_gemm: shapes do not match");
  }
  if (g_sgemm64 == nullptr && g_sgemm32 == nullptr) {
    return ffi::Error::Internal("meldae_gemm: no sgemm registered");
  }
  if (m == 0 || n == 0) return ffi::Error::Success();
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  // Each block packs its own share of op(A) or op(B) and all of the other operand: a
  // split by rows repacks op(B) (K x N) in every block, a split by columns op(A) (M x K).
  // The weight gradients (M = width, N = MLP width, K = tokens) repack less by columns.
  const bool by_cols = g_column_split.load() && n > m;
  const int64_t extent = by_cols ? n : m;
  // Blocks of at least 16 rows (columns) keep each sgemm call efficient.
  const int64_t tiles = std::max<int64_t>(1, std::min(threads, extent / 16));
  auto job = std::make_shared<Job>();
  job->trans_a = trans_a;
  job->trans_b = trans_b;
  job->by_cols = by_cols;
  job->m = m;
  job->n = n;
  job->k = k;
  job->lda = ad[1];
  job->ldb = bd[1];
  job->per_tile = (extent + tiles - 1) / tiles;
  job->tiles = (extent + job->per_tile - 1) / job->per_tile;
  job->a = a.typed_data();
  job->b = b.typed_data();
  job->c = c->typed_data();
  for (int64_t i = 1; i < std::min(threads, job->tiles); ++i) {
    pool.Schedule([job] { job->RunTiles(); });
  }
  job->RunTiles();
  std::unique_lock<std::mutex> lock(job->mu);
  job->cv.wait(lock, [&] { return job->done.load() == job->tiles; });
  return ffi::Error::Success();
}

}  // namespace

extern "C" void meldae_set_column_split(int on) { g_column_split.store(on != 0); }

extern "C" void meldae_set_sgemm(void* fn, int ilp64) {
  g_sgemm64 = ilp64 ? reinterpret_cast<Sgemm64>(fn) : nullptr;
  g_sgemm32 = ilp64 ? nullptr : reinterpret_cast<Sgemm32>(fn);
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(MeldaeGemm, Gemm,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<bool>("trans_a")
                                  .Attr<bool>("trans_b"));
