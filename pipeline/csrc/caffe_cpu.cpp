// Caffe's CPU arithmetic as torch ops. Compiled without fast-math: every rounding is Caffe's.
//
// caffe_powx(x, p): caffe_powx<float>, i.e. std::pow per element (libm powf for float), which Caffe's adaptive
// solvers use for squares and square roots; powf(x, 0.5) is not always the correctly rounded sqrtf(x).
//
// softmax_label_loss: Caffe's SoftmaxWithLoss for one class label per row of (rows, classes) scores, as one fused
// op each way.
//
// Forward, per row: p = exp(x - max x) / sum, with std::exp and a plain running sum as Caffe's CPU code does
// (no fast-math: the division and the summation order are Caffe's), then the loss
//   -sum over rows of log(max(p[label], FLT_MIN)) / normaliser,
// summed in row order in the scores' type, as Caffe's loop does. Labels arrive as Caffe's float blobs and are
// cast to integers as Caffe's static_cast<int> does (truncation); one out of [0, classes) is an error.
// Backward: p with 1 taken off at the label, times top_diff / normaliser (Caffe's caffe_scal).
//
// It exists for speed as much as for Caffe's arithmetic: the same loss in ATen ops is a dozen small kernels and
// a Python autograd node, measurably slower than the rest of a LeNet iteration can afford (bench/net_overhead.py).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <string>
#include <tuple>
#include <vector>

namespace {

// Rows per task: small batches stay on one thread (waking the pool costs more than the work).
int64_t row_grain(int64_t classes) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(classes, 1)); }

// Every label as Caffe's int, checked against the class count; raises on the first bad one.
template <typename label_t>
void cast_labels(const label_t* raw, int64_t rows, int64_t classes, int64_t* out) {
  for (int64_t r = 0; r < rows; ++r) {
    const double value = static_cast<double>(raw[r]);
    // Written so NaN fails too. Truncation towards zero, like Caffe's static_cast<int>.
    TORCH_CHECK(value > -1.0 && value < static_cast<double>(classes), "softmax_label_loss: label ", value,
                " is out of range [0, ", classes, ")");
    out[r] = static_cast<int64_t>(value);
  }
}

at::Tensor int_labels(const at::Tensor& labels, int64_t rows, int64_t classes) {
  TORCH_CHECK(labels.numel() == rows, "softmax_label_loss: ", labels.numel(), " labels for ", rows, " rows");
  auto flat = labels.reshape({-1}).contiguous();
  auto out = at::empty({rows}, labels.options().dtype(at::kLong));
  int64_t* dst = out.data_ptr<int64_t>();
  switch (flat.scalar_type()) {
    case at::kFloat: cast_labels(flat.data_ptr<float>(), rows, classes, dst); break;
    case at::kDouble: cast_labels(flat.data_ptr<double>(), rows, classes, dst); break;
    case at::kLong: cast_labels(flat.data_ptr<int64_t>(), rows, classes, dst); break;
    case at::kInt: cast_labels(flat.data_ptr<int32_t>(), rows, classes, dst); break;
    default: {
      auto as_double = flat.to(at::kDouble);
      cast_labels(as_double.data_ptr<double>(), rows, classes, dst);
    }
  }
  return out;
}

