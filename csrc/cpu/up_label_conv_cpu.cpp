// CPU kernels of up_label_conv (see up_label_conv_kernels.h). The small weight folds loop over the
// shared per-element bodies of up_label_conv.h, exactly the grid a CUDA launch covers. The two
// passes over full-size tensors (epilogue, gradient region sums) walk rows so that the innermost
// loop is unit-stride and vectorises, in whichever memory format the tensors come.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <vector>

#include "up_label_conv_kernels.h"

namespace exprfast {
namespace {

#define EXPRFAST_DISPATCH_FLOATING(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)

// Runs body(i) for every grid index i in [0, n), as a CUDA grid would.
template <typename Body>
void for_each_index(int64_t n, Body body) {
  at::parallel_for(0, n, 256, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) body(i);
  });
}

void fold_weight_cpu(const at::Tensor& weight, FoldShape s, at::Tensor& wt) {
  EXPRFAST_DISPATCH_FLOATING(weight.scalar_type(), "fold_weight", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto* w = weight.const_data_ptr<scalar_t>();
    auto* out = wt.mutable_data_ptr<scalar_t>();
    for_each_index(s.C * s.O, [&](int64_t i) { fold_weight_body<scalar_t, acc_t>(i, s, w, out); });
  });
}

void fold_weight_phases_cpu(const at::Tensor& weight, FoldShape s, at::Tensor& w2) {
  EXPRFAST_DISPATCH_FLOATING(weight.scalar_type(), "fold_weight_phases", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto* w = weight.const_data_ptr<scalar_t>();
    auto* out = w2.mutable_data_ptr<scalar_t>();
    for_each_index(s.O * s.C,
                   [&](int64_t i) { fold_weight_phases_body<scalar_t, acc_t>(i, s, w, out); });
  });
}

void unfold_weight_cpu(const at::Tensor& grad_wt, FoldShape s, at::Tensor& grad_weight) {
  EXPRFAST_DISPATCH_FLOATING(grad_wt.scalar_type(), "unfold_weight", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto* g = grad_wt.const_data_ptr<scalar_t>();
    auto* out = grad_weight.mutable_data_ptr<scalar_t>();
    for_each_index(s.O * s.C, [&](int64_t i) { unfold_weight_body<scalar_t, acc_t>(i, s, g, out); });
  });
}

void label_weight_sums_cpu(const at::Tensor& weight, FoldShape s, at::Tensor& wsum) {
  EXPRFAST_DISPATCH_FLOATING(weight.scalar_type(), "label_weight_sums", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto* w = weight.const_data_ptr<scalar_t>();
    auto* out = wsum.mutable_data_ptr<acc_t>();
    for_each_index(s.K * s.O,
                   [&](int64_t i) { label_weight_sums_body<scalar_t, acc_t>(i, s, w, out); });
  });
}

void label_weight_sums_backward_cpu(const at::Tensor& t, FoldShape s, at::Tensor& grad_weight) {
  EXPRFAST_DISPATCH_FLOATING(grad_weight.scalar_type(), "label_weight_sums_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto* in = t.const_data_ptr<acc_t>();
    auto* out = grad_weight.mutable_data_ptr<scalar_t>();
    for_each_index(s.K * s.O, [&](int64_t i) {
      label_weight_sums_backward_body<scalar_t, acc_t>(i, s, in, out);
    });
  });
}

// Rows (n, y) per parallel task: about 32k elements, enough to amortise the task.
int64_t row_grain(const Plane4& p) {
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, p.O * p.W));
}

// The channel loop of the epilogue for one pixel: out[o] = y[o] + bias[o].
template <typename scalar_t, typename acc_t>
inline void add_channels(const scalar_t* y, int64_t ys, const acc_t* bias, scalar_t* out,
                         int64_t os, int64_t O) {
  if (ys == 1 && os == 1) {
    for (int64_t o = 0; o < O; ++o) out[o] = static_cast<scalar_t>(static_cast<acc_t>(y[o]) + bias[o]);
  } else {
    for (int64_t o = 0; o < O; ++o)
      out[o * os] = static_cast<scalar_t>(static_cast<acc_t>(y[o * ys]) + bias[o]);
  }
}

