// XLA FFI handler for the AdamW step over every trainable parameter at once: the
// global-norm clip, the two moments, their bias correction, the weight decay, the
// learning rate and the parameter update, one pass over each leaf's four arrays.
// Why: XLA's CPU backend runs optax's AdamW as a few small loop fusions per parameter
// leaf (the model's 265 leaves gave ~1,000 thunks per step), most of them on one core, and
// writes the clipped gradient and the update out between them. An S112 step spent ~41 ms
// in the optimiser, against ~25 ms for one flat loop over the same bytes
// (docs/performance.md, session 22). Here each element is read once (p, g, m, v) and
// written once (p, m, v), in chunks shared over XLA's intra-op pool, into outputs that
// alias the inputs, so a donated state is updated in place.
//
// Arguments: coeffs (L, 10) float32, then L params, L grads, L first and L second
// moments; results: L params, L first and L second moments. Row i of coeffs holds leaf
// i's values of Coeff below (cpu_adamw.COEFFS names them). The arithmetic is optax's
// (scale_by_adam, add_decayed_weights, scale_by_learning_rate, apply_updates), with the
// clip and the bias corrections as products by precomputed factors where optax divides:
//   g = grad * clip;  m = (1 - b1) g + b1 m;  v = (1 - b2) g^2 + b2 v;
//   u = m inv_bc1 / (sqrt(v inv_bc2) + eps) + wd p;  p = p + (-lr) u.
// One division and one square root per element, so the pass stays memory-bound.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <immintrin.h>
#include <string>
#include <vector>

#include "xla/ffi/api/ffi.h"

#include "row_blocks.h"

namespace ffi = xla::ffi;