// Returns (loss, prob, integer labels): the backward needs the last two.
std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_cpu(const at::Tensor& scores, const at::Tensor& labels,
                                                           double normalizer) {
  TORCH_CHECK(scores.dim() == 2, "softmax_label_loss: scores must be (rows, classes), got ", scores.sizes());
  const int64_t rows = scores.size(0), classes = scores.size(1);
  auto x = scores.contiguous();
  auto label = int_labels(labels, rows, classes);
  auto prob = at::empty_like(x);
  auto loss = at::empty({}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "softmax_label_loss_cpu", [&] {
    const scalar_t* in = x.data_ptr<scalar_t>();
    scalar_t* p = prob.data_ptr<scalar_t>();
    const int64_t* lab = label.data_ptr<int64_t>();
    std::vector<scalar_t> log_prob(rows);
    at::parallel_for(0, rows, row_grain(classes), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const scalar_t* row = in + r * classes;
        scalar_t* out = p + r * classes;
        scalar_t top = row[0];
        for (int64_t j = 1; j < classes; ++j) top = std::max(top, row[j]);
        scalar_t sum = 0;
        for (int64_t j = 0; j < classes; ++j) {
          out[j] = std::exp(row[j] - top);
          sum += out[j];
        }
        for (int64_t j = 0; j < classes; ++j) out[j] /= sum;
        log_prob[r] = std::log(std::max(out[lab[r]], scalar_t(FLT_MIN)));
      }
    });
    scalar_t total = 0;
    for (int64_t r = 0; r < rows; ++r) total -= log_prob[r];
    loss.fill_(total / static_cast<scalar_t>(normalizer));
  });
  return {loss, prob, label};
}

at::Tensor backward_cpu(const at::Tensor& grad_loss, const at::Tensor& prob, const at::Tensor& label,
                        double normalizer) {
  const int64_t rows = prob.size(0), classes = prob.size(1);
  auto grad = prob.clone();
  AT_DISPATCH_FLOATING_TYPES(prob.scalar_type(), "softmax_label_loss_backward_cpu", [&] {
    const scalar_t scale = grad_loss.item<scalar_t>() / static_cast<scalar_t>(normalizer);
    scalar_t* g = grad.data_ptr<scalar_t>();
    const int64_t* lab = label.data_ptr<int64_t>();
    at::parallel_for(0, rows, row_grain(classes), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        scalar_t* row = g + r * classes;
        row[lab[r]] -= 1;
        for (int64_t j = 0; j < classes; ++j) row[j] *= scale;
      }
    });
  });
  return grad;
}

// Autograd in C++: no Python runs on the way forward or back.
class SoftmaxLabelLossFunction : public torch::autograd::Function<SoftmaxLabelLossFunction> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& scores,
                                                const at::Tensor& labels, double normalizer) {
    at::AutoDispatchBelowADInplaceOrView guard;
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("caffe_pipeline::softmax_label_loss", "")
                         .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                               double)>();
    auto [loss, prob, label] = op.call(scores, labels, normalizer);
    ctx->save_for_backward({prob, label});
    ctx->saved_data["normalizer"] = normalizer;
    ctx->mark_non_differentiable({prob, label});
    return {loss, prob, label};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("caffe_pipeline::softmax_label_loss_backward", "")
                         .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, double)>();
    auto saved = ctx->get_saved_variables();
    at::Tensor grad_scores;
    if (ctx->needs_input_grad(0)) {
      grad_scores = op.call(grads[0], saved[0], saved[1], ctx->saved_data["normalizer"].toDouble());
    }
    return {grad_scores, at::Tensor(), at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_autograd(const at::Tensor& scores, const at::Tensor& labels,
                                                                double normalizer) {
  auto out = SoftmaxLabelLossFunction::apply(scores, labels, normalizer);
  return {out[0], out[1], out[2]};
}

at::Tensor caffe_powx_cpu(const at::Tensor& x, double power) {
  // Element-wise, so any dense layout (an NHWC weight's diff) is walked in memory order and kept.
  auto in = x.is_non_overlapping_and_dense() ? x : x.contiguous();
  auto out = at::empty_like(in);
  AT_DISPATCH_FLOATING_TYPES(in.scalar_type(), "caffe_powx_cpu", [&] {
    const scalar_t* src = in.data_ptr<scalar_t>();
    scalar_t* dst = out.data_ptr<scalar_t>();
    const scalar_t p = static_cast<scalar_t>(power);
    at::parallel_for(0, in.numel(), 32768, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) dst[i] = std::pow(src[i], p);
    });
  });
  return out;
}

