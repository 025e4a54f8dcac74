"""RNN and LSTM: gradients (float64 gradcheck), forward against the formulas, Caffe's state and gradient quirks."""

import itertools

import pytest
import torch
from gradcheck_util import check_layer_gradients, single_layer_net

from pipeline.errors import NetBuildError
from pipeline.net.layers.recurrent import _LSTMUnit

H = 3
FILLERS = 'weight_filler { type: "uniform" min: -0.6 max: 0.6 } bias_filler { type: "uniform" min: -0.4 max: 0.4 }'
STATES = {"RNN": ("h_0",), "LSTM": ("h_0", "c_0")}
# cont = 0 starts a sequence: both streams at t = 0, stream 1 again at t = 2.
CONT = torch.tensor([[0.0, 0.0], [1.0, 1.0], [1.0, 0.0], [1.0, 1.0]])


def body(kind: str, expose_hidden: bool = False, num_output: int = H) -> str:
    expose = " expose_hidden: true" if expose_hidden else ""
    return f'type: "{kind}" recurrent_param {{ num_output: {num_output} {FILLERS}{expose} }}'


def bottoms(kind, x_shape=(4, 2, 3), static=False, expose_hidden=False):
    shapes = {"x": x_shape, "cont": x_shape[:2]}
    if static:
        shapes["x_static"] = (x_shape[1], 2, 2)
    if expose_hidden:
        shapes.update({name: (1, x_shape[1], H) for name in STATES[kind]})
    return shapes


def reference(kind, layer, x, cont, x_static=None, states=None):
    """The formulas of Caffe's unrolled nets, written out step by step."""
    t_steps, n = x.shape[:2]
    blobs = layer.blobs
    w_in, b_in = blobs[0], blobs[1]
    w_static = blobs[2] if x_static is not None else None
    rest = blobs[3:] if x_static is not None else blobs[2:]
    h = torch.zeros(n, H, dtype=x.dtype) if states is None else states[0][0]
    c = torch.zeros(n, H, dtype=x.dtype) if states is None else states[-1][0]
    outs = []
    for t in range(t_steps):
        pre = x[t].reshape(n, -1) @ w_in.T + b_in + (rest[0] @ (cont[t][:, None] * h).T).T
        if w_static is not None:
            pre = pre + x_static.reshape(n, -1) @ w_static.T
        if kind == "RNN":
            h = torch.tanh(pre)
            outs.append(torch.tanh(h @ rest[1].T + rest[2]))
        else:
            i, f, o, g = pre.split(H, dim=1)
            c = cont[t][:, None] * torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            outs.append(h)
    return torch.stack(outs), h, c


@pytest.mark.parametrize(
    "kind, static, x_shape", list(itertools.product(["RNN", "LSTM"], [False, True], [(4, 2, 3), (4, 2, 2, 3)]))
)
def test_gradients(kind, static, x_shape):
    shapes = bottoms(kind, x_shape, static)
    wrt = ["x", "x_static"] if static else ["x"]
    check_layer_gradients(body(kind), shapes, inputs={"cont": CONT}, wrt=wrt)


@pytest.mark.parametrize("kind", ["RNN", "LSTM"])
def test_expose_hidden_gradients_of_the_output(kind):
    # h_T/c_T carry no gradient back in Caffe, so only the sequence output is checked; h_0/c_0 are fixed.
    shapes = bottoms(kind, expose_hidden=True)
    net = single_layer_net(body(kind, expose_hidden=True), shapes, n_tops=1 + len(STATES[kind]))
    layer = net.layer("under_test")
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(shapes["x"], generator=gen, dtype=torch.float64, requires_grad=True)
    states = [torch.randn(shapes[s], generator=gen, dtype=torch.float64) for s in STATES[kind]]
    cont = torch.ones(4, 2, dtype=torch.float64)  # never reset: h_0 and c_0 matter
    params = list(layer.blobs)
    assert torch.autograd.gradcheck(lambda x, *p: layer(x, cont, *states)[0], (x, *params))


@pytest.mark.parametrize("kind, static", list(itertools.product(["RNN", "LSTM"], [False, True])))
def test_forward_matches_formulas(kind, static):
    shapes = bottoms(kind, static=static, expose_hidden=True)
    net = single_layer_net(body(kind, expose_hidden=True), shapes, n_tops=1 + len(STATES[kind]))
    layer = net.layer("under_test")
    gen = torch.Generator().manual_seed(5)
    values = {k: torch.randn(s, generator=gen, dtype=torch.float64) for k, s in shapes.items()}
    values["cont"] = CONT.double()
    tops = layer(*values.values())
    x_static = values.get("x_static")
    states = [values[s] for s in STATES[kind]]
    out, h, c = reference(kind, layer, values["x"], values["cont"], x_static, states)
    torch.testing.assert_close(tops[0], out)
    torch.testing.assert_close(tops[1][0], h)
    if kind == "LSTM":
        torch.testing.assert_close(tops[2][0], c)


