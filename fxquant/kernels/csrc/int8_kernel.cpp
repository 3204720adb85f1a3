// int8 per-channel weight x float activation: y = x @ (codes * scale)^T + bias.
//
// Codes are widened to float eight at a time (vpmovsxbd + vcvtdq2ps) and multiplied into
// per-(row, column) accumulators with FMA; the per-channel scale is applied once, after the sum.
#include "kernels.h"
#include "simd.h"
#include "tiling.h"

namespace fxquant {
namespace {

struct Int8Kernel {
  const float* x;
  Int8Weight w;
  Output out;

  // MB * NB accumulators + NB widened weights + one x vector must fit in 16 ymm registers.
  static constexpr int nb(int mb) { return mb == 1 ? 8 : (mb == 2 ? 4 : 2); }

  template <int MB, int NB>
  void tile(int64_t m, int64_t n) const {
    const int64_t K = w.K;
    const float* xm = x + m * K;
    const int8_t* wn = w.codes + n * K;
    __m256 acc[MB][NB];
    for (int i = 0; i < MB; ++i)
      for (int j = 0; j < NB; ++j) acc[i][j] = _mm256_setzero_ps();
    const int64_t K8 = K & ~int64_t{7};
    for (int64_t k = 0; k < K8; k += 8) {
      if ((k & 63) == 0) {
        // The next row block, one cache line per row and step: at decode the weight streams from
        // DRAM and the hardware prefetcher alone leaves bandwidth unused (int8_kernel_avx512.cpp).
        for (int j = 0; j < NB; ++j)
          _mm_prefetch(reinterpret_cast<const char*>(wn + (j + kRowBlock) * K + k), _MM_HINT_T0);
      }
      __m256 wv[NB];
      for (int j = 0; j < NB; ++j) wv[j] = load_int8x8(wn + j * K + k);
      for (int i = 0; i < MB; ++i) {
        const __m256 xv = _mm256_loadu_ps(xm + i * K + k);
        for (int j = 0; j < NB; ++j) acc[i][j] = _mm256_fmadd_ps(xv, wv[j], acc[i][j]);
      }
    }
    for (int i = 0; i < MB; ++i) {
      for (int j = 0; j < NB; ++j) {
        float sum = hsum(acc[i][j]);
        for (int64_t k = K8; k < K; ++k) sum += xm[i * K + k] * float(wn[j * K + k]);
        float value = sum * w.scale[n + j];
        if (out.bias != nullptr) value += out.bias[n + j];
        out.y[(m + i) * out.ldy + n + j] = value;
      }
    }
  }
};

}  // namespace

void int8_rows(const float* x, int64_t M, const Int8Weight& w, int64_t n0, int64_t n1,
               const Output& out) {
  for_each_tile(Int8Kernel{x, w, out}, M, n0, n1);
}

void int8_dequant_rows(const Int8Weight& w, int64_t n0, int64_t n1, float* tile) {
  const int64_t K = w.K;
  const int64_t K8 = K & ~int64_t{7};
  for (int64_t n = n0; n < n1; ++n) {
    const int8_t* row = w.codes + n * K;
    float* dst = tile + (n - n0) * K;
    const float s = w.scale[n];
    const __m256 sv = _mm256_set1_ps(s);
    for (int64_t k = 0; k < K8; k += 8)
      _mm256_storeu_ps(dst + k, _mm256_mul_ps(load_int8x8(row + k), sv));
    for (int64_t k = K8; k < K; ++k) dst[k] = float(row[k]) * s;
  }
}

}  // namespace fxquant
