// XLA FFI handlers for the ViT MLP's bias and exact GELU on a float32 (rows, D) array:
// forward y = gelu(h + b), backward dh = dy gelu'(h + b) and db = sum over rows of dh,
// each one pass over its rows, split over XLA's intra-op pool.
// Why: XLA's CPU backend differentiates the GELU by writing its derivative out in the
// forward pass, a second (rows, D) array read back in the backward, and sums the bias
// gradient in a reduction of its own: in an S112 train step the MLP's elementwise work
// and reductions took ~43 ms, ~23 ms of it with no other thunk beside them
// (docs/performance.md, session 21). Here the forward writes only y, and the backward
// recomputes gelu'(z) = Phi(z) + z phi(z) from h as it reads it and sums db on the way.
// erf is the 9/12-degree rational interpolant XLA's CPU backend and Eigen use (clamped at
// +-3.8325, where float32 erf is +-1), exp a Cephes-style polynomial scaled by 2^n, so
// values agree with jax.nn.gelu to a few float32 ulps.
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

constexpr float kSqrtHalf = 0.70710678118654752f;
constexpr float kInvSqrt2Pi = 0.39894228040143268f;
constexpr float kErfClamp = 3.832506856900711f;
// erf(x) ~ x P(x^2) / Q(x^2) on [-c, c]
constexpr float kAlpha[5] = {0.00022905065861350646f, 0.0034082910107109506f,
                             0.050955695062380861f, 0.18520832239976145f,
                             1.128379143519084f};
constexpr float kBeta[7] = {-1.1791602954361697e-7f, 0.000023547966471313185f,
                            0.0010179625278914885f, 0.014070470171167667f,
                            0.11098505178285362f, 0.49746925110067538f, 1.0f};

// --- plain loops (any CPU; tests force them with meldae_plain_loops(1)) ------------------

// Past the clamp erf is exactly +-1 (as XLA's, which clamps its result to [-1, 1]): the
// rational function there is 1 - 1e-7 or 1 + 1e-7 in float32, and the GELU's z * cdf
// would grow with |z| instead of being 0 for large negative z.
float ErfPlain(float x) {
  if (std::fabs(x) >= kErfClamp) return std::copysign(1.0f, x);
  const float x2 = x * x;
  float p = kAlpha[0], q = kBeta[0];
  for (int i = 1; i < 5; ++i) p = p * x2 + kAlpha[i];
  for (int i = 1; i < 7; ++i) q = q * x2 + kBeta[i];
  const float e = x * p / q;
  return e > 1.0f ? 1.0f : (e < -1.0f ? -1.0f : e);  // NaN stays NaN
}

void RowForwardPlain(const float* h, const float* b, float* y, int64_t d) {
  for (int64_t j = 0; j < d; ++j) {
    const float z = h[j] + b[j];
    y[j] = z * (0.5f * (1.0f + ErfPlain(z * kSqrtHalf)));
  }
}

void RowGradPlain(const float* dy, const float* h, const float* b, float* dh, float* db,
                  int64_t d) {
  for (int64_t j = 0; j < d; ++j) {
    const float z = h[j] + b[j];
    const float cdf = 0.5f * (1.0f + ErfPlain(z * kSqrtHalf));
    const float pdf = std::exp(-0.5f * z * z) * kInvSqrt2Pi;
    const float g = dy[j] * (cdf + z * pdf);
    dh[j] = g;
    db[j] += g;
  }
}

// --- AVX-512 rows ------------------------------------------------------------------------

#pragma GCC push_options
#pragma GCC target("avx512f")  // these functions only; called where the CPU has it

inline __m512 Erf512(__m512 x_in) {
  const __m512 x = _mm512_min_ps(_mm512_set1_ps(kErfClamp),
                                 _mm512_max_ps(_mm512_set1_ps(-kErfClamp), x_in));
  const __m512 x2 = _mm512_mul_ps(x, x);
  __m512 p = _mm512_set1_ps(kAlpha[0]), q = _mm512_set1_ps(kBeta[0]);
  for (int i = 1; i < 5; ++i) p = _mm512_fmadd_ps(p, x2, _mm512_set1_ps(kAlpha[i]));
  for (int i = 1; i < 7; ++i) q = _mm512_fmadd_ps(q, x2, _mm512_set1_ps(kBeta[i]));
  // p / q as p r with r = 1/q by rcp14 and one Newton step (q >= 1 here): a division
  // would bound the loop
  __m512 r = _mm512_rcp14_ps(q);
  r = _mm512_mul_ps(r, _mm512_fnmadd_ps(q, r, _mm512_set1_ps(2.0f)));
  const __m512 e = _mm512_mul_ps(_mm512_mul_ps(x, p), r);
  // +-1 exactly past the clamp (see ErfPlain); NaN lanes fail the compare and stay NaN
  const __mmask16 past = _mm512_cmp_ps_mask(_mm512_abs_ps(x_in),
                                            _mm512_set1_ps(kErfClamp), _CMP_GE_OQ);
  const __m512 one = _mm512_castsi512_ps(_mm512_or_si512(
      _mm512_castps_si512(_mm512_set1_ps(1.0f)),
      _mm512_and_si512(_mm512_castps_si512(x_in), _mm512_set1_epi32(0x80000000))));
  return _mm512_mask_mov_ps(e, past, one);
}

