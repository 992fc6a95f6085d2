// The device kernels the op's driver (up_label_conv.cpp) calls: one implementation per device,
// csrc/cpu/up_label_conv_cpu.cpp and csrc/cuda/up_label_conv_cuda.cu. Everything GEMM-heavy stays
// in ATen; these do what ATen cannot: the folds, the fused epilogue and the backward reductions.
#pragma once

#include <ATen/ATen.h>

#include "up_label_conv.h"

namespace exprfast {

struct Kernels {
  // wt (C, O, 4, 4) <- folded weight[:, :C] (weight contiguous (O, C+K, 3, 3)).
  void (*fold_weight)(const at::Tensor& weight, FoldShape s, at::Tensor& wt);
  // w2 (4*O, C, 2, 2) <- the phase-form folded weight[:, :C] (see phase_tap).
  void (*fold_weight_phases)(const at::Tensor& weight, FoldShape s, at::Tensor& w2);
  // grad_weight[:, :C] <- adjoint fold of grad_wt (C, O, 4, 4) contiguous.
  void (*unfold_weight)(const at::Tensor& grad_wt, FoldShape s, at::Tensor& grad_weight);
  // wsum (K, O, 3, 3), opmath dtype <- border-class sums of weight[:, C:].
  void (*label_weight_sums)(const at::Tensor& weight, FoldShape s, at::Tensor& wsum);
  // grad_weight[:, C:] <- adjoint of the border-class sums of t (K, O, 3, 3), opmath dtype.
  void (*label_weight_sums_backward)(const at::Tensor& t, FoldShape s, at::Tensor& grad_weight);
  // out = y + bias9[n, o, class(Y), class(X)]; any memory formats, out may alias y.
  void (*add_label_bias)(const at::Tensor& y, const at::Tensor& bias9, at::Tensor& out);
  // out = phase-interleaved z (N, 4*O, H+1, W+1) + bias9[n, o, class(Y), class(X)]; any formats.
  void (*shuffle_label_bias)(const at::Tensor& z, const at::Tensor& bias9, at::Tensor& out);
  // sums (N, O, 3, 3), opmath dtype <- per border-class sums of grad (N, O, Hout, Wout), any format.
  void (*region_sums)(const at::Tensor& grad, at::Tensor& sums);
};

const Kernels& cpu_kernels();
#ifdef EXPRFAST_WITH_CUDA
const Kernels& cuda_kernels();
#endif

inline Strides4 strides4(const at::Tensor& t) {
  return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

// True when channels are the innermost dimension of t's memory (channels_last).
inline bool channels_inner(const at::Tensor& t) {
  return t.stride(1) < t.stride(3);
}

// The pass geometry over t, walked in the memory order of `order`.
inline Plane4 plane4(const at::Tensor& t, const at::Tensor& order) {
  return {t.size(0), t.size(1), t.size(2), t.size(3), channels_inner(order)};
}

}  // namespace exprfast
