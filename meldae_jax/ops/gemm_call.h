// What a row-major GEMM custom call, C (M x N) = op(A) op(B), takes, in one place for
// the handlers that are one (blas_gemm.cc's sgemm, amx_gemm.cc's AMX call): its shapes,
// checked, and its FFI binding (`native.gemm_call` is the Python side).
#ifndef MELDAE_JAX_OPS_GEMM_CALL_H_
#define MELDAE_JAX_OPS_GEMM_CALL_H_

#include <cstdint>
#include <string>

#include "xla/ffi/api/ffi.h"

namespace meldae {

struct GemmShape {
  int64_t m, n, k;
};

// M, N, K of op(A) (M x K; A lies as K x M when trans_a) times op(B) (K x N; N x K when
// trans_b) into C, or an InvalidArgument error naming `target`.
inline xla::ffi::Error CheckGemm(const char* target, xla::ffi::Span<const int64_t> ad,
                                 xla::ffi::Span<const int64_t> bd,
                                 xla::ffi::Span<const int64_t> cd, bool trans_a,
                                 bool trans_b, GemmShape* shape) {
  if (ad.size() != 2 || bd.size() != 2 || cd.size() != 2) {
    return xla::ffi::Error::InvalidArgument(std::string(target) +
                                            ": operands must be 2-D");
  }
  const int64_t m = trans_a ? ad[1] : ad[0], k = trans_a ? ad[0] : ad[1];
  const int64_t kb = trans_b ? bd[1] : bd[0], n = trans_b ? bd[0] : bd[1];
  if (k != kb || cd[0] != m || cd[1] != n) {
    return xla::ffi::Error::InvalidArgument(std::string(target) +
                                            ": shapes do not match");
  }
  *shape = GemmShape{m, n, k};
  return xla::ffi::Error::Success();
}

}  // namespace meldae

// Defines the FFI symbol `symbol` for `fn(pool, a, b, c, trans_a, trans_b)`.
#define MELDAE_DEFINE_GEMM_HANDLER(symbol, fn)                              \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(symbol, fn,                                 \
                                xla::ffi::Ffi::Bind()                       \
                                    .Ctx<xla::ffi::ThreadPool>()            \
                                    .Arg<xla::ffi::Buffer<xla::ffi::F32>>() \
                                    .Arg<xla::ffi::Buffer<xla::ffi::F32>>() \
                                    .Ret<xla::ffi::Buffer<xla::ffi::F32>>() \
                                    .Attr<bool>("trans_a")                  \
                                    .Attr<bool>("trans_b"))

#endif  // MELDAE_JAX_OPS_GEMM_CALL_H_
