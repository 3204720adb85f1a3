// The loop nest shared by the int8 and int4 row kernels.
//
// Weight rows are walked in blocks of kRowBlock and, inside a block, the rows of x in blocks of up
// to 4: the block's weight rows are read from memory once and stay in L1 for the remaining rows of
// x, which is what matters at decode, where reading the weight is the whole cost. A kernel provides
// `tile<MB, NB>(m, n)` (MB rows of x times NB weight rows, accumulated in MB * NB registers) and
// `nb(MB)`, the widest NB its registers allow for MB.
#pragma once

#include <algorithm>
#include <cstdint>

namespace fxquant {

constexpr int kRowBlock = 8;  // weight rows walked together (8 int8 rows of K=3072: 24 KiB, in L1)

template <class Kernel, int MB, int R>
inline void tile_block(const Kernel& kernel, int64_t m, int64_t n) {
  constexpr int NB = std::min(R, Kernel::nb(MB));
  static_assert(R % NB == 0, "a row block must split into whole tiles");
  for (int j = 0; j < R; j += NB) kernel.template tile<MB, NB>(m, n + j);
}

template <class Kernel, int R>
inline void row_block(const Kernel& kernel, int64_t M, int64_t n) {
  int64_t m = 0;
  for (; m + 4 <= M; m += 4) tile_block<Kernel, 4, R>(kernel, m, n);
  switch (M - m) {
    case 3: tile_block<Kernel, 3, R>(kernel, m, n); break;
    case 2: tile_block<Kernel, 2, R>(kernel, m, n); break;
    case 1: tile_block<Kernel, 1, R>(kernel, m, n); break;
    default: break;
  }
}

template <class Kernel>
inline void for_each_tile(const Kernel& kernel, int64_t M, int64_t n0, int64_t n1) {
  int64_t n = n0;
  for (; n + kRowBlock <= n1; n += kRowBlock) row_block<Kernel, kRowBlock>(kernel, M, n);
  for (; n < n1; ++n) row_block<Kernel, 1>(kernel, M, n);
}

}  // namespace fxquant
