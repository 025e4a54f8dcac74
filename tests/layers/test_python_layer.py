"""type: "Python" layers: pycaffe-style user modules (caffe.Layer subclasses over numpy blobs) built, run,
back-propagated and trained through; module search beside the prototxt; errors that name the user's code."""

from __future__ import annotations

import sys
import uuid

import numpy as np
import pytest
import torch

from pipeline.errors import NetBuildError
from pipeline.net import Net, build_net
from pipeline.solvers import build_solver
from pipeline.text.prototxt import net_from_string
from pipeline.weights.io import copy_weights, save_caffemodel

# A write-your-own equivalent of BVLC's examples/pycaffe/layers/pyloss.py, plus layers for the other checks.
LAYERS = """
import caffe
import numpy as np
from caffe.proto import caffe_pb2


class EuclideanLossLayer(caffe.Layer):
    def setup(self, bottom, top):
        if len(bottom) != 2:
            raise Exception("two bottoms wanted")

    def reshape(self, bottom, top):
        if bottom[0].count != bottom[1].count:
            raise Exception("bottoms differ in size")
        self.delta = np.zeros_like(bottom[0].data, dtype=np.float32)
        top[0].reshape(1)

    def forward(self, bottom, top):
        self.delta[...] = bottom[0].data - bottom[1].data.reshape(self.delta.shape)
        top[0].data[...] = np.sum(self.delta ** 2) / bottom[0].num / 2.0

    def backward(self, top, propagate_down, bottom):
        for i, sign in enumerate((1, -1)):
            if propagate_down[i]:
                bottom[i].diff[...] = (sign * top[0].diff[0] * self.delta / bottom[i].num).reshape(bottom[i].shape)


class Config(caffe.Layer):
    # A source layer: top = param_str's k + phase; records what it saw.
    def setup(self, bottom, top):
        self.k = float(eval(self.param_str)["k"])
        self.seen = (self.param_str, self.phase, caffe.TRAIN, caffe.TEST, isinstance(self, caffe.Layer),
                     caffe_pb2.LayerParameter.__name__, self.layer_param.name)

    def reshape(self, bottom, top):
        top[0].reshape()

    def forward(self, bottom, top):
        top[0].data[()] = self.k + self.phase


class Twice(caffe.Layer):
    # top = [bottom, 2 * bottom] along axis 1: its shape follows the bottom's at every forward.
    def reshape(self, bottom, top):
        b = bottom[0]
        top[0].reshape(b.num, 2 * b.channels, *b.shape[2:])

    def forward(self, bottom, top):
        c = bottom[0].channels
        top[0].data[:, :c] = bottom[0].data
        top[0].data[:, c:] = 2 * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        c = bottom[0].channels
        bottom[0].diff[...] = top[0].diff[:, :c] + 2 * top[0].diff[:, c:]


class Scale(caffe.Layer):
    # top = w * bottom with a learnable scalar w (self.blobs).
    def setup(self, bottom, top):
        self.blobs.add_blob(1)
        self.blobs[0].data[0] = 3.0

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].shape)

    def forward(self, bottom, top):
        top[0].data[...] = self.blobs[0].data[0] * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        self.blobs[0].diff[0] = np.sum(top[0].diff * bottom[0].data)
        if propagate_down[0]:
            bottom[0].diff[...] = self.blobs[0].data[0] * top[0].diff


class FailsInSetup(caffe.Layer):
    def setup(self, bottom, top):
        raise RuntimeError("setup says no")


class FailsInForward(caffe.Layer):
    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].shape)

    def forward(self, bottom, top):
        top[0].data[...] = bottom[0].data[999]


class FailsInBackward(Twice):
    def backward(self, top, propagate_down, bottom):
        raise ValueError("backward says no")
"""


@pytest.fixture
def pymod(tmp_path, monkeypatch):
    """A fresh module of LAYERS in tmp_path/nets (its own name, so no test sees another's), beside which the
    tests write their prototxts; sys.path and sys.modules are restored after."""
    folder = tmp_path / "nets"
    folder.mkdir()
    name = f"pylayers_{uuid.uuid4().hex[:8]}"
    (folder / f"{name}.py").write_text(LAYERS)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.chdir(tmp_path)  # the module is not in the current folder: found beside the prototxt
    yield name, folder
    for key, mod in list(sys.modules.items()):  # the modules this test wrote
        if str(tmp_path) in (getattr(mod, "__file__", None) or ""):
            del sys.modules[key]


