// exprfast::up_label_conv = conv3x3(cat[upsample_nearest2x(x), label maps], weight) + bias, and its
// backward. The driver here is device-generic: it validates, lets ATen (oneDNN / cuDNN) run the
// folded stride-2 transposed conv, and calls the device kernels for the rest. Only x, labels and
// weight are kept for backward; nothing 4x larger than x is ever materialised.
#include <ATen/OpMathType.h>
#include <ATen/autocast_mode.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include "up_label_conv_kernels.h"

namespace exprfast {
namespace {

constexpr const char* kOp = "up_label_conv";

struct Problem {
  FoldShape s;
  int64_t N, H, W;
};

const Kernels& kernels_for(const at::Tensor& x) {
#ifdef EXPRFAST_WITH_CUDA
  if (x.is_cuda()) return cuda_kernels();
#endif
  TORCH_CHECK(x.is_cpu(), kOp, ": no kernels for device ", x.device(),
              " in this build (exprfast.backend_info() lists the built ones)");
  return cpu_kernels();
}

// The dispatcher passes None for a (non-optional) Tensor argument as an undefined tensor, whose
// dtype reads UNKNOWN_SCALAR: name it instead (exprfast.up_label_conv refuses it in Python first;
// this is for direct torch.ops.exprfast callers).
void check_defined(const at::Tensor& t, const char* name) {
  TORCH_CHECK_TYPE(t.defined(), kOp, ": ", name, " must be a torch.Tensor, got None");
}

void check_like_x(const at::Tensor& x, const at::Tensor& t, const char* name) {
  check_defined(t, name);
  TORCH_CHECK_TYPE(t.scalar_type() == x.scalar_type(), kOp, ": ", name, " has dtype ",
                   t.scalar_type(), " but x has dtype ", x.scalar_type(),
                   "; cast them to one dtype (or run under torch.autocast)");
  TORCH_CHECK(t.device() == x.device(), kOp, ": ", name, " is on ", t.device(), " but x is on ",
              x.device(), "; move them to one device");
}

Problem check_inputs(const at::Tensor& x, const std::optional<at::Tensor>& labels,
                     const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  check_defined(x, "x");
  TORCH_CHECK_TYPE(at::isFloatingType(x.scalar_type()), kOp,
                   ": x must be a floating-point tensor, got ", x.scalar_type());
  TORCH_CHECK_VALUE(x.dim() == 4, kOp, ": x must be 4-D (N, C, H, W), got shape ", x.sizes());
  TORCH_CHECK_VALUE(x.size(1) > 0 && x.size(2) > 0 && x.size(3) > 0, kOp,
                    ": x must have C, H, W >= 1, got shape ", x.sizes());
  const int64_t N = x.size(0), C = x.size(1);
  int64_t K = 0;
  if (labels) {
    check_like_x(x, *labels, "labels");
    TORCH_CHECK_VALUE(labels->dim() == 2 && labels->size(0) == N, kOp,
                      ": labels must be 2-D (N, K) with N = ", N, " (x's batch), got shape ",
                      labels->sizes());
    K = labels->size(1);
  }
  check_like_x(x, weight, "weight");
  TORCH_CHECK_VALUE(weight.dim() == 4 && weight.size(2) == 3 && weight.size(3) == 3, kOp,
                    ": weight must be a 3x3 conv weight (O, C+K, 3, 3), got shape ",
                    weight.sizes());
  TORCH_CHECK_VALUE(weight.size(1) == C + K, kOp, ": weight has ", weight.size(1),
                    " input channels but x has C = ", C, " and labels K = ", K,
                    ", so weight must be (O, ", C + K, ", 3, 3)");
  const int64_t O = weight.size(0);
  TORCH_CHECK_VALUE(O > 0, kOp, ": weight must have at least one output channel");
  if (bias) {
    check_like_x(x, *bias, "bias");
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == O, kOp, ": bias must be 1-D (O,) with O = ",
                      O, " (weight's output channels), got shape ", bias->sizes());
  }
  return {{C, K, O}, N, x.size(2), x.size(3)};
}

at::ScalarType opmath(const at::Tensor& x) {
  return at::toOpMathType(x.scalar_type());
}

at::Tensor fold_weight(const Kernels& k, const at::Tensor& weight, FoldShape s) {
  auto wt = at::empty({s.C, s.O, 4, 4}, weight.options());
  k.fold_weight(weight, s, wt);
  return wt;
}

// (K, O*9) opmath matrix whose product with the labels is the per-sample label bias.
at::Tensor label_weight_sums(const Kernels& k, const at::Tensor& weight, FoldShape s) {
  auto wsum = at::empty({s.K, s.O * 9}, weight.options().dtype(opmath(weight)));
  k.label_weight_sums(weight, s, wsum);
  return wsum;
}

// B[n, o, r, c]: everything constant per sample and border class, the conv bias included.
at::Tensor per_sample_bias(const Kernels& k, const Problem& p,
                           const std::optional<at::Tensor>& labels, const at::Tensor& weight,
                           const std::optional<at::Tensor>& bias) {
  const auto& s = p.s;
  auto opts = weight.options().dtype(opmath(weight));
  at::Tensor b9 = s.K > 0 ? at::matmul(labels->to(opmath(weight)), label_weight_sums(k, weight, s))
                          : at::zeros({p.N, s.O * 9}, opts);
  if (bias) b9.view({p.N, s.O, 9}).add_(bias->to(opmath(weight)).view({1, s.O, 1}));
  return b9.view({p.N, s.O, 3, 3});
}

// Below 16 output channels oneDNN's transposed conv runs at a fraction of its conv rate (a third,
// at 3 RGB outputs; benchmarks/ops.md), so the forward uses the phase form there: one plain conv
// with 4*O outputs plus a shuffling epilogue. The backward keeps the transposed conv's own.
bool use_phase_form(FoldShape s) {
  return s.O < 16;
}

// The layout the convs run in. On the CPU, the input's own: oneDNN's channels_last transposed
// conv is the fastest of all, but converting an NCHW x (and its gradients, in and out) costs more
// than it saves at nearly every decoder shape (benchmarks/ops_nchw.md). CUDA runs channels_last,
// the layout its tests and benchmarks ran in (README, "What has run on a GPU").
at::MemoryFormat conv_format(const at::Tensor& x) {
  return x.is_cpu() ? x.suggest_memory_format() : at::MemoryFormat::ChannelsLast;
}

// One plain conv with 4*O outputs, then the epilogue interleaves the phases while adding B.
at::Tensor forward_phase_form(const Kernels& k, const Problem& p, const at::Tensor& x,
                              const at::Tensor& w, const at::Tensor& b9, at::TensorOptions out_options) {
  auto w2 = at::empty({4 * p.s.O, p.s.C, 2, 2}, w.options());
  k.fold_weight_phases(w, p.s, w2);
  const auto z = at::conv2d(x.contiguous(conv_format(x)), w2, {}, 1, 1);
  auto out = at::empty({p.N, p.s.O, 2 * p.H, 2 * p.W}, out_options);
  k.shuffle_label_bias(z, b9, out);
  return out;
}

at::Tensor forward_transposed_form(const Kernels& k, const Problem& p, const at::Tensor& x,
                                   const at::Tensor& w, const at::Tensor& b9,
                                   at::TensorOptions out_options) {
  const auto y = at::conv_transpose2d(x.contiguous(conv_format(x)), fold_weight(k, w, p.s), {}, 2, 1);
  // Add in place when y already has the caller's format, else transpose while adding.
  auto out = y.is_contiguous(*out_options.memory_format_opt()) ? y : at::empty(y.sizes(), out_options);
  k.add_label_bias(y, b9, out);
  return out;
}

// The internal ATen calls must run in the op's dtype even when the caller's thread has autocast on
// (a backward pass inside an autocast region): autocast would turn our float32 sums into bf16.
using NoAutocast = c10::impl::ExcludeDispatchKeyGuard;

at::Tensor up_label_conv(const at::Tensor& x, const std::optional<at::Tensor>& labels,
                         const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  NoAutocast no_autocast(c10::autocast_dispatch_keyset);
  const Problem p = check_inputs(x, labels, weight, bias);
  const auto out_options = x.options().memory_format(x.suggest_memory_format());
  if (p.N == 0) return at::empty({0, p.s.O, 2 * p.H, 2 * p.W}, out_options);
  const Kernels& k = kernels_for(x);
  const auto w = weight.contiguous();
  const auto b9 = per_sample_bias(k, p, labels, w, bias);
  return use_phase_form(p.s) ? forward_phase_form(k, p, x, w, b9, out_options)
                             : forward_transposed_form(k, p, x, w, b9, out_options);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> up_label_conv_backward(
    const at::Tensor& grad, const at::Tensor& x, const std::optional<at::Tensor>& labels,
    const at::Tensor& weight) {
  NoAutocast no_autocast(c10::autocast_dispatch_keyset);
  const Problem p = check_inputs(x, labels, weight, std::nullopt);
  const auto& s = p.s;
  check_like_x(x, grad, "grad");
  TORCH_CHECK_VALUE(grad.sizes() == at::IntArrayRef({p.N, s.O, 2 * p.H, 2 * p.W}), kOp,
                    "_backward: grad must have the output's shape (", p.N, ", ", s.O, ", ",
                    2 * p.H, ", ", 2 * p.W, "), got ", grad.sizes());
  const auto x_format = x.suggest_memory_format();
  if (p.N == 0) {
    return {at::zeros_like(x, at::TensorOptions{}, x_format), at::zeros({0, s.K}, x.options()),
            at::zeros_like(weight, at::MemoryFormat::Contiguous), at::zeros({s.O}, x.options())};
  }
  const Kernels& k = kernels_for(x);
  const auto w = weight.contiguous();
  const auto format = conv_format(x);
  auto conv_grads = at::convolution_backward(
      grad.contiguous(format), x.contiguous(format), fold_weight(k, w, s), std::nullopt, {2, 2},
      {1, 1}, {1, 1}, /*transposed=*/true, {0, 0}, /*groups=*/1, {true, true, false});
  auto grad_x = std::get<0>(conv_grads).contiguous(x_format);
  auto grad_weight = at::empty_like(w);
  k.unfold_weight(std::get<1>(conv_grads).contiguous(), s, grad_weight);

  auto sums = at::empty({p.N, s.O, 3, 3}, x.options().dtype(opmath(x)));
  k.region_sums(grad, sums);
  const auto sums2d = sums.view({p.N, s.O * 9});
  auto grad_bias = sums.sum({0, 2, 3}).to(x.scalar_type());
  auto grad_labels = at::empty({p.N, s.K}, x.options());
  if (s.K > 0) {
    grad_labels.copy_(at::matmul(sums2d, label_weight_sums(k, w, s).t()));
    const auto t = at::matmul(labels->to(opmath(x)).t(), sums2d);  // (K, O*9)
    k.label_weight_sums_backward(t, s, grad_weight);
  }
  return {grad_x, grad_labels, grad_weight, grad_bias};
}

// Autocast: run in the autocast dtype, like conv2d, so that a decoder under torch.autocast gets
// its (float32) labels and parameters cast along with its low-precision activations.
template <c10::DeviceType device, c10::DispatchKey key>
at::Tensor up_label_conv_autocast(const at::Tensor& x, const std::optional<at::Tensor>& labels,
                                  const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(key);
  const auto dtype = at::autocast::get_autocast_dtype(device);
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("exprfast::up_label_conv", "")
                       .typed<decltype(up_label_conv)>();
  return op.call(at::autocast::cached_cast(dtype, x, device),
                 at::autocast::cached_cast(dtype, labels, device),
                 at::autocast::cached_cast(dtype, weight, device),
                 at::autocast::cached_cast(dtype, bias, device));
}

}  // namespace

TORCH_LIBRARY(exprfast, m) {
  m.def("up_label_conv(Tensor x, Tensor? labels, Tensor weight, Tensor? bias) -> Tensor");
  m.def(
      "up_label_conv_backward(Tensor grad, Tensor x, Tensor? labels, Tensor weight)"
      " -> (Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(exprfast, CPU, m) {
  m.impl("up_label_conv", &up_label_conv);
  m.impl("up_label_conv_backward", &up_label_conv_backward);
}

#ifdef EXPRFAST_WITH_CUDA
TORCH_LIBRARY_IMPL(exprfast, CUDA, m) {
  m.impl("up_label_conv", &up_label_conv);
  m.impl("up_label_conv_backward", &up_label_conv_backward);
}
#endif

TORCH_LIBRARY_IMPL(exprfast, AutocastCPU, m) {
  m.impl("up_label_conv",
         &up_label_conv_autocast<c10::DeviceType::CPU, c10::DispatchKey::AutocastCPU>);
}

TORCH_LIBRARY_IMPL(exprfast, AutocastCUDA, m) {
  m.impl("up_label_conv",
         &up_label_conv_autocast<c10::DeviceType::CUDA, c10::DispatchKey::AutocastCUDA>);
}

}  // namespace exprfast
