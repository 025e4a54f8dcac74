"""RNN and LSTM: Caffe's recurrent layers, unrolled over the T time steps of bottom x.

Bottoms: x (T, N, ...), cont (T, N) (cont_t = 0 starts a new sequence: the state coming from step t-1 is
zeroed), optionally x_static (N, ...) added to the input of every step, and with `expose_hidden` the initial
state h_0 (LSTM: h_0, c_0), each (1, N, num_output). Tops: the outputs of all steps (T, N, num_output), and
with `expose_hidden` the final state h_T (LSTM: h_T, c_T).

    RNN:  h_t = tanh(W_hh (cont_t h_{t-1}) + W_xh x_t + b_h),  o_t = tanh(W_ho h_t + b_o)
    LSTM: [i f o g]_t = W_hc (cont_t h_{t-1}) + W_xc x_t + b_c  (sigmoid on i, f, o; tanh on g)
          c_t = cont_t f_t c_{t-1} + i_t g_t,  h_t = o_t tanh(c_t)

Caffe's behaviours kept on purpose:
  * without `expose_hidden` the final state of one forward is the initial state of the next (Caffe copies
    h_T into h_0 before each forward), so batches are independent only where cont is 0 at t = 0;
  * with `expose_hidden` no gradient reaches h_0/c_0 and none flows back from h_T/c_T (Caffe shares only
    the data of these blobs with its unrolled net, never the diff); cont never gets a gradient;
  * the LSTM unit's backward uses f (1 - f) with f = cont * sigmoid(.), which is the derivative only for
    binary cont.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from pipeline.exact import caffe_blas
from pipeline.net.layers.base import Layer, count
from pipeline.net.layers.caffe_gemm import InnerProductGemm
from pipeline.net.layers.registry import register
from pipeline.ops.caffe_cpu import caffe_neuron, exact_neuron


class _NoBackward(torch.autograd.Function):
    """Identity forward; the gradient stops here (a Caffe top that shares data but not diff)."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return None


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """The unrolled net's InnerProduct (axis 2): Caffe's gemm calls in the bit-exact mode."""
    if not caffe_blas.active(x):
        return F.linear(x, weight, bias)
    rows = x.reshape(-1, x.shape[-1])
    return InnerProductGemm.apply(rows, weight, bias, False).view(*x.shape[:-1], weight.shape[0])


def _step_input(recurrent: torch.Tensor, inputs_t: torch.Tensor, static_term: torch.Tensor | None) -> torch.Tensor:
    """W h_conted + W_x x_t (+ W_static x_static): the unrolled net's Eltwise SUM, in its bottoms' order."""
    total = recurrent + inputs_t
    return total if static_term is None else total + static_term


def _tanh(x: torch.Tensor) -> torch.Tensor:
    return caffe_neuron(x, "TanH") if exact_neuron(x) else torch.tanh(x)


def _unit_activation(x: torch.Tensor, kind: str) -> torch.Tensor:
    """lstm_unit_layer.cpp's own sigmoid, 1. / (1. + exp(-x)), and tanh, 2. * sigmoid(2. * x) - 1. (computed in
    double), in the bit-exact mode; torch's otherwise."""
    if exact_neuron(x):
        return torch.ops.caffe_pipeline.caffe_neuron(x.contiguous(), f"LSTMUnit{kind}", [])
    return torch.sigmoid(x) if kind == "Sigmoid" else torch.tanh(x)


class _LSTMUnit(torch.autograd.Function):
    """One LSTM step (c_prev (N, H), gates (N, 4H), cont (N, 1)) -> (c, h), with Caffe's LSTMUnit backward."""

    @staticmethod
    def forward(ctx, c_prev, gates, cont):
        ctx.set_materialize_grads(False)
        i, f, o, g = gates.chunk(4, dim=-1)
        i, o, g = _unit_activation(i, "Sigmoid"), _unit_activation(o, "Sigmoid"), _unit_activation(g, "TanH")
        f = torch.where(cont == 0, torch.zeros_like(f), cont * _unit_activation(f, "Sigmoid"))
        c = f * c_prev + i * g
        tanh_c = _unit_activation(c, "TanH")
        ctx.save_for_backward(c_prev, i, f, o, g, tanh_c)
        return c, o * tanh_c

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, c_diff, h_diff):
        if c_diff is None and h_diff is None:  # only a gradient-free top (h_T, c_T) was used
            return None, None, None
        c_prev, i, f, o, g, tanh_c = ctx.saved_tensors
        c_diff = torch.zeros_like(c_prev) if c_diff is None else c_diff
        h_diff = torch.zeros_like(c_prev) if h_diff is None else h_diff
        c_term = c_diff + h_diff * o * (1 - tanh_c * tanh_c)
        gates_diff = torch.cat(
            (
                c_term * g * i * (1 - i),
                c_term * c_prev * f * (1 - f),  # Caffe's f already includes cont
                h_diff * tanh_c * o * (1 - o),
                c_term * i * (1 - g * g),
            ),
            dim=-1,
        )
        return c_term * f, gates_diff, None


