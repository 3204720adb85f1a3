// fxquant_cpu: weight-only linear ops (float activations, int8 or int4 weights) for CPU.
//
// Schemas, argument checks and the choice between the two ways of computing:
//   * M < tile_min_rows (decode): the row kernels (int8_kernel.cpp, int4_kernel.cpp) read each
//     weight row once per call and widen codes in registers; no float weight ever exists.
//   * M >= tile_min_rows (prefill): the weight is dequantized a tile of rows at a time into a
//     small float scratch and multiplied with BLAS (at::mm), which beats the row kernels once the
//     GEMM is compute-bound. Only one tile per thread exists at a time, never the whole weight.
// Both paths split the output columns N across threads with at::parallel_for.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <optional>
#include <string>

#include "kernels.h"
#include "tiling.h"

namespace fxquant {
namespace {

// Rows of x from which a call dequantizes tiles for BLAS instead of running the row kernels,
// per weight width (index 0: int4, 1: int8). Measured in docs/weight_only_kernel.md: the row
// kernels run at AVX2's FMA peak, so they win while BLAS is inefficient at small M; the int4 row
// kernel widens codes at a higher cost, so it hands over earlier.
std::atomic<int64_t> g_tile_min_rows[2] = {16, 24};
// The int8 row kernels on AVX-512 (int8_kernel_avx512.cpp) widen a weight once per call from
// four rows of x on, which keeps them ahead of BLAS on dequantized tiles up to ~32 rows (measured
// on the GPT-2 and seed-MLP shapes, docs/weight_only_kernel.md).
std::atomic<int64_t> g_tile_min_rows_avx512 = 48;

bool cpu_has_avx512() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
}

// Whether the int8 row kernels run on AVX-512: where the CPU has it, unless kernel_isa("avx2")
// asked for the AVX2 ones (parity tests, benchmarks).
std::atomic<bool> g_int8_avx512{cpu_has_avx512()};

}  // namespace

bool int8_kernels_use_avx512() { return g_int8_avx512.load(); }

bool cpu_has_vnni() {
  __builtin_cpu_init();
  return cpu_has_avx512() && __builtin_cpu_supports("avx512vnni");
}