// The pixel loop of the epilogue for one row of one channel: three bias values (first, inner,
// last column class).
template <typename scalar_t, typename acc_t>
inline void add_row(const scalar_t* y, int64_t ys, const acc_t* bias3, scalar_t* out, int64_t os,
                    int64_t W) {
  out[0] = static_cast<scalar_t>(static_cast<acc_t>(y[0]) + bias3[0]);
  const acc_t inner = bias3[1];
  if (ys == 1 && os == 1) {
    for (int64_t x = 1; x < W - 1; ++x) out[x] = static_cast<scalar_t>(static_cast<acc_t>(y[x]) + inner);
  } else {
    for (int64_t x = 1; x < W - 1; ++x)
      out[x * os] = static_cast<scalar_t>(static_cast<acc_t>(y[x * ys]) + inner);
  }
  out[(W - 1) * os] = static_cast<scalar_t>(static_cast<acc_t>(y[(W - 1) * ys]) + bias3[2]);
}

template <typename scalar_t, typename acc_t>
void add_label_bias_impl(const at::Tensor& y, const at::Tensor& bias9, at::Tensor& out) {
  const Plane4 p = plane4(y, out);  // channels_last output: loop pixels, then channels
  const Strides4 ys = strides4(y), os = strides4(out);
  const auto* yp = y.const_data_ptr<scalar_t>();
  const auto* bp = bias9.const_data_ptr<acc_t>();
  auto* op = out.mutable_data_ptr<scalar_t>();
  at::parallel_for(0, p.N * p.H, row_grain(p), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> row_bias(3 * p.O);  // [column class][o], unit stride for the channel loop
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / p.H, yy = row % p.H;
      const acc_t* b = bp + (n * p.O * 3 + border_class(yy, p.H)) * 3;  // b[o * 9 + c]
      const scalar_t* yrow = yp + n * ys.n + yy * ys.h;
      scalar_t* orow = op + n * os.n + yy * os.h;
      if (p.channels_inner) {
        for (int64_t c = 0; c < 3; ++c)
          for (int64_t o = 0; o < p.O; ++o) row_bias[c * p.O + o] = b[o * 9 + c];
        for (int64_t x = 0; x < p.W; ++x) {
          add_channels(yrow + x * ys.w, ys.c, row_bias.data() + border_class(x, p.W) * p.O,
                       orow + x * os.w, os.c, p.O);
        }
      } else {
        for (int64_t o = 0; o < p.O; ++o)
          add_row(yrow + o * ys.c, ys.w, b + o * 9, orow + o * os.c, os.w, p.W);
      }
    }
  });
}

void add_label_bias_cpu(const at::Tensor& y, const at::Tensor& bias9, at::Tensor& out) {
  EXPRFAST_DISPATCH_FLOATING(y.scalar_type(), "add_label_bias", [&] {
    add_label_bias_impl<scalar_t, at::opmath_type<scalar_t>>(y, bias9, out);
  });
}

// Phase form: output row Y reads row (Y + 1) / 2 of z, output pixel X the channel block of its
// phase (py, px) at column (X + 1) / 2. Only used for few output channels, so the channel loop is
// innermost whatever the output's format.
template <typename scalar_t, typename acc_t>
void shuffle_label_bias_impl(const at::Tensor& z, const at::Tensor& bias9, at::Tensor& out) {
  const Plane4 p = plane4(out, out);
  const Strides4 zs = strides4(z), os = strides4(out);
  const auto* zp = z.const_data_ptr<scalar_t>();
  const auto* bp = bias9.const_data_ptr<acc_t>();
  auto* op = out.mutable_data_ptr<scalar_t>();
  at::parallel_for(0, p.N * p.H, row_grain(p), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> row_bias(3 * p.O);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / p.H, yy = row % p.H, py = (yy + 1) & 1;
      const acc_t* b = bp + (n * p.O * 3 + border_class(yy, p.H)) * 3;
      for (int64_t c = 0; c < 3; ++c)
        for (int64_t o = 0; o < p.O; ++o) row_bias[c * p.O + o] = b[o * 9 + c];
      const scalar_t* zrow = zp + n * zs.n + ((yy + 1) >> 1) * zs.h;
      for (int64_t x = 0; x < p.W; ++x) {
        const int64_t block = (py * 2 + ((x + 1) & 1)) * p.O;
        add_channels(zrow + ((x + 1) >> 1) * zs.w + block * zs.c, zs.c,
                     row_bias.data() + border_class(x, p.W) * p.O,
                     op + n * os.n + yy * os.h + x * os.w, os.c, p.O);
      }
    }
  });
}

