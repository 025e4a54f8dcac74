// Knowledge-distillation loss as one fused op (Hinton et al. 2015; Caruana's logit matching).
//
// Rows are (sample, spatial position) pairs with the class axis last and contiguous. For each row the
// forward computes, in one visit of the row while it sits in cache:
//   soft = T^2 * KL(softmax(t/T) || softmax(s/T))       (t = log(p) when the teacher gives probabilities)
//   hard = -log softmax(s)[label]                        (only when alpha < 1)
//   loss = alpha * soft + (1 - alpha) * hard,  or  0.5 * ||s - t||^2 in logit-matching mode,
// skipping rows whose label equals ignore_label; the sum is divided by Caffe's normaliser.
// The backward writes d loss / d s in a second fused visit: alpha*T*(p_s - p_t) + (1-alpha)*(p_1 - onehot).
//
// With fork_report the loss *value* is the public KD fork's (wentianli/knowledge_distillation_caffe,
// KnowledgeDistillationLayer::Forward_cpu): sum_j p_t (log max(p_t, FLT_MIN) - log max(p_s, FLT_MIN)), with no
// T^2 factor, so it saturates on extreme logits as that layer's does. The gradient is the same in both
// conventions (the fork's Backward_cpu also carries T^2: T * (p_s - p_t)).

#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace {

enum Mode : int64_t { KL = 0, LOGIT_MATCHING = 1 };
enum Normalization : int64_t { FULL = 0, VALID = 1, BATCH_SIZE = 2, NONE = 3 };

struct Options {
  double temperature;
  double alpha;
  int64_t mode;
  bool teacher_is_prob;
  int64_t ignore_label;
  bool has_ignore;
  int64_t normalization;
  int64_t batch;  // outer count N, for BATCH_SIZE normalisation
  bool fork_report;  // report the fork's loss value (see the top of the file); the gradient is unchanged
};

void check_inputs(const at::Tensor& s, const at::Tensor& t, const at::Tensor& label, const Options& o) {
  TORCH_CHECK(s.dim() == 2, "distill_loss: student must be (rows, classes), got ", s.sizes());
  TORCH_CHECK(s.sizes() == t.sizes(), "distill_loss: student ", s.sizes(), " and teacher ", t.sizes(),
              " must have the same shape");
  TORCH_CHECK(s.scalar_type() == t.scalar_type(), "distill_loss: student and teacher dtypes differ");
  TORCH_CHECK(o.temperature > 0, "distill_loss: temperature must be > 0, got ", o.temperature);
  TORCH_CHECK(o.alpha >= 0 && o.alpha <= 1, "distill_loss: alpha must be in [0, 1], got ", o.alpha);
  TORCH_CHECK(label.numel() == 0 || label.numel() == s.size(0), "distill_loss: ", label.numel(),
              " labels for ", s.size(0), " rows");
  TORCH_CHECK(o.alpha == 1 || label.numel() > 0 || o.mode == LOGIT_MATCHING,
              "distill_loss: alpha < 1 mixes in the hard-label loss and needs labels");
}

bool row_ignored(const int64_t* labels, int64_t row, const Options& o) {
  return labels != nullptr && o.has_ignore && labels[row] == o.ignore_label;
}

template <typename scalar_t>
double normaliser(const int64_t* labels, int64_t rows, const Options& o) {
  double count = 0;
  switch (o.normalization) {
    case FULL: count = rows; break;
    case VALID:
      if (labels == nullptr || !o.has_ignore) {
        count = rows;
      } else {
        for (int64_t r = 0; r < rows; ++r) count += labels[r] != o.ignore_label;
      }
      break;
    case BATCH_SIZE: count = o.batch; break;
    default: count = 1; break;
  }
  return std::max(count, 1.0);  // Caffe clamps the normaliser to at least 1
}

