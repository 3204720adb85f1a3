// The blocked-layout int8 weight-only kernel (blocked_kernel.h) on AVX-512: a panel row of 16
// output channels is one register. Only this file and int8_kernel_avx512.cpp are compiled for
// AVX-512 (the pragma after every include; see blocked_kernel.h on linkage).
#include <immintrin.h>

#include <cstdint>

#include "kernels.h"

#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq")

#include "blocked_kernel.h"

namespace fxquant {
namespace {

struct Avx512 {
  using Vec = __m512;
  static constexpr int kLanes = 16;
  static constexpr int R = 1;
  // Rows of x per scratch tile: 12 x 2 panels = 24 accumulators + 2 panel rows + x of 32 zmm.
  static constexpr int kRows = 12;
  static constexpr int kScratchPanels = 2;
  // Widening in registers (no scratch) while x has fewer rows than this, in tiles of
  // kDirectRows rows x kDirectPanels panels (6 x 4 = 24 accumulators + 4 panel rows + x); one
  // row of x gets 8 panels (enough FMA chains to hide the latency). Measured on the GPT-2 and
  // seed-MLP shapes at M = 4..32: the tiles re-read the weight every 6 rows and still win up to
  // ~24 rows; the scratch kernel from 32 on (docs/weight_only_kernel.md).
  static constexpr int64_t kScratchMinRows = 32;
  static constexpr int kDirectRows = 6;
  static constexpr int kDirectPanels = 4;
  static constexpr int kDirectPanels1 = 8;

  static Vec zero() { return _mm512_setzero_ps(); }
  static Vec load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, Vec v) { _mm512_storeu_ps(p, v); }
  static Vec broadcast(const float* p) { return _mm512_set1_ps(*p); }
  static Vec fma(Vec a, Vec b, Vec c) { return _mm512_fmadd_ps(a, b, c); }
  static Vec mul(Vec a, Vec b) { return _mm512_mul_ps(a, b); }
  static Vec add(Vec a, Vec b) { return _mm512_add_ps(a, b); }
  static Vec widen(const int8_t* p, int) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
  }
  static void prefetch(const int8_t* p) {
    _mm_prefetch(reinterpret_cast<const char*>(p), _MM_HINT_T0);
  }
};

}  // namespace

void int8_panels_avx512(const float* x, int64_t M, const BlockedInt8& w, int64_t p0, int64_t p1,
                        float* scratch, const Output& out) {
  blocked::panels<Avx512>(x, M, w, p0, p1, scratch, out);
}

}  // namespace fxquant
