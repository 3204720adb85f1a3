// int4 group-wise weight x float activation: y = x @ ((q - zero_point) * scale)^T + bias.
//
// The cost at decode is widening codes to float, so the inner loop does as little as AVX2
// allows per code: eight packed bytes (16 codes) are zero-extended to eight 32-bit lanes, and two
// ANDs split them into the even codes (q, mask 0x0F) and the odd codes (16 q, mask 0xF0), each
// converted once and multiplied with FMA. That needs x reordered per 16 elements into
// [x0, x2, ..., x14, x1/16, x3/16, ..., x15/16] (int4_prepare_x; dividing by 16 is exact), and the
// zero-point is taken out per group afterwards: sum x (q - zp) = sum x q - zp * sum x.
// Each group's sum is scaled into the running total with one FMA. K is a multiple of the group
// size and the group size a multiple of 32, so there is no K tail.
#include "kernels.h"
#include "simd.h"
#include "tiling.h"

namespace fxquant {
namespace {

// acc[i][j] = sum over k in [k0, k1) of xp[i][k] * (code j, k), with the odd codes times 16.
template <int MB, int NB>
inline void group_sums(const float* const* xrow, const uint8_t* const* wrow, int64_t k0,
                       int64_t k1, int64_t ahead, __m256 (&acc)[MB][NB]) {
  const __m256i lo_mask = _mm256_set1_epi32(0x0F), hi_mask = _mm256_set1_epi32(0xF0);
  for (int i = 0; i < MB; ++i)
    for (int j = 0; j < NB; ++j) acc[i][j] = _mm256_setzero_ps();
  for (int64_t k = k0; k < k1; k += 16) {
    if ((k & 127) == 0) {
      // `ahead` bytes on (the next row block), one cache line per row: see int8_kernel.cpp.
      for (int j = 0; j < NB; ++j)
        _mm_prefetch(reinterpret_cast<const char*>(wrow[j] + ahead + k / 2), _MM_HINT_T0);
    }
    __m256i v[NB];
    for (int j = 0; j < NB; ++j)
      v[j] = _mm256_cvtepu8_epi32(
          _mm_loadl_epi64(reinterpret_cast<const __m128i*>(wrow[j] + k / 2)));
    // Even codes against x[k:k+8], then odd codes against x[k+8:k+16]: one set of widened
    // weights live at a time keeps the MB * NB accumulators in registers.
    for (int h = 0; h < 2; ++h) {
      __m256 wv[NB];
      const __m256i mask = h ? hi_mask : lo_mask;
      for (int j = 0; j < NB; ++j) wv[j] = _mm256_cvtepi32_ps(_mm256_and_si256(v[j], mask));
      for (int i = 0; i < MB; ++i) {
        const __m256 xv = _mm256_loadu_ps(xrow[i] + k + 8 * h);
        for (int j = 0; j < NB; ++j) acc[i][j] = _mm256_fmadd_ps(xv, wv[j], acc[i][j]);
      }
    }
  }
}

struct Int4Kernel {
  const float* xp;    // [M, K], reordered by int4_prepare_x
  const float* xsum;  // [M, G], sum of x over each group
  Int4Weight w;
  Output out;

  // MB * NB group sums + NB zero-extended and NB widened codes + masks and x in 16 registers.
  static constexpr int nb(int mb) { return mb <= 2 ? 4 : 2; }

  template <int MB, int NB>
  void tile(int64_t m, int64_t n) const {
    const int64_t K = w.K, G = K / w.group, half = K / 2;
    // Totals live in memory (touched once per group), leaving the registers to the group sums.
    alignas(32) float total[MB][NB][8] = {};
    float correction[MB][NB] = {};
    const float* xrow[MB];
    const uint8_t* wrow[NB];
    for (int i = 0; i < MB; ++i) xrow[i] = xp + (m + i) * K;
    for (int j = 0; j < NB; ++j) wrow[j] = w.packed + (n + j) * half;
    for (int64_t g = 0; g < G; ++g) {
      __m256 acc[MB][NB];
      group_sums<MB, NB>(xrow, wrow, g * w.group, (g + 1) * w.group, kRowBlock * half, acc);
      for (int j = 0; j < NB; ++j) {
        const float s = w.scale[(n + j) * G + g];
        const float zs = s * float(w.zero_point[(n + j) * G + g]);
        const __m256 sv = _mm256_set1_ps(s);
        for (int i = 0; i < MB; ++i) {
          const __m256 t = _mm256_fmadd_ps(sv, acc[i][j], _mm256_load_ps(total[i][j]));
          _mm256_store_ps(total[i][j], t);
          correction[i][j] += zs * xsum[(m + i) * G + g];
        }
      }
    }
    for (int i = 0; i < MB; ++i) {
      for (int j = 0; j < NB; ++j) {
        float value = hsum(_mm256_load_ps(total[i][j])) - correction[i][j];
        if (out.bias != nullptr) value += out.bias[n + j];
        out.y[(m + i) * out.ldy + n + j] = value;
      }
    }
  }
};

}  // namespace

void int4_prepare_x(const float* x, int64_t M, int64_t K, int64_t group, float* xp, float* xsum) {
  const __m256 sixteenth = _mm256_set1_ps(1.0f / 16.0f);
  const int64_t G = K / group;
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t g = 0; g < G; ++g) {
      __m256 sum = _mm256_setzero_ps();
      for (int64_t k = g * group; k < (g + 1) * group; k += 16) {
        const __m256 a = _mm256_loadu_ps(x + m * K + k), b = _mm256_loadu_ps(x + m * K + k + 8);
        sum = _mm256_add_ps(sum, _mm256_add_ps(a, b));
        // shuffle_ps picks within 128-bit lanes; permute4x64 puts the 64-bit halves in order.
        const __m256 even = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0));
        const __m256 odd = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1));
        const __m256 e = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(even), 0xD8));
        const __m256 o = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(odd), 0xD8));
        _mm256_storeu_ps(xp + m * K + k, e);
        _mm256_storeu_ps(xp + m * K + k + 8, _mm256_mul_ps(o, sixteenth));
      }
      xsum[m * G + g] = hsum(sum);
    }
  }
}

void int4_rows(const float* xp, const float* xsum, int64_t M, const Int4Weight& w, int64_t n0,
               int64_t n1, const Output& out) {
  for_each_tile(Int4Kernel{xp, xsum, w, out}, M, n0, n1);
}

void int4_dequant_rows(const Int4Weight& w, int64_t n0, int64_t n1, float* tile) {
  const int64_t K = w.K, G = K / w.group, half = K / 2;
  const __m256i shifts = nibble_shifts();
  for (int64_t n = n0; n < n1; ++n) {
    float* dst = tile + (n - n0) * K;
    for (int64_t g = 0; g < G; ++g) {
      const __m256i zp = _mm256_set1_epi32(w.zero_point[n * G + g]);
      const __m256 s = _mm256_set1_ps(w.scale[n * G + g]);
      for (int64_t k = g * w.group; k < (g + 1) * w.group; k += 8) {
        const __m256 q = load_int4x8(w.packed + n * half + k / 2, shifts, zp);
        _mm256_storeu_ps(dst + k, _mm256_mul_ps(q, s));
      }
    }
  }
}

}  // namespace fxquant