// z = scale * x (x = log(max(x, tiny)) first for probabilities), e = exp(z - max z); returns max z + log sum e,
// the log-sum-exp. Plain loops over restrict pointers so the compiler vectorises them (exp through libmvec).
template <typename scalar_t>
scalar_t exp_terms(const scalar_t* __restrict x, scalar_t scale, int64_t n, scalar_t* __restrict z,
                   scalar_t* __restrict e, bool log_input, scalar_t& sum_out) {
  const scalar_t tiny = std::numeric_limits<scalar_t>::min();
  if (log_input) {
    for (int64_t j = 0; j < n; ++j) z[j] = std::log(std::max(x[j], tiny)) * scale;
  } else {
    for (int64_t j = 0; j < n; ++j) z[j] = x[j] * scale;
  }
  scalar_t m = z[0];
  for (int64_t j = 1; j < n; ++j) m = std::max(m, z[j]);
  scalar_t sum = 0;
  for (int64_t j = 0; j < n; ++j) {
    e[j] = std::exp(z[j] - m);
    sum += e[j];
  }
  sum_out = sum;
  return m + std::log(sum);
}

// The fork's KL of one row from the exp terms: its probabilities are e / sum (Caffe's Softmax divides), clamped
// at FLT_MIN (for every Dtype, as the fork does) before the log.
template <typename scalar_t>
double fork_kl(const scalar_t* es, const scalar_t* et, scalar_t sum_s, scalar_t sum_t, int64_t n) {
  const scalar_t tiny = scalar_t(std::numeric_limits<float>::min());
  scalar_t kl = 0;
  for (int64_t j = 0; j < n; ++j) {
    const scalar_t ps = es[j] / sum_s, pt = et[j] / sum_t;
    kl += pt * (std::log(std::max(pt, tiny)) - std::log(std::max(ps, tiny)));
  }
  return kl;
}

// One row: its loss (if loss_out) and/or its gradient times grad_scale (if grad_out).
template <typename scalar_t>
void row_pass(const scalar_t* s, const scalar_t* t, int64_t label, int64_t n, const Options& o,
              std::vector<scalar_t>& buf, double* loss_out, scalar_t* grad_out, scalar_t grad_scale) {
  if (o.mode == LOGIT_MATCHING) {
    double loss = 0;
    for (int64_t j = 0; j < n; ++j) {
      const scalar_t d = s[j] - t[j];
      loss += 0.5 * double(d) * double(d);
    }
    if (grad_out) {
      for (int64_t j = 0; j < n; ++j) grad_out[j] = grad_scale * (s[j] - t[j]);
    }
    if (loss_out) *loss_out = loss;
    return;
  }
  scalar_t *zs = buf.data(), *es = zs + n, *zt = es + n, *et = zt + n, *z1 = et + n, *e1 = z1 + n;
  const scalar_t T = scalar_t(o.temperature), alpha = scalar_t(o.alpha);
  const bool hard = alpha < 1;
  scalar_t sum_s, sum_t, sum_1 = 0;
  const scalar_t lse_s = exp_terms(s, scalar_t(1) / T, n, zs, es, false, sum_s);
  const scalar_t lse_t = exp_terms(t, scalar_t(1) / T, n, zt, et, o.teacher_is_prob, sum_t);
  scalar_t lse_1 = lse_s;
  if (hard && T != 1) {
    lse_1 = exp_terms(s, scalar_t(1), n, z1, e1, false, sum_1);
  } else if (hard) {
    e1 = es;
    sum_1 = sum_s;
  }
  if (loss_out) {
    double value;
    if (o.fork_report) {
      value = double(alpha) * fork_kl(es, et, sum_s, sum_t, n);
    } else {
      // KL = sum_j p_t (log p_t - log p_s) = (1/sum_t) sum_j e_t (z_t - z_s) - lse_t + lse_s
      // Row sums stay in scalar_t so the loop vectorises; rows are summed in double.
      scalar_t cross_row = 0;
      for (int64_t j = 0; j < n; ++j) cross_row += et[j] * (zt[j] - zs[j]);
      const double cross = cross_row;
      const double kl = cross / double(sum_t) - double(lse_t) + double(lse_s);
      value = double(alpha) * double(T) * double(T) * kl;
    }
    if (hard) value += (1 - double(alpha)) * (double(lse_1) - double(s[label]));
    *loss_out = value;
  }
  if (grad_out) {
    const scalar_t a = grad_scale * alpha * T / sum_s, b = grad_scale * alpha * T / sum_t;
    for (int64_t j = 0; j < n; ++j) grad_out[j] = a * es[j] - b * et[j];
    if (hard) {
      const scalar_t c = grad_scale * (1 - alpha) / sum_1;
      for (int64_t j = 0; j < n; ++j) grad_out[j] += c * e1[j];
      grad_out[label] -= grad_scale * (1 - alpha);
    }
  }
}