// Caffe's neuron layers, float as the bit-exact mode needs them, each expression as Caffe's source writes it
// (sigmoid_layer.cpp, tanh_layer.cpp, bnll_layer.cpp, elu_layer.cpp, exp_layer.cpp, log_layer.cpp): libm's float
// functions for float arguments, and where a double literal (0.5, 1.) enters float arithmetic the rest is
// computed in double and rounded once, as the compiled code does. Compiled without FMA contraction (plain
// x86-64), like Caffe's own build. Parameters: ELU [alpha]; Exp [inner_scale, outer_scale]; Log [scale, shift,
// base_scale, backward_num_scale] (the layers' float members); Swish [beta] (swish_layer.cpp: x times the
// sigmoid of beta x); the others none. LSTMUnitSigmoid and LSTMUnitTanH are lstm_unit_layer.cpp's own
// helpers, 1. / (1. + exp(-x)) and 2. * sigmoid(2. * x) - 1. (the latter entirely in double), forward only.
enum class Neuron { kSigmoid, kTanH, kBNLL, kELU, kExp, kLog, kSwish, kUnitSigmoid, kUnitTanH };

float caffe_sigmoid(float x) { return static_cast<float>(0.5 * std::tanh(0.5 * x) + 0.5); }

Neuron parse_neuron(c10::string_view kind, size_t n_params) {
  static const std::vector<std::tuple<std::string, Neuron, size_t>> kinds = {
      {"Sigmoid", Neuron::kSigmoid, 0}, {"TanH", Neuron::kTanH, 0}, {"BNLL", Neuron::kBNLL, 0},
      {"ELU", Neuron::kELU, 1},         {"Exp", Neuron::kExp, 2},   {"Log", Neuron::kLog, 4},
      {"Swish", Neuron::kSwish, 1},     {"LSTMUnitSigmoid", Neuron::kUnitSigmoid, 0},
      {"LSTMUnitTanH", Neuron::kUnitTanH, 0}};
  for (const auto& [name, neuron, count] : kinds) {
    if (kind == name) {
      TORCH_CHECK(n_params == count, "caffe_neuron ", name, " takes ", count, " parameters, got ", n_params);
      return neuron;
    }
  }
  TORCH_CHECK(false, "caffe_neuron: unknown kind '", std::string(kind), "'");
}

float neuron_forward(Neuron kind, float x, const float* p) {
  switch (kind) {
    case Neuron::kSigmoid:
      return caffe_sigmoid(x);
    case Neuron::kTanH:
      return std::tanh(x);
    case Neuron::kBNLL:
      return static_cast<float>(x > 0 ? x + std::log(1. + std::exp(-x)) : std::log(1. + std::exp(x)));
    case Neuron::kELU:
      return std::max(x, 0.f) + p[0] * (std::exp(std::min(x, 0.f)) - 1.f);
    case Neuron::kExp: {
      float y = std::exp(p[0] == 1.f ? x : x * p[0]);
      return p[1] == 1.f ? y : y * p[1];
    }
    case Neuron::kLog: {
      float u = p[0] == 1.f ? x : x * p[0];
      if (p[1] != 0.f) u += p[1];
      float y = std::log(u);
      return p[2] == 1.f ? y : y * p[2];
    }
    case Neuron::kSwish:
      return x * caffe_sigmoid(x * p[0]);
    case Neuron::kUnitSigmoid:
      return static_cast<float>(1. / (1. + std::exp(-x)));
    case Neuron::kUnitTanH: {
      const double twice = 2. * x;
      return static_cast<float>(2. * (1. / (1. + std::exp(-twice))) - 1.);
    }
  }
  return 0.f;
}

