"""Caffe's CPU random numbers for its fillers: Boost's mt19937 seeded with the solver's random_seed, and the
Boost distributions caffe_rng_uniform / caffe_rng_gaussian / caffe_rng_bernoulli use, in float.

With a seed, in the bit-exact mode (pipeline/exact/caffe_blas.py), every filler draws exactly Caffe's numbers in
Caffe's order, so a net starts from Caffe's very weights without its .caffemodel:
  uniform_real<float>(a, nextafter(b)):  u / 2^32 * (max - min) + min, redrawn while not below max;
  normal_distribution<float>:             Boost's ziggurat (128 layers, pipeline/exact/caffe_rng_tables.py), its tail
                                          from two exponentials, themselves Boost's ziggurat (256 layers);
  bernoulli_distribution<float>(p):       u <= p * (2^32 - 1).
"""

from __future__ import annotations

import functools
from decimal import Decimal, localcontext

import numpy as np

from pipeline.exact.caffe_rng_tables import NORMAL_X, NORMAL_Y
from pipeline.ops.libm import float_libm

f32 = np.float32
_TWO_32 = f32(4294967295) + f32(1)  # (eng.max() - eng.min()) + 1 in float
_INV_TWO_24 = f32(2.0**-24)
_INV_TWO_32 = f32(2.0**-32)
_NORMAL_XF = np.array(NORMAL_X, dtype=np.float32)


@functools.cache
def _exponential_tables() -> tuple[list[float], list[float]]:
    """Boost's 256-layer ziggurat for exp(-x) (Marsaglia and Tsang's r and v), computed to 50 digits in a local
    decimal context (the process's own precision is left alone), once, on the first exponential draw."""
    with localcontext() as context:
        context.prec = 50
        r, v = Decimal("7.69711747013104972"), Decimal("0.0039496598225815571993")
        x = [v * r.exp(), r]
        for i in range(1, 255):
            x.append(-(v / x[i] + (-x[i]).exp()).ln())
        x.append(Decimal(0))
        return [float(d) for d in x], [0.0] + [float((-d).exp()) for d in x[1:256]] + [1.0]


