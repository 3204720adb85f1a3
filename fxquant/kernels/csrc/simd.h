// Small AVX2 helpers shared by the int8 and int4 kernels.
#pragma once

#include <immintrin.h>

#include <cstdint>
#include <cstring>

namespace fxquant {

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Eight int8 codes as eight floats (exact).
inline __m256 load_int8x8(const int8_t* p) {
  __m128i bytes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes));
}

// Eight 4-bit codes (four packed bytes, low nibble first) minus a zero-point, as eight floats
// (exact). Broadcasting the 32-bit word and shifting each lane by 0, 4, ..., 28 keeps the codes in
// k order without a shuffle, so x needs no permutation.
inline __m256i nibble_shifts() { return _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28); }

inline __m256 load_int4x8(const uint8_t* p, __m256i shifts, __m256i zero_point) {
  int32_t word;
  std::memcpy(&word, p, sizeof(word));
  __m256i q = _mm256_srlv_epi32(_mm256_set1_epi32(word), shifts);
  q = _mm256_and_si256(q, _mm256_set1_epi32(0xF));
  return _mm256_cvtepi32_ps(_mm256_sub_epi32(q, zero_point));
}

}  // namespace fxquant
