// The CPU's float32 FMA peak, measured: independent vector FMAs with nothing else in the
// loop, at the widest vector width the CPU has (AVX-512F, AVX2+FMA, else SSE mul+add).
// Why: step.py's matmul peak is what XLA's dot reaches; this is what the cores can do,
// the hardware limit the issue asks to compare against (benchmarks/fma_peak.py).
#include <immintrin.h>

#include <chrono>
#include <cstdint>

namespace {

typedef float V16 __attribute__((vector_size(64)));
typedef float V8 __attribute__((vector_size(32)));
typedef float V4 __attribute__((vector_size(16)));

// The FMAs as intrinsics: the native calls are built with -ffp-contract=off (native.py),
// which keeps `a * b + c` a multiply and an add (session 31 found this loop reading 17 %
// under the peak that way). SSE has no FMA: there the peak is of a multiply and an add.
__attribute__((target("avx512f"))) inline V16 Fma(V16 a, V16 b, V16 c) {
  return (V16)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)c);
}
__attribute__((target("avx2,fma"))) inline V8 Fma(V8 a, V8 b, V8 c) {
  return (V8)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c);
}
inline V4 Fma(V4 a, V4 b, V4 c) { return a * b + c; }

// One thread's GFLOP/s over `seconds` with vectors of type V (12 accumulators: more
// than FMA latency x FMA ports on current x86 cores).
#define MELDAE_FMA_RUN(NAME, V, TARGET)                                              \
  TARGET double NAME(double seconds) {                                               \
    V acc[12];                                                                       \
    for (int i = 0; i < 12; ++i) acc[i] = V{} + static_cast<float>(i + 1);           \
    const V mul = V{} + 0.999999f, add = V{} + 1e-7f;                                \
    using Clock = std::chrono::steady_clock;                                         \
    const auto start = Clock::now();                                                 \
    int64_t rounds = 0;                                                              \
    double elapsed = 0.0;                                                            \
    while (elapsed < seconds) {                                                      \
      for (int r = 0; r < 4096; ++r) {                                               \
        _Pragma("GCC unroll 12") for (int i = 0; i < 12; ++i) acc[i] =               \
            Fma(acc[i], mul, add);                                                   \
      }                                                                              \
      rounds += 4096;                                                                \
      elapsed = std::chrono::duration<double>(Clock::now() - start).count();         \
    }                                                                                \
    V sum = acc[0];                                                                  \
    for (int i = 1; i < 12; ++i) sum += acc[i];                                      \
    volatile float sink = sum[0]; /* keeps the loop */                               \
    (void)sink;                                                                      \
    constexpr int kLanes = sizeof(V) / sizeof(float);                                \
    return 2.0 * 12 * kLanes * static_cast<double>(rounds) / elapsed / 1e9;          \
  }

MELDAE_FMA_RUN(Run512, V16, __attribute__((target("avx512f"))))
MELDAE_FMA_RUN(Run256, V8, __attribute__((target("avx2,fma"))))
MELDAE_FMA_RUN(Run128, V4, )

}  // namespace

// GFLOP/s of the calling thread over `seconds`; *isa is 512, 256 or 128 (the width used).
extern "C" double meldae_fma_gflops(double seconds, int* isa) {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) {
    *isa = 512;
    return Run512(seconds);
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    *isa = 256;
    return Run256(seconds);
  }
  *isa = 128;
  return Run128(seconds);
}
