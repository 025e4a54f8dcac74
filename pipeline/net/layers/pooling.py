"""Pooling: MAX, AVE (and STOCHASTIC) with Caffe's output size and padding rules.

Caffe rounds the output size up (ceil), then drops the last window if it would start inside the padding.
AVE divides by the window clipped to the padded extent, not by the kernel area and not by the valid area.
MAX ignores padding. An optional second top holds the argmax (flat h*w index, as float) of every output.
"""

import math

import torch
import torch.nn.functional as F

from pipeline.net.layers.base import TRAIN, Layer
from pipeline.net.layers.registry import register
from pipeline.proto import caffe_pb2

P = caffe_pb2.PoolingParameter


def caffe_pooled_size(size: int, kernel: int, stride: int, pad: int) -> int:
    pooled = int(math.ceil((size + 2 * pad - kernel) / stride)) + 1
    if pad and (pooled - 1) * stride >= size + pad:
        pooled -= 1
    return pooled


@register("Pooling")
class Pooling(Layer):
    draw_family = "pooling"
    num_bottoms = (1, 1)
    num_tops = (1, 2)

    def setup(self, bottom_shapes):
        p = self.param.pooling_param
        shape = bottom_shapes[0]
        self.check(len(shape) == 4, f"needs a 4-D bottom (N, C, H, W), got {list(shape)}")
        self.method = p.pool
        self.global_pooling = p.global_pooling
        if p.global_pooling:
            self.check(
                not (p.HasField("kernel_size") or p.HasField("kernel_h")),
                "with global_pooling the kernel size cannot be given",
            )
            self.kernel = None
        elif p.HasField("kernel_h") or p.HasField("kernel_w"):
            self.check(not p.HasField("kernel_size"), "give either kernel_size or kernel_h/kernel_w")
            self.kernel = (p.kernel_h, p.kernel_w)
        else:
            self.check(p.HasField("kernel_size"), "kernel_size (or kernel_h and kernel_w) is required")
            self.kernel = (p.kernel_size, p.kernel_size)
        self.pad = (p.pad_h, p.pad_w) if p.HasField("pad_h") or p.HasField("pad_w") else (p.pad, p.pad)
        self.stride = (p.stride_h, p.stride_w) if p.HasField("stride_h") or p.HasField("stride_w") else (p.stride,) * 2
        if self.global_pooling:
            self.check(self.pad == (0, 0) and self.stride == (1, 1), "global pooling takes no pad or stride")
        else:
            self.check(all(k > 0 for k in self.kernel), "kernel size must be positive")
            self.check(all(pd < k for pd, k in zip(self.pad, self.kernel)), "pad must be smaller than the kernel")
        self.check(len(self.top_names) == 1 or self.method == P.MAX, "only MAX pooling has a mask top")
        self._divisors: dict = {}
        self._plans: dict = {}
        out = self.output_shape(shape[2], shape[3])
        return [(shape[0], shape[1], *out)] * len(self.top_names)

    def geometry(self, h: int, w: int):
        kernel = (h, w) if self.global_pooling else self.kernel
        out = tuple(caffe_pooled_size(s, k, st, pd) for s, k, st, pd in zip((h, w), kernel, self.stride, self.pad))
        return kernel, out

    def output_shape(self, h, w):
        return self.geometry(h, w)[1]

    def _padded(self, x, kernel, out, value):
        # Pad (or crop) the far side so that plain floor-mode pooling yields exactly Caffe's output size.
        (ph, pw), (sh, sw) = self.pad, self.stride
        far_h = (out[0] - 1) * sh + kernel[0] - x.shape[2] - ph
        far_w = (out[1] - 1) * sw + kernel[1] - x.shape[3] - pw
        return F.pad(x, (pw, far_w, ph, far_h), value=value)

    def forward(self, x):
        h, w = x.shape[2], x.shape[3]
        plan = self._plans.get((h, w))
        if plan is None:  # the geometry depends only on the input size: work it out once per size
            kernel, out = self.geometry(h, w)
            plan = self._plans[(h, w)] = (kernel, out, self._torch_agrees((h, w), kernel, out))
        kernel, out, agrees = plan
        if self.method != P.STOCHASTIC and agrees:
            # torch's ceil mode clips windows and AVE divisors exactly as Caffe does, so the native kernels
            # give Caffe's numbers whenever they give Caffe's output size.
            if self.method == P.AVE:
                return F.avg_pool2d(x, kernel, self.stride, self.pad, ceil_mode=True, count_include_pad=True)
            if len(self.top_names) == 1:
                return F.max_pool2d(x, kernel, self.stride, self.pad, ceil_mode=True)
            y, idx = F.max_pool2d(x, kernel, self.stride, self.pad, ceil_mode=True, return_indices=True)
            return y, idx.to(x.dtype)
        if self.method == P.MAX:
            return self._max(x, kernel, out)
        if self.method == P.AVE:
            return self._ave(x, kernel, out)
        return self._stochastic(x, kernel, out)

    def _torch_agrees(self, size, kernel, out) -> bool:
        for n, k, s, p, o in zip(size, kernel, self.stride, self.pad, out):
            if 2 * p > k:
                return False
            torch_out = -(-(n + 2 * p - k) // s) + 1
            if (torch_out - 1) * s >= n + p:
                torch_out -= 1
            if torch_out != o:
                return False
        return True

    def _max(self, x, kernel, out):
        padded = self._padded(x, kernel, out, float("-inf"))
        if len(self.top_names) == 1:
            return F.max_pool2d(padded, kernel, self.stride)
        y, idx = F.max_pool2d(padded, kernel, self.stride, return_indices=True)
        width = padded.shape[3]
        row, col = idx // width - self.pad[0], idx % width - self.pad[1]
        return y, (row * x.shape[3] + col).to(x.dtype)

    def _ave(self, x, kernel, out):
        padded = self._padded(x, kernel, out, 0.0)
        sums = F.avg_pool2d(padded, kernel, self.stride, divisor_override=1)
        return sums / self._divisor(x.shape[2], x.shape[3], kernel, out, x)

    def _divisor(self, h, w, kernel, out, like):
        key = (h, w, like.dtype, like.device)
        if key not in self._divisors:
            sizes = []
            for size, k, s, p, n in zip((h, w), kernel, self.stride, self.pad, out):
                start = torch.arange(n) * s - p
                end = torch.clamp(start + k, max=size + p)
                sizes.append((end - start).to(like.dtype))
            self._divisors[key] = (sizes[0][:, None] * sizes[1][None, :]).to(like.device)
        return self._divisors[key]

    def _stochastic(self, x, kernel, out):
        # Caffe (GPU only): training samples one activation per window with probability proportional to it;
        # testing takes the activation-weighted average sum(a^2) / sum(a).
        padded = self._padded(x, kernel, out, 0.0)
        patches = F.unfold(padded, kernel, stride=self.stride)  # (N, C*kh*kw, L)
        n, c = x.shape[:2]
        patches = patches.view(n, c, kernel[0] * kernel[1], -1)
        if self.phase == TRAIN:
            probs = patches / patches.sum(dim=2, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)
            flat = probs.permute(0, 1, 3, 2).reshape(-1, probs.shape[2])
            pick = torch.multinomial(flat.clamp_min(0) + (flat.sum(1, keepdim=True) == 0), 1, generator=None)
            chosen = patches.permute(0, 1, 3, 2).reshape(-1, probs.shape[2]).gather(1, pick)
            result = chosen.view(n, c, -1)
        else:
            result = (patches * patches).sum(2) / patches.sum(2).clamp_min(torch.finfo(x.dtype).tiny)
        return result.view(n, c, *out)

    def export_forward(self, x: torch.Tensor):
        # Export (DeployModule): pooling's TEST forward without state a tracer should not see.
        """Caffe's pooling as ops whose ONNX meaning is unambiguous: explicit padding to exactly Caffe's windows,
        then floor-mode pooling. (ONNX's ceil_mode output size keeps a last window that starts in the padding, which
        Caffe and torch drop: onnx's shape inference then disagrees with the graph, and AVE divisors of clipped
        windows are the runtime's choice.) AVE divides the window sums by Caffe's per-position divisor, a constant."""
        P = caffe_pb2.PoolingParameter
        if self.method == P.STOCHASTIC or len(self.top_names) > 1:
            return self(x)  # TEST-phase STOCHASTIC and the argmax top: the self's own ops
        h, w = int(x.shape[2]), int(x.shape[3])  # static: only the batch axis is dynamic
        kernel, out = self.geometry(h, w)
        (ph, pw), (sh, sw) = self.pad, self.stride
        far_h = (out[0] - 1) * sh + kernel[0] - h - ph
        far_w = (out[1] - 1) * sw + kernel[1] - w - pw
        padded = (ph, pw, far_h, far_w) != (0, 0, 0, 0)
        if self.method == P.MAX:
            if padded:
                x = F.pad(x, (pw, far_w, ph, far_h), value=float("-inf"))
            return F.max_pool2d(x, kernel, self.stride)
        if not padded:
            return F.avg_pool2d(x, kernel, self.stride)
        sums = F.avg_pool2d(F.pad(x, (pw, far_w, ph, far_h)), kernel, self.stride) * float(kernel[0] * kernel[1])
        divisor = pool_divisor(h, w, kernel, self.stride, self.pad, out)
        return sums / divisor.to(x.dtype)


def pool_divisor(h, w, kernel, stride, pad, out) -> torch.Tensor:
    # A fresh constant per call (the layer caches its divisor; a cache filled while tracing would hold a fake).
    sizes = []
    for size, k, s, p, n in zip((h, w), kernel, stride, pad, out):
        sizes.append([min(i * s - p + k, size + p) - (i * s - p) for i in range(n)])
    return torch.tensor([[a * b for b in sizes[1]] for a in sizes[0]], dtype=torch.float32)