@pytest.mark.parametrize("kind", ["RNN", "LSTM"])
def test_blob_shapes_in_caffe_order(kind):
    layer = single_layer_net(body(kind), bottoms(kind, static=True)).layer("under_test")
    shapes = [tuple(b.shape) for b in layer.blobs]
    if kind == "RNN":  # W_xh, b_h, W_xh_static, W_hh, W_ho, b_o
        assert shapes == [(H, 3), (H,), (H, 4), (H, H), (H, H), (H,)]
    else:  # W_xc, b_c, W_xc_static, W_hc; gates i, f, o, g
        assert shapes == [(4 * H, 3), (4 * H,), (4 * H, 4), (4 * H, H)]


@pytest.mark.parametrize("kind", ["RNN", "LSTM"])
def test_state_carries_over_between_forwards(kind):
    # Caffe copies h_T (and c_T) of one forward into h_0 (c_0) of the next when the state is not exposed.
    long = single_layer_net(body(kind), bottoms(kind, (4, 2, 3))).layer("under_test")
    half = single_layer_net(body(kind), bottoms(kind, (2, 2, 3))).layer("under_test")
    for mine, theirs in zip(half.blobs, long.blobs):
        mine.data.copy_(theirs.data)
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    cont = torch.tensor([[0.0, 0.0], [1.0, 1.0], [1.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    expected = long(x, cont)
    got = torch.cat([half(x[:2], cont[:2]), half(x[2:], cont[2:])])
    torch.testing.assert_close(got, expected)
    half.reset_state()
    restarted = half(x[2:], cont[2:])
    assert not torch.allclose(restarted[:, 0], expected[2:, 0])  # stream 0 continued; now it starts from zero


@pytest.mark.parametrize("kind", ["RNN", "LSTM"])
def test_no_gradient_to_cont_and_exposed_states(kind):
    shapes = bottoms(kind, expose_hidden=True)
    layer = single_layer_net(body(kind, expose_hidden=True), shapes, 1 + len(STATES[kind])).layer("under_test")
    x = torch.randn(shapes["x"], dtype=torch.float64, requires_grad=True)
    cont = torch.ones(shapes["cont"], dtype=torch.float64, requires_grad=True)
    states = [torch.randn(shapes[s], dtype=torch.float64, requires_grad=True) for s in STATES[kind]]
    tops = layer(x, cont, *states)
    sum(t.sum() for t in tops[1:]).backward(retain_graph=True)  # a loss on h_T/c_T alone: Caffe drops its diff
    for leaf in [x, *layer.blobs]:
        assert leaf.grad is None or not leaf.grad.any()
    tops[0].sum().backward()
    assert x.grad is not None and cont.grad is None and all(s.grad is None for s in states)


def test_lstm_unit_forget_gate_backward_is_caffes_for_fractional_cont():
    gen = torch.Generator().manual_seed(7)
    c_prev = torch.randn(3, H, generator=gen, dtype=torch.float64)
    gates = torch.randn(3, 4 * H, generator=gen, dtype=torch.float64, requires_grad=True)
    cont = torch.tensor([[0.0], [0.5], [1.0]], dtype=torch.float64)
    c, h = _LSTMUnit.apply(c_prev, gates, cont)
    (c.sum() + h.sum()).backward()
    ours = gates.grad.clone()
    gates.grad = None
    i, f, o, g = gates.split(H, dim=1)
    c_true = cont * torch.sigmoid(f) * c_prev + torch.sigmoid(i) * torch.tanh(g)
    torch.testing.assert_close(c, c_true)
    (c_true.sum() + (torch.sigmoid(o) * torch.tanh(c_true)).sum()).backward()
    true = gates.grad
    s = torch.sigmoid(f.detach())
    # Caffe's d/df' is c_term c_prev f (1 - f) with f = cont sigmoid(f'): the true one times (1 - f) / (1 - s).
    scale = torch.cat([torch.ones_like(s), (1 - cont * s) / (1 - s), torch.ones_like(s), torch.ones_like(s)], 1)
    torch.testing.assert_close(ours, true * scale)


@pytest.mark.parametrize(
    "kind, text, shapes, match",
    [
        ("RNN", body("RNN", num_output=0), {"x": (2, 2, 3), "cont": (2, 2)}, "num_output"),
        ("LSTM", body("LSTM"), {"x": (2, 2), "cont": (2, 2)}, "at least 3 axes"),
        ("RNN", body("RNN"), {"x": (2, 2, 3), "cont": (2, 3)}, "cont"),
        ("LSTM", body("LSTM"), {"x": (2, 2, 3), "cont": (2, 2), "s": (3, 4)}, "x_static"),
        ("LSTM", body("LSTM", expose_hidden=True), {"x": (2, 2, 3), "cont": (2, 2), "h_0": (1, 2, H)}, "c_0"),
        ("RNN", body("RNN", expose_hidden=True), {"x": (2, 2, 3), "cont": (2, 2), "h_0": (1, 2, 4)}, "h_0"),
    ],
)
def test_bad_set_up_is_a_build_error(kind, text, shapes, match):
    n_tops = 1 + (len(STATES[kind]) if "expose_hidden" in text else 0)
    with pytest.raises(NetBuildError, match=match):
        single_layer_net(text, shapes, n_tops)


def test_time_steps_may_not_change_after_set_up():
    layer = single_layer_net(body("RNN"), {"x": (2, 2, 3), "cont": (2, 2)}).layer("under_test")
    with pytest.raises(NetBuildError, match="time steps"):
        layer(torch.zeros(3, 2, 3, dtype=torch.float64), torch.zeros(3, 2, dtype=torch.float64))
