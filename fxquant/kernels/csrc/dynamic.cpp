// fxquant_cpu::linear_int8_dynamic: dynamic int8 x int8 linear on VNNI output-channel panels.
//
// x is quantized per tensor from its own range with fxquant's activation parameters
// (numerics.activation_qparams: the range widened to include 0, fbgemm's zero-point rule), then
// multiplied exactly in int32 with the int8 weight by the AVX-512 VNNI kernel
// (int8_dynamic_avx512.cpp), or by a plain C++ loop where that kernel is not selected (a CPU
// without VNNI never gets this layout from pack_weights; the loop keeps the op correct if the
// instruction set is switched afterwards).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>
#include <optional>
#include <vector>

#include "kernels.h"

namespace fxquant {

bool int8_kernels_use_avx512();  // weight_only.cpp: the kernel_isa switch
bool cpu_has_vnni();

namespace {

constexpr double kMinActivationScale = 6.1e-5;  // numerics.MIN_ACTIVATION_SCALE

// numerics.activation_qparams, in the same double arithmetic as the Python reference.
void activation_qparams(double lo, double hi, bool reduce_range, float* scale, int32_t* zp) {
  const double qmin = 0, qmax = reduce_range ? 127 : 255, levels = qmax - qmin;
  lo = std::min(lo, 0.0);
  hi = std::max(hi, 0.0);
  double s = (hi - lo) / levels;
  if (s == 0.0 || std::isnan(s) || std::isinf(s)) s = 0.1;
  if (s < kMinActivationScale) {
    s = kMinActivationScale;
    if (lo == 0.0) {
      hi = s * levels;
    } else if (hi == 0.0) {
      lo = -s * levels;
    } else {
      const double amplifier = kMinActivationScale / ((hi - lo) / levels);
      lo *= amplifier;
      hi *= amplifier;
    }
  }
  const double zp_from_min = qmin - lo / s, zp_from_max = qmax - hi / s;
  const double err_min = std::abs(qmin) - std::abs(lo / s);
  const double err_max = std::abs(qmax) - std::abs(hi / s);
  const double initial = err_min < err_max ? zp_from_min : zp_from_max;
  // Python's round(): half to even.
  const double rounded = std::nearbyint(initial);
  *zp = int32_t(std::min(std::max(rounded, qmin), qmax));
  *scale = float(s);
}

void reference_panels(const uint8_t* xq, int64_t M, const DynamicInt8& w, int64_t p0, int64_t p1,
                      const DynamicOutput& out) {
  const int64_t ldx = 4 * w.K4;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = p0 * 16; n < std::min(w.N, p1 * 16); ++n) {
      const int64_t p = n / 16, l = n % 16;
      int32_t acc = 0;
      for (int64_t k4 = 0; k4 < w.K4; ++k4)
        for (int64_t j = 0; j < 4; ++j)
          acc += int32_t(xq[m * ldx + 4 * k4 + j]) *
                 int32_t(w.codes[((p * w.K4 + k4) * 16 + l) * 4 + j]);
      float v = (float(acc) - float(out.x_zero_point) * float(w.row_sum[n])) *
                (out.x_scale * w.scale[n]);
      if (out.row_scale != nullptr) v *= out.row_scale[m];
      v += out.bias != nullptr ? out.bias[n] : 0.0f;
      if (out.relu) v = std::max(v, 0.0f);
      out.y[m * out.ldy + n] = v;
    }
}

std::tuple<at::Tensor, at::Tensor> divide_rows_by_absmax(const at::Tensor& x);

at::Tensor linear_int8_dynamic(const at::Tensor& x, const at::Tensor& codes,
                               const at::Tensor& scale, const at::Tensor& row_sum,
                               const std::optional<at::Tensor>& bias, int64_t K,
                               bool reduce_range, bool relu, bool per_token) {
  TORCH_CHECK_VALUE(codes.dim() == 4 && codes.size(2) == 16 && codes.size(3) == 4 &&
                        codes.scalar_type() == at::kChar && codes.is_contiguous(),
                    "codes must be contiguous int8 [ceil(N / 16), ceil(K / 4), 16, 4], got ",
                    codes.scalar_type(), " ", codes.sizes());
  const int64_t N = scale.size(0), P = codes.size(0), K4 = codes.size(1);
  TORCH_CHECK_VALUE(P == (N + 15) / 16 && K4 == (K + 3) / 4, "codes ", codes.sizes(),
                    " do not hold N=", N, ", K=", K);
  TORCH_CHECK_VALUE(scale.scalar_type() == at::kFloat && scale.is_contiguous() &&
                        row_sum.scalar_type() == at::kInt && row_sum.is_contiguous() &&
                        row_sum.numel() == N,
                    "scale must be float32 [N] and row_sum int32 [N]");
  TORCH_CHECK_VALUE(x.device().is_cpu() && x.scalar_type() == at::kFloat && x.dim() >= 1 &&
                        x.size(-1) == K,
                    "x must be a float32 CPU tensor ending in K=", K, ", got ", x.scalar_type(),
                    " ", x.sizes());
  const float* b = nullptr;
  if (bias.has_value()) {
    TORCH_CHECK_VALUE(bias->scalar_type() == at::kFloat && bias->numel() == N &&
                          bias->is_contiguous(),
                      "bias must be a contiguous float32 [", N, "]");
    b = bias->data_ptr<float>();
  }
  at::Tensor x2 = x.reshape({-1, K}).contiguous();
  const int64_t M = x2.size(0);
  at::Tensor row_scale;
  if (per_token && M > 0) {
    // The rows divided by their abs-max are quantized per tensor; the kernel multiplies each
    // row back in its epilogue.
    std::tie(x2, row_scale) = divide_rows_by_absmax(x2);
  }
  std::vector<int64_t> sizes = x.sizes().vec();
  sizes.back() = N;
  at::Tensor y = at::empty({M, N}, x.options());
  if (M == 0 || N == 0) return y.view(sizes);
  const float* xp = x2.data_ptr<float>();
  const bool fast = int8_kernels_use_avx512() && cpu_has_vnni();
  float lo = xp[0], hi = xp[0];
  if (fast) {
    float_range_avx512(xp, M * K, &lo, &hi);
  } else {
    for (int64_t i = 0; i < M * K; ++i) {
      lo = std::min(lo, xp[i]);
      hi = std::max(hi, xp[i]);
    }
  }
  DynamicOutput out{y.data_ptr<float>(), N, b, 0.0f, 0, relu,
                    per_token ? row_scale.data_ptr<float>() : nullptr};
  activation_qparams(lo, hi, reduce_range, &out.x_scale, &out.x_zero_point);
  // Quantized rows padded to 4 * K4 with the zero-point (the padded weights are zero anyway).
  const int64_t ldx = 4 * K4;
  const float qmax = reduce_range ? 127.0f : 255.0f;
  at::Tensor xq = at::empty({M, ldx}, x.options().dtype(at::kByte));
  uint8_t* q = xq.data_ptr<uint8_t>();
  for (int64_t m = 0; m < M; ++m) {
    if (fast) {
      quantize_row_avx512(xp + m * K, K, out.x_scale, out.x_zero_point, qmax, q + m * ldx);
    } else {
      for (int64_t k = 0; k < K; ++k) {
        // numerics.fake_quantize: round half to even of x / scale (float32), plus the zp.
        const float v = std::nearbyint(xp[m * K + k] / out.x_scale) + float(out.x_zero_point);
        q[m * ldx + k] = uint8_t(std::min(std::max(v, 0.0f), qmax));
      }
    }
    for (int64_t k = K; k < ldx; ++k) q[m * ldx + k] = uint8_t(out.x_zero_point);
  }
  const DynamicInt8 w{codes.data_ptr<int8_t>(), scale.data_ptr<float>(),
                      row_sum.data_ptr<int32_t>(), N, K4};
  // Panels per thread chunk: at least ~64K multiply-adds (a fork costs a few microseconds), so
  // at one token a 1024-wide layer still splits across two threads.
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(M * K * 16, 1));
  at::parallel_for(0, P, grain, [&](int64_t p0, int64_t p1) {
    if (fast) {
      int8_dynamic_panels_vnni(q, M, w, p0, p1, out);
    } else {
      reference_panels(q, M, w, p0, p1, out);
    }
  });
  return y.view(sizes);
}

