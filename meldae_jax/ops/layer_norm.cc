// XLA FFI handlers for a float32 LayerNorm over the last axis of a (rows, D) array:
// forward (y, and each row's mean and 1/std for the backward pass) and backward (dx,
// dscale, dbias), each one pass over its rows, split over XLA's intra-op pool.
// Why: XLA's CPU backend runs a LayerNorm as several reduction and elementwise fusions
// (statistics, normalise; then three reductions and two elementwise passes backward),
// each reading the (rows, D) activations again: ~1.5 ms per ViT LayerNorm forward and
// backward in an S112 train step, against ~0.3 ms for reading and writing the arrays
// once (docs/performance.md, session 19). Same maths as flax's `nn.LayerNorm` (biased
// variance, eps inside the square root); the variance is the two-pass one, where flax
// takes E[x^2] - E[x]^2, so results differ by float32 rounding.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <immintrin.h>
#include <vector>

#include "xla/ffi/api/ffi.h"

#include "row_blocks.h"

namespace ffi = xla::ffi;

namespace {

using meldae::IsMatrix;
using meldae::IsVector;
using meldae::Tail;

// One row's forward and backward, with AVX-512 where the CPU has it (the Python side
// takes this path only there) and plain loops elsewhere. Backward, with
// xhat = (x - mean) rstd and g = dy scale: dx = rstd (g - mean(g) - xhat mean(g xhat)),
// dscale += dy xhat, dbias += dy.

#pragma GCC push_options
#pragma GCC target("avx512f")  // these functions only; called where the CPU has it

// sum over the row of f(x_j) for a vector function f, with four partial sums in flight
// (an add's latency would otherwise bound the loop); lanes past d count as f's value of
// the masked-off load, which the callers make zero.
template <typename F>
float RowSum512(const float* x, int64_t d, const F& f) {
  __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  int64_t j = 0;
  for (; j + 64 <= d; j += 64) {
    a0 = _mm512_add_ps(a0, f(_mm512_loadu_ps(x + j), 0xFFFF));
    a1 = _mm512_add_ps(a1, f(_mm512_loadu_ps(x + j + 16), 0xFFFF));
    a2 = _mm512_add_ps(a2, f(_mm512_loadu_ps(x + j + 32), 0xFFFF));
    a3 = _mm512_add_ps(a3, f(_mm512_loadu_ps(x + j + 48), 0xFFFF));
  }
  for (; j < d; j += 16) {
    const __mmask16 k = Tail(d - j);
    a0 = _mm512_add_ps(a0, f(_mm512_maskz_loadu_ps(k, x + j), k));
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

void RowForward512(const float* x, const float* scale,
                                                      const float* bias, float* y,
                                                      int64_t d, float eps, float* mean,
                                                      float* rstd) {
  const float m = RowSum512(x, d, [](__m512 v, __mmask16) { return v; }) /
                  static_cast<float>(d);
  const __m512 vm = _mm512_set1_ps(m);
  const float var = RowSum512(x, d, [&](__m512 v, __mmask16 k) {
    const __m512 c = _mm512_maskz_sub_ps(k, v, vm);
    return _mm512_mul_ps(c, c);
  }) / static_cast<float>(d);
  const float r = 1.0f / std::sqrt(var + eps);
  const __m512 vr = _mm512_set1_ps(r);
  for (int64_t j = 0; j < d; j += 16) {
    const __mmask16 k = Tail(d - j);
    const __m512 xhat = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + j), vm), vr);
    _mm512_mask_storeu_ps(y + j, k, _mm512_fmadd_ps(xhat, _mm512_maskz_loadu_ps(k, scale + j),
                                                    _mm512_maskz_loadu_ps(k, bias + j)));
  }
  *mean = m;
  *rstd = r;
}

void RowGrad512(const float* dy, const float* x, float mean,
                                                   float rstd, const float* scale, float* dx,
                                                   float* dscale, float* dbias, int64_t d) {
  const __m512 vm = _mm512_set1_ps(mean), vr = _mm512_set1_ps(rstd);
  __m512 sg = _mm512_setzero_ps(), sgx = _mm512_setzero_ps();
  for (int64_t j = 0; j < d; j += 16) {  // lanes past d load dy = 0, so add nothing
    const __mmask16 k = Tail(d - j);
    const __m512 xhat = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + j), vm), vr);
    const __m512 g = _mm512_mul_ps(_mm512_maskz_loadu_ps(k, dy + j),
                                   _mm512_maskz_loadu_ps(k, scale + j));
    sg = _mm512_add_ps(sg, g);
    sgx = _mm512_fmadd_ps(g, xhat, sgx);
  }
  const __m512 a = _mm512_set1_ps(_mm512_reduce_add_ps(sg) / static_cast<float>(d));
  const __m512 b = _mm512_set1_ps(_mm512_reduce_add_ps(sgx) / static_cast<float>(d));
  for (int64_t j = 0; j < d; j += 16) {
    const __mmask16 k = Tail(d - j);
    const __m512 xhat = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + j), vm), vr);
    const __m512 vdy = _mm512_maskz_loadu_ps(k, dy + j);
    const __m512 g = _mm512_mul_ps(vdy, _mm512_maskz_loadu_ps(k, scale + j));
    const __m512 inner = _mm512_sub_ps(_mm512_sub_ps(g, a), _mm512_mul_ps(xhat, b));
    _mm512_mask_storeu_ps(dx + j, k, _mm512_mul_ps(vr, inner));
    _mm512_mask_storeu_ps(dscale + j, k,
                          _mm512_fmadd_ps(vdy, xhat, _mm512_maskz_loadu_ps(k, dscale + j)));
    _mm512_mask_storeu_ps(dbias + j, k,
                          _mm512_add_ps(vdy, _mm512_maskz_loadu_ps(k, dbias + j)));
  }
}

