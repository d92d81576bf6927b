// XLA FFI handlers done by the CBLAS sgemm whose address Python hands over once (numpy's
// bundled OpenBLAS by default): a row-major float32 GEMM, C = op(A) @ op(B), and the
// ViT's attention products (below).
// Why: on 2-core AVX2 hosts OpenBLAS runs the ViT's skinny matmuls 20-80 % faster than
// XLA's own dot emitters; see docs/performance.md. Same FLOPs, same maths.
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "xla/ffi/api/ffi.h"

#include "gemm_call.h"
#include "parallel_for.h"

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

// C (m x n, row stride ldc) = alpha op(A) op(B) + beta C, single-threaded.
void Sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
           const float* a, int64_t lda, const float* b, int64_t ldb, float* c,
           int64_t ldc, float beta = 0.0f) {
  const int ta = trans_a ? kTrans : kNoTrans, tb = trans_b ? kTrans : kNoTrans;
  if (g_sgemm64 != nullptr) {
    g_sgemm64(kRowMajor, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  } else {
    g_sgemm32(kRowMajor, ta, tb, static_cast<int>(m), static_cast<int>(n),
              static_cast<int>(k), alpha, a, static_cast<int>(lda), b,
              static_cast<int>(ldb), beta, c, static_cast<int>(ldc));
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
        Sgemm(trans_a, trans_b, m, cols, k, 1.0f, a, lda, b0, ldb, c + i0, n);
      } else {  // rows i0.. of op(A) and of C
        const int64_t rows = std::min(per_tile, m - i0);
        const float* a0 = trans_a ? a + i0 : a + i0 * lda;
        Sgemm(trans_a, trans_b, rows, n, k, 1.0f, a0, lda, b, ldb, c + i0 * n, n);
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
  auto ad = a.dimensions(), bd = b.dimensions();
  meldae::GemmShape shape;
  if (auto e = meldae::CheckGemm("meldae_gemm", ad, bd, c->dimensions(), trans_a, trans_b,
                                 &shape);
      e.failure()) {
    return e;
  }
  const int64_t m = shape.m, n = shape.n, k = shape.k;
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

// The ViT's attention products, one small sgemm per (frame, head), read from and
// written to the fused q|k|v projection's own (N, L, 3D) layout (blas_attention.py).
// Why: XLA's CPU backend runs these (L x dh x L) batched products (50 x 64 x 50 at S112)
// at a fraction of its matmul speed, and around them it transposes q, k, v, the context
// and their gradients between (N, L, H, dh) and (N, H, L, dh) and assembles the q|k|v
// gradient from three padded pieces; a row stride per operand makes all of that
// unnecessary (docs/performance.md, session 13). Same products, same FLOPs; the softmax
// and its gradient stay in XLA between the calls.
//
// The q|k|v array is the projection's product without its bias b = (bq, bk, bv): the
// calls add what of b the result depends on, so that XLA's pass adding b to the whole
// (N, L, 3D) array goes (docs/performance.md, session 28). Per (frame, head), with the
// softmax's rows summing to one and its gradient's rows to zero:
//   softmax((q + bq)(k + bk)^T) = softmax(q k^T + 1 (k bq)^T)  (terms constant along a
//     row cancel), so the scores take the column term c = scale k bq and no other;
//   p (v + bv) = p v + 1 bv^T: the context's rows start from bv;
//   dP = dctx (v + bv)^T differs from dctx v^T by a row constant, which the softmax's
//     gradient cancels, so dP is taken without bv;
//   dq = scale dS (k + bk) = scale dS k (dS's rows sum to zero);
//   dk = scale dS^T (q + bq) = scale dS^T q + scale colsum(dS) bq^T;  dv = p^T dctx.
// The scores S differ from the biased ones by a constant per row, which only the
// softmax sees.

// The shapes every handler shares: q|k|v (N, L, 3D), H heads of dh = D / H.
struct Dims {
  int64_t n, l, d, h, dh;
};

ffi::Error CheckQkv(ffi::Buffer<ffi::F32>& qkv, int64_t heads, Dims* dims) {
  auto qd = qkv.dimensions();
  if (qd.size() != 3 || qd[2] % 3 != 0 || heads <= 0 || (qd[2] / 3) % heads != 0) {
    return ffi::Error::InvalidArgument(
        "meldae_attention: q|k|v must be (N, L, 3D) with D a multiple of heads");
  }
  if (g_sgemm64 == nullptr && g_sgemm32 == nullptr) {
    return ffi::Error::Internal("meldae_attention: no sgemm registered");
  }
  *dims = Dims{qd[0], qd[1], qd[2] / 3, heads, qd[2] / 3 / heads};
  return ffi::Error::Success();
}

bool IsScores(ffi::Span<const int64_t> s, const Dims& d) {  // (N, H, L, L)
  return s.size() == 4 && s[0] == d.n && s[1] == d.h && s[2] == d.l && s[3] == d.l;
}

bool IsTokens(ffi::Span<const int64_t> s, const Dims& d, int64_t width) {  // (N, L, w)
  return s.size() == 3 && s[0] == d.n && s[1] == d.l && s[2] == width;
}

// Pointers into one (frame, head): q, k, v in q|k|v, and its rows of a (N, L, D) array.
struct Head {
  const Dims& d;
  int64_t frame, head;
  const float* q(const float* qkv) const { return qkv + frame * d.l * 3 * d.d + head * d.dh; }
  const float* k(const float* qkv) const { return q(qkv) + d.d; }
  const float* v(const float* qkv) const { return q(qkv) + 2 * d.d; }
  int64_t tokens() const { return frame * d.l * d.d + head * d.dh; }
  // this head's slices of b = (bq, bk, bv), (3D,)
  const float* bq(const float* b) const { return b + head * d.dh; }
  const float* bv(const float* b) const { return bq(b) + 2 * d.d; }
  int64_t scores() const { return (frame * d.h + head) * d.l * d.l; }
};

Head HeadOf(const Dims& d, int64_t i) { return Head{d, i / d.h, i % d.h}; }

bool IsBias(ffi::Span<const int64_t> s, const Dims& d) {  // (3D,)
  return s.size() == 1 && s[0] == 3 * d.d;
}

// Each of the L rows of the (L x L) block, stride L, set to c = scale k bq: the one term
// of the q|k|v bias the softmax of the scores depends on (the header's note). c is a
// product of its own (L x dh by dh x 1, into the block's first row): as a plain loop its
// sums are one dependent chain each, which cost about what the bias add did.
void StartScoresWithBias(const Head& hd, const float* x, const float* b, float scale,
                         float poison, float* block) {
  const Dims& d = hd.d;
  Sgemm(false, false, d.l, 1, d.dh, scale, hd.k(x), 3 * d.d, hd.bq(b), 1, block, 1);
  if (poison != 0.0f || poison != poison) {
    for (int64_t j = 0; j < d.l; ++j) block[j] += poison;
  }
  for (int64_t r = 1; r < d.l; ++r) std::copy(block, block + d.l, block + r * d.l);
}

// 0 where bk is finite, NaN where any of it is not: the scores do not depend on bk (the
// header's note), but a NaN or Inf there must still show in the result, as XLA's path
// (which adds bk to k) shows it, or a diverged bias would go unnoticed.
float KeyBiasPoison(const float* b, const Dims& d) {
  float poison = 0.0f;
  for (int64_t j = d.d; j < 2 * d.d; ++j) poison += 0.0f * b[j];
  return poison;
}

// S (N, H, L, L) = scale (q k^T + 1 (k bq)^T) per (frame, head): the biased scores up to
// a constant per row.
ffi::Error Scores(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> qkv,
                  ffi::Buffer<ffi::F32> bias, ffi::ResultBuffer<ffi::F32> s,
                  int64_t heads, float scale) {
  Dims d;
  if (auto e = CheckQkv(qkv, heads, &d); e.failure()) return e;
  if (!IsScores(s->dimensions(), d) || !IsBias(bias.dimensions(), d)) {
    return ffi::Error::InvalidArgument("meldae_attention_scores: shapes");
  }
  const float *x = qkv.typed_data(), *b = bias.typed_data();
  float* out = s->typed_data();
  const float poison = KeyBiasPoison(b, d);
  meldae::ParallelFor(pool, d.n * d.h, [&](int64_t i) {
    const Head hd = HeadOf(d, i);
    StartScoresWithBias(hd, x, b, scale, poison, out + hd.scores());
    Sgemm(false, true, d.l, d.l, d.dh, scale, hd.q(x), 3 * d.d, hd.k(x), 3 * d.d,
          out + hd.scores(), d.l, 1.0f);
  });
  return ffi::Error::Success();
}

// ctx (N, L, D) = p (v + bv) = p v + 1 bv^T per (frame, head), heads side by side as
// (N, L, H, dh).
ffi::Error Context(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> p,
                   ffi::Buffer<ffi::F32> qkv, ffi::Buffer<ffi::F32> bias,
                   ffi::ResultBuffer<ffi::F32> ctx, int64_t heads) {
  Dims d;
  if (auto e = CheckQkv(qkv, heads, &d); e.failure()) return e;
  if (!IsScores(p.dimensions(), d) || !IsTokens(ctx->dimensions(), d, d.d) ||
      !IsBias(bias.dimensions(), d)) {
    return ffi::Error::InvalidArgument("meldae_attention_context: shapes");
  }
  const float *x = qkv.typed_data(), *pp = p.typed_data(), *b = bias.typed_data();
  float* out = ctx->typed_data();
  meldae::ParallelFor(pool, d.n * d.h, [&](int64_t i) {
    const Head hd = HeadOf(d, i);
    float* c = out + hd.tokens();
    for (int64_t r = 0; r < d.l; ++r) std::copy(hd.bv(b), hd.bv(b) + d.dh, c + r * d.d);
    Sgemm(false, false, d.l, d.dh, d.l, 1.0f, pp + hd.scores(), d.l, hd.v(x), 3 * d.d, c,
          d.d, 1.0f);
  });
  return ffi::Error::Success();
}

// dP (N, H, L, L) = dctx v^T per (frame, head): the softmax's gradient up to a constant
// per row (dctx bv), which the softmax's own gradient cancels.
ffi::Error ScoresGrad(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> dctx,
                      ffi::Buffer<ffi::F32> qkv, ffi::ResultBuffer<ffi::F32> dp,
                      int64_t heads) {
  Dims d;
  if (auto e = CheckQkv(qkv, heads, &d); e.failure()) return e;
  if (!IsTokens(dctx.dimensions(), d, d.d) || !IsScores(dp->dimensions(), d)) {
    return ffi::Error::InvalidArgument("meldae_attention_scores_grad: shapes");
  }
  const float *x = qkv.typed_data(), *g = dctx.typed_data();
  float* out = dp->typed_data();
  meldae::ParallelFor(pool, d.n * d.h, [&](int64_t i) {
    const Head hd = HeadOf(d, i);
    Sgemm(false, true, d.l, d.l, d.dh, 1.0f, g + hd.tokens(), d.d, hd.v(x), 3 * d.d,
          out + hd.scores(), d.l);
  });
  return ffi::Error::Success();
}

// d(q|k|v) (N, L, 3D), the gradient at the biased q|k|v: dq = scale dS k,
// dk = scale dS^T (q + bq), dv = p^T dctx per (frame, head).
ffi::Error QkvGrad(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> ds, ffi::Buffer<ffi::F32> p,
                   ffi::Buffer<ffi::F32> dctx, ffi::Buffer<ffi::F32> qkv,
                   ffi::Buffer<ffi::F32> bias, ffi::ResultBuffer<ffi::F32> dqkv,
                   int64_t heads, float scale) {
  Dims d;
  if (auto e = CheckQkv(qkv, heads, &d); e.failure()) return e;
  if (!IsScores(ds.dimensions(), d) || !IsScores(p.dimensions(), d) ||
      !IsTokens(dctx.dimensions(), d, d.d) || !IsTokens(dqkv->dimensions(), d, 3 * d.d) ||
      !IsBias(bias.dimensions(), d)) {
    return ffi::Error::InvalidArgument("meldae_attention_qkv_grad: shapes");
  }
  const float *x = qkv.typed_data(), *gs = ds.typed_data(), *pp = p.typed_data(),
              *g = dctx.typed_data(), *b = bias.typed_data();
  float* out = dqkv->typed_data();
  const int64_t ld = 3 * d.d;
  meldae::ParallelFor(pool, d.n * d.h, [&](int64_t i) {
    const Head hd = HeadOf(d, i);
    float* dq = out + (hd.q(x) - x);
    const float* block = gs + hd.scores();
    Sgemm(false, false, d.l, d.dh, d.l, scale, block, d.l, hd.k(x), ld, dq, ld);
    // dk starts as scale colsum(dS) bq^T, then adds scale dS^T q
    thread_local std::vector<float> colsum;
    colsum.assign(d.l, 0.0f);
    for (int64_t r = 0; r < d.l; ++r) {
      for (int64_t j = 0; j < d.l; ++j) colsum[j] += block[r * d.l + j];
    }
    float* dk = dq + d.d;
    const float* bq = hd.bq(b);
    for (int64_t j = 0; j < d.l; ++j) {
      for (int64_t t = 0; t < d.dh; ++t) dk[j * ld + t] = scale * colsum[j] * bq[t];
    }
    Sgemm(true, false, d.l, d.dh, d.l, scale, block, d.l, hd.q(x), ld, dk, ld, 1.0f);
    Sgemm(true, false, d.l, d.dh, d.l, 1.0f, pp + hd.scores(), d.l, g + hd.tokens(), d.d,
          dq + 2 * d.d, ld);
  });
  return ffi::Error::Success();
}

}  // namespace

extern "C" void meldae_set_column_split(int on) { g_column_split.store(on != 0); }

extern "C" void meldae_set_sgemm(void* fn, int ilp64) {
  g_sgemm64 = ilp64 ? reinterpret_cast<Sgemm64>(fn) : nullptr;
  g_sgemm32 = ilp64 ? nullptr : reinterpret_cast<Sgemm32>(fn);
}

MELDAE_DEFINE_GEMM_HANDLER(MeldaeGemm, Gemm);

XLA_FFI_DEFINE_HANDLER_SYMBOL(MeldaeAttentionScores, Scores,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("heads")
                                  .Attr<float>("scale"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(MeldaeAttentionContext, Context,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("heads"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(MeldaeAttentionScoresGrad, ScoresGrad,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("heads"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(MeldaeAttentionQkvGrad, QkvGrad,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("heads")
                                  .Attr<float>("scale"));