// e^x for x <= 0 (the GELU's -z^2/2): x = n ln2 + r, |r| <= ln2/2, e^r by a degree-6
// polynomial, times 2^n by scalef (which gives 0 where 2^n underflows).
inline __m512 ExpNonPositive512(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-1000.0f));  // -inf -> 0, not NaN
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(p, n);
}

inline __m512 Cdf512(__m512 z) {
  return _mm512_mul_ps(_mm512_set1_ps(0.5f),
                       _mm512_add_ps(_mm512_set1_ps(1.0f),
                                     Erf512(_mm512_mul_ps(z, _mm512_set1_ps(kSqrtHalf)))));
}

void RowForward512(const float* h, const float* b, float* y, int64_t d) {
  for (int64_t j = 0; j < d; j += 16) {
    const __mmask16 k = Tail(d - j);
    const __m512 z = _mm512_add_ps(_mm512_maskz_loadu_ps(k, h + j),
                                   _mm512_maskz_loadu_ps(k, b + j));
    _mm512_mask_storeu_ps(y + j, k, _mm512_mul_ps(z, Cdf512(z)));
  }
}

void RowGrad512(const float* dy, const float* h, const float* b, float* dh, float* db,
                int64_t d) {
  for (int64_t j = 0; j < d; j += 16) {
    const __mmask16 k = Tail(d - j);
    const __m512 z = _mm512_add_ps(_mm512_maskz_loadu_ps(k, h + j),
                                   _mm512_maskz_loadu_ps(k, b + j));
    const __m512 pdf = _mm512_mul_ps(
        ExpNonPositive512(_mm512_mul_ps(_mm512_set1_ps(-0.5f), _mm512_mul_ps(z, z))),
        _mm512_set1_ps(kInvSqrt2Pi));
    const __m512 g = _mm512_mul_ps(_mm512_maskz_loadu_ps(k, dy + j),
                                   _mm512_fmadd_ps(z, pdf, Cdf512(z)));
    _mm512_mask_storeu_ps(dh + j, k, g);
    _mm512_mask_storeu_ps(db + j, k, _mm512_add_ps(g, _mm512_maskz_loadu_ps(k, db + j)));
  }
}

#pragma GCC pop_options

// At least this many rows per block (a row is a few microseconds).
constexpr int64_t kMinRows = 16;

ffi::Error Forward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> h, ffi::Buffer<ffi::F32> b,
                   ffi::ResultBuffer<ffi::F32> y) {
  auto hd = h.dimensions();
  if (hd.size() != 2 || !IsVector(b.dimensions(), hd[1]) ||
      !IsMatrix(y->dimensions(), hd[0], hd[1])) {
    return ffi::Error::InvalidArgument("meldae_bias_gelu: shapes");
  }
  const int64_t rows = hd[0], d = hd[1];
  if (rows == 0 || d == 0) return ffi::Error::Success();
  const float *ph = h.typed_data(), *pb = b.typed_data();
  float* py = y->typed_data();
  const auto row = meldae::UseAvx512() ? RowForward512 : RowForwardPlain;
  meldae::ForRowBlocks(pool, rows, kMinRows, [&](int64_t begin, int64_t end, int64_t) {
    for (int64_t i = begin; i < end; ++i) row(ph + i * d, pb, py + i * d, d);
  });
  return ffi::Error::Success();
}

ffi::Error Backward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> h,
                    ffi::Buffer<ffi::F32> b, ffi::ResultBuffer<ffi::F32> dh,
                    ffi::ResultBuffer<ffi::F32> db) {
  auto hd = h.dimensions();
  if (hd.size() != 2 || !IsMatrix(dy.dimensions(), hd[0], hd[1]) ||
      !IsVector(b.dimensions(), hd[1]) || !IsMatrix(dh->dimensions(), hd[0], hd[1]) ||
      !IsVector(db->dimensions(), hd[1])) {
    return ffi::Error::InvalidArgument("meldae_bias_gelu_grad: shapes");
  }
  const int64_t rows = hd[0], d = hd[1];
  float *pdh = dh->typed_data(), *pdb = db->typed_data();
  std::fill(pdb, pdb + d, 0.0f);
  if (rows == 0 || d == 0) return ffi::Error::Success();
  const float *pdy = dy.typed_data(), *ph = h.typed_data(), *pb = b.typed_data();
  const auto row = meldae::UseAvx512() ? RowGrad512 : RowGradPlain;
  const std::vector<float> sums = meldae::ForRowBlocksSummed(
      pool, rows, kMinRows, d, [&](int64_t begin, int64_t end, float* part) {
        for (int64_t i = begin; i < end; ++i) {
          row(pdy + i * d, ph + i * d, pb, pdh + i * d, part, d);
        }
      });
  std::copy(sums.begin(), sums.end(), pdb);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(MeldaeBiasGelu, Forward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(MeldaeBiasGeluGrad, Backward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