#pragma GCC pop_options

void RowForwardPlain(const float* x, const float* scale, const float* bias, float* y,
                     int64_t d, float eps, float* mean, float* rstd) {
  float m = 0.0f, v = 0.0f;
  for (int64_t j = 0; j < d; ++j) m += x[j];
  m /= static_cast<float>(d);
  for (int64_t j = 0; j < d; ++j) v += (x[j] - m) * (x[j] - m);
  const float r = 1.0f / std::sqrt(v / static_cast<float>(d) + eps);
  for (int64_t j = 0; j < d; ++j) y[j] = (x[j] - m) * r * scale[j] + bias[j];
  *mean = m;
  *rstd = r;
}

void RowGradPlain(const float* dy, const float* x, float mean, float rstd,
                  const float* scale, float* dx, float* dscale, float* dbias, int64_t d) {
  float a = 0.0f, b = 0.0f;
  for (int64_t j = 0; j < d; ++j) {
    const float g = dy[j] * scale[j];
    a += g;
    b += g * (x[j] - mean) * rstd;
  }
  a /= static_cast<float>(d);
  b /= static_cast<float>(d);
  for (int64_t j = 0; j < d; ++j) {
    const float xhat = (x[j] - mean) * rstd;
    dx[j] = rstd * (dy[j] * scale[j] - a - xhat * b);
    dscale[j] += dy[j] * xhat;
    dbias[j] += dy[j];
  }
}

// At least this many rows per block.
constexpr int64_t kMinRows = 64;

ffi::Error Forward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                   ffi::Buffer<ffi::F32> scale, ffi::Buffer<ffi::F32> bias,
                   ffi::ResultBuffer<ffi::F32> y, ffi::ResultBuffer<ffi::F32> mean,
                   ffi::ResultBuffer<ffi::F32> rstd, float eps) {
  auto xd = x.dimensions();
  if (xd.size() != 2 || !IsMatrix(y->dimensions(), xd[0], xd[1]) || !IsVector(scale.dimensions(), xd[1]) ||
      !IsVector(bias.dimensions(), xd[1]) || !IsVector(mean->dimensions(), xd[0]) ||
      !IsVector(rstd->dimensions(), xd[0])) {
    return ffi::Error::InvalidArgument("meldae_layer_norm: shapes");
  }
  const int64_t rows = xd[0], d = xd[1];
  if (rows == 0 || d == 0) return ffi::Error::Success();
  const float *px = x.typed_data(), *ps = scale.typed_data(), *pb = bias.typed_data();
  float *py = y->typed_data(), *pm = mean->typed_data(), *pr = rstd->typed_data();
  const auto row = meldae::UseAvx512() ? RowForward512 : RowForwardPlain;
  meldae::ForRowBlocks(pool, rows, kMinRows, [&](int64_t begin, int64_t end, int64_t) {
    for (int64_t i = begin; i < end; ++i) {
      row(px + i * d, ps, pb, py + i * d, d, eps, pm + i, pr + i);
    }
  });
  return ffi::Error::Success();
}

ffi::Error Backward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> x,
                    ffi::Buffer<ffi::F32> scale, ffi::Buffer<ffi::F32> mean,
                    ffi::Buffer<ffi::F32> rstd, ffi::ResultBuffer<ffi::F32> dx,
                    ffi::ResultBuffer<ffi::F32> dscale, ffi::ResultBuffer<ffi::F32> dbias) {
  auto xd = x.dimensions();
  if (xd.size() != 2 || !IsMatrix(dy.dimensions(), xd[0], xd[1]) ||
      !IsMatrix(dx->dimensions(), xd[0], xd[1]) ||
      !IsVector(scale.dimensions(), xd[1]) || !IsVector(dscale->dimensions(), xd[1]) ||
      !IsVector(dbias->dimensions(), xd[1]) || !IsVector(mean.dimensions(), xd[0]) ||
      !IsVector(rstd.dimensions(), xd[0])) {
    return ffi::Error::InvalidArgument("meldae_layer_norm_grad: shapes");
  }
  const int64_t rows = xd[0], d = xd[1];
  float *pdx = dx->typed_data(), *pds = dscale->typed_data(), *pdb = dbias->typed_data();
  std::fill(pds, pds + d, 0.0f);
  std::fill(pdb, pdb + d, 0.0f);
  if (rows == 0 || d == 0) return ffi::Error::Success();
  const float *pdy = dy.typed_data(), *px = x.typed_data(), *ps = scale.typed_data(),
              *pm = mean.typed_data(), *pr = rstd.typed_data();
  const auto row = meldae::UseAvx512() ? RowGrad512 : RowGradPlain;
  // Each block sums its rows' dscale and dbias (2 d floats) apart.
  const std::vector<float> sums = meldae::ForRowBlocksSummed(
      pool, rows, kMinRows, 2 * d, [&](int64_t begin, int64_t end, float* ds) {
        for (int64_t i = begin; i < end; ++i) {
          row(pdy + i * d, px + i * d, pm[i], pr[i], ps, pdx + i * d, ds, ds + d, d);
        }
      });
  std::copy(sums.begin(), sums.begin() + d, pds);
  std::copy(sums.begin() + d, sums.end(), pdb);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(MeldaeLayerNorm, Forward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("eps"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(MeldaeLayerNormGrad, Backward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