// Rows per task: small problems run inline on the calling thread, since waking the pool costs more than
// the work (about 32k elements per task).
int64_t row_grain(int64_t classes) { return std::max<int64_t>(16, 32768 / std::max<int64_t>(classes, 1)); }

Options make_options(double temperature, double alpha, int64_t mode, bool teacher_is_prob, int64_t ignore_label,
                     bool has_ignore, int64_t normalization, int64_t batch, bool fork_report = false) {
  return Options{temperature, alpha, mode, teacher_is_prob, ignore_label, has_ignore, normalization, batch,
                 fork_report};
}

// The checked, contiguous inputs both CPU kernels work on.
struct Rows {
  at::Tensor s, t, labels;
  int64_t rows, n;
  const int64_t* lab;  // nullptr when no labels were given
};

Rows prepare_rows(const at::Tensor& student, const at::Tensor& teacher, const at::Tensor& label, const Options& o) {
  check_inputs(student, teacher, label, o);
  Rows r{student.contiguous(), teacher.contiguous(), label.numel() ? label.to(at::kLong).contiguous() : label, 0, 0,
         nullptr};
  r.rows = r.s.size(0);
  r.n = r.s.size(1);
  r.lab = r.labels.numel() ? r.labels.data_ptr<int64_t>() : nullptr;
  return r;
}

at::Tensor forward_cpu(const at::Tensor& student, const at::Tensor& teacher, const at::Tensor& label,
                       double temperature, double alpha, int64_t mode, bool teacher_is_prob, int64_t ignore_label,
                       bool has_ignore, int64_t normalization, int64_t batch, bool fork_report) {
  Options o = make_options(temperature, alpha, mode, teacher_is_prob, ignore_label, has_ignore, normalization, batch,
                           fork_report);
  const Rows in = prepare_rows(student, teacher, label, o);
  const at::Tensor &s = in.s, &t = in.t;
  const int64_t rows = in.rows, n = in.n;
  const int64_t* lab = in.lab;
  if (lab != nullptr && (o.alpha < 1)) {
    for (int64_t r = 0; r < rows; ++r) {
      TORCH_CHECK(row_ignored(lab, r, o) || (lab[r] >= 0 && lab[r] < n), "distill_loss: label ", lab[r],
                  " of row ", r, " is outside [0, ", n, ")");
    }
  }
  double total = 0;
  AT_DISPATCH_FLOATING_TYPES(s.scalar_type(), "distill_loss_cpu", [&] {
    const scalar_t* sp = s.data_ptr<scalar_t>();
    const scalar_t* tp = t.data_ptr<scalar_t>();
    std::vector<double> partial(at::get_num_threads() + 1, 0.0);
    at::parallel_for(0, rows, row_grain(n), [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> buf(6 * n);
      double sum = 0;
      for (int64_t r = begin; r < end; ++r) {
        if (row_ignored(lab, r, o)) continue;
        double row_loss = 0;
        row_pass<scalar_t>(sp + r * n, tp + r * n, lab ? lab[r] : -1, n, o, buf, &row_loss, nullptr, 0);
        sum += row_loss;
      }
      partial[at::get_thread_num()] += sum;
    });
    for (double p : partial) total += p;
    total /= normaliser<scalar_t>(lab, rows, o);
  });
  return at::scalar_tensor(total, s.options());
}

at::Tensor backward_cpu(const at::Tensor& grad_loss, const at::Tensor& student, const at::Tensor& teacher,
                        const at::Tensor& label, double temperature, double alpha, int64_t mode, bool teacher_is_prob,
                        int64_t ignore_label, bool has_ignore, int64_t normalization, int64_t batch) {
  Options o = make_options(temperature, alpha, mode, teacher_is_prob, ignore_label, has_ignore, normalization, batch);
  const Rows in = prepare_rows(student, teacher, label, o);
  const at::Tensor &s = in.s, &t = in.t;
  const int64_t rows = in.rows, n = in.n;
  const int64_t* lab = in.lab;
  auto grad = at::empty_like(s);
  AT_DISPATCH_FLOATING_TYPES(s.scalar_type(), "distill_loss_backward_cpu", [&] {
    const scalar_t scale = scalar_t(grad_loss.item<double>() / normaliser<scalar_t>(lab, rows, o));
    const scalar_t* sp = s.data_ptr<scalar_t>();
    const scalar_t* tp = t.data_ptr<scalar_t>();
    scalar_t* gp = grad.data_ptr<scalar_t>();
    at::parallel_for(0, rows, row_grain(n), [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> buf(6 * n);
      for (int64_t r = begin; r < end; ++r) {
        if (row_ignored(lab, r, o)) {
          std::fill(gp + r * n, gp + (r + 1) * n, scalar_t(0));
          continue;
        }
        row_pass<scalar_t>(sp + r * n, tp + r * n, lab ? lab[r] : -1, n, o, buf, nullptr, gp + r * n, scale);
      }
    });
  });
  return grad;
}

