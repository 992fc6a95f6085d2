// CUDA kernels of up_label_conv (see up_label_conv_kernels.h). Every kernel is a grid-stride loop
// over a body from up_label_conv.h, the same code the CPU tests run over the whole grid
// (csrc/cpu/grid_emulation.cpp). Launched on the current stream, no host synchronisation, 64-bit
// indices throughout.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>

#include "up_label_conv_kernels.h"

namespace exprfast {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 65535;

#define EXPRFAST_DISPATCH_FLOATING(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)

template <typename Body>
__global__ void grid_stride_kernel(int64_t n, Body body) {
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    body(i);
}

int64_t blocks_for(int64_t n) {
  return std::min<int64_t>((n + kThreads - 1) / kThreads, kMaxBlocks);
}

template <typename Body>
void launch(const at::Tensor& on, int64_t n, Body body) {
  if (n == 0) return;
  const c10::cuda::CUDAGuard guard(on.device());
  grid_stride_kernel<<<blocks_for(n), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(n, body);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void fold_weight_cuda(const at::Tensor& weight, FoldShape s, at::Tensor& wt) {
  EXPRFAST_DISPATCH_FLOATING(weight.scalar_type(), "fold_weight", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto* w = weight.const_data_ptr<scalar_t>();
    auto* out = wt.mutable_data_ptr<scalar_t>();
    launch(weight, s.C * s.O, [=] __device__(int64_t i) { fold_weight_body<scalar_t, acc_t>(i, s, w, out); });
  });
}

void fold_weight_phases_cuda(const at::Tensor& weight, FoldShape s, at::Tensor& w2) {
  EXPRFAST_DISPATCH_FLOATING(weight.scalar_type(), "fold_weight_phases", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto* w = weight.const_data_ptr<scalar_t>();
    auto* out = w2.mutable_data_ptr<scalar_t>();
    launch(weight, s.O * s.C, [=] __device__(int64_t i) {
      fold_weight_phases_body<scalar_t, acc_t>(i, s, w, out);
    });
  });
}

void unfold_weight_cuda(const at::Tensor& grad_wt, FoldShape s, at::Tensor& grad_weight) {
  EXPRFAST_DISPATCH_FLOATING(grad_wt.scalar_type(), "unfold_weight", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto* g = grad_wt.const_data_ptr<scalar_t>();
    auto* out = grad_weight.mutable_data_ptr<scalar_t>();
    launch(grad_wt, s.O * s.C, [=] __device__(int64_t i) { unfold_weight_body<scalar_t, acc_t>(i, s, g, out); });
  });
}

void label_weight_sums_cuda(const at::Tensor& weight, FoldShape s, at::Tensor& wsum) {
  EXPRFAST_DISPATCH_FLOATING(weight.scalar_type(), "label_weight_sums", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto* w = weight.const_data_ptr<scalar_t>();
    auto* out = wsum.mutable_data_ptr<acc_t>();
    launch(weight, s.K * s.O,
           [=] __device__(int64_t i) { label_weight_sums_body<scalar_t, acc_t>(i, s, w, out); });
  });
}

void label_weight_sums_backward_cuda(const at::Tensor& t, FoldShape s, at::Tensor& grad_weight) {
  EXPRFAST_DISPATCH_FLOATING(grad_weight.scalar_type(), "label_weight_sums_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto* in = t.const_data_ptr<acc_t>();
    auto* out = grad_weight.mutable_data_ptr<scalar_t>();
    launch(t, s.K * s.O, [=] __device__(int64_t i) {
      label_weight_sums_backward_body<scalar_t, acc_t>(i, s, in, out);
    });
  });
}

void add_label_bias_cuda(const at::Tensor& y, const at::Tensor& bias9, at::Tensor& out) {
  EXPRFAST_DISPATCH_FLOATING(y.scalar_type(), "add_label_bias", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const Plane4 p = plane4(y, out);
    const Strides4 ys = strides4(y), os = strides4(out);
    const auto* yp = y.const_data_ptr<scalar_t>();
    const auto* bp = bias9.const_data_ptr<acc_t>();
    auto* op = out.mutable_data_ptr<scalar_t>();
    launch(y, out.numel(), [=] __device__(int64_t i) {
      add_label_bias_body<scalar_t, acc_t>(i, p, yp, ys, bp, op, os);
    });
  });
}

void shuffle_label_bias_cuda(const at::Tensor& z, const at::Tensor& bias9, at::Tensor& out) {
  EXPRFAST_DISPATCH_FLOATING(z.scalar_type(), "shuffle_label_bias", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const Plane4 p = plane4(out, out);
    const Strides4 zs = strides4(z), os = strides4(out);
    const auto* zp = z.const_data_ptr<scalar_t>();
    const auto* bp = bias9.const_data_ptr<acc_t>();
    auto* op = out.mutable_data_ptr<scalar_t>();
    launch(z, out.numel(), [=] __device__(int64_t i) {
      shuffle_label_bias_body<scalar_t, acc_t>(i, p, zp, zs, bp, op, os);
    });
  });
}

// One block per (n, o) plane (grid-stride over planes): each thread sums its pixels by border
// class, then the block reduces the nine partial sums in shared memory.
template <typename scalar_t, typename acc_t>
__global__ void region_sums_kernel(Plane4 p, const scalar_t* grad, Strides4 gs, acc_t* sums) {
  __shared__ acc_t partial[9][kThreads];
  for (int64_t plane = blockIdx.x; plane < p.N * p.O; plane += gridDim.x) {
    acc_t acc[9];
    region_sums_partial(plane, threadIdx.x, blockDim.x, p, grad, gs, acc);
    for (int k = 0; k < 9; ++k) partial[k][threadIdx.x] = acc[k];
    __syncthreads();
    for (int half = blockDim.x / 2; half > 0; half /= 2) {
      if (threadIdx.x < half)
        for (int k = 0; k < 9; ++k) partial[k][threadIdx.x] += partial[k][threadIdx.x + half];
      __syncthreads();
    }
    if (threadIdx.x < 9) sums[plane * 9 + threadIdx.x] = partial[threadIdx.x][0];
    __syncthreads();
  }
}

void region_sums_cuda(const at::Tensor& grad, at::Tensor& sums) {
  EXPRFAST_DISPATCH_FLOATING(grad.scalar_type(), "region_sums", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const Plane4 p = plane4(grad, grad);
    const int64_t planes = p.N * p.O;
    if (planes == 0) return;
    const c10::cuda::CUDAGuard guard(grad.device());
    region_sums_kernel<scalar_t, acc_t>
        <<<std::min(planes, kMaxBlocks), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
            p, grad.const_data_ptr<scalar_t>(), strides4(grad), sums.mutable_data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace

const Kernels& cuda_kernels() {
  static const Kernels k{.fold_weight = fold_weight_cuda,
                         .fold_weight_phases = fold_weight_phases_cuda,
                         .unfold_weight = unfold_weight_cuda,
                         .label_weight_sums = label_weight_sums_cuda,
                         .label_weight_sums_backward = label_weight_sums_backward_cuda,
                         .add_label_bias = add_label_bias_cuda,
                         .shuffle_label_bias = shuffle_label_bias_cuda,
                         .region_sums = region_sums_cuda};
  return k;
}

}  // namespace exprfast