// Per-token mode around fbgemm (reference.fake_quantize_dynamic_per_token): x divided by each
// row's abs-max (floored at the smallest normal float), and those abs-maxes shaped [..., 1]; one
// read of each row for the max and one for the division, where the ATen form takes five ops.
std::tuple<at::Tensor, at::Tensor> divide_rows_by_absmax(const at::Tensor& x) {
  TORCH_CHECK_VALUE(x.scalar_type() == at::kFloat && x.dim() >= 1 && x.device().is_cpu(),
                    "x must be a float32 CPU tensor, got ", x.scalar_type(), " ", x.sizes());
  const int64_t K = x.size(-1);
  const at::Tensor x2 = x.reshape({-1, K}).contiguous();
  const int64_t M = x2.size(0);
  std::vector<int64_t> rsizes = x.sizes().vec();
  rsizes.back() = 1;
  at::Tensor out = at::empty_like(x2), r = at::empty({M}, x.options());
  const float* xp = x2.data_ptr<float>();
  float* op = out.data_ptr<float>();
  float* rp = r.data_ptr<float>();
  const __m256 sign = _mm256_set1_ps(-0.0f);
  at::parallel_for(0, M, std::max<int64_t>(1, 16384 / std::max<int64_t>(K, 1)),
                   [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m) {
      const float* row = xp + m * K;
      __m256 vmax = _mm256_setzero_ps();
      int64_t k = 0;
      for (; k + 8 <= K; k += 8)
        vmax = _mm256_max_ps(vmax, _mm256_andnot_ps(sign, _mm256_loadu_ps(row + k)));
      alignas(32) float lanes[8];
      _mm256_store_ps(lanes, vmax);
      float amax = 0.0f;
      for (float v : lanes) amax = std::max(amax, v);
      for (; k < K; ++k) amax = std::max(amax, std::abs(row[k]));
      const float rm = std::max(amax, std::numeric_limits<float>::min());
      rp[m] = rm;
      const __m256 rv = _mm256_set1_ps(rm);
      float* dst = op + m * K;
      for (k = 0; k + 8 <= K; k += 8) _mm256_storeu_ps(dst + k, _mm256_div_ps(_mm256_loadu_ps(row + k), rv));
      for (; k < K; ++k) dst[k] = row[k] / rm;
    }
  });
  return {out.view(x.sizes()), r.view(rsizes)};
}