// Composite (ATen) version for devices without a fused kernel (CUDA): the same math, op by op.
std::pair<at::Tensor, at::Tensor> composite_terms(const at::Tensor& s, const at::Tensor& label, const Options& o) {
  at::Tensor valid = at::ones({s.size(0)}, s.options());
  if (label.numel() && o.has_ignore) valid = (label != o.ignore_label).to(s.scalar_type());
  return {valid, valid.sum().clamp_min(1)};
}

at::Tensor norm_tensor(const at::Tensor& s, const at::Tensor& valid_count, const Options& o) {
  switch (o.normalization) {
    case FULL: return at::scalar_tensor(double(std::max<int64_t>(s.size(0), 1)), s.options());
    case VALID: return valid_count;
    case BATCH_SIZE: return at::scalar_tensor(double(std::max<int64_t>(o.batch, 1)), s.options());
    default: return at::scalar_tensor(1.0, s.options());
  }
}

at::Tensor safe_labels(const at::Tensor& label, const Options& o) {
  auto l = label.to(at::kLong);
  return o.has_ignore ? at::where(l == o.ignore_label, at::zeros_like(l), l) : l;
}

at::Tensor forward_composite(const at::Tensor& s, const at::Tensor& t, const at::Tensor& label, double temperature,
                             double alpha, int64_t mode, bool teacher_is_prob, int64_t ignore_label, bool has_ignore,
                             int64_t normalization, int64_t batch, bool fork_report) {
  Options o = make_options(temperature, alpha, mode, teacher_is_prob, ignore_label, has_ignore, normalization, batch,
                           fork_report);
  check_inputs(s, t, label, o);
  auto [valid, count] = composite_terms(s, label, o);
  at::Tensor per_row;
  if (mode == LOGIT_MATCHING) {
    per_row = 0.5 * (s - t).pow(2).sum(1);
  } else {
    const double T = temperature;
    auto log_ps = at::log_softmax(s / T, 1);
    auto zt = teacher_is_prob ? at::log(t.clamp_min(std::numeric_limits<float>::min())) : t;
    auto log_pt = at::log_softmax(zt / T, 1);
    if (fork_report) {
      const double tiny = std::numeric_limits<float>::min();
      auto ps = log_ps.exp(), pt = log_pt.exp();
      per_row = alpha * (pt * (pt.clamp_min(tiny).log() - ps.clamp_min(tiny).log())).sum(1);
    } else {
      per_row = alpha * T * T * (log_pt.exp() * (log_pt - log_ps)).sum(1);
    }
    if (alpha < 1) {
      auto nll = -at::log_softmax(s, 1).gather(1, safe_labels(label, o).unsqueeze(1)).squeeze(1);
      per_row = per_row + (1 - alpha) * nll;
    }
  }
  return (per_row * valid).sum() / norm_tensor(s, count, o);
}

at::Tensor backward_composite(const at::Tensor& grad_loss, const at::Tensor& s, const at::Tensor& t,
                              const at::Tensor& label, double temperature, double alpha, int64_t mode,
                              bool teacher_is_prob, int64_t ignore_label, bool has_ignore, int64_t normalization,
                              int64_t batch) {
  Options o = make_options(temperature, alpha, mode, teacher_is_prob, ignore_label, has_ignore, normalization, batch);
  check_inputs(s, t, label, o);
  auto [valid, count] = composite_terms(s, label, o);
  at::Tensor grad;
  if (mode == LOGIT_MATCHING) {
    grad = s - t;
  } else {
    const double T = temperature;
    auto zt = teacher_is_prob ? at::log(t.clamp_min(std::numeric_limits<float>::min())) : t;
    grad = alpha * T * (at::softmax(s / T, 1) - at::softmax(zt / T, 1));
    if (alpha < 1) {
      auto onehot = at::zeros_like(s).scatter_(1, safe_labels(label, o).unsqueeze(1), 1.0);
      grad = grad + (1 - alpha) * (at::softmax(s, 1) - onehot);
    }
  }
  return grad * valid.unsqueeze(1) * (grad_loss / norm_tensor(s, count, o));
}