class CaffeRNG:
    def __init__(self, seed: int):
        self._engine = np.random.MT19937(0)
        self._engine._legacy_seeding(seed)  # mt19937(seed): the classic init_genrand, as boost::mt19937 does
        self._stream = np.empty(0, np.uint32)
        self._pos = 0

    # ----- the raw 32-bit stream (vectorised draws look ahead, then consume what they used) --------------------
    def _peek(self, count: int) -> np.ndarray:
        if self._pos + count > self._stream.size:
            more = self._engine.random_raw(max(count, 4096)).astype(np.uint32)
            self._stream = np.concatenate((self._stream[self._pos :], more))
            self._pos = 0
        return self._stream[self._pos : self._pos + count]

    def _next(self) -> int:
        value = int(self._peek(1)[0])
        self._pos += 1
        return value

    # ----- boost::uniform_real<float>, uniform_01<float>, bernoulli_distribution<float> ---------------------------
    def uniform(self, count: int, low: float, high: float) -> np.ndarray:
        """caffe_rng_uniform<float>(count, low, high)."""
        low = f32(low)
        top = np.nextafter(f32(high), f32(np.inf), dtype=np.float32)
        out = np.empty(count, np.float32)
        filled = 0
        while filled < count:
            raw = self._peek(count - filled)
            values = raw.astype(np.float32) / _TWO_32 * (top - low) + low
            kept = values[values < top]
            out[filled : filled + kept.size] = kept
            filled += kept.size
            self._pos += raw.size
        return out

    def _uniform01(self) -> np.float32:
        while True:
            value = f32(f32(self._next()) * _INV_TWO_32)
            if value < f32(1):
                return value

    def bernoulli(self, count: int, p: float) -> np.ndarray:
        """caffe_rng_bernoulli<float>(count, p) as 0/1 floats."""
        if f32(p) == 0:
            return np.zeros(count, np.float32)
        raw = self._peek(count)
        self._pos += count
        return (raw.astype(np.float32) <= f32(p) * f32(4294967295)).astype(np.float32)

    # ----- boost::normal_distribution<float> ---------------------------------------------------------------------
    def gaussian(self, count: int, mean: float, std: float) -> np.ndarray:
        """caffe_rng_gaussian<float>(count, mean, std): unit normal * std + mean in float. Most draws take the
        ziggurat's fast path, done here a window at a time; the others follow Boost draw by draw."""
        mean, std = f32(mean), f32(std)
        units = np.empty(count, np.float32)
        filled = 0
        while filled < count:
            raw = self._peek(min(count - filled, 4096))
            layer = (raw & 255) >> 1
            x = (raw >> 8).astype(np.float32) * _INV_TWO_24 * _NORMAL_XF[layer]
            sign = np.where(raw & 1, f32(1), f32(-1))
            fast = x.astype(np.float64) < np.asarray(NORMAL_X)[layer + 1]
            stop = int(np.argmin(fast)) if not fast.all() else raw.size
            units[filled : filled + stop] = x[:stop] * sign[:stop]
            filled += stop
            self._pos += stop
            if filled < count and stop < raw.size:
                units[filled] = self._unit_normal(self._next())
                filled += 1
        return units * std + mean

    def _unit_normal(self, first: int) -> np.float32:
        u = first
        while True:
            i, sign = (u & 255) >> 1, f32((u & 1) * 2 - 1)
            x = f32(f32(u >> 8) * _INV_TWO_24 * f32(NORMAL_X[i]))
            if float(x) < NORMAL_X[i + 1]:
                return f32(x * sign)
            if i == 0:
                return f32(self._normal_tail() * sign)
            y01 = self._uniform01()
            y = f32(f32(NORMAL_Y[i]) + f32(y01 * f32(NORMAL_Y[i + 1] - NORMAL_Y[i])))
            towards = f32(f32(NORMAL_X[i]) - x)
            tangent = f32(f32(NORMAL_Y[i]) + f32(f32(towards * f32(NORMAL_Y[i])) * f32(NORMAL_X[i])))
            chord = f32(f32(f32(NORMAL_X[i] - NORMAL_X[i + 1]) * y01) - towards)
            above_upper, above_lower = (chord, f32(y - tangent)) if NORMAL_X[i] >= 1 else (f32(y - tangent), chord)
            if above_upper < 0 and (above_lower < 0 or y < f32(float_libm().expf(f32(-f32(f32(x * x) / f32(2)))))):
                return f32(x * sign)
            u = self._next()

    def _normal_tail(self) -> np.float32:
        start = f32(NORMAL_X[1])
        while True:
            x = f32(self._unit_exponential() / start)  # exponential_distribution(start)
            y = self._unit_exponential()
            if f32(2) * y > f32(x * x):
                return f32(x + start)

    def _unit_exponential(self) -> np.float32:
        exp_x, exp_y = _exponential_tables()
        shift = f32(0)
        while True:
            u = self._next()
            i = u & 255
            x = f32(f32(u >> 8) * _INV_TWO_24 * f32(exp_x[i]))
            if x < f32(exp_x[i + 1]):
                return f32(shift + x)
            if i == 0:  # the tail of an exponential is an exponential: start again, shifted
                shift = f32(shift + f32(exp_x[1]))
                continue
            y01 = self._uniform01()
            y = f32(f32(exp_y[i]) + f32(y01 * f32(exp_y[i + 1] - exp_y[i])))
            above_upper = f32(f32(f32(exp_x[i] - exp_x[i + 1]) * y01) - f32(f32(exp_x[i]) - x))
            above_lower = f32(y - f32(f32(exp_y[i]) + f32(f32(f32(exp_x[i]) - x) * f32(exp_y[i]))))
            if above_upper < 0 and (above_lower < 0 or y < f32(float_libm().expf(f32(-x)))):
                return f32(x + shift)