float neuron_backward(Neuron kind, float top_diff, float x, float y, const float* p) {
  switch (kind) {
    case Neuron::kSigmoid:
      return static_cast<float>(top_diff * y * (1. - y));
    case Neuron::kTanH:
      return top_diff * (1 - y * y);
    case Neuron::kBNLL: {
      const float expval = std::exp(std::min(x, 50.f));  // kBNLL_THRESHOLD
      return static_cast<float>(top_diff * expval / (expval + 1.));
    }
    case Neuron::kELU:
      return top_diff * ((x > 0) + (p[0] + y) * (x <= 0));
    case Neuron::kExp: {
      const float d = y * top_diff;
      return p[0] == 1.f ? d : d * p[0];
    }
    case Neuron::kLog: {
      float u = p[0] == 1.f ? x : x * p[0];
      if (p[1] != 0.f) u += p[1];
      u = std::pow(u, -1.f);  // caffe_powx(..., Dtype(-1))
      if (p[3] != 1.f) u *= p[3];
      return top_diff * u;
    }
    case Neuron::kSwish: {
      const float beta_swish = p[0] * y;  // beta * swish_x, float; the rest in double (the literal 1.)
      return static_cast<float>(top_diff * (beta_swish + caffe_sigmoid(x * p[0]) * (1. - beta_swish)));
    }
    case Neuron::kUnitSigmoid:
    case Neuron::kUnitTanH:
      TORCH_CHECK(false, "caffe_neuron: the LSTM unit's helpers have no backward of their own");
  }
  return 0.f;
}

std::vector<float> float_params(at::ArrayRef<double> params) {
  return std::vector<float>(params.begin(), params.end());
}

at::Tensor caffe_neuron_cpu(const at::Tensor& x, c10::string_view kind, at::ArrayRef<double> params) {
  TORCH_CHECK(x.scalar_type() == at::kFloat, "caffe_neuron: float32 only (Caffe's float arithmetic)");
  const Neuron neuron = parse_neuron(kind, params.size());
  const auto p = float_params(params);
  auto in = x.contiguous();
  auto out = at::empty_like(in);
  const float* src = in.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  at::parallel_for(0, in.numel(), 32768, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) dst[i] = neuron_forward(neuron, src[i], p.data());
  });
  return out;
}

at::Tensor caffe_neuron_backward_cpu(const at::Tensor& top_diff, const at::Tensor& x, const at::Tensor& y,
                                     c10::string_view kind, at::ArrayRef<double> params) {
  TORCH_CHECK(x.scalar_type() == at::kFloat, "caffe_neuron_backward: float32 only");
  const Neuron neuron = parse_neuron(kind, params.size());
  const auto p = float_params(params);
  auto g = top_diff.contiguous(), in = x.contiguous(), out = y.contiguous();
  auto result = at::empty_like(in);
  const float *gp = g.data_ptr<float>(), *xp = in.data_ptr<float>(), *yp = out.data_ptr<float>();
  float* dst = result.data_ptr<float>();
  at::parallel_for(0, in.numel(), 32768, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) dst[i] = neuron_backward(neuron, gp[i], xp[i], yp[i], p.data());
  });
  return result;
}

}  // namespace

// A fragment: the namespace itself is defined with the distillation op (pipeline/csrc/distill.cpp).
TORCH_LIBRARY_FRAGMENT(caffe_pipeline, m) {
  m.def("softmax_label_loss(Tensor scores, Tensor labels, float normalizer) -> (Tensor, Tensor, Tensor)");
  m.def("softmax_label_loss_backward(Tensor grad, Tensor prob, Tensor label, float normalizer) -> Tensor");
  m.def("caffe_powx(Tensor x, float power) -> Tensor");
  m.def("caffe_neuron(Tensor x, str kind, float[] params) -> Tensor");
  m.def("caffe_neuron_backward(Tensor top_diff, Tensor x, Tensor y, str kind, float[] params) -> Tensor");
}

TORCH_LIBRARY_IMPL(caffe_pipeline, CPU, m) {
  m.impl("softmax_label_loss", &forward_cpu);
  m.impl("softmax_label_loss_backward", &backward_cpu);
  m.impl("caffe_powx", &caffe_powx_cpu);
  m.impl("caffe_neuron", &caffe_neuron_cpu);
  m.impl("caffe_neuron_backward", &caffe_neuron_backward_cpu);
}

TORCH_LIBRARY_IMPL(caffe_pipeline, Autograd, m) { m.impl("softmax_label_loss", &forward_autograd); }