def python_layer(name, module, cls, bottoms=(), tops=("top",), extra=""):
    b = "".join(f'bottom: "{x}" ' for x in bottoms)
    t = "".join(f'top: "{x}" ' for x in tops)
    p = f'python_param {{ module: "{module}" layer: "{cls}" }}'
    return f'layer {{ name: "{name}" type: "Python" {b}{t} {p} {extra} }}\n'


def write_net(folder, text, filename="net.prototxt"):
    path = folder / filename
    path.write_text(text)
    return path


INPUTS = 'layer { name: "in" type: "Input" top: "x" top: "y" input_param { shape { dim: 4 dim: 3 dim: 2 } } }\n'


def test_python_euclidean_loss_matches_the_builtin(pymod):
    module, folder = pymod
    py = build_net(
        write_net(
            folder, INPUTS + python_layer("loss", module, "EuclideanLossLayer", ("x", "y"), ("loss",), "loss_weight: 1")
        )
    )
    builtin = Net(
        net_from_string(INPUTS + 'layer { name: "loss" type: "EuclideanLoss" bottom: "x" bottom: "y" top: "loss" }')
    )
    rng = np.random.default_rng(0)
    x0, y0 = (torch.tensor(rng.normal(size=(4, 3, 2)), dtype=torch.float32) for _ in range(2))
    results = []
    for net in (py, builtin):
        x, y = x0.clone().requires_grad_(True), y0.clone().requires_grad_(True)
        net.forward(x=x, y=y)
        net.backward()
        results.append((net.loss.item(), x.grad, y.grad))
    (loss_py, gx_py, gy_py), (loss_b, gx_b, gy_b) = results
    assert loss_py == pytest.approx(loss_b, rel=1e-6)
    torch.testing.assert_close(gx_py, gx_b)
    torch.testing.assert_close(gy_py, gy_b)
    # loss_weight reaches the layer as its top's diff
    py2 = build_net(
        write_net(
            folder,
            INPUTS + python_layer("loss", module, "EuclideanLossLayer", ("x", "y"), ("loss",), "loss_weight: 2.5"),
            "weighted.prototxt",
        )
    )
    x = x0.clone().requires_grad_(True)
    py2.forward(x=x, y=y0)
    py2.backward()
    torch.testing.assert_close(x.grad, 2.5 * gx_b)
    # only y needing a gradient: propagate_down is [False, True]
    y = y0.clone().requires_grad_(True)
    py.forward(x=x0, y=y)
    py.backward()
    torch.testing.assert_close(y.grad, gy_b)


def test_python_layer_has_no_loss_weight_unless_given(pymod):
    module, folder = pymod
    net = build_net(
        write_net(folder, INPUTS + python_layer("loss", module, "EuclideanLossLayer", ("x", "y"), ("loss",)))
    )
    assert net.loss_weights[-1] == [0.0]
    net.forward(x=torch.ones(4, 3, 2), y=torch.zeros(4, 3, 2))
    assert net.loss is None
    assert net.blobs["loss"].data.item() == pytest.approx(24 / 4 / 2)


LINREG = """name: "linreg"
layer { type: "DummyData" name: "x" top: "x"
  dummy_data_param { shape { dim: 10 dim: 3 dim: 2 } data_filler { type: "gaussian" } } }
layer { type: "DummyData" name: "y" top: "y"
  dummy_data_param { shape { dim: 10 dim: 3 dim: 2 } data_filler { type: "gaussian" } } }
layer { type: "InnerProduct" name: "ipx" bottom: "x" top: "ipx"
  inner_product_param { num_output: 10 weight_filler { type: "xavier" } } }
layer { type: "InnerProduct" name: "ipy" bottom: "y" top: "ipy"
  inner_product_param { num_output: 10 weight_filler { type: "xavier" } } }
"""


def test_linreg_trains_through_the_solver(pymod):
    module, folder = pymod
    net_file = write_net(
        folder,
        LINREG + python_layer("loss", module, "EuclideanLossLayer", ("ipx", "ipy"), ("loss",), "loss_weight: 1"),
        "linreg.prototxt",
    )
    solver_file = folder / "solver.prototxt"
    solver_file.write_text(
        f'net: "{net_file.name}" base_lr: 0.1 lr_policy: "fixed" momentum: 0.9 max_iter: 30 display: 0 '
        "random_seed: 3 solver_mode: CPU snapshot_after_train: false\n"
    )
    solver = build_solver(solver_file)  # the net path is relative to the solver: cwd is elsewhere
    rng = np.random.default_rng(1)
    x, y = (torch.tensor(rng.normal(size=(10, 3, 2)), dtype=torch.float32) for _ in range(2))

    def loss_now():
        with torch.no_grad():
            solver.net.forward(x=x, y=y)
        return solver.net.loss.item()

    before = loss_now()
    solver.step(30)
    after = loss_now()
    assert np.isfinite(after) and after < 0.5 * before
    assert solver.net.layer("ipx").weight.grad is not None


