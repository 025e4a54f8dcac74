"""Caffe's CPU random numbers for its fillers: Boost's mt19937 seeded with the solver's random_seed, and
boost::uniform_real<float> as caffe_rng_uniform calls it (the upper bound moved to the next float up).

With a seed, in the bit-exact mode (pipeline/caffe_blas.py), the uniform, xavier and positive_unitball fillers
draw exactly Caffe's numbers in Caffe's order, so a net such as LeNet (xavier weights, constant biases) starts
from Caffe's very weights without its .caffemodel. Boost's gaussian (a ziggurat) is not reproduced: gaussian
and msra fillers draw from torch's generator instead, and a uniform filler after them no longer follows Caffe's
stream.
"""

from __future__ import annotations

import numpy as np
import torch

f32 = np.float32
#: (eng.max() - eng.min()) + 1 for mt19937, as boost::uniform_real computes it in float.
_DIVISOR = f32(4294967295) + f32(1)


class CaffeRNG:
    def __init__(self, seed: int):
        self._engine = np.random.MT19937(0)
        self._engine._legacy_seeding(seed)  # mt19937(seed): the classic init_genrand, as boost::mt19937 does
        # For what this class does not reproduce (gaussian draws): torch's generator, seeded alike.
        self.torch = torch.Generator().manual_seed(seed)

    def uniform(self, count: int, low: float, high: float) -> np.ndarray:
        """caffe_rng_uniform<float>(count, low, high): numerator / divisor * (max - min) + min in float, redrawn
        while not below max = nextafter(high)."""
        low = f32(low)
        top = np.nextafter(f32(high), f32(np.inf), dtype=np.float32)
        out = np.empty(count, np.float32)
        filled = 0
        while filled < count:
            raw = self._engine.random_raw(count - filled).astype(np.uint32)
            values = raw.astype(np.float32) / _DIVISOR * (top - low) + low
            kept = values[values < top]
            out[filled : filled + kept.size] = kept
            filled += kept.size
        return out
