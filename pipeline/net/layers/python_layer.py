"""Python: a layer written in Python against pycaffe's interface (`python_param { module layer param_str }`).

As Caffe's PythonLayer, the layer imports `python_param.module`, constructs its class `python_param.layer` with
the LayerParameter, sets `param_str` and `phase` (0 TRAIN, 1 TEST) on it, then calls `setup(bottom, top)` and
`reshape(bottom, top)`; every forward calls `reshape` then `forward(bottom, top)`, and training calls
`backward(top, propagate_down, bottom)`. Blobs carry numpy `.data` and `.diff` (a bottom's data is a view of its
tensor where the tensor allows: a CPU float tensor), `.reshape(*shape)`, `.shape`, `.count` and the legacy
`.num/.channels/.height/.width`. `self.blobs.add_blob(*shape)` in setup adds a learnable blob (zero-filled, lr_mult
and decay_mult from `param {}`, saved in caffemodels); its `.data` is a view of the parameter, and the `.diff`
backward writes is its gradient. In training, the layer is a torch.autograd.Function: the gradient arriving at
each top is its `.diff`, `propagate_down[i]` says whether bottom i needs one, and the `.diff` backward writes
is returned to it.

Where the module is looked for: Python's own import first (PYTHONPATH, sys.path, as Caffe), then the folder of
the prototxt the layer was read from, then the current folder; a folder where it is found is appended to
sys.path, so the module's own imports of its neighbours work. `import caffe` in the module gets pycaffe where a
real one is importable, else this project's shim (pipeline/pycaffe/caffe/). As in Caffe, the type gives no loss
weight: a Python loss needs `loss_weight` in the prototxt.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import traceback
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeline.errors import NetBuildError
from pipeline.net.layers.base import Layer
from pipeline.net.layers.registry import register
from pipeline.text import source_map

SHIM_ROOT = Path(__file__).resolve().parents[2] / "pycaffe"


def ensure_caffe_importable() -> None:
    """Make `import caffe` work: nothing when a caffe module (a real pycaffe) is importable, else the shim."""
    if "caffe" in sys.modules:
        return
    try:
        if importlib.util.find_spec("caffe") is not None:
            return
    except (ImportError, ValueError):
        pass
    if str(SHIM_ROOT) not in sys.path:
        sys.path.append(str(SHIM_ROOT))
    importlib.invalidate_caches()


class Blob:
    """pycaffe's Blob as a Python layer sees it: numpy `.data` and `.diff` of one shape."""

    def __init__(self, data: np.ndarray, diff: np.ndarray | None = None):
        self._data = data
        self._diff = diff

    @property
    def data(self) -> np.ndarray:
        return self._data

    @property
    def diff(self) -> np.ndarray:
        if self._diff is None or self._diff.shape != self._data.shape:
            self._diff = np.zeros_like(self._data)
        return self._diff

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._data.shape)

    @property
    def count(self) -> int:
        return int(self._data.size)

    def _legacy(self, index: int) -> int:
        # Caffe's Blob::LegacyShape: at most 4 axes; an axis beyond the blob's counts as 1.
        if self._data.ndim > 4:
            raise ValueError(f"num/channels/height/width need a blob of at most 4 axes, this one is {self.shape}")
        return int(self._data.shape[index]) if index < self._data.ndim else 1

    num = property(lambda self: self._legacy(0))
    channels = property(lambda self: self._legacy(1))
    height = property(lambda self: self._legacy(2))
    width = property(lambda self: self._legacy(3))

    def reshape(self, *shape: int) -> None:
        shape = tuple(int(d) for d in shape)
        if any(d < 0 for d in shape):
            raise ValueError(f"reshape to a negative dimension: {list(shape)}")
        if shape == self.shape:
            return
        if int(np.prod(shape, dtype=np.int64)) == self.count:
            self._data = self._data.reshape(shape)
        else:
            self._data = np.zeros(shape, dtype=self._data.dtype)
        self._diff = None

    def __repr__(self) -> str:
        return f"Blob(shape={list(self.shape)})"


class ParamBlob(Blob):
    """A learnable blob of a Python layer: `.data` is the (host view of the) layer's parameter."""

    def __init__(self, owner: PythonLayer, attr: str):
        self._owner, self._attr = owner, attr
        super().__init__(np.zeros(0, dtype=np.float32))
        self._view = True
        self.sync_in()

    def sync_in(self) -> None:
        tensor = getattr(self._owner, self._attr).detach()
        self._view = tensor.device.type == "cpu"
        self._data = tensor.numpy() if self._view else tensor.cpu().numpy()

    def sync_out(self) -> None:
        if not self._view:
            with torch.no_grad():
                getattr(self._owner, self._attr).copy_(torch.from_numpy(self._data))

    def reshape(self, *shape: int) -> None:
        if tuple(int(d) for d in shape) == self.shape:
            return
        if not self._owner._in_setup:
            raise ValueError("a learnable blob (self.blobs) can be reshaped in setup() only")
        self._owner._new_param(self._attr, shape)
        self._diff = None
        self.sync_in()


