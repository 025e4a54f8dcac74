"""BatchNorm: y = (x - mean) / sqrt(var + eps) per channel (axis 1), over all other axes. No scale/shift (that
is a following Scale layer in Caffe).

Blobs (Caffe's order): 0 = running sum of means, 1 = running sum of variances, 2 = scale factor (shape (1,)).
The running statistics are mean = b0 / b2 and var = b1 / b2, or 0 and 0 when b2 == 0. They are buffers, not
learnable: Caffe forces their lr_mult to 0 and refuses any other value.

Batch statistics (the default in TRAIN, or `use_global_stats: false` in any phase) normalise with the biased
batch variance and update the running sums in the forward pass, even in TEST:
    b2 = maf * b2 + 1,  b0 = maf * b0 + mean,  b1 = maf * b1 + m / (m - 1) * var   (m = values per channel)
Global statistics (the default in TEST) leave the blobs alone; the diff is then dy / sqrt(var + eps).
"""

import torch

from pipeline.net.layers.base import TEST, Layer
from pipeline.net.layers.caffe_batch_norm import CaffeBatchStatsNorm
from pipeline.net.layers.registry import register
from pipeline.ops.caffe_cpu import exact_neuron
from pipeline.ops.caffe_math import sqrtf


class _BatchStatsNorm(torch.autograd.Function):
    """Normalisation by batch statistics, with Caffe's backward:
    dx = (dy - mean(dy) - mean(dy * y) * y) / sqrt(var + eps), the means taken per channel like the statistics."""

    @staticmethod
    def forward(ctx, x, eps: float):
        dims = [0, *range(2, x.dim())]
        var, mean = torch.var_mean(x, dim=dims, correction=0, keepdim=True)
        std = sqrtf(var + eps)
        y = (x - mean) / std
        ctx.dims = dims
        ctx.save_for_backward(y, std)
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    def backward(ctx, grad, _grad_mean, _grad_var):
        y, std = ctx.saved_tensors
        dims = ctx.dims
        centred = grad - grad.mean(dim=dims, keepdim=True) - (grad * y).mean(dim=dims, keepdim=True) * y
        return centred / std, None


@register("BatchNorm")
class BatchNorm(Layer):
    blobs_are_statistics = True
    draw_family = "normalisation"
    num_bottoms = (1, 1)
    num_tops = (1, 1)
    blob_names = ("mean_sum", "variance_sum", "scale_factor")

    def setup(self, bottom_shapes):
        p = self.param.batch_norm_param
        shape = tuple(bottom_shapes[0])
        # Caffe reads shape(1) as the channel count, so a blob with fewer than 2 axes aborts there.
        self.check(
            len(shape) >= 2,
            f"bottom '{self.bottom_names[0]}' needs at least 2 axes (N, C, ...), got shape {list(shape)}",
        )
        for i, spec in enumerate(self.param.param[:3]):
            self.check(
                spec.lr_mult == 0,
                f"param {i} has lr_mult {spec.lr_mult}: batch normalization statistics "
                "cannot be learned (Caffe requires lr_mult 0)",
            )
        self.use_global_stats = p.use_global_stats if p.HasField("use_global_stats") else self.phase == TEST
        self.moving_average_fraction = float(p.moving_average_fraction)
        self.eps = float(p.eps)
        channels = shape[1]
        self.add_blob("mean_sum", (channels,), learnable=False)
        self.add_blob("variance_sum", (channels,), learnable=False)
        self.add_blob("scale_factor", (1,), learnable=False)
        return [shape]

    def forward(self, x):
        if self.use_global_stats:
            return self._normalise_global(x)
        if exact_neuron(x):
            blobs = (self.mean_sum, self.variance_sum, self.scale_factor)
            return CaffeBatchStatsNorm.apply(x, self.eps, blobs, self.moving_average_fraction)
        y, mean, var = _BatchStatsNorm.apply(x, self.eps)
        self._update_running_stats(x, mean, var)
        return y

    def _normalise_global(self, x):
        factor = self.scale_factor
        inverse = torch.where(factor == 0, torch.zeros_like(factor), 1.0 / factor)
        view = (1, -1) + (1,) * (x.dim() - 2)
        mean = (self.mean_sum * inverse).to(x.dtype).view(view)
        var = (self.variance_sum * inverse).to(x.dtype).view(view)
        return (x - mean) / sqrtf(var + self.eps)

    @torch.no_grad()
    def _update_running_stats(self, x, mean, var):
        maf = self.moving_average_fraction
        m = x.numel() // x.shape[1]
        correction = m / (m - 1) if m > 1 else 1.0
        self.scale_factor.mul_(maf).add_(1)
        self.mean_sum.mul_(maf).add_(mean.flatten().to(self.mean_sum.dtype))
        self.variance_sum.mul_(maf).add_((var.flatten() * correction).to(self.variance_sum.dtype))

    def extra_repr(self):
        return (
            f"{super().extra_repr()}, use_global_stats={self.use_global_stats}, "
            f"moving_average_fraction={self.moving_average_fraction}, eps={self.eps}"
        )

    def export_forward(self, x: torch.Tensor):
        # Export (DeployModule): batch_norm's TEST forward without state a tracer should not see.
        if self.use_global_stats:
            return self._normalise_global(x)
        dims = [0, *range(2, x.dim())]
        var, mean = torch.var_mean(x, dim=dims, correction=0, keepdim=True)
        return (x - mean) / torch.sqrt(var + self.eps)