void shuffle_label_bias_cpu(const at::Tensor& z, const at::Tensor& bias9, at::Tensor& out) {
  EXPRFAST_DISPATCH_FLOATING(z.scalar_type(), "shuffle_label_bias", [&] {
    shuffle_label_bias_impl<scalar_t, at::opmath_type<scalar_t>>(z, bias9, out);
  });
}

// Sums of one channel's row by column class, added to acc3.
template <typename scalar_t, typename acc_t>
inline void sum_row(const scalar_t* g, int64_t gs, int64_t W, acc_t* acc3) {
  acc_t inner = 0;
  for (int64_t x = 1; x < W - 1; ++x) inner += static_cast<acc_t>(g[x * gs]);
  acc3[0] += static_cast<acc_t>(g[0]);
  acc3[1] += inner;
  acc3[2] += static_cast<acc_t>(g[(W - 1) * gs]);
}

// Region sums of a channels-innermost gradient: per sample, acc[r][c][o] over all pixels.
template <typename scalar_t, typename acc_t>
void region_sums_channels_inner(const scalar_t* g, Strides4 gs, const Plane4& p, acc_t* sums) {
  at::parallel_for(0, p.N, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc(9 * p.O);
    for (int64_t n = begin; n < end; ++n) {
      std::fill(acc.begin(), acc.end(), acc_t(0));
      for (int64_t yy = 0; yy < p.H; ++yy) {
        acc_t* acc_r = acc.data() + border_class(yy, p.H) * 3 * p.O;
        for (int64_t x = 0; x < p.W; ++x) {
          const scalar_t* gp = g + n * gs.n + yy * gs.h + x * gs.w;
          acc_t* a = acc_r + border_class(x, p.W) * p.O;
          if (gs.c == 1) {
            for (int64_t o = 0; o < p.O; ++o) a[o] += static_cast<acc_t>(gp[o]);
          } else {
            for (int64_t o = 0; o < p.O; ++o) a[o] += static_cast<acc_t>(gp[o * gs.c]);
          }
        }
      }
      for (int64_t o = 0; o < p.O; ++o)
        for (int64_t rc = 0; rc < 9; ++rc) sums[(n * p.O + o) * 9 + rc] = acc[rc * p.O + o];
    }
  });
}

// Region sums of a gradient whose rows are contiguous per channel: one (n, o) plane per task.
template <typename scalar_t, typename acc_t>
void region_sums_planes(const scalar_t* g, Strides4 gs, const Plane4& p, acc_t* sums) {
  at::parallel_for(0, p.N * p.O, 1, [&](int64_t begin, int64_t end) {
    for (int64_t plane = begin; plane < end; ++plane) {
      const int64_t n = plane / p.O, o = plane % p.O;
      acc_t* acc = sums + plane * 9;
      std::fill(acc, acc + 9, acc_t(0));
      for (int64_t yy = 0; yy < p.H; ++yy)
        sum_row(g + n * gs.n + o * gs.c + yy * gs.h, gs.w, p.W, acc + border_class(yy, p.H) * 3);
    }
  });
}

void region_sums_cpu(const at::Tensor& grad, at::Tensor& sums) {
  EXPRFAST_DISPATCH_FLOATING(grad.scalar_type(), "region_sums", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const Plane4 p = plane4(grad, grad);
    const Strides4 gs = strides4(grad);
    const auto* g = grad.const_data_ptr<scalar_t>();
    auto* out = sums.mutable_data_ptr<acc_t>();
    if (p.channels_inner) {
      region_sums_channels_inner(g, gs, p, out);
    } else {
      region_sums_planes(g, gs, p, out);
    }
  });
}

}  // namespace

const Kernels& cpu_kernels() {
  static const Kernels k{.fold_weight = fold_weight_cpu,
                         .fold_weight_phases = fold_weight_phases_cpu,
                         .unfold_weight = unfold_weight_cpu,
                         .label_weight_sums = label_weight_sums_cpu,
                         .label_weight_sums_backward = label_weight_sums_backward_cpu,
                         .add_label_bias = add_label_bias_cpu,
                         .shuffle_label_bias = shuffle_label_bias_cpu,
                         .region_sums = region_sums_cpu};
  return k;
}

}  // namespace exprfast