namespace {
// Multiply-adds per thread chunk below which threads cost more than they save (one OpenMP fork
// is a few microseconds).
constexpr int64_t kMinWorkPerChunk = 1 << 15;
// Largest float tile: 256 rows measured fastest (narrower tiles leave BLAS inefficient, a whole
// dequantized weight spills the caches).
constexpr int64_t kMaxTileRows = 256;

std::atomic<int64_t>& tile_min_rows_for(int64_t bits) {
  if (bits == 8 && g_int8_avx512.load()) return g_tile_min_rows_avx512;
  return g_tile_min_rows[bits == 8];
}

// Tile rows: at most kMaxTileRows, a multiple of 16, and a tile count that splits evenly across
// the threads.
int64_t tile_rows(int64_t N) {
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  const int64_t per_thread = (N + threads - 1) / threads;
  const int64_t tiles = threads * ((per_thread + kMaxTileRows - 1) / kMaxTileRows);
  const int64_t rows = (N + tiles - 1) / tiles;
  return std::max<int64_t>(16, (rows + 15) / 16 * 16);
}

void check_x(const at::Tensor& x, int64_t K) {
  TORCH_CHECK_VALUE(x.device().is_cpu() && x.scalar_type() == at::kFloat,
                    "x must be a float32 CPU tensor, got ", x.scalar_type(), " on ", x.device());
  TORCH_CHECK_VALUE(x.dim() >= 1 && x.size(-1) == K, "x must end in K=", K, ", got ", x.sizes());
}

const float* checked_bias(const std::optional<at::Tensor>& bias, int64_t N) {
  if (!bias.has_value()) return nullptr;
  const at::Tensor& b = *bias;
  TORCH_CHECK_VALUE(b.device().is_cpu() && b.scalar_type() == at::kFloat && b.dim() == 1 &&
                        b.size(0) == N && b.is_contiguous(),
                    "bias must be a contiguous float32 CPU tensor of shape [", N, "], got ",
                    b.scalar_type(), " ", b.sizes());
  return b.data_ptr<float>();
}

void check_param(const at::Tensor& t, at::ScalarType dtype, at::IntArrayRef shape,
                 const char* name) {
  TORCH_CHECK_VALUE(t.device().is_cpu() && t.scalar_type() == dtype && t.sizes() == shape &&
                        t.is_contiguous(),
                    name, " must be a contiguous ", dtype, " CPU tensor of shape ", shape,
                    ", got ", t.scalar_type(), " ", t.sizes());
}

at::Tensor output_view(const at::Tensor& y, const at::Tensor& x, int64_t N) {
  std::vector<int64_t> sizes = x.sizes().vec();
  sizes.back() = N;
  return y.view(sizes);
}

// Row kernels over all N columns, split across threads in whole row blocks.
template <class Rows>
void run_rows(int64_t M, int64_t N, int64_t K, Rows rows) {
  const int64_t blocks = (N + kRowBlock - 1) / kRowBlock;
  const int64_t work_per_block = M * std::max<int64_t>(K, 1) * kRowBlock;
  const int64_t grain = std::max<int64_t>(1, kMinWorkPerChunk / work_per_block);
  at::parallel_for(0, blocks, grain, [&](int64_t b0, int64_t b1) {
    rows(b0 * kRowBlock, std::min(N, b1 * kRowBlock));
  });
}

// Dequantize a tile of weight rows, multiply with BLAS into the matching columns of y, add bias.
template <class Dequant>
void run_tiled(const at::Tensor& x2, int64_t N, int64_t K, const float* bias, at::Tensor& y,
               Dequant dequant) {
  const int64_t M = x2.size(0), rows = tile_rows(N), tiles = (N + rows - 1) / rows;
  at::parallel_for(0, tiles, 1, [&](int64_t t0, int64_t t1) {
    at::Tensor tile = at::empty({rows, K}, x2.options());
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n0 = t * rows, n = std::min(N, n0 + rows) - n0;
      dequant(n0, n0 + n, tile.data_ptr<float>());
      at::Tensor out = y.narrow(1, n0, n);
      at::mm_out(out, x2, tile.narrow(0, 0, n).t());
      if (bias == nullptr) continue;
      float* yp = y.data_ptr<float>() + n0;
      for (int64_t m = 0; m < M; ++m)
        for (int64_t j = 0; j < n; ++j) yp[m * N + j] += bias[n0 + j];
    }
  });
}

// What every op shares once its weight is checked: check x and bias, view x as [M, K] rows, let
// compute(x2, M, y, bias) fill y [M, N] (unless it is empty), return y shaped like x with N last.
template <class Compute>
at::Tensor over_rows(const at::Tensor& x, const std::optional<at::Tensor>& bias, int64_t N,
                     int64_t K, Compute compute) {
  check_x(x, K);
  const float* b = checked_bias(bias, N);
  const at::Tensor x2 = x.reshape({-1, K}).contiguous();
  const int64_t M = x2.size(0);
  at::Tensor y = at::empty({M, N}, x.options());
  if (M > 0 && N > 0) compute(x2, M, y, b);
  return output_view(y, x, N);
}

// The row-layout ops: the tiled-BLAS path from tile_min_rows_for(bits) rows on (dequant fills a
// tile of weight rows), else row_path(x2, M, out) with the row kernels.
template <class Dequant, class RowPath>
at::Tensor linear_wo(const at::Tensor& x, const std::optional<at::Tensor>& bias, int64_t N,
                     int64_t K, int64_t bits, Dequant dequant, RowPath row_path) {
  return over_rows(x, bias, N, K, [&](const at::Tensor& x2, int64_t M, at::Tensor& y,
                                      const float* b) {
    if (M >= tile_min_rows_for(bits).load()) {
      run_tiled(x2, N, K, b, y, dequant);
    } else {
      row_path(x2, M, Output{y.data_ptr<float>(), N, b});
    }
  });
}

