// int8 per-channel weight x float activation on AVX-512: y = x @ (codes * scale)^T + bias.
//
// The same arithmetic as int8_kernel.cpp (codes widened to exact floats, products summed with
// FMA, the per-channel scale applied once after the sum), 16 lanes wide, in two loop nests:
//   * few rows of x (decode): each weight row is widened in registers as it streams past and
//     multiplied into every row of x, eight weight rows at a time (eight FMA chains in flight);
//   * more rows: four weight rows are widened once into a float scratch (L1/L2-resident, never the
//     whole weight) and every 4-row block of x is multiplied against it from registers, so the
//     widening is paid once per call instead of once per block of x. Sixteen accumulators (4 x 4)
//     are reduced together by a transpose-and-add tree (one vector of 16 sums).
//
// Only this file is compiled for AVX-512 (the pragma below, after every include; everything
// defined here has internal linkage and no standard-library template is instantiated, so no
// AVX-512 copy of a shared inline function can reach the AVX2 code); weight_only.cpp calls it
// only where the CPU reports avx512f/bw/vl/dq.
#include <immintrin.h>

#include <cstdint>
#include <cstdlib>

#include "kernels.h"

#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq")

namespace fxquant {
namespace {

// Rows of x from which the scratch nest beats widening in registers (measured at M = 1..8 on the
// GPT-2 and seed-MLP shapes: docs/weight_only_kernel.md).
constexpr int64_t kScratchMinRows = 4;

inline __mmask16 tail_mask(int64_t remaining) {
  return remaining >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << remaining) - 1u);
}

// Sixteen codes (fewer under `mask`, the rest zero) as exact floats.
inline __m512 widen(const int8_t* p, __mmask16 mask) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(mask, p)));
}

// Lane j of the result is the sum of the 16 lanes of v_j. Takes values, not an array: an
// address-taken accumulator array makes GCC store every accumulator on every step of the loop.
inline __m512 reduce16(__m512 v0, __m512 v1, __m512 v2, __m512 v3, __m512 v4, __m512 v5,
                       __m512 v6, __m512 v7, __m512 v8, __m512 v9, __m512 v10, __m512 v11,
                       __m512 v12, __m512 v13, __m512 v14, __m512 v15) {
  // Pairs: each 128-bit block holds interleaved partial sums of two vectors.
  auto pair = [](__m512 a, __m512 b) {
    return _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
  };
  // Quads: each 128-bit block holds one partial sum of four consecutive vectors.
  auto quad = [](__m512 a, __m512 b) {
    return _mm512_add_ps(_mm512_shuffle_ps(a, b, 0x44), _mm512_shuffle_ps(a, b, 0xEE));
  };
  // Then the 128-bit blocks, (0, 2) against (1, 3), twice; the shuffles keep j in order.
  auto blocks = [](__m512 a, __m512 b) {
    return _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x88), _mm512_shuffle_f32x4(a, b, 0xDD));
  };
  const __m512 q0 = quad(pair(v0, v1), pair(v2, v3)), q1 = quad(pair(v4, v5), pair(v6, v7));
  const __m512 q2 = quad(pair(v8, v9), pair(v10, v11)), q3 = quad(pair(v12, v13), pair(v14, v15));
  return blocks(blocks(q0, q1), blocks(q2, q3));
}

inline void store_output(const float* sums, int64_t m, int64_t n, const Int8Weight& w,
                         const Output& out) {
  float value = sums[0] * w.scale[n];
  if (out.bias != nullptr) value += out.bias[n];
  out.y[m * out.ldy + n] = value;
}

// --- few rows of x: widen in registers ---------------------------------------------------------

template <int MB, int NB>
void direct_tile(const float* x, int64_t m, const Int8Weight& w, int64_t n, const Output& out) {
  const int64_t K = w.K;
  __m512 acc[MB][NB];
  for (int i = 0; i < MB; ++i)
    for (int j = 0; j < NB; ++j) acc[i][j] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; k += 16) {
    const __mmask16 mask = tail_mask(K - k);
    __m512 wv[NB];
    if ((k & 63) == 0) {
      // The next tile's rows, one cache line per row: at decode the weight streams from DRAM and
      // the hardware prefetcher alone leaves bandwidth unused on eight row streams (GPT-2 decode
      // step 22.1 -> 17.4 ms, docs/weight_only_kernel.md). A prefetch never faults, so running
      // past the last row is harmless.
      for (int j = 0; j < NB; ++j)
        _mm_prefetch(reinterpret_cast<const char*>(w.codes + (n + NB + j) * K + k), _MM_HINT_T0);
    }
    for (int j = 0; j < NB; ++j) wv[j] = widen(w.codes + (n + j) * K + k, mask);
    for (int i = 0; i < MB; ++i) {
      const __m512 xv = _mm512_maskz_loadu_ps(mask, x + (m + i) * K + k);
      for (int j = 0; j < NB; ++j) acc[i][j] = _mm512_fmadd_ps(xv, wv[j], acc[i][j]);
    }
  }
  for (int i = 0; i < MB; ++i)
    for (int j = 0; j < NB; ++j) {
      const float sum = _mm512_reduce_add_ps(acc[i][j]);
      store_output(&sum, m + i, n + j, w, out);
    }
}

