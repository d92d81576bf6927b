// e^x on AVX-512 for x <= 0, shared by the handlers that need it (bias_gelu.cc's GELU
// derivative, blas_gemm.cc's attention softmax): a Cephes-style polynomial scaled by 2^n,
// within a few float32 ulps of XLA's exp.
#ifndef MELDAE_JAX_OPS_EXP512_H_
#define MELDAE_JAX_OPS_EXP512_H_

#include <immintrin.h>

namespace meldae {

// e^x for x <= 0 (the GELU's -z^2/2, a softmax's x - max): x = n ln2 + r, |r| <= ln2/2,
// e^r by a degree-6 polynomial, times 2^n by scalef (which gives 0 where 2^n underflows).
__attribute__((target("avx512f"))) inline __m512 ExpNonPositive512(__m512 x) {
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

}  // namespace meldae

#endif  // MELDAE_JAX_OPS_EXP512_H_
