// ConvolutionLayer<float> as Caffe's CPU code runs it, for the bit-exact mode (pipeline/exact/caffe_blas.py): Caffe's
// im2col_cpu / col2im_cpu and BaseConvolutionLayer's loop over images and groups, calling the OpenBLAS that
// pipeline/exact/caffe_blas.py loaded (Caffe's library, not one linked here) through the addresses it passes.
// Built into the same op library as caffe_cpu.cpp (pipeline/ops/caffe_cpu.py).

#include <ATen/ATen.h>
#include <torch/library.h>

#include <cstdint>
#include <tuple>
#include <vector>

namespace {

// Caffe's im2col_cpu / col2im_cpu (util/im2col.cpp) on one (C, H, W) image: the column layout of the bit-exact
// mode's 2-D convolutions and, for col2im, the order in which overlapping patches add up. Here, not torch's
// unfold/fold, because those cost ~50 us a call on LeNet's small images, half an exact-mode iteration.
struct Geometry {
  int64_t kernel_h, kernel_w, pad_h, pad_w, stride_h, stride_w, dilation_h, dilation_w;
  int64_t out(int64_t size, int64_t kernel, int64_t pad, int64_t stride, int64_t dilation) const {
    return (size + 2 * pad - (dilation * (kernel - 1) + 1)) / stride + 1;
  }
};

Geometry geometry(at::IntArrayRef kernel, at::IntArrayRef pad, at::IntArrayRef stride, at::IntArrayRef dilation) {
  TORCH_CHECK(kernel.size() == 2 && pad.size() == 2 && stride.size() == 2 && dilation.size() == 2,
              "caffe_im2col/caffe_col2im: 2-D geometry expected");
  return {kernel[0], kernel[1], pad[0], pad[1], stride[0], stride[1], dilation[0], dilation[1]};
}

bool inside(int64_t a, int64_t b) { return static_cast<uint64_t>(a) < static_cast<uint64_t>(b); }

// Visits the column buffer's entries in Caffe's order (channel, kernel row, kernel column, output row, output
// column), passing each one's offset in the image, or -1 where the patch lies in the padding.
template <typename Visit>
void walk_columns(const Geometry& g, int64_t channels, int64_t height, int64_t width, Visit visit) {
  const int64_t out_h = g.out(height, g.kernel_h, g.pad_h, g.stride_h, g.dilation_h);
  const int64_t out_w = g.out(width, g.kernel_w, g.pad_w, g.stride_w, g.dilation_w);
  for (int64_t c = 0; c < channels; ++c) {
    for (int64_t kr = 0; kr < g.kernel_h; ++kr) {
      for (int64_t kc = 0; kc < g.kernel_w; ++kc) {
        int64_t row = -g.pad_h + kr * g.dilation_h;
        for (int64_t oh = 0; oh < out_h; ++oh, row += g.stride_h) {
          int64_t column = -g.pad_w + kc * g.dilation_w;
          for (int64_t ow = 0; ow < out_w; ++ow, column += g.stride_w) {
            visit(inside(row, height) && inside(column, width) ? (c * height + row) * width + column : -1);
          }
        }
      }
    }
  }
}

at::Tensor caffe_im2col_cpu(const at::Tensor& image, at::IntArrayRef kernel, at::IntArrayRef pad,
                            at::IntArrayRef stride, at::IntArrayRef dilation) {
  TORCH_CHECK(image.dim() == 3 && image.scalar_type() == at::kFloat, "caffe_im2col: a float (C, H, W) image");
  const Geometry g = geometry(kernel, pad, stride, dilation);
  auto in = image.contiguous();
  const int64_t channels = in.size(0), height = in.size(1), width = in.size(2);
  const int64_t out_h = g.out(height, g.kernel_h, g.pad_h, g.stride_h, g.dilation_h);
  const int64_t out_w = g.out(width, g.kernel_w, g.pad_w, g.stride_w, g.dilation_w);
  auto col = at::empty({channels * g.kernel_h * g.kernel_w, out_h * out_w}, in.options());
  const float* im = in.data_ptr<float>();
  float* dst = col.data_ptr<float>();
  walk_columns(g, channels, height, width, [&](int64_t at) { *dst++ = at < 0 ? 0.f : im[at]; });
  return col;
}

at::Tensor caffe_col2im_cpu(const at::Tensor& col, at::IntArrayRef image_shape, at::IntArrayRef kernel,
                            at::IntArrayRef pad, at::IntArrayRef stride, at::IntArrayRef dilation) {
  TORCH_CHECK(col.dim() == 2 && col.scalar_type() == at::kFloat && image_shape.size() == 3,
              "caffe_col2im: float columns and a (C, H, W) image shape");
  const Geometry g = geometry(kernel, pad, stride, dilation);
  const int64_t channels = image_shape[0], height = image_shape[1], width = image_shape[2];
  const int64_t out_h = g.out(height, g.kernel_h, g.pad_h, g.stride_h, g.dilation_h);
  const int64_t out_w = g.out(width, g.kernel_w, g.pad_w, g.stride_w, g.dilation_w);
  TORCH_CHECK(col.size(0) == channels * g.kernel_h * g.kernel_w && col.size(1) == out_h * out_w,
              "caffe_col2im: columns ", col.sizes(), " do not match the image and geometry");
  auto in = col.contiguous();
  auto image = at::zeros({channels, height, width}, in.options());
  const float* src = in.data_ptr<float>();
  float* im = image.data_ptr<float>();
  walk_columns(g, channels, height, width, [&](int64_t at) {
    if (at >= 0) im[at] += *src;
    ++src;
  });
  return image;
}

// ConvolutionLayer<float>'s CPU forward and backward for (N, C, H, W), the loop over images and groups of
// BaseConvolutionLayer (forward_cpu_gemm, forward_cpu_bias, backward_cpu_bias, weight_cpu_gemm,
// backward_cpu_gemm) with Caffe's im2col/col2im above, calling the OpenBLAS that pipeline/exact/caffe_blas.py loaded
// through the cblas_sgemm / cblas_sgemv addresses it passes (the library is Caffe's, not one linked here).
using Sgemm = void (*)(int, int, int, int, int, int, float, const float*, int, const float*, int, float, float*, int);
using Sgemv = void (*)(int, int, int, int, float, const float*, int, const float*, int, float, float*, int);
constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;

void gemm(Sgemm f, bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a, const float* b,
          float beta, float* c) {
  f(kRowMajor, ta ? kTrans : kNoTrans, tb ? kTrans : kNoTrans, m, n, k, alpha, a, ta ? m : k, b, tb ? k : n, beta,
    c, n);
}

at::Tensor caffe_conv2d_forward_cpu(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                                    at::IntArrayRef pad, at::IntArrayRef stride, at::IntArrayRef dilation, int64_t group,
                                    int64_t sgemm_address) {
  const auto sgemm = reinterpret_cast<Sgemm>(sgemm_address);
  auto in = x.contiguous(), w = weight.contiguous();
  const int64_t num = in.size(0), channels = in.size(1), out_channels = w.size(0);
  const std::vector<int64_t> kernel = {w.size(2), w.size(3)};
  const Geometry g = geometry(kernel, pad, stride, dilation);
  const int64_t out_h = g.out(in.size(2), g.kernel_h, g.pad_h, g.stride_h, g.dilation_h);
  const int64_t out_w = g.out(in.size(3), g.kernel_w, g.pad_w, g.stride_w, g.dilation_w);
  const int64_t spatial = out_h * out_w, kernel_dim = w[0].numel(), m = out_channels / group;
  auto top = at::empty({num, out_channels, out_h, out_w}, in.options());
  auto ones = at::ones({spatial}, in.options());
  at::Tensor b = bias.has_value() ? bias->contiguous() : at::Tensor();
  for (int64_t i = 0; i < num; ++i) {
    auto col = caffe_im2col_cpu(in[i], kernel, pad, stride, dilation);
    float* out = top.data_ptr<float>() + i * out_channels * spatial;
    for (int64_t k = 0; k < group; ++k) {
      gemm(sgemm, false, false, m, spatial, kernel_dim, 1.f, w.data_ptr<float>() + k * m * kernel_dim,
           col.data_ptr<float>() + k * kernel_dim * spatial, 0.f, out + k * m * spatial);
    }
    if (b.defined()) {
      gemm(sgemm, false, false, out_channels, spatial, 1, 1.f, b.data_ptr<float>(), ones.data_ptr<float>(), 1.f, out);
    }
  }
  return top;
}

// Returns (bottom diff or an empty tensor, weight diff, bias diff): the diffs start from the given ones (what
// earlier sub-batches or sharing layers left) and add each image's gradient, as Caffe's beta-1 calls do.
std::tuple<at::Tensor, at::Tensor, at::Tensor> caffe_conv2d_backward_cpu(
    const at::Tensor& top_diff, const at::Tensor& x, const at::Tensor& weight,
    const c10::optional<at::Tensor>& weight_diff, const c10::optional<at::Tensor>& bias_diff, bool input_diff,
    at::IntArrayRef pad, at::IntArrayRef stride, at::IntArrayRef dilation, int64_t group, int64_t sgemm_address,
    int64_t sgemv_address) {
  const auto sgemm = reinterpret_cast<Sgemm>(sgemm_address);
  const auto sgemv = reinterpret_cast<Sgemv>(sgemv_address);
  auto dy = top_diff.contiguous(), in = x.contiguous(), w = weight.contiguous();
  const int64_t num = in.size(0), channels = in.size(1), out_channels = w.size(0);
  const std::vector<int64_t> kernel = {w.size(2), w.size(3)};
  const int64_t spatial = dy.size(2) * dy.size(3), kernel_dim = w[0].numel(), m = out_channels / group;
  at::Tensor gw = weight_diff.has_value() ? weight_diff->contiguous().clone() : at::Tensor();
  at::Tensor gb = bias_diff.has_value() ? bias_diff->contiguous().clone() : at::Tensor();
  at::Tensor gx = input_diff ? at::empty_like(in) : at::Tensor();
  if (gb.defined()) {
    auto ones = at::ones({spatial}, in.options());
    for (int64_t i = 0; i < num; ++i) {
      sgemv(kRowMajor, kNoTrans, out_channels, spatial, 1.f, dy.data_ptr<float>() + i * out_channels * spatial,
            spatial, ones.data_ptr<float>(), 1, 1.f, gb.data_ptr<float>(), 1);
    }
  }
  auto col_diff = at::empty({channels * kernel[0] * kernel[1], spatial}, in.options());
  for (int64_t i = 0; i < num && (gw.defined() || gx.defined()); ++i) {
    const float* dy_i = dy.data_ptr<float>() + i * out_channels * spatial;
    if (gw.defined()) {
      auto col = caffe_im2col_cpu(in[i], kernel, pad, stride, dilation);
      for (int64_t k = 0; k < group; ++k) {
        gemm(sgemm, false, true, m, kernel_dim, spatial, 1.f, dy_i + k * m * spatial,
             col.data_ptr<float>() + k * kernel_dim * spatial, 1.f, gw.data_ptr<float>() + k * m * kernel_dim);
      }
    }
    if (gx.defined()) {
      for (int64_t k = 0; k < group; ++k) {
        gemm(sgemm, true, false, kernel_dim, spatial, m, 1.f, w.data_ptr<float>() + k * m * kernel_dim,
             dy_i + k * m * spatial, 0.f, col_diff.data_ptr<float>() + k * kernel_dim * spatial);
      }
      gx[i].copy_(caffe_col2im_cpu(col_diff, in[i].sizes(), kernel, pad, stride, dilation));
    }
  }
  return {gx, gw, gb};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(caffe_pipeline, m) {
  m.def("caffe_im2col(Tensor image, int[] kernel, int[] pad, int[] stride, int[] dilation) -> Tensor");
  m.def("caffe_col2im(Tensor col, int[] image_shape, int[] kernel, int[] pad, int[] stride, int[] dilation) -> Tensor");
  m.def(
      "caffe_conv2d_forward(Tensor x, Tensor weight, Tensor? bias, int[] pad, int[] stride, int[] dilation, "
      "int group, int sgemm) -> Tensor");
  m.def(
      "caffe_conv2d_backward(Tensor top_diff, Tensor x, Tensor weight, Tensor? weight_diff, Tensor? bias_diff, "
      "bool input_diff, int[] pad, int[] stride, int[] dilation, int group, int sgemm, int sgemv) "
      "-> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(caffe_pipeline, CPU, m) {
  m.impl("caffe_im2col", &caffe_im2col_cpu);
  m.impl("caffe_col2im", &caffe_col2im_cpu);
  m.impl("caffe_conv2d_forward", &caffe_conv2d_forward_cpu);
  m.impl("caffe_conv2d_backward", &caffe_conv2d_backward_cpu);
}
