// CPU kernels of up_label_conv (see up_label_conv_kernels.h). The small weight folds loop over the
// shared per-element bodies of up_label_conv.h, exactly the grid a CUDA launch covers. The passes
// over full-size tensors (epilogues, gradient region sums, the tap form's gather) walk rows so
// that the innermost loop is unit-stride and vectorises where the memory format allows.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
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

// acc[o] += v[o * stride] for the O channels of one pixel.
template <typename scalar_t, typename acc_t>
inline void accumulate(const scalar_t* __restrict__ v, int64_t stride, acc_t* __restrict__ acc,
                       int64_t O) {
  if (stride == 1) {
    for (int64_t o = 0; o < O; ++o) acc[o] += static_cast<acc_t>(v[o]);
  } else {
    for (int64_t o = 0; o < O; ++o) acc[o] += static_cast<acc_t>(v[o * stride]);
  }
}

// One output pixel of the tap form: out[o] = bias[o] + its `count` tap products src[k][o]. Inner
// pixels have all nine, with unit strides in channels_last: one vectorised pass over o.
template <typename scalar_t, typename acc_t>
inline void sum_pixel(const scalar_t* const* src, int count, int64_t zc, const acc_t* bias,
                      scalar_t* __restrict__ out, int64_t oc, int64_t O) {
  if (count == 9 && zc == 1 && oc == 1) {
    const scalar_t *s0 = src[0], *s1 = src[1], *s2 = src[2], *s3 = src[3], *s4 = src[4],
                   *s5 = src[5], *s6 = src[6], *s7 = src[7], *s8 = src[8];
    for (int64_t o = 0; o < O; ++o) {
      using a = acc_t;
      const acc_t row0 = static_cast<a>(s0[o]) + static_cast<a>(s1[o]) + static_cast<a>(s2[o]);
      const acc_t row1 = static_cast<a>(s3[o]) + static_cast<a>(s4[o]) + static_cast<a>(s5[o]);
      const acc_t row2 = static_cast<a>(s6[o]) + static_cast<a>(s7[o]) + static_cast<a>(s8[o]);
      out[o] = static_cast<scalar_t>(bias[o] + row0 + row1 + row2);
    }
    return;
  }
  for (int64_t o = 0; o < O; ++o) {
    acc_t v = bias[o];
    for (int k = 0; k < count; ++k) v += static_cast<acc_t>(src[k][o * zc]);
    out[o * oc] = static_cast<scalar_t>(v);
  }
}

// Tap form, forward: each output pixel is its border class's bias plus the tap products of z
// whose source pixel lies inside x. One output row per step.
template <typename scalar_t, typename acc_t>
void sum_taps_label_bias_impl(const at::Tensor& z, const at::Tensor& bias9, at::Tensor& out) {
  const Plane4 p = plane4(out, out);
  const int64_t H = z.size(2), W = z.size(3);
  const Strides4 zs = strides4(z), os = strides4(out);
  const auto* zp = z.const_data_ptr<scalar_t>();
  const auto* bp = bias9.const_data_ptr<acc_t>();
  auto* op = out.mutable_data_ptr<scalar_t>();
  const int64_t grain = std::max<int64_t>(1, row_grain(p) / 9);  // a pixel reads nine products
  at::parallel_for(0, p.N * p.H, grain, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> row_bias(3 * p.O);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / p.H, yy = row % p.H;
      const acc_t* b = bp + (n * p.O * 3 + border_class(yy, p.H)) * 3;
      for (int64_t c = 0; c < 3; ++c)
        for (int64_t o = 0; o < p.O; ++o) row_bias[c * p.O + o] = b[o * 9 + c];
      for (int64_t x = 0; x < p.W; ++x) {
        const scalar_t* src[9];
        int count = 0;
        for (int r = 0; r < 3; ++r) {
          const int64_t sy = tap_source(yy, r);
          if (sy < 0 || sy >= H) continue;
          for (int s = 0; s < 3; ++s) {
            const int64_t sx = tap_source(x, s);
            if (sx < 0 || sx >= W) continue;
            src[count++] = zp + n * zs.n + sy * zs.h + sx * zs.w + (r * 3 + s) * p.O * zs.c;
          }
        }
        sum_pixel(src, count, zs.c, row_bias.data() + border_class(x, p.W) * p.O,
                  op + n * os.n + yy * os.h + x * os.w, os.c, p.O);
      }
    }
  });
}

void sum_taps_label_bias_cpu(const at::Tensor& z, const at::Tensor& bias9, at::Tensor& out) {
  EXPRFAST_DISPATCH_FLOATING(z.scalar_type(), "sum_taps_label_bias", [&] {
    sum_taps_label_bias_impl<scalar_t, at::opmath_type<scalar_t>>(z, bias9, out);
  });
}

// Tap form, backward: one row of dz per step. For each tap row r the output gradient's rows
// tap_target and tap_target + 1 are added into `pairs` (columns -1 and 2W stay zero), whose
// neighbouring columns then give the three taps s of that row.
template <typename scalar_t, typename acc_t>
void gather_taps_impl(const at::Tensor& grad, at::Tensor& dz) {
  const Plane4 g = plane4(grad, grad);
  const int64_t H = dz.size(2), W = dz.size(3), O = g.O;
  const Strides4 gs = strides4(grad), ds = strides4(dz);
  const auto* gp = grad.const_data_ptr<scalar_t>();
  auto* dp = dz.mutable_data_ptr<scalar_t>();
  const int64_t grain = std::max<int64_t>(1, row_grain(g) / 4);  // a dz row reads four grad rows
  at::parallel_for(0, g.N * H, grain, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> pairs((g.W + 2) * O);  // output column X at (X + 1) * O
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / H, py = row % H;
      for (int r = 0; r < 3; ++r) {
        std::fill(pairs.begin(), pairs.end(), acc_t(0));
        for (int64_t yy = tap_target(py, r); yy <= tap_target(py, r) + 1; ++yy) {
          if (yy < 0 || yy >= g.H) continue;
          for (int64_t x = 0; x < g.W; ++x)
            accumulate(gp + n * gs.n + yy * gs.h + x * gs.w, gs.c, pairs.data() + (x + 1) * O, O);
        }
        for (int s = 0; s < 3; ++s) {
          for (int64_t q = 0; q < W; ++q) {
            const acc_t* a = pairs.data() + (tap_target(q, s) + 1) * O;  // columns t and t + 1
            scalar_t* d = dp + n * ds.n + py * ds.h + q * ds.w + (r * 3 + s) * O * ds.c;
            for (int64_t o = 0; o < O; ++o) d[o * ds.c] = static_cast<scalar_t>(a[o] + a[O + o]);
          }
        }
      }
    }
  });
}

void gather_taps_cpu(const at::Tensor& grad, at::Tensor& dz) {
  EXPRFAST_DISPATCH_FLOATING(grad.scalar_type(), "gather_taps", [&] {
    gather_taps_impl<scalar_t, at::opmath_type<scalar_t>>(grad, dz);
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
                         .region_sums = region_sums_cpu,
                         .sum_taps_label_bias = sum_taps_label_bias_cpu,
                         .gather_taps = gather_taps_cpu};
  return k;
}

}  // namespace exprfast