class _Recurrent(Layer):
    num_bottoms = (2, 5)
    num_tops = (1, 3)
    #: Names of the recurrent state blobs (the extra bottoms/tops under expose_hidden).
    states: ClassVar[tuple[str, ...]] = ()
    #: Rows of the input transform per hidden unit (LSTM: 4 gates).
    gates: ClassVar[int] = 1
    #: Attribute names of the input weight, input bias and static-input weight.
    input_blobs: ClassVar[tuple[str, str, str]] = ("", "", "")

    def setup(self, bottom_shapes):
        p = self.param.recurrent_param
        self.check(p.num_output > 0, "recurrent_param.num_output must be set and positive")
        self.hidden = hidden = int(p.num_output)
        self.expose_hidden = p.expose_hidden
        exposed = len(self.states) if self.expose_hidden else 0
        state_bottoms = ", ".join(f"{s}_0" for s in self.states)
        self.check(
            len(bottom_shapes) in (2 + exposed, 3 + exposed),
            f"takes bottoms x, cont, [x_static]{', ' + state_bottoms if exposed else ''} "
            f"(expose_hidden: {str(self.expose_hidden).lower()}), got {len(bottom_shapes)}",
        )
        self.check(
            len(self.top_names) == 1 + exposed,
            f"has {1 + exposed} top(s) with expose_hidden: {str(self.expose_hidden).lower()}, "
            f"got {len(self.top_names)}",
        )
        self.static_input = len(bottom_shapes) == 3 + exposed
        x, cont = bottom_shapes[:2]
        names = self.bottom_names
        # Caffe's unrolled net applies an InnerProduct from axis 2: x needs (T, N, features...).
        self.check(len(x) >= 3, f"bottom '{names[0]}' {list(x)} must have at least 3 axes (T, N, features...)")
        self.check(tuple(cont) == tuple(x[:2]), f"bottom '{names[1]}' (cont) {list(cont)} must be (T, N) = {x[:2]}")
        self.T = x[0]
        n = x[1]
        static_dim = None
        if self.static_input:
            xs = bottom_shapes[2]
            self.check(
                len(xs) >= 2 and xs[0] == n,
                f"bottom '{names[2]}' (x_static) {list(xs)} must be (N, features...) with N = {n}",
            )
            static_dim = count(xs, 1)
        state_shape = (1, n, hidden)
        for name, shape in zip(names[2 + self.static_input :], bottom_shapes[2 + self.static_input :]):
            self.check(tuple(shape) == state_shape, f"bottom '{name}' {list(shape)} must be {list(state_shape)}")
        self._make_blobs(count(x, 2), static_dim)
        self._carry: list[torch.Tensor] | None = None
        return [(self.T, n, hidden)] + [state_shape] * exposed

    def _make_blobs(self, input_dim: int, static_dim: int | None) -> None:
        p = self.param.recurrent_param
        rows = self.gates * self.hidden
        weight, bias, static = self.input_blobs
        self.add_blob(weight, (rows, input_dim), p.weight_filler)
        self.add_blob(bias, (rows,), p.bias_filler)
        if static_dim is None:
            setattr(self, static, None)
        else:
            self.add_blob(static, (rows, static_dim), p.weight_filler)

    def reset_state(self) -> None:
        """Caffe's RecurrentLayer::Reset: the next forward starts from a zero state."""
        self._carry = None

    def forward(self, x, cont, *rest):
        t, n = x.shape[:2]
        if t != self.T:
            raise self.error(f"bottom '{self.bottom_names[0]}' has {t} time steps; the layer was set up for {self.T}")
        if tuple(cont.shape) != (t, n):
            raise self.error(f"bottom '{self.bottom_names[1]}' (cont) {list(cont.shape)} must be (T, N) = {[t, n]}")
        weight, bias, static = (getattr(self, a) for a in self.input_blobs)
        inputs = _linear(x.reshape(t, n, -1), weight, bias)
        # Added to every step's sum after the recurrent and input terms, as Caffe's Eltwise orders its bottoms.
        static_term = _linear(rest[0].reshape(n, -1), static) if self.static_input else None
        given = rest[self.static_input :]
        if self.expose_hidden:
            for name, s in zip(self.bottom_names[2 + self.static_input :], given):
                if tuple(s.shape) != (1, n, self.hidden):
                    raise self.error(f"bottom '{name}' {list(s.shape)} must be {[1, n, self.hidden]}")
            states = [s.detach().reshape(n, self.hidden) for s in given]
        else:
            states = self._initial_states(x, n)
        # Caffe never back-propagates into the sequence indicators.
        cont = cont.detach().to(x.dtype).reshape(t, n, 1)
        out, final = self.unroll(inputs, cont, states, static_term)
        if not self.expose_hidden:
            self._carry = [s.detach() for s in final]
            return out
        return (out, *(_NoBackward.apply(s.unsqueeze(0)) for s in final))

    def _initial_states(self, x: torch.Tensor, n: int) -> list[torch.Tensor]:
        if self._carry is not None and self._carry[0].shape[0] == n:
            return [s.to(x) for s in self._carry]
        # First forward, or the number of streams changed: Caffe's state blob is fresh zeros.
        return [x.new_zeros(n, self.hidden) for _ in self.states]

    def unroll(self, inputs, cont, states, static_term):  # pragma: no cover - abstract
        raise NotImplementedError

    def extra_repr(self):
        return f"{super().extra_repr()}, num_output={self.hidden}, T={self.T}, expose_hidden={self.expose_hidden}"


