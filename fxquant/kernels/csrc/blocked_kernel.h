// int8 weight-only linear on the blocked ("panel") layout, for one vector width.
//
// Layout (kernels.h, BlockedInt8): output channels in panels of 16, each panel K rows of 16 codes,
// panel[p][k][l] = codes[16 p + l][k] (zero past N). Output columns are vector lanes, so a
// product needs no horizontal sum and x is read one broadcast float at a time:
//   * few rows of x (decode): panel codes are widened in registers as they stream past, NP panels
//     at a time (independent FMA chains), with a software prefetch ahead in every panel stream;
//   * more rows: NP panels (two on AVX-512, one on AVX2) are widened once into a float scratch
//     (K x 16 NP, L1/L2) and every block of MB rows of x runs the register-blocked kernel against
//     it (MB x NP panel accumulators: per k, NP panel loads, MB broadcasts, MB NP FMAs), BLAS-style.
// The per-channel scale and the bias are applied once, to the finished sums.
//
// Included by one translation unit per instruction set, after its target pragma; V provides the
// vector type (Vec) and R = 16 / lanes registers per panel row. Everything here has internal
// linkage and uses no standard-library template: an inline function emitted by the AVX-512 unit
// could otherwise be the copy the linker keeps for everyone, and fault on an AVX2-only CPU.
#pragma once

#include <cstdint>

#include "kernels.h"

