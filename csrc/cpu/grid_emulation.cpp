// Test hooks: run the CUDA kernels' per-thread bodies (up_label_conv.h) on the CPU over their whole
// launch grid, so that machines without a GPU test the code the GPU runs.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include "up_label_conv_kernels.h"

namespace exprfast {
namespace {

// What add_label_bias_cuda launches: one grid index per output element, in out's memory order.
void grid_add_label_bias(const at::Tensor& y, const at::Tensor& bias9, at::Tensor out) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "grid_add_label_bias", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const Plane4 p = plane4(y, out);
    for (int64_t i = 0; i < out.numel(); ++i) {
      add_label_bias_body<scalar_t, acc_t>(i, p, y.const_data_ptr<scalar_t>(), strides4(y),
                                           bias9.const_data_ptr<acc_t>(),
                                           out.mutable_data_ptr<scalar_t>(), strides4(out));
    }
  });
}

// What shuffle_label_bias_cuda launches: one grid index per output element, in out's memory order.
void grid_shuffle_label_bias(const at::Tensor& z, const at::Tensor& bias9, at::Tensor out) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "grid_shuffle_label_bias", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const Plane4 p = plane4(out, out);
    for (int64_t i = 0; i < out.numel(); ++i) {
      shuffle_label_bias_body<scalar_t, acc_t>(i, p, z.const_data_ptr<scalar_t>(), strides4(z),
                                               bias9.const_data_ptr<acc_t>(),
                                               out.mutable_data_ptr<scalar_t>(), strides4(out));
    }
  });
}

// What region_sums_kernel computes: per plane, each of `threads` threads' partial sums, added up
// as the block reduction does.
at::Tensor grid_region_sums(const at::Tensor& grad, int64_t threads) {
  TORCH_CHECK_VALUE(threads > 0, "threads must be positive, got ", threads);
  auto sums = at::zeros({grad.size(0), grad.size(1), 3, 3},
                        grad.options().dtype(at::toOpMathType(grad.scalar_type())));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "grid_region_sums", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const Plane4 p = plane4(grad, grad);
    auto* out = sums.mutable_data_ptr<acc_t>();
    for (int64_t plane = 0; plane < p.N * p.O; ++plane) {
      for (int64_t tid = 0; tid < threads; ++tid) {
        acc_t acc[9];
        region_sums_partial(plane, tid, threads, p, grad.const_data_ptr<scalar_t>(),
                            strides4(grad), acc);
        for (int k = 0; k < 9; ++k) out[plane * 9 + k] += acc[k];
      }
    }
  });
  return sums;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(exprfast, m) {
  m.def("_grid_add_label_bias(Tensor y, Tensor bias9, Tensor(a!) out) -> ()");
  m.def("_grid_shuffle_label_bias(Tensor z, Tensor bias9, Tensor(a!) out) -> ()");
  m.def("_grid_region_sums(Tensor grad, int threads) -> Tensor");
}

TORCH_LIBRARY_IMPL(exprfast, CPU, m) {
  m.impl("_grid_add_label_bias", &grid_add_label_bias);
  m.impl("_grid_shuffle_label_bias", &grid_shuffle_label_bias);
  m.impl("_grid_region_sums", &grid_region_sums);
}

}  // namespace exprfast
