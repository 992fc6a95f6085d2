// Index math of the fused op `conv3x3(cat[up2(x), label maps]) + bias`, shared by the CPU and
// CUDA kernels so that the CPU tests exercise the very code the GPU runs. Every function here is
// __host__ __device__; the per-element "bodies" are what a CUDA thread runs for one grid index and
// what the CPU loops call over the same index range. The formulas are in docs/DESIGN.md.
#pragma once

#include <cstdint>

#ifdef __CUDACC__
#define EXPRFAST_HD __host__ __device__ __forceinline__
#else
#define EXPRFAST_HD inline
#endif

namespace exprfast {

// Upsample x2 + 3x3 conv == stride-2 transposed conv with a 4x4 kernel whose tap t sums the 3x3 taps
// i with M[t][i] = 1, M = [[0,0,1],[0,1,1],[1,1,0],[1,0,0]]: packed one nibble per row (bit i).
constexpr unsigned kFoldMask = 0x1364u;
constexpr int kFoldTaps = 4;
// A constant label map only meets the zero padding at the border: output row class r (0 = first,
// 1 = inner, 2 = last) sees the 3x3 taps i with R[r][i] = 1, R = [[0,1,1],[1,1,1],[1,1,0]].
constexpr unsigned kBorderMask = 0x376u;
constexpr int kBorderClasses = 3;

EXPRFAST_HD bool tap_in(unsigned mask, int row, int tap) {
  return (mask >> (4 * row + tap)) & 1u;
}

// Border class of output coordinate y along an axis of `size` (>= 2) pixels.
EXPRFAST_HD int border_class(int64_t y, int64_t size) {
  return y == 0 ? 0 : (y == size - 1 ? 2 : 1);
}

// out[a][b] = sum_ij A[a][i] A[b][j] in[i][j] for a ROWS x 3 tap matrix A: the separable fold of a
// 3x3 kernel. `in` holds 9 values with row stride 3; `out` ROWS*ROWS values with row stride ROWS.
template <unsigned MASK, int ROWS, typename in_t, typename out_t, typename acc_t>
EXPRFAST_HD void fold3x3(const in_t* in, out_t* out) {
  for (int a = 0; a < ROWS; ++a) {
    for (int b = 0; b < ROWS; ++b) {
      acc_t acc = 0;
      for (int i = 0; i < 3; ++i) {
        if (!tap_in(MASK, a, i)) continue;
        for (int j = 0; j < 3; ++j) {
          if (tap_in(MASK, b, j)) acc += static_cast<acc_t>(in[i * 3 + j]);
        }
      }
      out[a * ROWS + b] = static_cast<out_t>(acc);
    }
  }
}

// The adjoint of fold3x3: out[i][j] = sum_ab A[a][i] A[b][j] in[a][b].
template <unsigned MASK, int ROWS, typename in_t, typename out_t, typename acc_t>
EXPRFAST_HD void unfold3x3(const in_t* in, out_t* out) {
  for (int i = 0; i < 3; ++i) {
    for (int j = 0; j < 3; ++j) {
      acc_t acc = 0;
      for (int a = 0; a < ROWS; ++a) {
        if (!tap_in(MASK, a, i)) continue;
        for (int b = 0; b < ROWS; ++b) {
          if (tap_in(MASK, b, j)) acc += static_cast<acc_t>(in[a * ROWS + b]);
        }
      }
      out[i * 3 + j] = static_cast<out_t>(acc);
    }
  }
}

// Shapes every body needs. weight is (O, C+K, 3, 3) contiguous; the folded transposed-conv weight
// WT is (C, O, 4, 4) contiguous; the label weight sums Wsum are (K, O, 3, 3) contiguous, so that
// labels (N, K) @ Wsum.view(K, O*9) is the per-sample label bias B (N, O, 3, 3).
struct FoldShape {
  int64_t C, K, O;
};

// One grid index per (c, o): WT[c, o] = fold of weight[o, c].
template <typename scalar_t, typename acc_t>
EXPRFAST_HD void fold_weight_body(int64_t idx, FoldShape s, const scalar_t* weight, scalar_t* wt) {
  const int64_t c = idx / s.O, o = idx % s.O;
  fold3x3<kFoldMask, kFoldTaps, scalar_t, scalar_t, acc_t>(weight + (o * (s.C + s.K) + c) * 9,
                                                           wt + idx * 16);
}

// Sub-pixel ("phase") form of the same transposed conv, for few output channels, where oneDNN's
// transposed conv is slow: output row Y = 2q - 1 + py (phase py in {0, 1}) is a 2x2 conv, at
// window row q, of the input zero-padded by 1, whose window tap u is 4x4 tap 2 - 2u + py. All four
// phases are one conv2d(x, W2, padding=1) with 4*O output channels, (py, px, o) major to minor.
EXPRFAST_HD int phase_tap(int phase, int u) {
  return 2 - 2 * u + phase;
}

// One grid index per (o, c): W2[(py, px, o), c] (4*O, C, 2, 2) contiguous <- fold of weight[o, c].
template <typename scalar_t, typename acc_t>
EXPRFAST_HD void fold_weight_phases_body(int64_t idx, FoldShape s, const scalar_t* weight,
                                         scalar_t* w2) {
  const int64_t o = idx / s.C, c = idx % s.C;
  acc_t wt[16];
  fold3x3<kFoldMask, kFoldTaps, scalar_t, acc_t, acc_t>(weight + (o * (s.C + s.K) + c) * 9, wt);
  for (int py = 0; py < 2; ++py)
    for (int px = 0; px < 2; ++px)
      for (int u = 0; u < 2; ++u)
        for (int v = 0; v < 2; ++v)
          w2[(((py * 2 + px) * s.O + o) * s.C + c) * 4 + u * 2 + v] =
              static_cast<scalar_t>(wt[phase_tap(py, u) * 4 + phase_tap(px, v)]);
}

// One grid index per (o, c): grad_weight[o, c] = adjoint fold of grad_WT[c, o].
template <typename scalar_t, typename acc_t>
EXPRFAST_HD void unfold_weight_body(int64_t idx, FoldShape s, const scalar_t* grad_wt,
                                    scalar_t* grad_weight) {
  const int64_t o = idx / s.C, c = idx % s.C;
  unfold3x3<kFoldMask, kFoldTaps, scalar_t, scalar_t, acc_t>(grad_wt + (c * s.O + o) * 16,
                                                             grad_weight + (o * (s.C + s.K) + c) * 9);
}

// One grid index per (k, o): Wsum[k, o] = border-class sums of the label weight weight[o, C + k].
template <typename scalar_t, typename acc_t>
EXPRFAST_HD void label_weight_sums_body(int64_t idx, FoldShape s, const scalar_t* weight,
                                        acc_t* wsum) {
  const int64_t k = idx / s.O, o = idx % s.O;
  fold3x3<kBorderMask, kBorderClasses, scalar_t, acc_t, acc_t>(
      weight + (o * (s.C + s.K) + s.C + k) * 9, wsum + idx * 9);
}

// One grid index per (k, o): grad_weight[o, C + k] = adjoint of the border-class sums applied to
// T[k, o] = sum_n labels[n, k] * S[n, o] (S: the per-class sums of the output gradient).
template <typename scalar_t, typename acc_t>
EXPRFAST_HD void label_weight_sums_backward_body(int64_t idx, FoldShape s, const acc_t* t,
                                                 scalar_t* grad_weight) {
  const int64_t k = idx / s.O, o = idx % s.O;
  unfold3x3<kBorderMask, kBorderClasses, acc_t, scalar_t, acc_t>(
      t + idx * 9, grad_weight + (o * (s.C + s.K) + s.C + k) * 9);
}

// Strides of a 4-D (N, O, Hout, Wout) tensor in elements; any memory format.
struct Strides4 {
  int64_t n, c, h, w;
};

// Offset of the per-sample bias B[n, o, r, c] (B is (N, O, 3, 3) contiguous, bias folded in) that
// output pixel (y, x) of an Hout x Wout plane receives.
EXPRFAST_HD int64_t label_bias_offset(int64_t n, int64_t o, int64_t y, int64_t x, int64_t O,
                                      int64_t Hout, int64_t Wout) {
  return ((n * O + o) * 3 + border_class(y, Hout)) * 3 + border_class(x, Wout);
}

// Decompose a linear index over (N, O, Hout, Wout) in logical (NCHW) order.
struct Index4 {
  int64_t n, o, y, x;
};
EXPRFAST_HD Index4 unravel4(int64_t idx, int64_t O, int64_t Hout, int64_t Wout) {
  Index4 r;
  r.x = idx % Wout;
  idx /= Wout;
  r.y = idx % Hout;
  idx /= Hout;
  r.o = idx % O;
  r.n = idx / O;
  return r;
}

EXPRFAST_HD int64_t offset4(Index4 i, Strides4 s) {
  return i.n * s.n + i.o * s.c + i.y * s.h + i.x * s.w;
}

// A pass over an (N, O, H, W) tensor. Grid indices follow the output's memory order (channels
// innermost for channels_last) so that neighbouring CUDA threads touch neighbouring addresses.
struct Plane4 {
  int64_t N, O, H, W;
  bool channels_inner;
};

EXPRFAST_HD Index4 unravel_in_memory_order(int64_t idx, Plane4 p) {
  if (!p.channels_inner) return unravel4(idx, p.O, p.H, p.W);
  Index4 r;
  r.o = idx % p.O;
  idx /= p.O;
  r.x = idx % p.W;
  idx /= p.W;
  r.y = idx % p.H;
  r.n = idx / p.H;
  return r;
}

// The epilogue for one grid index (one output element): out = y + B[n, o, class(y), class(x)].
template <typename scalar_t, typename acc_t>
EXPRFAST_HD void add_label_bias_body(int64_t idx, Plane4 p, const scalar_t* y, Strides4 ys,
                                     const acc_t* bias9, scalar_t* out, Strides4 os) {
  const Index4 i = unravel_in_memory_order(idx, p);
  const acc_t b = bias9[label_bias_offset(i.n, i.o, i.y, i.x, p.O, p.H, p.W)];
  out[offset4(i, os)] = static_cast<scalar_t>(static_cast<acc_t>(y[offset4(i, ys)]) + b);
}

// The phase-form epilogue for one grid index (one output element): out[n, o, Y, X] =
// Z[n, (py, px, o), (Y + 1) / 2, (X + 1) / 2] + B[n, o, class(Y), class(X)], py = (Y + 1) % 2.
template <typename scalar_t, typename acc_t>
EXPRFAST_HD void shuffle_label_bias_body(int64_t idx, Plane4 p, const scalar_t* z, Strides4 zs,
                                         const acc_t* bias9, scalar_t* out, Strides4 os) {
  const Index4 i = unravel_in_memory_order(idx, p);
  Index4 zi;
  zi.n = i.n;
  zi.o = (((i.y + 1) & 1) * 2 + ((i.x + 1) & 1)) * p.O + i.o;
  zi.y = (i.y + 1) >> 1;
  zi.x = (i.x + 1) >> 1;
  const acc_t b = bias9[label_bias_offset(i.n, i.o, i.y, i.x, p.O, p.H, p.W)];
  out[offset4(i, os)] = static_cast<scalar_t>(static_cast<acc_t>(z[offset4(zi, zs)]) + b);
}

// One thread's share of the nine border-class sums of plane (n, o) = `plane` of grad: pixels
// tid, tid + threads, ... are added into acc[class_row * 3 + class_col]. A CUDA block of
// `threads` threads then reduces acc over its threads.
template <typename scalar_t, typename acc_t>
EXPRFAST_HD void region_sums_partial(int64_t plane, int64_t tid, int64_t threads, Plane4 p,
                                     const scalar_t* grad, Strides4 gs, acc_t* acc) {
  for (int k = 0; k < 9; ++k) acc[k] = 0;
  Index4 i;
  i.n = plane / p.O;
  i.o = plane % p.O;
  for (int64_t pixel = tid; pixel < p.H * p.W; pixel += threads) {
    i.y = pixel / p.W;
    i.x = pixel % p.W;
    acc[border_class(i.y, p.H) * 3 + border_class(i.x, p.W)] +=
        static_cast<acc_t>(grad[offset4(i, gs)]);
  }
}

}  // namespace exprfast
