// The blocked-layout int8 weight-only kernel (blocked_kernel.h) on AVX2 + FMA: a panel row of 16
// output channels is two registers.
#include <immintrin.h>

#include <cstdint>

#include "kernels.h"
#include "blocked_kernel.h"

namespace fxquant {
namespace {

struct Avx2 {
  using Vec = __m256;
  static constexpr int kLanes = 8;
  static constexpr int R = 2;
  // Rows of x per scratch tile, and panels: 6 rows x 1 panel x 2 registers = 12 accumulators + 2
  // panel registers + x of 16 ymm.
  static constexpr int kRows = 6;
  static constexpr int kScratchPanels = 1;
  // Decode tiles: 3 rows x 1 panel (6 accumulators + 2 panel registers + x); one row of x
  // gets 3 panels.
  static constexpr int64_t kScratchMinRows = 4;
  static constexpr int kDirectRows = 3;
  static constexpr int kDirectPanels = 1;
  static constexpr int kDirectPanels1 = 3;

  static Vec zero() { return _mm256_setzero_ps(); }
  static Vec load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, Vec v) { _mm256_storeu_ps(p, v); }
  static Vec broadcast(const float* p) { return _mm256_broadcast_ss(p); }
  static Vec fma(Vec a, Vec b, Vec c) { return _mm256_fmadd_ps(a, b, c); }
  static Vec mul(Vec a, Vec b) { return _mm256_mul_ps(a, b); }
  static Vec add(Vec a, Vec b) { return _mm256_add_ps(a, b); }
  static Vec widen(const int8_t* p, int half) {
    const __m128i bytes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + 8 * half));
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes));
  }
  static void prefetch(const int8_t* p) {
    _mm_prefetch(reinterpret_cast<const char*>(p), _MM_HINT_T0);
  }
};

}  // namespace

void int8_panels(const float* x, int64_t M, const BlockedInt8& w, int64_t p0, int64_t p1,
                 float* scratch, const Output& out) {
  blocked::panels<Avx2>(x, M, w, p0, p1, scratch, out);
}

}  // namespace fxquant