// Autograd in C++, so a call costs no Python on the way forward or back (it dominates for small inputs).
class DistillFunction : public torch::autograd::Function<DistillFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& s, const at::Tensor& t,
                            const at::Tensor& label, double temperature, double alpha, int64_t mode,
                            bool teacher_is_prob, int64_t ignore_label, bool has_ignore, int64_t normalization,
                            int64_t batch, bool fork_report) {
    at::AutoDispatchBelowADInplaceOrView guard;
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("caffe_pipeline::distill_loss", "")
                         .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, double, double,
                                           int64_t, bool, int64_t, bool, int64_t, int64_t, bool)>();
    ctx->save_for_backward({s, t, label});
    ctx->saved_data["temperature"] = temperature;
    ctx->saved_data["alpha"] = alpha;
    ctx->saved_data["mode"] = mode;
    ctx->saved_data["teacher_is_prob"] = teacher_is_prob;
    ctx->saved_data["ignore_label"] = ignore_label;
    ctx->saved_data["has_ignore"] = has_ignore;
    ctx->saved_data["normalization"] = normalization;
    ctx->saved_data["batch"] = batch;
    return op.call(s, t, label, temperature, alpha, mode, teacher_is_prob, ignore_label, has_ignore, normalization,
                   batch, fork_report);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("caffe_pipeline::distill_loss_backward", "")
                         .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                           double, double, int64_t, bool, int64_t, bool, int64_t, int64_t)>();
    auto saved = ctx->get_saved_variables();
    auto& d = ctx->saved_data;
    at::Tensor grad_student;
    if (ctx->needs_input_grad(0)) {
      grad_student = op.call(grads[0], saved[0], saved[1], saved[2], d["temperature"].toDouble(),
                             d["alpha"].toDouble(), d["mode"].toInt(), d["teacher_is_prob"].toBool(),
                             d["ignore_label"].toInt(), d["has_ignore"].toBool(), d["normalization"].toInt(),
                             d["batch"].toInt());
    }
    torch::autograd::variable_list result(12);
    result[0] = grad_student;
    return result;
  }
};

at::Tensor forward_autograd(const at::Tensor& s, const at::Tensor& t, const at::Tensor& label, double temperature,
                            double alpha, int64_t mode, bool teacher_is_prob, int64_t ignore_label, bool has_ignore,
                            int64_t normalization, int64_t batch, bool fork_report) {
  return DistillFunction::apply(s, t, label, temperature, alpha, mode, teacher_is_prob, ignore_label, has_ignore,
                                normalization, batch, fork_report);
}

}  // namespace

TORCH_LIBRARY(caffe_pipeline, m) {
  m.def(
      "distill_loss(Tensor student, Tensor teacher, Tensor label, float temperature, float alpha, int mode, "
      "bool teacher_is_prob, int ignore_label, bool has_ignore, int normalization, int batch, "
      "bool fork_report=False) -> Tensor");
  m.def(
      "distill_loss_backward(Tensor grad, Tensor student, Tensor teacher, Tensor label, float temperature, "
      "float alpha, int mode, bool teacher_is_prob, int ignore_label, bool has_ignore, int normalization, "
      "int batch) -> Tensor");
}

TORCH_LIBRARY_IMPL(caffe_pipeline, CPU, m) {
  m.impl("distill_loss", &forward_cpu);
  m.impl("distill_loss_backward", &backward_cpu);
}

TORCH_LIBRARY_IMPL(caffe_pipeline, Autograd, m) { m.impl("distill_loss", &forward_autograd); }

TORCH_LIBRARY_IMPL(caffe_pipeline, CUDA, m) {
  m.impl("distill_loss", &forward_composite);
  m.impl("distill_loss_backward", &backward_composite);
}