// y * r (each row by its own factor, r [..., 1]) then + bias, in place, as two separately rounded
// operations (y.mul_(r).add_(bias) in ATen): no fused multiply-add.
__attribute__((optimize("fp-contract=off")))
at::Tensor scale_rows_add_bias_(at::Tensor y, const at::Tensor& r,
                                const std::optional<at::Tensor>& bias) {
  TORCH_CHECK_VALUE(y.scalar_type() == at::kFloat && y.is_contiguous() &&
                        r.scalar_type() == at::kFloat && r.is_contiguous() &&
                        r.numel() * y.size(-1) == y.numel(),
                    "y must be contiguous float32 [..., N] and r [..., 1]");
  const int64_t N = y.size(-1), M = r.numel();
  const float* b = nullptr;
  if (bias.has_value()) {
    TORCH_CHECK_VALUE(bias->scalar_type() == at::kFloat && bias->numel() == N &&
                          bias->is_contiguous(), "bias must be a contiguous float32 [", N, "]");
    b = bias->data_ptr<float>();
  }
  float* yp = y.data_ptr<float>();
  const float* rp = r.data_ptr<float>();
  at::parallel_for(0, M, std::max<int64_t>(1, 16384 / std::max<int64_t>(N, 1)),
                   [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m) {
      float* row = yp + m * N;
      const __m256 rv = _mm256_set1_ps(rp[m]);
      int64_t n = 0;
      for (; n + 8 <= N; n += 8) {
        __m256 v = _mm256_mul_ps(_mm256_loadu_ps(row + n), rv);
        if (b != nullptr) v = _mm256_add_ps(v, _mm256_loadu_ps(b + n));
        _mm256_storeu_ps(row + n, v);
      }
      for (; n < N; ++n) {
        float v = row[n] * rp[m];
        if (b != nullptr) v += b[n];
        row[n] = v;
      }
    }
  });
  return y;
}

}  // namespace
}  // namespace fxquant

TORCH_LIBRARY_FRAGMENT(fxquant_cpu, m) {
  m.def("divide_rows_by_absmax(Tensor x) -> (Tensor, Tensor)");
  m.def("scale_rows_add_bias_(Tensor(a!) y, Tensor r, Tensor? bias) -> Tensor(a!)");
  m.def(
      "linear_int8_dynamic(Tensor x, Tensor codes, Tensor scale, Tensor row_sum, Tensor? bias, "
      "int K, bool reduce_range, bool relu, bool per_token) -> Tensor");
  // Whether linear_int8_dynamic runs its VNNI kernel here (pack_weights' choice of layout).
  m.def("dynamic_vnni() -> bool", [] { return fxquant::int8_kernels_use_avx512() && fxquant::cpu_has_vnni(); });
}

TORCH_LIBRARY_IMPL(fxquant_cpu, CPU, m) {
  m.impl("linear_int8_dynamic", &fxquant::linear_int8_dynamic);
  m.impl("divide_rows_by_absmax", &fxquant::divide_rows_by_absmax);
  m.impl("scale_rows_add_bias_", &fxquant::scale_rows_add_bias_);
}