namespace {

enum Coeff : int64_t {
  kClip, kOneMinusB1, kB1, kOneMinusB2, kB2, kInvBc1, kInvBc2, kEps, kWd, kNegLr, kCoeffs
};

// One leaf's arrays: read from p, g, m, v and written to po, mo, vo, which are the same
// buffers where XLA aliased them (a donated state), so the update is then in place.
struct Leaf {
  const float *p, *g, *m, *v;
  float *po, *mo, *vo;
  const float* c;  // its row of coeffs
  int64_t size;
};

void StepPlain(const Leaf& l, int64_t begin, int64_t end) {
  const float* c = l.c;
  for (int64_t i = begin; i < end; ++i) {
    const float g = l.g[i] * c[kClip];
    const float m = c[kOneMinusB1] * g + c[kB1] * l.m[i];
    const float v = c[kOneMinusB2] * (g * g) + c[kB2] * l.v[i];
    const float u =
        (m * c[kInvBc1]) / (std::sqrt(v * c[kInvBc2]) + c[kEps]) + c[kWd] * l.p[i];
    l.mo[i] = m;
    l.vo[i] = v;
    l.po[i] = l.p[i] + c[kNegLr] * u;
  }
}

__attribute__((target("avx512f"))) void StepAvx512(const Leaf& l, int64_t begin,
                                                    int64_t end) {
  const float* c = l.c;
  const __m512 clip = _mm512_set1_ps(c[kClip]);
  const __m512 a1 = _mm512_set1_ps(c[kOneMinusB1]), b1 = _mm512_set1_ps(c[kB1]);
  const __m512 a2 = _mm512_set1_ps(c[kOneMinusB2]), b2 = _mm512_set1_ps(c[kB2]);
  const __m512 bc1 = _mm512_set1_ps(c[kInvBc1]), bc2 = _mm512_set1_ps(c[kInvBc2]);
  const __m512 eps = _mm512_set1_ps(c[kEps]), wd = _mm512_set1_ps(c[kWd]);
  const __m512 neg_lr = _mm512_set1_ps(c[kNegLr]);
  for (int64_t i = begin; i < end; i += 16) {
    const __mmask16 k = meldae::Tail(end - i);
    const __m512 p = _mm512_maskz_loadu_ps(k, l.p + i);
    const __m512 g = _mm512_mul_ps(_mm512_maskz_loadu_ps(k, l.g + i), clip);
    const __m512 m = _mm512_add_ps(_mm512_mul_ps(a1, g),
                                   _mm512_mul_ps(b1, _mm512_maskz_loadu_ps(k, l.m + i)));
    const __m512 v = _mm512_add_ps(_mm512_mul_ps(a2, _mm512_mul_ps(g, g)),
                                   _mm512_mul_ps(b2, _mm512_maskz_loadu_ps(k, l.v + i)));
    const __m512 den = _mm512_add_ps(_mm512_sqrt_ps(_mm512_mul_ps(v, bc2)), eps);
    const __m512 u = _mm512_add_ps(_mm512_div_ps(_mm512_mul_ps(m, bc1), den),
                                   _mm512_mul_ps(wd, p));
    _mm512_mask_storeu_ps(l.mo + i, k, m);
    _mm512_mask_storeu_ps(l.vo + i, k, v);
    _mm512_mask_storeu_ps(l.po + i, k, _mm512_add_ps(p, _mm512_mul_ps(neg_lr, u)));
  }
}

// Elements per chunk: 64 KiB of each array, a few hundred chunks in a ViT-S step.
constexpr int64_t kChunk = 16384;

struct Chunk {
  int64_t leaf, begin, end;
};

void AddChunks(int64_t leaf, int64_t size, std::vector<Chunk>* chunks) {
  for (int64_t b = 0; b < size; b += kChunk) {
    chunks->push_back(Chunk{leaf, b, std::min(size, b + kChunk)});
  }
}

ffi::Error Adamw(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> coeffs, ffi::RemainingArgs args,
                 ffi::RemainingRets rets) {
  auto cd = coeffs.dimensions();
  if (cd.size() != 2 || cd[1] != kCoeffs) {
    return ffi::Error::InvalidArgument("meldae_adamw: coeffs must be (leaves, 10)");
  }
  const int64_t n = cd[0];
  if (static_cast<int64_t>(args.size()) != 4 * n ||
      static_cast<int64_t>(rets.size()) != 3 * n) {
    return ffi::Error::InvalidArgument(
        "meldae_adamw: expected 4 x leaves arguments after coeffs and 3 x leaves results");
  }
  std::vector<Leaf> leaves(n);
  for (int64_t i = 0; i < n; ++i) {
    auto p = args.get<ffi::Buffer<ffi::F32>>(i), g = args.get<ffi::Buffer<ffi::F32>>(n + i);
    auto m = args.get<ffi::Buffer<ffi::F32>>(2 * n + i);
    auto v = args.get<ffi::Buffer<ffi::F32>>(3 * n + i);
    auto po = rets.get<ffi::Buffer<ffi::F32>>(i), mo = rets.get<ffi::Buffer<ffi::F32>>(n + i);
    auto vo = rets.get<ffi::Buffer<ffi::F32>>(2 * n + i);
    if (p.has_error() || g.has_error() || m.has_error() || v.has_error() ||
        po.has_error() || mo.has_error() || vo.has_error()) {
      return ffi::Error::InvalidArgument("meldae_adamw: leaf " + std::to_string(i) +
                                         " is not float32");
    }
    const int64_t size = p->element_count();
    if (g->element_count() != size || m->element_count() != size ||
        v->element_count() != size || (*po)->element_count() != size ||
        (*mo)->element_count() != size || (*vo)->element_count() != size) {
      return ffi::Error::InvalidArgument("meldae_adamw: leaf " + std::to_string(i) +
                                         "'s arrays differ in size");
    }
    leaves[i] = Leaf{p->typed_data(),      g->typed_data(),      m->typed_data(),
                     v->typed_data(),      (*po)->typed_data(),  (*mo)->typed_data(),
                     (*vo)->typed_data(),  coeffs.typed_data() + i * kCoeffs, size};
  }
  std::vector<Chunk> chunks;
  for (int64_t i = 0; i < n; ++i) AddChunks(i, leaves[i].size, &chunks);
  const auto step = meldae::UseAvx512() ? StepAvx512 : StepPlain;
  meldae::ParallelFor(pool, static_cast<int64_t>(chunks.size()), [&](int64_t j) {
    const Chunk& ch = chunks[j];
    step(leaves[ch.leaf], ch.begin, ch.end);
  });
  return ffi::Error::Success();
}

float SumSquaresPlain(const float* x, int64_t begin, int64_t end) {
  float s = 0.0f;
  for (int64_t i = begin; i < end; ++i) s += x[i] * x[i];
  return s;
}

__attribute__((target("avx512f"))) float SumSquaresAvx512(const float* x, int64_t begin,
                                                           int64_t end) {
  __m512 s = _mm512_setzero_ps();
  for (int64_t i = begin; i < end; i += 16) {
    const __m512 v = _mm512_maskz_loadu_ps(meldae::Tail(end - i), x + i);
    s = _mm512_fmadd_ps(v, v, s);
  }
  return _mm512_reduce_add_ps(s);
}

// sum of x^2 over every element of every argument, as a float32 scalar: the squared
// global norm that the clip divides by, in one call instead of one reduction per leaf.
// Chunks' sums are added in chunk order (in double), so the result does not depend on
// which thread ran which chunk.
ffi::Error SumSquares(ffi::ThreadPool pool, ffi::RemainingArgs args,
                      ffi::Result<ffi::BufferR0<ffi::F32>> out) {
  const int64_t n = static_cast<int64_t>(args.size());
  std::vector<const float*> data(n);
  std::vector<Chunk> chunks;
  for (int64_t i = 0; i < n; ++i) {
    auto x = args.get<ffi::Buffer<ffi::F32>>(i);
    if (x.has_error()) {
      return ffi::Error::InvalidArgument("meldae_sum_squares: argument " +
                                         std::to_string(i) + " is not float32");
    }
    data[i] = x->typed_data();
    AddChunks(i, x->element_count(), &chunks);
  }
  std::vector<float> partial(chunks.size(), 0.0f);
  const auto sum = meldae::UseAvx512() ? SumSquaresAvx512 : SumSquaresPlain;
  meldae::ParallelFor(pool, static_cast<int64_t>(chunks.size()), [&](int64_t j) {
    const Chunk& ch = chunks[j];
    partial[j] = sum(data[ch.leaf], ch.begin, ch.end);
  });
  double total = 0.0;
  for (float s : partial) total += s;
  *out->typed_data() = static_cast<float>(total);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(MeldaeSumSquares, SumSquares,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .RemainingArgs()
                                  .Ret<ffi::BufferR0<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(MeldaeAdamw, Adamw,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .RemainingArgs()
                                  .RemainingRets());