class BlobVec(list):
    """`self.blobs`: the layer's learnable blobs; `add_blob(*shape)` appends one (in setup)."""

    def __init__(self, owner: PythonLayer):
        super().__init__()
        self._owner = owner

    def add_blob(self, *shape: int, **kwargs) -> None:
        if kwargs:
            raise TypeError("BlobVec.add_blob takes no keyword arguments")
        if not self._owner._in_setup:
            raise ValueError("self.blobs.add_blob() works in setup() only: the net's parameters are fixed after")
        attr = f"blob{len(self)}"
        self._owner._new_param(attr, shape)
        self._owner._blob_attrs.append(attr)
        self.append(ParamBlob(self._owner, attr))


def _as_host(tensor: torch.Tensor) -> np.ndarray:
    """A bottom's data for numpy: a view of a CPU float tensor, else a float32 (or float64) host copy."""
    t = tensor.detach()
    if not t.is_floating_point():
        t = t.float()
    elif t.dtype not in (torch.float32, torch.float64):
        t = t.float()
    return t.cpu().numpy()


def _last_frame(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return ""
    frame = frames[-1]
    return f" (at {frame.filename}:{frame.lineno}, in {frame.name})"


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class _PythonFunction(torch.autograd.Function):
    """Forward: the user's reshape + forward over numpy blobs. Backward: the top grads as top diffs, the
    user's backward, the bottom (and learnable blob) diffs as the grads."""

    @staticmethod
    def forward(ctx, layer: PythonLayer, n_bottoms: int, *inputs: torch.Tensor):
        bottoms = inputs[:n_bottoms]
        tops, bottom_data, top_data = layer._run_forward(bottoms)
        ctx.layer, ctx.n_bottoms = layer, n_bottoms
        ctx.bottom_data, ctx.top_data = bottom_data, top_data
        ctx.like = [(b.device, b.dtype) for b in inputs]
        return tuple(tops)

    @staticmethod
    def backward(ctx, *top_grads: torch.Tensor):
        n = ctx.n_bottoms
        needs = ctx.needs_input_grad[2:]
        grads = ctx.layer._run_backward(ctx.bottom_data, ctx.top_data, top_grads, needs[:n], needs[n:])
        out = []
        for grad, need, (device, dtype) in zip(grads, needs, ctx.like):
            out.append(torch.from_numpy(np.ascontiguousarray(grad)).to(device=device, dtype=dtype) if need else None)
        return (None, None, *out)


@register("Python")
class PythonLayer(Layer):
    draw_family = "data"

    def __init__(self, param, phase=0):
        super().__init__(param, phase)
        self.is_source = not param.bottom  # a Python data layer: tops from nothing, as a data layer's
        self.blob_names: tuple[str, ...] = ()
        self._blob_attrs: list[str] = []
        self._in_setup = False
        self._impl = None
        self._tops: list[Blob] = []
        self.register_buffer("_like", torch.zeros(0), persistent=False)  # follows .to() / .double()

    # ----- naming things in errors ----------------------------------------------------------------------
    @property
    def _what(self) -> str:
        p = self.param.python_param
        return f"{p.module}.{p.layer}"

    def _user_error(self, method: str, exc: BaseException) -> NetBuildError:
        return self.error(f"{self._what}.{method}() raised {_describe(exc)}{_last_frame(exc)}")

    def _call(self, method: str, *args) -> None:
        try:
            getattr(self._impl, method)(*args)
        except NetBuildError:
            raise
        except Exception as exc:  # noqa: BLE001 - the user's code: any exception, named with its layer
            raise self._user_error(method, exc) from exc

    # ----- set-up ---------------------------------------------------------------------------------------
    def _search_dirs(self) -> list[Path]:
        mine = self.param

        def same(layer) -> bool:
            return layer.name == mine.name and layer.type == mine.type and layer.python_param == mine.python_param

        dirs = []
        for path in source_map.paths_holding(same):
            if Path(path).is_file():
                dirs.append(Path(path).resolve().parent)
        dirs.append(Path.cwd())
        return list(dict.fromkeys(dirs))

    def _import(self):
        name = self.param.python_param.module
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is None or not (name == exc.name or name.startswith(exc.name + ".")):
                raise self.error(f"importing module '{name}' failed: {_describe(exc)}{_last_frame(exc)}") from exc
        except Exception as exc:  # noqa: BLE001 - the user's module raised while being imported
            raise self.error(f"importing module '{name}' failed: {_describe(exc)}{_last_frame(exc)}") from exc
        dirs = self._search_dirs()
        first = name.split(".")[0]
        for folder in dirs:
            if (folder / f"{first}.py").is_file() or (folder / first / "__init__.py").is_file():
                if str(folder) not in sys.path:
                    sys.path.append(str(folder))
                importlib.invalidate_caches()
                try:
                    return importlib.import_module(name)
                except Exception as exc:  # noqa: BLE001
                    raise self.error(
                        f"importing module '{name}' from {folder} failed: {_describe(exc)}{_last_frame(exc)}"
                    ) from exc
        looked = ", ".join(str(d) for d in dirs)
        raise self.error(
            f"python_param.module '{name}' not found: not importable from sys.path (PYTHONPATH), nor in {looked}"
        )

    def _new_param(self, attr: str, shape) -> None:
        shape = tuple(int(d) for d in shape)
        if any(d < 0 for d in shape):
            raise ValueError(f"a learnable blob with a negative dimension: {list(shape)}")
        setattr(self, attr, nn.Parameter(torch.zeros(shape, dtype=self._like.dtype, device=self._like.device)))

    def setup(self, bottom_shapes):
        p = self.param.python_param
        self.check(bool(p.module), "python_param.module is empty: name the Python module that holds the layer")
        self.check(bool(p.layer), "python_param.layer is empty: name the layer's class in the module")
        ensure_caffe_importable()
        module = self._import()
        cls = getattr(module, p.layer, None)
        if cls is None:
            classes = sorted(k for k, v in vars(module).items() if isinstance(v, type) and not k.startswith("_"))
            where = getattr(module, "__file__", None) or p.module
            raise self.error(
                f"module '{p.module}' ({where}) has no '{p.layer}'"
                + (f" (it has: {', '.join(classes)})" if classes else "")
            )
        try:
            impl = cls(self.param)
        except Exception as exc:  # noqa: BLE001
            hint = ""
            if _real_pycaffe_loaded():
                hint = (
                    " (its caffe.Layer is a real pycaffe's, which this pipeline cannot construct: run without "
                    "pycaffe on sys.path, so that `import caffe` gets the pipeline's shim)"
                )
            raise self.error(
                f"constructing {self._what}(param) raised {_describe(exc)}{_last_frame(exc)}{hint}"
            ) from exc
        impl.param_str = p.param_str
        impl.phase = int(self.phase)
        impl.blobs = BlobVec(self)
        self._impl = impl
        bottoms = [Blob(np.zeros(shape, dtype=np.float32)) for shape in bottom_shapes]
        self._tops = [Blob(np.zeros((), dtype=np.float32)) for _ in self.top_names]
        self._in_setup = True
        try:
            self._call("setup", bottoms, self._tops)
            self._call("reshape", bottoms, self._tops)
        finally:
            self._in_setup = False
        self.blob_names = tuple(self._blob_attrs)
        return [top.shape for top in self._tops]

    # ----- running --------------------------------------------------------------------------------------
    def _params(self) -> list[torch.Tensor]:
        return [getattr(self, attr) for attr in self._blob_attrs]

    def _sync_in(self) -> None:
        for blob in self._impl.blobs:
            if isinstance(blob, ParamBlob):
                blob.sync_in()

    def _sync_out(self) -> None:
        for blob in self._impl.blobs:
            if isinstance(blob, ParamBlob):
                blob.sync_out()

    def _run_forward(self, bottoms):
        bottom_blobs = [Blob(_as_host(b)) for b in bottoms]
        self._sync_in()
        self._call("reshape", bottom_blobs, self._tops)
        self._call("forward", bottom_blobs, self._tops)
        self._sync_out()
        like = next((b for b in bottoms if b.is_floating_point()), self._like)
        top_data = [np.array(top.data, copy=True) for top in self._tops]
        tops = [torch.from_numpy(d).to(device=like.device, dtype=like.dtype) for d in top_data]
        return tops, [b.data for b in bottom_blobs], top_data

    def _run_backward(self, bottom_data, top_data, top_grads, propagate_down, param_needs):
        for top, data, grad in zip(self._tops, top_data, top_grads):
            top._data = data
            top._diff = (
                np.zeros_like(data)
                if grad is None
                else grad.detach().to(torch.float64 if data.dtype == np.float64 else torch.float32).cpu().numpy()
            )
            top._diff = top._diff.reshape(data.shape)
        bottoms = [Blob(data) for data in bottom_data]
        self._sync_in()
        params = [b for b in self._impl.blobs if isinstance(b, ParamBlob)]
        for blob in params:
            blob._diff = np.zeros_like(blob.data)
        self._call("backward", self._tops, [bool(p) for p in propagate_down], bottoms)
        self._sync_out()
        grads = [b.diff for b in bottoms] + [b.diff for b in params]
        for i, (grad, need) in enumerate(zip(grads, list(propagate_down) + list(param_needs))):
            data = bottom_data[i] if i < len(bottom_data) else params[i - len(bottom_data)].data
            if need and grad.shape != data.shape:
                raise self.error(f"backward() left a diff of shape {list(grad.shape)} for data {list(data.shape)}")
        return grads

    def forward(self, *bottoms: torch.Tensor):
        if self._impl is None:
            raise self.error("forward before setup")
        params = self._params()
        inputs = (*bottoms, *params)
        if self._tops and torch.is_grad_enabled() and any(t.requires_grad for t in inputs):
            return _PythonFunction.apply(self, len(bottoms), *inputs)
        with torch.no_grad():
            return tuple(self._run_forward(bottoms)[0])

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, python={self._what!r}"


def _real_pycaffe_loaded() -> bool:
    """A `caffe` module is loaded and it is not this project's shim."""
    caffe = sys.modules.get("caffe")
    return caffe is not None and str(SHIM_ROOT) not in (getattr(caffe, "__file__", None) or "")
