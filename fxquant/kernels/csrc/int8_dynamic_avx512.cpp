// Dynamic int8 x int8 linear on AVX-512 VNNI (vpdpbusd: 64 unsigned x signed byte products
// summed four at a time into 16 int32 lanes, exact, no 16-bit saturation), on output-channel
// panels (kernels.h, DynamicInt8): lanes are output channels, so a tile needs no horizontal sum.
// Tiles of MB rows of x x NP panels keep MB * NP accumulators in registers; the weight streams
// once per MB rows, with a software prefetch ahead in every panel stream (at decode the weight
// comes from DRAM and the hardware prefetcher alone leaves bandwidth unused).
//
// Compiled for AVX-512 VNNI by the pragma after every include; everything here has internal
// linkage and no standard-library template is instantiated (see blocked_kernel.h).
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "kernels.h"

#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")

namespace fxquant {
namespace {

constexpr int64_t kPanelBytes = 64;  // one k4 step of one panel: 16 channels x 4 codes
constexpr int64_t kPrefetchSteps = 16;  // 1 KiB ahead in each panel stream

// Only single-row tiles prefetch: with more rows the group's panels are re-read from L2.
template <int MB, int NP>
inline void tile(const uint8_t* xq, int64_t ldx, int64_t m, const DynamicInt8& w, int64_t p,
                 const DynamicOutput& out) {
  __m512i acc[MB][NP];
  for (int i = 0; i < MB; ++i)
    for (int j = 0; j < NP; ++j) acc[i][j] = _mm512_setzero_si512();
  const int8_t* base = w.codes + p * w.K4 * kPanelBytes;
  const int64_t stride = w.K4 * kPanelBytes;  // from one panel to the next
  for (int64_t k4 = 0; k4 < w.K4; ++k4) {
    __m512i wv[NP];
    for (int j = 0; j < NP; ++j) {
      const int8_t* at = base + j * stride + k4 * kPanelBytes;
      if constexpr (MB == 1)
        _mm_prefetch(reinterpret_cast<const char*>(at + kPrefetchSteps * kPanelBytes),
                     _MM_HINT_T0);
      wv[j] = _mm512_loadu_si512(at);
    }
    for (int i = 0; i < MB; ++i) {
      int32_t four;
      std::memcpy(&four, xq + (m + i) * ldx + 4 * k4, sizeof(four));
      const __m512i xv = _mm512_set1_epi32(four);
      for (int j = 0; j < NP; ++j) acc[i][j] = _mm512_dpbusd_epi32(acc[i][j], xv, wv[j]);
    }
  }
  const __m512 zp = _mm512_set1_ps(float(out.x_zero_point));
  const __m512 xs = _mm512_set1_ps(out.x_scale);
  for (int j = 0; j < NP; ++j) {
    const int64_t n0 = (p + j) * 16;
    const int64_t valid = w.N - n0 < 16 ? w.N - n0 : 16;
    const __mmask16 mask = valid == 16 ? __mmask16(0xFFFF) : __mmask16((1u << valid) - 1u);
    const __m512 rs = _mm512_cvtepi32_ps(_mm512_maskz_loadu_epi32(mask, w.row_sum + n0));
    const __m512 s = _mm512_mul_ps(xs, _mm512_maskz_loadu_ps(mask, w.scale + n0));
    const __m512 b = out.bias == nullptr ? _mm512_setzero_ps()
                                         : _mm512_maskz_loadu_ps(mask, out.bias + n0);
    for (int i = 0; i < MB; ++i) {
      // (acc - zp * row_sum) in float: exact while |acc| < 2^24, as fbgemm computes it.
      __m512 v = _mm512_mul_ps(_mm512_fnmadd_ps(zp, rs, _mm512_cvtepi32_ps(acc[i][j])), s);
      if (out.row_scale != nullptr) v = _mm512_mul_ps(v, _mm512_set1_ps(out.row_scale[m + i]));
      v = _mm512_add_ps(v, b);
      if (out.relu) v = _mm512_max_ps(v, _mm512_setzero_ps());
      _mm512_mask_storeu_ps(out.y + (m + i) * out.ldy + n0, mask, v);
    }
  }
}

template <int MB, int NP>
inline void panels(const uint8_t* xq, int64_t ldx, int64_t m, const DynamicInt8& w, int64_t p0,
                   int64_t p1, const DynamicOutput& out) {
  if constexpr (NP > 0) {
    int64_t p = p0;
    for (; p + NP <= p1; p += NP) tile<MB, NP>(xq, ldx, m, w, p, out);
    if (p < p1) panels<MB, NP - 1>(xq, ldx, m, w, p, p1, out);
  }
}

// The last 1 .. 5 rows of x.
template <int MB>
inline void tail(const uint8_t* xq, int64_t ldx, int64_t m, int64_t M, const DynamicInt8& w,
                 int64_t p0, int64_t p1, const DynamicOutput& out) {
  if constexpr (MB == 1) {
    panels<1, 8>(xq, ldx, m, w, p0, p1, out);
  } else {
    if (M - m == MB) {
      panels<MB, 4>(xq, ldx, m, w, p0, p1, out);
    } else {
      tail<MB - 1>(xq, ldx, m, M, w, p0, p1, out);
    }
  }
}

}  // namespace

void float_range_avx512(const float* x, int64_t n, float* lo, float* hi) {
  __m512 vlo = _mm512_set1_ps(x[0]), vhi = vlo;
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 v = _mm512_loadu_ps(x + i);
    vlo = _mm512_min_ps(vlo, v);
    vhi = _mm512_max_ps(vhi, v);
  }
  float l = _mm512_reduce_min_ps(vlo), h = _mm512_reduce_max_ps(vhi);
  for (; i < n; ++i) {
    l = x[i] < l ? x[i] : l;
    h = x[i] > h ? x[i] : h;
  }
  *lo = l;
  *hi = h;
}

void quantize_row_avx512(const float* x, int64_t K, float scale, int32_t zero_point, float qmax,
                         uint8_t* q) {
  const __m512 s = _mm512_set1_ps(scale), zp = _mm512_set1_ps(float(zero_point));
  const __m512 top = _mm512_set1_ps(qmax), bottom = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; k += 16) {
    const __mmask16 mask = K - k >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (K - k)) - 1u);
    // Round half to even of x / scale (IEEE division, as the reference), then the zero-point.
    __m512 v = _mm512_div_ps(_mm512_maskz_loadu_ps(mask, x + k), s);
    v = _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    v = _mm512_min_ps(_mm512_max_ps(_mm512_add_ps(v, zp), bottom), top);
    _mm_mask_storeu_epi8(q + k, mask, _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(v)));
  }
}

void int8_dynamic_panels_vnni(const uint8_t* xq, int64_t M, const DynamicInt8& w, int64_t p0,
                              int64_t p1, const DynamicOutput& out) {
  // Four panels (64 channels) per tile: 6 rows x 4 = 24 accumulators + 4 panel rows + x of 32
  // registers; the panels of a group are read once per 6 rows of x (from L1/L2 after the first).
  // One row of x takes 8 panels (enough vpdpbusd chains in flight).
  const int64_t ldx = 4 * w.K4;
  constexpr int MB = 6;
  for (int64_t g = p0; g < p1; g += 8) {
    const int64_t g1 = g + 8 < p1 ? g + 8 : p1;
    int64_t m = 0;
    for (; m + MB <= M; m += MB) panels<MB, 4>(xq, ldx, m, w, g, g1, out);
    if (m < M) tail<MB - 1>(xq, ldx, m, M, w, g, g1, out);
  }
}

}  // namespace fxquant
