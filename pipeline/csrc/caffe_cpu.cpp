// Caffe's CPU arithmetic as torch ops. Compiled without fast-math: every rounding is Caffe's.
//
// caffe_powx(x, p): caffe_powx<float>, i.e. std::pow per element (libm powf for float), which Caffe's adaptive
// solvers use for squares and square roots; powf(x, 0.5) is not always the correctly rounded sqrtf(x).
//
// (SoftmaxWithLoss's fused op, softmax_label_loss, is the default path's: pipeline/csrc/fast_ops.cpp.)

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
  m.def("caffe_powx(Tensor x, float power) -> Tensor");
  m.def("caffe_neuron(Tensor x, str kind, float[] params) -> Tensor");
  m.def("caffe_neuron_backward(Tensor top_diff, Tensor x, Tensor y, str kind, float[] params) -> Tensor");
}

TORCH_LIBRARY_IMPL(caffe_pipeline, CPU, m) {
  m.impl("caffe_powx", &caffe_powx_cpu);
  m.impl("caffe_neuron", &caffe_neuron_cpu);
  m.impl("caffe_neuron_backward", &caffe_neuron_backward_cpu);
}
