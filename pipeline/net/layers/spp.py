"""SPP: spatial pyramid pooling, built as Caffe builds it from Pooling layers.

Level l (0 .. pyramid_height - 1) splits H and W into 2^l bins: kernel = ceil(size / bins), pad =
(kernel * bins - size + 1) // 2, stride = kernel, pooled with Caffe's Pooling rules (ceil rounding, padding clip,
AVE divisor). Each level is flattened to (N, C * bins_h * bins_w) and the levels are concatenated in order.
With pyramid_height 1 the top is the single pooling output itself, still 4-D (N, C, 1, 1), as in Caffe.
The pooling geometry depends on H and W, so it is rebuilt when a bottom of another size arrives.
"""

import math

import torch

from pipeline.exact import caffe_blas
from pipeline.net.layers.base import Layer
from pipeline.net.layers.pooling import Pooling
from pipeline.net.layers.registry import register
from pipeline.net.layers.split import CaffeOrderSplit
from pipeline.proto import caffe_pb2

_METHODS = {
    caffe_pb2.SPPParameter.MAX: caffe_pb2.PoolingParameter.MAX,
    caffe_pb2.SPPParameter.AVE: caffe_pb2.PoolingParameter.AVE,
    caffe_pb2.SPPParameter.STOCHASTIC: caffe_pb2.PoolingParameter.STOCHASTIC,
}


def spp_level_geometry(level: int, height: int, width: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """(kernel, pad) of pyramid level `level` for an H x W bottom; the stride equals the kernel."""
    bins = 2**level
    kernel = tuple(math.ceil(size / bins) for size in (height, width))
    pad = tuple((k * bins - size + 1) // 2 for k, size in zip(kernel, (height, width)))
    return kernel, pad


@register("SPP")
class SPP(Layer):
    draw_family = "pooling"
    num_bottoms = (1, 1)
    num_tops = (1, 1)

    def setup(self, bottom_shapes):
        shape = bottom_shapes[0]
        p = self.param.spp_param
        self.check(len(shape) == 4, f"bottom '{self.bottom_names[0]}' {list(shape)} must be 4-D (N, C, H, W)")
        self.check(p.pyramid_height >= 1, "spp_param.pyramid_height must be at least 1")
        self.height = p.pyramid_height
        self.method = _METHODS[p.pool]
        # Plain dict, not submodules: the helpers hold no tensors and are not layers of the net.
        self._levels: dict[tuple[int, int], list[Pooling]] = {}
        pools = self.levels(shape[2], shape[3])
        tops = [pool.output_shape(shape[2], shape[3]) for pool in pools]
        if self.height == 1:
            return [(shape[0], shape[1], *tops[0])]
        return [(shape[0], shape[1] * sum(h * w for h, w in tops))]

    def levels(self, height: int, width: int) -> list[Pooling]:
        if (height, width) not in self._levels:
            self._levels[(height, width)] = [self._pooling(level, height, width) for level in range(self.height)]
        return self._levels[(height, width)]

    def _pooling(self, level, height, width) -> Pooling:
        (kh, kw), (ph, pw) = spp_level_geometry(level, height, width)
        self.check(
            ph < kh and pw < kw,
            f"a {height}x{width} bottom is too small for pyramid_height {self.height}: level {level} "
            f"would need pad ({ph}, {pw}) >= kernel ({kh}, {kw})",
        )
        pooling_param = caffe_pb2.PoolingParameter(
            pool=self.method, kernel_h=kh, kernel_w=kw, stride_h=kh, stride_w=kw, pad_h=ph, pad_w=pw
        )
        param = caffe_pb2.LayerParameter(
            name=f"{self.name}/level{level}",
            type="Pooling",
            bottom=self.bottom_names,
            top=[f"{self.name}/level{level}"],
            pooling_param=pooling_param,
        )
        pool = Pooling(param, self.phase)
        pool.generator = self.generator
        pool.setup([(1, 1, height, width)])
        return pool

    def forward(self, x):
        pools = self.levels(x.shape[2], x.shape[3])
        if self.height == 1:
            return pools[0](x)
        # Caffe's internal Split feeds the levels: in the bit-exact mode their gradients add in its order.
        inputs = CaffeOrderSplit.apply(x, len(pools)) if caffe_blas.active(x) and x.requires_grad else [x] * len(pools)
        return torch.cat([pool(level).flatten(1) for pool, level in zip(pools, inputs)], dim=1)

    def export_forward(self, x: torch.Tensor):
        # Export (DeployModule): spp's TEST forward without state a tracer should not see.
        pools = self.levels(int(x.shape[2]), int(x.shape[3]))
        if self.height == 1:
            return pools[0].export_forward(x)
        return torch.cat([pool.export_forward(x).flatten(1) for pool in pools], dim=1)