def test_param_str_and_phase_reach_the_layer(pymod):
    module, folder = pymod
    text = python_layer("cfg", module, "Config", (), ("k",), "").replace(
        "python_param {", "python_param { param_str: \"{'k': 7}\""
    )
    path = write_net(folder, text)
    for phase, expected in (("TRAIN", 7.0), ("TEST", 8.0)):
        net = build_net(path, phase=phase)
        impl = net.layer("cfg")._impl
        assert impl.seen == ("{'k': 7}", 0 if phase == "TRAIN" else 1, 0, 1, True, "LayerParameter", "cfg")
        out = net.forward()
        assert net.blob_shapes["k"] == ()
        assert out["k"].item() == expected


def test_top_shape_follows_reshape(pymod):
    module, folder = pymod
    text = (
        (
            'layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }\n'
            + python_layer("twice", module, "Twice", ("x",), ("t",))
            + 'layer { name: "loss" type: "EuclideanLoss" bottom: "t" bottom: "target" top: "loss" }\n'
        )
        .replace('top: "x" input', 'top: "x" top: "target" input')
        .replace(
            "input_param { shape { dim: 2 dim: 3 } }", "input_param { shape { dim: 2 dim: 3 } shape { dim: 2 dim: 6 } }"
        )
    )
    net = build_net(write_net(folder, text))
    assert net.blob_shapes["t"] == (2, 6)
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    target = torch.randn(5, 6, dtype=torch.float64)
    net.forward(x=x, target=target)
    torch.testing.assert_close(net.blobs["t"].data, torch.cat([x, 2 * x], 1).detach())
    assert net.blobs["t"].data.dtype == torch.float64
    net.backward()
    ref = x.detach().clone().requires_grad_(True)
    ((torch.cat([ref, 2 * ref], 1) - target) ** 2).sum().div(2 * 5).backward()
    torch.testing.assert_close(x.grad, ref.grad)


def test_learnable_blobs_get_gradients_and_train(pymod):
    module, folder = pymod
    text = (
        'layer { name: "in" type: "Input" top: "x" top: "target" input_param { shape { dim: 4 dim: 2 } } }\n'
        + python_layer("scale", module, "Scale", ("x",), ("s",), "param { lr_mult: 1 }")
        + 'layer { name: "loss" type: "EuclideanLoss" bottom: "s" bottom: "target" top: "loss" }\n'
    )
    net = build_net(write_net(folder, text))
    layer = net.layer("scale")
    assert [tuple(b.shape) for b in net.params["scale"]] == [(1,)]
    assert net.params["scale"][0].item() == 3.0
    assert any(p.layer == "scale" for p in net.learnable_params)
    x = torch.randn(4, 2, requires_grad=True)
    target = torch.randn(4, 2)
    net.forward(x=x, target=target)
    net.backward()
    w = torch.tensor([3.0], requires_grad=True)
    ref_x = x.detach().clone().requires_grad_(True)
    ((w * ref_x - target) ** 2).sum().div(8).backward()
    torch.testing.assert_close(layer.blob0.grad, w.grad)
    torch.testing.assert_close(x.grad, ref_x.grad)
    with torch.no_grad():
        layer.blob0.fill_(0.5)  # the layer's blob data is a view of the parameter
    net.forward(x=x, target=target)
    torch.testing.assert_close(net.blobs["s"].data, 0.5 * x.detach())
    save_caffemodel(net, folder / "scale.caffemodel")  # the blob is saved and read back by layer name
    other = build_net(folder / "net.prototxt")
    assert copy_weights(other, folder / "scale.caffemodel").copied == ["scale"]
    assert other.params["scale"][0].item() == 0.5