namespace fxquant {
namespace blocked {
namespace {

constexpr int64_t kPanel = 16;
// Bytes ahead of the current k that the decode path prefetches in each panel stream.
constexpr int64_t kPrefetchBytes = 1024;

template <class V, int MB, int NP>
struct Tile {
  typename V::Vec acc[MB][NP * V::R];
};

// y[m + i, 16 p + l] for the NP panels from p: the finished sums times scale plus bias; the
// last panel may be partial (n_end).
template <class V, int MB, int NP>
inline void store_tile(const Tile<V, MB, NP>& t, int64_t m, int64_t p, const BlockedInt8& w,
                       const Output& out) {
  for (int j = 0; j < NP; ++j) {
    const int64_t n0 = (p + j) * kPanel;
    const int64_t valid = w.N - n0 < kPanel ? w.N - n0 : kPanel;
    for (int i = 0; i < MB; ++i) {
      float* y = out.y + (m + i) * out.ldy + n0;
      if (valid == kPanel) {
        for (int r = 0; r < V::R; ++r) {
          typename V::Vec v = V::mul(t.acc[i][j * V::R + r], V::load(w.scale + n0 + r * V::kLanes));
          if (out.bias != nullptr) v = V::add(v, V::load(out.bias + n0 + r * V::kLanes));
          V::store(y + r * V::kLanes, v);
        }
      } else {
        alignas(64) float sums[kPanel];
        for (int r = 0; r < V::R; ++r) V::store(sums + r * V::kLanes, t.acc[i][j * V::R + r]);
        for (int64_t l = 0; l < valid; ++l)
          y[l] = sums[l] * w.scale[n0 + l] + (out.bias != nullptr ? out.bias[n0 + l] : 0.0f);
      }
    }
  }
}

// --- few rows of x: widen in registers -----------------------------------------------------------

template <class V, int MB, int NP>
inline void direct_tile(const float* x, int64_t m, const BlockedInt8& w, int64_t p,
                        const Output& out) {
  const int64_t K = w.K;
  Tile<V, MB, NP> t;
  for (int i = 0; i < MB; ++i)
    for (int r = 0; r < NP * V::R; ++r) t.acc[i][r] = V::zero();
  const int8_t* base = w.codes + p * K * kPanel;
  for (int64_t k = 0; k < K; ++k) {
    const int8_t* row = base + k * kPanel;
    if ((k & 3) == 0) {
      // Every panel is its own stream; one cache line (four k) at a time, 1 KiB ahead.
      for (int j = 0; j < NP; ++j)
        V::prefetch(row + j * K * kPanel + kPrefetchBytes);
    }
    typename V::Vec wv[NP * V::R];
    for (int j = 0; j < NP; ++j)
      for (int r = 0; r < V::R; ++r) wv[j * V::R + r] = V::widen(row + j * K * kPanel, r);
    for (int i = 0; i < MB; ++i) {
      const typename V::Vec xv = V::broadcast(x + (m + i) * K + k);
      for (int r = 0; r < NP * V::R; ++r) t.acc[i][r] = V::fma(xv, wv[r], t.acc[i][r]);
    }
  }
  store_tile<V, MB, NP>(t, m, p, w, out);
}

template <class V, int MB, int NP>
inline void direct_panels(const float* x, int64_t m, const BlockedInt8& w, int64_t p0,
                          int64_t p1, const Output& out) {
  if constexpr (NP > 0) {
    int64_t p = p0;
    for (; p + NP <= p1; p += NP) direct_tile<V, MB, NP>(x, m, w, p, out);
    if (p < p1) direct_panels<V, MB, NP - 1>(x, m, w, p, p1, out);
  }
}

// The last 1 .. MB rows of x, each count with its own register tile (one panel per row of x at
// one row: more FMA chains).
template <class V, int MB>
inline void direct_tail(const float* x, int64_t m, int64_t M, const BlockedInt8& w, int64_t p0,
                        int64_t p1, const Output& out) {
  if constexpr (MB == 1) {
    direct_panels<V, 1, V::kDirectPanels1>(x, m, w, p0, p1, out);
  } else {
    if (M - m == MB) {
      direct_panels<V, MB, V::kDirectPanels>(x, m, w, p0, p1, out);
    } else {
      direct_tail<V, MB - 1>(x, m, M, w, p0, p1, out);
    }
  }
}

// --- more rows of x: widen two panels into a scratch --------------------------------------------

template <class V, int MB, int NP>
inline void scratch_tile(const float* x, int64_t m, const float* scratch, const BlockedInt8& w,
                         int64_t p, const Output& out) {
  const int64_t K = w.K;
  Tile<V, MB, NP> t;
  for (int i = 0; i < MB; ++i)
    for (int r = 0; r < NP * V::R; ++r) t.acc[i][r] = V::zero();
  for (int64_t k = 0; k < K; ++k) {
    typename V::Vec wv[NP * V::R];
    for (int r = 0; r < NP * V::R; ++r) wv[r] = V::load(scratch + (k * NP * V::R + r) * V::kLanes);
    for (int i = 0; i < MB; ++i) {
      const typename V::Vec xv = V::broadcast(x + (m + i) * K + k);
      for (int r = 0; r < NP * V::R; ++r) t.acc[i][r] = V::fma(xv, wv[r], t.acc[i][r]);
    }
  }
  store_tile<V, MB, NP>(t, m, p, w, out);
}

// Rows of x m .. M in blocks of V::kRows, then the tail block of 1 .. kRows - 1 rows.
template <class V, int NP, int MB>
inline void scratch_tail(const float* x, int64_t m, int64_t M, const float* scratch,
                         const BlockedInt8& w, int64_t p, const Output& out) {
  if constexpr (MB > 0) {
    if (M - m == MB) {
      scratch_tile<V, MB, NP>(x, m, scratch, w, p, out);
    } else {
      scratch_tail<V, NP, MB - 1>(x, m, M, scratch, w, p, out);
    }
  }
}

template <class V, int NP>
inline void scratch_panels(const float* x, int64_t M, const BlockedInt8& w, int64_t p,
                           float* scratch, const Output& out) {
  const int64_t K = w.K;
  // scratch[k][j * 16 + l]: panel j's row k as floats, the panels side by side.
  for (int64_t k = 0; k < K; ++k)
    for (int j = 0; j < NP; ++j)
      for (int r = 0; r < V::R; ++r)
        V::store(scratch + (k * NP * V::R + j * V::R + r) * V::kLanes,
                 V::widen(w.codes + ((p + j) * K + k) * kPanel, r));
  int64_t m = 0;
  for (; m + V::kRows <= M; m += V::kRows) scratch_tile<V, V::kRows, NP>(x, m, scratch, w, p, out);
  if (m < M) scratch_tail<V, NP, V::kRows - 1>(x, m, M, scratch, w, p, out);
}

// y[0:M, 16 p0 : min(N, 16 p1)] for all M rows of x; `scratch` holds K * 32 floats (the caller
// allocates it: see the note at the top).
template <class V>
void panels(const float* x, int64_t M, const BlockedInt8& w, int64_t p0, int64_t p1,
            float* scratch, const Output& out) {
  if (M >= V::kScratchMinRows) {
    constexpr int NP = V::kScratchPanels;
    int64_t p = p0;
    for (; p + NP <= p1; p += NP) scratch_panels<V, NP>(x, M, w, p, scratch, out);
    if (p < p1) scratch_panels<V, 1>(x, M, w, p, scratch, out);
    return;
  }
  constexpr int MB = V::kDirectRows;
  int64_t m = 0;
  for (; m + MB <= M; m += MB) direct_panels<V, MB, V::kDirectPanels>(x, m, w, p0, p1, out);
  if (m < M) direct_tail<V, MB - 1>(x, m, M, w, p0, p1, out);
}

}  // namespace
}  // namespace blocked
}  // namespace fxquant
