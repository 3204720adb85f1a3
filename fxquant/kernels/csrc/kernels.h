// Row kernels behind fxquant_cpu's weight-only linear ops (AVX2 + FMA).
//
// Every function computes output columns n in [n0, n1) for all M rows of a row-major float x, so
// the caller can split N across threads. Weights are read once per call: a block of weight rows
// is multiplied with every row of x while it sits in L1.
#pragma once

#include <cstdint>

namespace fxquant {

// int8 per-output-channel weight: w[n, k] = codes[n * K + k] * scale[n].
struct Int8Weight {
  const int8_t* codes;  // [N, K], row-major
  const float* scale;   // [N]
  int64_t K;
};

// int4 group-wise weight: w[n, k] = (q[n, k] - zero_point[n, g]) * scale[n, g], g = k / group.
// q[n, 2i] is the low nibble of packed[n, i], q[n, 2i + 1] the high nibble.
struct Int4Weight {
  const uint8_t* packed;      // [N, K / 2]
  const float* scale;         // [N, K / group]
  const uint8_t* zero_point;  // [N, K / group]
  int64_t K;
  int64_t group;  // a multiple of 32
};

// int8 per-output-channel weight in panels of 16 output channels (blocked_kernel.h):
// codes[(p * K + k) * 16 + l] is the code of output channel 16 p + l at input k (zero past N).
struct BlockedInt8 {
  const int8_t* codes;  // [ceil(N / 16), K, 16]
  const float* scale;   // [N]
  int64_t N;
  int64_t K;
};

// Dynamic int8 x int8 linear on output-channel panels grouped for VNNI (4 consecutive k per lane):
// codes[((p * K4 + k4) * 16 + l) * 4 + j] is the code of channel 16 p + l at input 4 k4 + j (zero
// past N and K). y = (sum_k xq * w - x_zp * row_sum) * x_scale * scale + bias, ReLU optional.
struct DynamicInt8 {
  const int8_t* codes;     // [ceil(N / 16), K4, 16, 4]
  const float* scale;      // [N]
  const int32_t* row_sum;  // [N], sum over k of the channel's codes
  int64_t N;
  int64_t K4;
};

struct DynamicOutput {
  float* y;
  int64_t ldy;
  const float* bias;
  float x_scale;
  int32_t x_zero_point;
  bool relu;
  const float* row_scale;  // per-token mode: each row's abs-max, multiplied back; else null
};

// AVX-512 helpers of the dynamic op: the range of x, and one row quantized to uint8.
void float_range_avx512(const float* x, int64_t n, float* lo, float* hi);
void quantize_row_avx512(const float* x, int64_t K, float scale, int32_t zero_point, float qmax,
                         uint8_t* q);
// Output panels [p0, p1) for M rows of xq (uint8, row stride 4 * K4, zero-point-padded).
void int8_dynamic_panels_vnni(const uint8_t* xq, int64_t M, const DynamicInt8& w, int64_t p0,
                              int64_t p1, const DynamicOutput& out);

// The output block y[0:M, n0:n1] (row stride ldy) of x[M, K] @ w^T, plus bias[n] when not null.
struct Output {
  float* y;
  int64_t ldy;
  const float* bias;
};

void int8_rows(const float* x, int64_t M, const Int8Weight& w, int64_t n0, int64_t n1,
               const Output& out);
// Output panels [p0, p1) of x @ w^T on the blocked layout (AVX2 and AVX-512 builds); scratch
// holds 32 * K floats, 64-byte aligned.
void int8_panels(const float* x, int64_t M, const BlockedInt8& w, int64_t p0, int64_t p1,
                 float* scratch, const Output& out);
void int8_panels_avx512(const float* x, int64_t M, const BlockedInt8& w, int64_t p0, int64_t p1,
                        float* scratch, const Output& out);
// The same on AVX-512 (int8_kernel_avx512.cpp); call only where cpu_has_avx512().
void int8_rows_avx512(const float* x, int64_t M, const Int8Weight& w, int64_t n0, int64_t n1,
                      const Output& out);
// The int4 row kernel reads x reordered per 16 elements and its per-group sums (xp [M, K] and
// xsum [M, K / group], written by int4_prepare_x once per call).
void int4_prepare_x(const float* x, int64_t M, int64_t K, int64_t group, float* xp, float* xsum);
void int4_rows(const float* xp, const float* xsum, int64_t M, const Int4Weight& w, int64_t n0,
               int64_t n1, const Output& out);

// Float copies of weight rows [n0, n1) into tile ([n1 - n0, K], row-major), bit-identical to the
// reference dequantization, for the tiled-BLAS path at large M.
void int8_dequant_rows(const Int8Weight& w, int64_t n0, int64_t n1, float* tile);
void int4_dequant_rows(const Int4Weight& w, int64_t n0, int64_t n1, float* tile);

}  // namespace fxquant