template <int MB>
void direct_rows(const float* x, int64_t m, const Int8Weight& w, int64_t n0, int64_t n1,
                 const Output& out) {
  // MB * NB accumulators + NB widened rows + x within 32 registers; eight chains at one row.
  constexpr int NB = MB == 1 ? 8 : 4;
  int64_t n = n0;
  for (; n + NB <= n1; n += NB) direct_tile<MB, NB>(x, m, w, n, out);
  for (; n < n1; ++n) direct_tile<MB, 1>(x, m, w, n, out);
}

// --- more rows of x: widen once into a scratch ---------------------------------------------------
//
// A tile is 4 rows of x by 4 scratch rows, 16 accumulators reduced together. 4 x 4 measured
// faster than 2 x 8 on the GPT-2 and seed-MLP shapes at M = 4..64 (2 x 8 reads x half as often
// but loads twice the scratch per step).
constexpr int kTile = 4;

// Rows [n, n + NB) of the weight as floats, K padded with zeros to a multiple of 16.
template <int NB>
void fill_scratch(const Int8Weight& w, int64_t n, int64_t k16, float* scratch) {
  const int64_t K = w.K;
  for (int j = 0; j < NB; ++j)
    for (int64_t k = 0; k < k16; k += 16)
      _mm512_store_ps(scratch + j * k16 + k, widen(w.codes + (n + j) * K + k, tail_mask(K - k)));
}

// y[m : m + MB, n : n + NB] from the scratch rows, MB, NB <= kTile.
template <int MB, int NB>
void scratch_tile(const float* x, int64_t m, const float* scratch, int64_t k16, const Int8Weight& w,
                  int64_t n, const Output& out) {
  const int64_t K = w.K;
  __m512 acc[16];
  for (int t = 0; t < 16; ++t) acc[t] = _mm512_setzero_ps();
  // (No lambda or reference to acc here: either keeps GCC from holding acc in registers only.)
  for (int64_t k = 0; k < k16; k += 16) {
    const __mmask16 mask = tail_mask(K - k);  // the scratch is zero-padded; x is not
    __m512 wv[NB];
    for (int j = 0; j < NB; ++j) wv[j] = _mm512_load_ps(scratch + j * k16 + k);
    for (int i = 0; i < MB; ++i) {
      const __m512 xv = _mm512_maskz_loadu_ps(mask, x + (m + i) * K + k);
      for (int j = 0; j < NB; ++j) acc[i * kTile + j] = _mm512_fmadd_ps(xv, wv[j], acc[i * kTile + j]);
    }
  }
  alignas(64) float sums[16];
  _mm512_store_ps(sums, reduce16(acc[0], acc[1], acc[2], acc[3], acc[4], acc[5], acc[6], acc[7],
                                  acc[8], acc[9], acc[10], acc[11], acc[12], acc[13], acc[14],
                                  acc[15]));
  for (int i = 0; i < MB; ++i)
    for (int j = 0; j < NB; ++j) store_output(&sums[i * kTile + j], m + i, n + j, w, out);
}

template <int NB>
void scratch_block(const float* x, int64_t M, const Int8Weight& w, int64_t n, float* scratch,
                   int64_t k16, const Output& out) {
  fill_scratch<NB>(w, n, k16, scratch);
  int64_t m = 0;
  for (; m + kTile <= M; m += kTile) scratch_tile<kTile, NB>(x, m, scratch, k16, w, n, out);
  for (; m < M; ++m) scratch_tile<1, NB>(x, m, scratch, k16, w, n, out);
}

// The last 1 .. NB weight rows.
template <int NB>
void scratch_tail(const float* x, int64_t M, const Int8Weight& w, int64_t n, int64_t n1,
                  float* scratch, int64_t k16, const Output& out) {
  if constexpr (NB > 0) {
    if (n1 - n == NB) {
      scratch_block<NB>(x, M, w, n, scratch, k16, out);
    } else {
      scratch_tail<NB - 1>(x, M, w, n, n1, scratch, k16, out);
    }
  }
}

void scratch_rows(const float* x, int64_t M, const Int8Weight& w, int64_t n0, int64_t n1,
                  const Output& out) {
  const int64_t k16 = (w.K + 15) / 16 * 16;
  // One scratch per call and thread, kTile weight rows long. aligned_alloc, not a std::vector:
  // no standard-library template may be instantiated under this file's AVX-512 pragma (the
  // linker could keep that copy for the AVX2 code too).
  float* scratch = static_cast<float*>(std::aligned_alloc(64, kTile * k16 * sizeof(float)));
  int64_t n = n0;
  for (; n + kTile <= n1; n += kTile) scratch_block<kTile>(x, M, w, n, scratch, k16, out);
  scratch_tail<kTile - 1>(x, M, w, n, n1, scratch, k16, out);
  std::free(scratch);
}

}  // namespace

void int8_rows_avx512(const float* x, int64_t M, const Int8Weight& w, int64_t n0, int64_t n1,
                      const Output& out) {
  if (M >= kScratchMinRows) {
    scratch_rows(x, M, w, n0, n1, out);
    return;
  }
  if (M == 3) {
    direct_rows<3>(x, 0, w, n0, n1, out);
  } else if (M == 2) {
    direct_rows<2>(x, 0, w, n0, n1, out);
  } else if (M == 1) {
    direct_rows<1>(x, 0, w, n0, n1, out);
  }
}

}  // namespace fxquant