at::Tensor linear_int8_wo(const at::Tensor& x, const at::Tensor& codes, const at::Tensor& scale,
                          const std::optional<at::Tensor>& bias) {
  TORCH_CHECK_VALUE(codes.dim() == 2, "codes must be [N, K], got ", codes.sizes());
  const int64_t N = codes.size(0), K = codes.size(1);
  check_param(codes, at::kChar, {N, K}, "codes");
  check_param(scale, at::kFloat, {N}, "scale");
  const Int8Weight w{codes.data_ptr<int8_t>(), scale.data_ptr<float>(), K};
  return linear_wo(
      x, bias, N, K, 8,
      [&](int64_t n0, int64_t n1, float* t) { int8_dequant_rows(w, n0, n1, t); },
      [&](const at::Tensor& x2, int64_t M, const Output& out) {
        const float* xp = x2.data_ptr<float>();
        const bool avx512 = g_int8_avx512.load();
        run_rows(M, N, K, [&](int64_t n0, int64_t n1) {
          if (avx512) {
            int8_rows_avx512(xp, M, w, n0, n1, out);
          } else {
            int8_rows(xp, M, w, n0, n1, out);
          }
        });
      });
}

// The blocked (panel) layout: output channels split across threads in whole panels; each thread
// chunk gets its own scratch (allocated here, outside the per-ISA units).
at::Tensor linear_int8_wo_blocked(const at::Tensor& x, const at::Tensor& blocked,
                                  const at::Tensor& scale, const std::optional<at::Tensor>& bias) {
  TORCH_CHECK_VALUE(blocked.dim() == 3 && blocked.size(2) == 16,
                    "blocked must be [ceil(N / 16), K, 16], got ", blocked.sizes());
  TORCH_CHECK_VALUE(scale.dim() == 1, "scale must be [N], got ", scale.sizes());
  const int64_t N = scale.size(0), K = blocked.size(1), P = blocked.size(0);
  TORCH_CHECK_VALUE(P == (N + 15) / 16, "blocked holds ", P, " panels, N=", N, " needs ",
                    (N + 15) / 16);
  check_param(blocked, at::kChar, {P, K, 16}, "blocked");
  check_param(scale, at::kFloat, {N}, "scale");
  const BlockedInt8 w{blocked.data_ptr<int8_t>(), scale.data_ptr<float>(), N, K};
  const bool avx512 = g_int8_avx512.load();
  return over_rows(x, bias, N, K, [&](const at::Tensor& x2, int64_t M, at::Tensor& y,
                                      const float* b) {
    const Output out{y.data_ptr<float>(), N, b};
    const float* xp = x2.data_ptr<float>();
    const int64_t grain = std::max<int64_t>(2, kMinWorkPerChunk / (M * std::max<int64_t>(K, 1) * 16));
    at::parallel_for(0, P, grain, [&](int64_t p0, int64_t p1) {
      at::Tensor scratch = at::empty({K * 32 + 16}, x2.options());
      float* sp = scratch.data_ptr<float>();
      if (avx512) {
        int8_panels_avx512(xp, M, w, p0, p1, sp, out);
      } else {
        int8_panels(xp, M, w, p0, p1, sp, out);
      }
    });
  });
}