@register("RNN")
class RNN(_Recurrent):
    @classmethod
    def blob_count_for(cls, param):
        return 5  # without W_xh_static, which only an x_static bottom brings

    draw_family = "recurrent"
    states = ("h",)
    blob_names = ("W_xh", "b_h", "W_xh_static", "W_hh", "W_ho", "b_o")
    input_blobs = ("W_xh", "b_h", "W_xh_static")

    def _make_blobs(self, input_dim, static_dim):
        super()._make_blobs(input_dim, static_dim)
        p = self.param.recurrent_param
        self.add_blob("W_hh", (self.hidden, self.hidden), p.weight_filler)
        self.add_blob("W_ho", (self.hidden, self.hidden), p.weight_filler)
        self.add_blob("b_o", (self.hidden,), p.bias_filler)

    def unroll(self, inputs, cont, states, static_term):
        (h,) = states
        outputs = []
        for t in range(inputs.shape[0]):
            h = _tanh(_step_input(_linear(cont[t] * h, self.W_hh), inputs[t], static_term))
            outputs.append(_tanh(_linear(h, self.W_ho, self.b_o)))  # o_t = tanh(W_ho h_t + b_o), step by step
        return torch.stack(outputs), [h]


@register("LSTM")
class LSTM(_Recurrent):
    @classmethod
    def blob_count_for(cls, param):
        return 3  # without W_xc_static, which only an x_static bottom brings

    draw_family = "recurrent"
    states = ("h", "c")
    gates = 4
    blob_names = ("W_xc", "b_c", "W_xc_static", "W_hc")
    input_blobs = ("W_xc", "b_c", "W_xc_static")

    def _make_blobs(self, input_dim, static_dim):
        super()._make_blobs(input_dim, static_dim)
        self.add_blob("W_hc", (4 * self.hidden, self.hidden), self.param.recurrent_param.weight_filler)

    def unroll(self, inputs, cont, states, static_term):
        h, c = states
        hs = []
        for t in range(inputs.shape[0]):
            gates = _step_input(_linear(cont[t] * h, self.W_hc), inputs[t], static_term)
            c, h = _LSTMUnit.apply(c, gates, cont[t])
            hs.append(h)
        return torch.stack(hs), [h, c]