def test_import_caffe_gets_the_shim_only_when_no_caffe_is_importable(pymod, tmp_path, monkeypatch):
    module, folder = pymod
    path = write_net(
        folder,
        python_layer("cfg", module, "Config", (), ("k",), "").replace(
            "python_param {", "python_param { param_str: \"{'k': 1}\""
        ),
    )
    build_net(path)
    import caffe

    assert "pycaffe" in caffe.__file__ and caffe.TRAIN == 0 and caffe.TEST == 1
    # A "real" caffe on sys.path wins: the shim is not put in front of it.
    real = tmp_path / "real"
    (real / "caffe").mkdir(parents=True)
    (real / "caffe" / "__init__.py").write_text(
        "from pipeline.proto import caffe_pb2 as _pb\nimport types\nproto = types.SimpleNamespace(caffe_pb2=_pb)\n"
        "TRAIN, TEST = 0, 1\nREAL = True\n"
        "class Layer:\n    def __init__(self, param):\n        self.layer_param = param\n"
    )
    monkeypatch.setattr(sys, "path", [str(real)] + [p for p in sys.path if "pycaffe" not in p])
    for name in ("caffe", "caffe.proto", "caffe.proto.caffe_pb2", module):
        monkeypatch.delitem(sys.modules, name, raising=False)
    (folder / f"{module}_real.py").write_text(
        "import caffe\nassert caffe.REAL\n"
        + LAYERS.replace("from caffe.proto import caffe_pb2\n", "caffe_pb2 = caffe.proto.caffe_pb2\n")
    )
    net = build_net(
        write_net(
            folder,
            python_layer("cfg", f"{module}_real", "Config", (), ("k",), "").replace(
                "python_param {", "python_param { param_str: \"{'k': 1}\""
            ),
            "real.prototxt",
        )
    )
    assert sys.modules["caffe"].REAL and net.forward()["k"].item() == 1.0


def test_module_found_in_the_current_folder_for_a_net_built_from_text(pymod, monkeypatch):
    module, folder = pymod
    monkeypatch.chdir(folder)
    net = Net(
        net_from_string(
            python_layer("cfg", module, "Config", (), ("k",), "").replace(
                "python_param {", "python_param { param_str: \"{'k': 2}\""
            )
        ),
        phase="TEST",
    )
    assert net.forward()["k"].item() == 3.0


# ----- errors --------------------------------------------------------------------------------------------------
def build_error(folder, text) -> str:
    with pytest.raises(NetBuildError) as info:
        build_net(write_net(folder, text, f"err_{uuid.uuid4().hex[:6]}.prototxt"))
    return str(info.value)


def test_missing_module_and_class(pymod):
    module, folder = pymod
    message = build_error(folder, INPUTS + python_layer("bad", "no_such_module_xyz", "L", ("x",), ("t",)))
    assert "layer 'bad' (Python)" in message and "'no_such_module_xyz' not found" in message
    assert str(folder) in message
    message = build_error(folder, INPUTS + python_layer("bad", module, "Nope", ("x",), ("t",)))
    assert f"module '{module}'" in message and "no 'Nope'" in message and "EuclideanLossLayer" in message
    message = build_error(folder, INPUTS + 'layer { name: "bad" type: "Python" bottom: "x" top: "t" }')
    assert "python_param.module is empty" in message


def test_exceptions_in_user_code_name_the_layer_and_the_frame(pymod):
    module, folder = pymod
    message = build_error(folder, INPUTS + python_layer("bad", module, "FailsInSetup", ("x",), ("t",)))
    assert "layer 'bad' (Python)" in message and f"{module}.FailsInSetup.setup()" in message
    assert "RuntimeError: setup says no" in message and f"{module}.py:" in message and "in setup" in message

    broken = folder / "broken_mod_xyz.py"
    broken.write_text("import caffe\nraise ImportError('needs something')\n")
    message = build_error(folder, INPUTS + python_layer("bad", "broken_mod_xyz", "L", ("x",), ("t",)))
    assert "importing module 'broken_mod_xyz'" in message and "needs something" in message
    assert "broken_mod_xyz.py:2" in message

    net = build_net(
        write_net(folder, INPUTS + python_layer("bad", module, "FailsInForward", ("x",), ("t",)), "f.prototxt")
    )
    with pytest.raises(NetBuildError, match=r"layer 'bad' \(Python\).*FailsInForward\.forward\(\) raised IndexError"):
        net.forward(x=torch.zeros(4, 3, 2), y=torch.zeros(4, 3, 2))

    text = (
        'layer { name: "in" type: "Input" top: "x" top: "target" input_param { shape { dim: 2 dim: 3 } '
        "shape { dim: 2 dim: 6 } } }\n"
        + python_layer("bad", module, "FailsInBackward", ("x",), ("t",))
        + 'layer { name: "loss" type: "EuclideanLoss" bottom: "t" bottom: "target" top: "loss" }\n'
    )
    net = build_net(write_net(folder, text, "b.prototxt"))
    net.forward(x=torch.zeros(2, 3, requires_grad=True), target=torch.zeros(2, 6))
    with pytest.raises(NetBuildError, match=r"FailsInBackward\.backward\(\) raised ValueError: backward says no"):
        net.backward()