at::Tensor linear_int4_wo(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scale,
                          const at::Tensor& zero_point, int64_t group_size,
                          const std::optional<at::Tensor>& bias) {
  TORCH_CHECK_VALUE(packed.dim() == 2, "packed must be [N, K / 2], got ", packed.sizes());
  TORCH_CHECK_VALUE(group_size > 0 && group_size % 32 == 0,
                    "group_size must be a positive multiple of 32, got ", group_size);
  const int64_t N = packed.size(0), K = packed.size(1) * 2;
  TORCH_CHECK_VALUE(K % group_size == 0, "K=", K, " must be a multiple of group_size=", group_size);
  const int64_t G = K / group_size;
  check_param(packed, at::kByte, {N, K / 2}, "packed");
  check_param(scale, at::kFloat, {N, G}, "scale");
  check_param(zero_point, at::kByte, {N, G}, "zero_point");
  const Int4Weight w{packed.data_ptr<uint8_t>(), scale.data_ptr<float>(),
                     zero_point.data_ptr<uint8_t>(), K, group_size};
  return linear_wo(
      x, bias, N, K, 4,
      [&](int64_t n0, int64_t n1, float* t) { int4_dequant_rows(w, n0, n1, t); },
      [&](const at::Tensor& x2, int64_t M, const Output& out) {
        at::Tensor xp = at::empty({M, K}, x.options()), xsum = at::empty({M, G}, x.options());
        int4_prepare_x(x2.data_ptr<float>(), M, K, group_size, xp.data_ptr<float>(),
                       xsum.data_ptr<float>());
        const float* xpp = xp.data_ptr<float>();
        const float* xs = xsum.data_ptr<float>();
        run_rows(M, N, K, [&](int64_t n0, int64_t n1) { int4_rows(xpp, xs, M, w, n0, n1, out); });
      });
}

// Benchmarks and tests move the row-kernel / tiled-BLAS threshold of the int8 or int4 op;
// rows < 0 only reads it. Returns the previous value.
int64_t tile_min_rows(int64_t bits, int64_t rows) {
  TORCH_CHECK_VALUE(bits == 4 || bits == 8, "bits must be 4 or 8, got ", bits);
  std::atomic<int64_t>& threshold = tile_min_rows_for(bits);
  return rows < 0 ? threshold.load() : threshold.exchange(rows);
}

// The instruction set of the int8 row kernels: "avx512" or "avx2" to choose (AVX-512 only where
// the CPU has it), "" only reads. Returns the previous choice.
std::string kernel_isa(std::string isa) {
  const std::string previous = g_int8_avx512.load() ? "avx512" : "avx2";
  if (isa.empty()) return previous;
  TORCH_CHECK_VALUE(isa == "avx2" || isa == "avx512", "isa must be 'avx2' or 'avx512', got '",
                    isa, "'");
  TORCH_CHECK_VALUE(isa == "avx2" || cpu_has_avx512(),
                    "this CPU lacks AVX-512 (avx512f, avx512bw, avx512vl, avx512dq)");
  g_int8_avx512.store(isa == "avx512");
  return previous;
}

}  // namespace
}  // namespace fxquant

TORCH_LIBRARY(fxquant_cpu, m) {
  m.def("linear_int8_wo(Tensor x, Tensor codes, Tensor scale, Tensor? bias) -> Tensor");
  m.def("linear_int8_wo_blocked(Tensor x, Tensor blocked, Tensor scale, Tensor? bias) -> Tensor");
  m.def(
      "linear_int4_wo(Tensor x, Tensor packed, Tensor scale, Tensor zero_point, int group_size, "
      "Tensor? bias) -> Tensor");
  m.def("tile_min_rows(int bits, int rows) -> int", &fxquant::tile_min_rows);
  m.def("kernel_isa(str isa) -> str", &fxquant::kernel_isa);
}

TORCH_LIBRARY_IMPL(fxquant_cpu, CPU, m) {
  m.impl("linear_int8_wo", &fxquant::linear_int8_wo);
  m.impl("linear_int8_wo_blocked", &fxquant::linear_int8_wo_blocked);
  m.impl("linear_int4_wo", &fxquant::linear_int4_wo);
}
