// The fast default path's op, in a library of its own (caffe_pipeline_fast) so that it builds and loads without
// the bit-exact mode's ops (caffe_cpu.cpp, caffe_conv.cpp). Compiled without fast-math: its roundings are Caffe's.
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
#include <tuple>

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

}  // namespace

TORCH_LIBRARY_FRAGMENT(caffe_pipeline, m) {
  m.def("softmax_label_loss(Tensor scores, Tensor labels, float normalizer) -> (Tensor, Tensor, Tensor)");
  m.def("softmax_label_loss_backward(Tensor grad, Tensor prob, Tensor label, float normalizer) -> Tensor");
}

TORCH_LIBRARY_IMPL(caffe_pipeline, CPU, m) {
  m.impl("softmax_label_loss", &forward_cpu);
  m.impl("softmax_label_loss_backward", &backward_cpu);
}

TORCH_LIBRARY_IMPL(caffe_pipeline, Autograd, m) { m.impl("softmax_label_loss", &forward_autograd); }
