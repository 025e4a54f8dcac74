"""Net: a NetParameter built into a torch module that behaves like a Caffe Net.

Build steps (Caffe's Net::Init): filter layers by phase/level/stage, insert Split layers, instantiate each
layer and compute its top shapes, assign loss weights, collect parameters (shared by ParamSpec name, with
lr_mult/decay_mult), and work out which layers feed a loss. At forward time a layer whose tops feed no loss
runs without autograd, and parameters with lr_mult 0 do not require grad, so a frozen branch (a teacher)
records no autograd graph at all.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING

import torch
from torch import nn

import pipeline.net.layers  # noqa: F401  (registers every layer type)
from pipeline.errors import NetBuildError, PipelineError
from pipeline.exact import caffe_blas
from pipeline.net.accessors import Blob, LearnableParam, _BlobMap
from pipeline.net.build_errors import as_written, split_origins
from pipeline.net.layers.base import TEST, TRAIN, Layer, check_counts
from pipeline.net.layers.registry import layer_class
from pipeline.proto import caffe_pb2
from pipeline.text.netspec import filter_net, insert_splits, net_state

if TYPE_CHECKING:
    from pipeline.exact.caffe_rng import CaffeRNG

PHASES = {"TRAIN": TRAIN, "TEST": TEST}
#: The name Caffe's Net::AppendTop gives a top a loss layer needs but the file does not name.
AUTO_TOP = "(automatic)"
_DETACH, _FORCE = 1, 2  # how a layer reads a bottom under its propagate_down (0: as it is)


class Net(nn.Module):
    def __init__(
        self,
        param: caffe_pb2.NetParameter,
        phase: int | str = TRAIN,
        level: int = 0,
        stages=(),
        seed: int | None = None,
        source: str = "<net>",
        filler_rng: CaffeRNG | None = None,
        fill_blobs: bool = True,
    ):
        """`filler_rng`: Caffe's random stream to fill the blobs from (a solver shares one among its nets, as
        Caffe's global generator); by default a seeded net in the bit-exact mode starts its own. `fill_blobs`
        False leaves the blobs unfilled (their fillers checked) for weights copied in next; each layer's
        `reset_parameters()` fills it later."""
        super().__init__()
        phase = PHASES[phase] if isinstance(phase, str) else phase
        self.source = source
        self.name = param.name
        self.state = net_state(param, phase, level, stages)
        self.phase = phase
        self.force_backward = param.force_backward
        self.layers = nn.ModuleList()
        self.layer_by_name: dict[str, Layer] = {}
        self.blob_shapes: dict[str, tuple[int, ...]] = OrderedDict()
        self.loss_weights: list[list[float]] = []
        self.feed: dict[str, torch.Tensor] = {}
        self.retain_diffs = False
        self.loss: torch.Tensor | None = None
        self._values: dict[str, torch.Tensor] = {}
        self._first_values: dict[str, torch.Tensor] = {}
        self._fill_blobs = fill_blobs
        generator = torch.Generator().manual_seed(seed if seed is not None else torch.initial_seed() % 2**63)
        # A seeded net in the bit-exact mode fills its blobs from Caffe's own random stream.
        if filler_rng is None and seed is not None and caffe_blas.is_on():
            from pipeline.exact.caffe_rng import CaffeRNG  # the exact mode's only: the default path never loads it

            filler_rng = CaffeRNG(seed)
        written = param
        self._building: int | None = None  # index in self.param.layer of the layer being set up
        self._origins: list[int] = []
        self._split_sources: dict[str, str] = {}
        self._anonymous_tops: set[str] = set()
        try:
            written = filter_net(param, self.state)
            self.param = insert_splits(written)
            self._origins, self._split_sources = split_origins(written, self.param)
            for k, layer_param in enumerate(self.param.layer):
                self._building = k
                self._append_layer(layer_param, generator, filler_rng)
            self._building = None
            self._share_params()
            self.learnable_params = self._collect_learnable()
            self._plan_backward()
        except NetBuildError as exc:
            raise self._as_written(exc, written) from None
        self._plan_soft_target_caches()

    # ----- building ----------------------------------------------------------------------------------
    def _as_written(self, exc: NetBuildError, written: caffe_pb2.NetParameter) -> NetBuildError:
        return as_written(exc, written, self._building, self._origins, self._split_sources)

    def _append_layer(
        self, layer_param: caffe_pb2.LayerParameter, generator: torch.Generator, filler_rng: CaffeRNG | None = None
    ) -> None:
        # Caffe's Net::Init has no check that layer names are unique: a name used twice builds, and a look-up
        # by name finds the last such layer (layer_names_index_), as layer_by_name does here.
        cls = layer_class(layer_param.type, layer_param.name)
        layer = cls(layer_param, self.phase)
        layer.generator = generator
        layer.filler_rng = filler_rng
        layer.fill_blobs = self._fill_blobs
        named_tops = len(layer_param.top)
        if layer.is_loss and layer.num_tops and named_tops < layer.num_tops[0]:
            # A LossLayer's AutoTopBlobs(): the tops it needs and the file leaves out are made anonymous, named
            # "(automatic)", readable by no later layer and no output of the net, yet counted in its loss. The
            # layer's parameter keeps the tops as written (Caffe's ToProto writes no "(automatic)" top).
            layer.top_names.extend([AUTO_TOP] * (layer.num_tops[0] - named_tops))
            self._anonymous_tops.add(AUTO_TOP)
        check_counts(layer, len(layer_param.bottom), len(layer.top_names))
        bottom_shapes = []
        for j, blob in enumerate(layer_param.bottom):
            if blob not in self.blob_shapes:
                raise NetBuildError(f"unknown bottom blob '{blob}' (bottom index {j})", layer.name, cls.type_name)
            bottom_shapes.append(self.blob_shapes[blob])
        try:
            top_shapes = layer.setup(bottom_shapes)
        except PipelineError as exc:
            if isinstance(exc, NetBuildError) and exc.layer is not None:
                raise
            raise NetBuildError(str(exc), layer.name, cls.type_name) from None
        except (ValueError, RuntimeError, IndexError, ZeroDivisionError, TypeError) as exc:
            shapes = ", ".join(f"{b} {list(s)}" for b, s in zip(layer_param.bottom, bottom_shapes))
            raise NetBuildError(f"set-up failed for bottoms [{shapes}]: {exc}", layer.name, cls.type_name) from None
        if len(top_shapes) != len(layer.top_names):
            raise NetBuildError(
                f"produces {len(top_shapes)} top(s) but {len(layer.top_names)} named", layer.name, cls.type_name
            )
        for blob, shape in zip(layer.top_names, top_shapes):
            self.blob_shapes[blob] = tuple(int(d) for d in shape)
        self.loss_weights.append(self._layer_loss_weights(layer))
        self.layers.append(layer)
        self.layer_by_name[layer.name] = layer

    @staticmethod
    def _layer_loss_weights(layer: Layer) -> list[float]:
        n = len(layer.top_names)
        weights = list(layer.param.loss_weight)
        if weights:
            if len(weights) != n:
                raise layer.error(f"has {len(weights)} loss_weight values for {n} tops")
            return weights
        return [1.0] + [0.0] * (n - 1) if layer.is_loss and n else [0.0] * n

    def _param_spec(self, layer: Layer, index: int) -> caffe_pb2.ParamSpec:
        return layer.param.param[index] if index < len(layer.param.param) else caffe_pb2.ParamSpec()

    def _share_params(self) -> None:
        owners: dict[str, tuple[Layer, str]] = {}
        self._shared_views: list[tuple[Layer, str, Layer, str, torch.Size]] = []
        for layer in self.layers:
            for index, attr in enumerate(n for n in layer.blob_names if getattr(layer, n, None) is not None):
                name = self._param_spec(layer, index).name
                if not name:
                    continue
                if name not in owners:
                    owners[name] = (layer, attr)
                    continue
                owner_layer, owner_attr = owners[name]
                owner = getattr(owner_layer, owner_attr)
                mine = getattr(layer, attr)
                if owner.shape == mine.shape:
                    setattr(layer, attr, owner)
                    continue
                # Caffe's Net::AppendParam: STRICT (the default) wants equal shapes, PERMISSIVE equal counts.
                permissive = self._param_spec(layer, index).share_mode == caffe_pb2.ParamSpec.PERMISSIVE
                if not permissive or owner.numel() != mine.numel():
                    what = "counts" if permissive else "shapes (share_mode: PERMISSIVE needs only equal counts)"
                    raise layer.error(
                        f"shares parameter '{name}' with layer '{owner_layer.name}' but their {what} differ: "
                        f"{list(mine.shape)} vs {list(owner.shape)}"
                    )
                owner.data = owner.data.contiguous()  # a view of another shape needs plain strides
                del layer._parameters[attr]  # not a parameter of its own: a view of the owner, made each pass
                self._shared_views.append((layer, attr, owner_layer, owner_attr, mine.shape))
        self._refresh_shared_views()

    def _apply(self, fn, recurse=True):
        result = super()._apply(fn, recurse)
        if getattr(self, "_shared_views", None):  # .to() / .double() moved the owners: the views follow
            self._refresh_shared_views()
        return result

    def _refresh_shared_views(self) -> None:
        # Made afresh every pass, so each records its own autograd view of the owner as it is now (after
        # `.to()`, `.double()`, a loaded file): the gradient reaches the owner, and the layer sees its values.
        for layer, attr, owner_layer, owner_attr, shape in self._shared_views:
            object.__setattr__(layer, attr, getattr(owner_layer, owner_attr).view(shape))

    def _collect_learnable(self) -> list[LearnableParam]:
        seen: set[int] = set()
        result = []
        for layer in self.layers:
            for index, blob in enumerate(layer.blobs):
                if not isinstance(blob, nn.Parameter):
                    continue
                spec = self._param_spec(layer, index)
                if spec.lr_mult == 0:
                    blob.requires_grad_(False)
                if id(blob) in seen:
                    continue
                seen.add(id(blob))
                result.append(LearnableParam(blob, layer.name, index, spec.lr_mult, spec.decay_mult))
        return result

    def _plan_backward(self) -> None:
        """Which layers' tops feed a loss (Caffe's layer_contributes_loss), and which bottoms to detach."""
        needed: set[str] = set()
        self.contributes_loss = [False] * len(self.layers)
        for i in range(len(self.layers) - 1, -1, -1):
            layer = self.layers[i]
            feeds_loss = any(w != 0 for w in self.loss_weights[i]) or any(t in needed for t in layer.top_names)
            self.contributes_loss[i] = feeds_loss and (layer.has_backward or not layer.bottom_names)
            if self.contributes_loss[i]:
                needed.update(layer.bottom_names)
        self.detach_bottoms = []
        # Caffe's Net::AppendBottom: a layer's propagate_down, when given, decides each bottom's need for a
        # gradient outright, so `true` makes one even for a bottom nothing else needs (a data layer's top, a
        # frozen branch's), provided the layer feeds a loss. Such a bottom is read as a fresh leaf that wants
        # a gradient; its diff is then that leaf's, and nothing flows on into the layer that produced it.
        self.force_bottoms = []
        for i, layer in enumerate(self.layers):
            flags = list(layer.param.propagate_down)
            if flags and len(flags) != len(layer.bottom_names):
                raise layer.error(f"propagate_down has {len(flags)} values for {len(layer.bottom_names)} bottoms")
            if not flags:
                flags = [None] * len(layer.bottom_names)  # not given: each bottom as its producer leaves it
            self.detach_bottoms.append([f is False for f in flags])
            force = self.contributes_loss[i] and layer.has_backward and not layer.is_source
            self.force_bottoms.append([f is True and force for f in flags])
        # What forward() needs of each layer, looked up once: (index, layer, bottom names or None for a source,
        # per-bottom modes or None (_DETACH, _FORCE), top names, loss weights or None).
        self._steps = [
            (
                i,
                layer,
                None if layer.is_source else list(layer.bottom_names),
                [_DETACH if d else _FORCE if f else 0 for d, f in zip(detach, force)] if any(detach + force) else None,
                list(layer.top_names),
                weights if any(weights) else None,
            )
            for i, (layer, detach, force, weights) in enumerate(
                zip(self.layers, self.detach_bottoms, self.force_bottoms, self.loss_weights)
            )
        ]
        consumed = {b for layer in self.layers for b in layer.bottom_names}
        self.output_names = [b for b in self.blob_shapes if b not in consumed and b not in self._anonymous_tops]
        self.input_names = [t for layer in self.layers if layer.is_source for t in layer.top_names]

    def _plan_soft_target_caches(self) -> None:
        from pipeline.net.soft_targets import SoftTargetCache

        self.soft_target_caches = []
        self._cache_of_layer: dict[int, SoftTargetCache] = {}
        if self.phase != TRAIN:
            return
        for layer in self.layers:
            kd = layer.param.knowledge_distillation_param
            if layer.type_name == "KnowledgeDistillation" and kd.cache_teacher:
                cache = SoftTargetCache(self, layer.bottom_names[1])
                self.soft_target_caches.append(cache)
                self._cache_of_layer.update(dict.fromkeys(cache.layers, cache))

    # ----- pycaffe-style access ----------------------------------------------------------------------
    @property
    def blobs(self) -> OrderedDict[str, Blob]:
        return _BlobMap((name, Blob(self, name)) for name in self.blob_shapes)

    @property
    def params(self) -> OrderedDict[str, list[torch.Tensor]]:
        return OrderedDict((layer.name, layer.blobs) for layer in self.layers if layer.blobs)

    def layer(self, name: str) -> Layer:
        try:
            return self.layer_by_name[name]
        except KeyError:
            raise NetBuildError(f"no layer named '{name}' in net '{self.name}'") from None

    # ----- running -----------------------------------------------------------------------------------
    def forward(self, *args: torch.Tensor, **feeds: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run every layer; feeds (by blob name, or positionally in input order) replace source-layer tops.

        Returns the net's output blobs (those no layer reads). The weighted total loss is left in `self.loss`.
        """
        if self.feed or args:
            feeds = {**self.feed, **dict(zip(self.input_names, args)), **feeds}
        # Drop the previous pass's blobs first, so two passes' activations are never alive at once.
        # object.__setattr__: nn.Module's own __setattr__ costs microseconds per call on this hot path.
        for name, value in (("feed", {}), ("_values", {}), ("_first_values", {}), ("loss", None)):
            object.__setattr__(self, name, value)
        if self._shared_views:
            self._refresh_shared_views()
        values: dict[str, torch.Tensor] = {}
        first: dict[str, torch.Tensor] = {}
        loss = None
        grad_enabled = torch.is_grad_enabled()
        force = self.force_backward and grad_enabled
        hooked = _global_hooks()
        served: set[int] = set()
        retain, caches = self.retain_diffs, self._cache_of_layer
        for i, layer, bottom_names, detach, top_names, top_weights in self._steps:
            cache = caches.get(i) if caches else None
            if cache is not None:
                if i == cache.first_layer:
                    cached = cache.lookup(values)
                    if cached is not None:
                        values[cache.blob] = cached
                        served.add(id(cache))
                if id(cache) in served:
                    continue
            if bottom_names is None:
                tops = self._source_tops(layer, feeds, force)
            else:
                bottoms = [values[b] for b in bottom_names]
                if detach:
                    bottoms = self._bottoms_as_propagated(bottoms, bottom_names, detach, grad_enabled, first)
                tops = self._run(layer, bottoms, i, grad_enabled, hooked)
            for name, top in zip(top_names, tops):
                values[name] = top
            if retain:
                for name, top in zip(top_names, tops):
                    # Caffe's diff of an in-place chain is the gradient at the earliest value whose layer
                    # back-propagates (an in-place layer that does not leaves its top diff in the blob).
                    if name not in first or not first[name].requires_grad:
                        first[name] = top
                        if top.requires_grad:
                            top.retain_grad()
            if top_weights:
                for top, weight in zip(tops, top_weights):
                    if weight:
                        total = top if top.dim() == 0 else top.sum()  # a scalar loss top needs no sum node
                        term = total * weight if weight != 1 else total
                        loss = term if loss is None else loss + term
        for cache in self.soft_target_caches:
            if id(cache) not in served:
                cache.remember(values[cache.blob])
        object.__setattr__(self, "_values", values)
        object.__setattr__(self, "_first_values", first)
        object.__setattr__(self, "loss", loss)
        return {name: values[name] for name in self.output_names}

    def _bottoms_as_propagated(self, bottoms, names, modes, grad_enabled: bool, first: dict) -> list[torch.Tensor]:
        """A layer's bottoms under its propagate_down: detached where false; where true on a bottom that wants
        no gradient, a leaf that does (its diff is that leaf's)."""
        result = []
        for bottom, name, mode in zip(bottoms, names, modes):
            if mode == _DETACH:
                bottom = bottom.detach()
            elif mode == _FORCE and grad_enabled and not bottom.requires_grad and bottom.is_floating_point():
                bottom = bottom.detach().requires_grad_(True)
                if self.retain_diffs and (name not in first or not first[name].requires_grad):
                    first[name] = bottom
            result.append(bottom)
        return result

    def _source_tops(self, layer: Layer, feeds: dict, force: bool) -> list[torch.Tensor]:
        if all(t in feeds for t in layer.top_names):
            tops = [_as_tensor(feeds[t]) for t in layer.top_names]
        else:
            produced = layer()
            produced = (produced,) if isinstance(produced, torch.Tensor) else produced
            tops = [_as_tensor(feeds[t]) if t in feeds else p for t, p in zip(layer.top_names, produced)]
        if force:
            tops = [t.detach().requires_grad_(True) if t.is_floating_point() else t for t in tops]
        return tops

    def _run(self, layer: Layer, bottoms: list[torch.Tensor], i: int, grad_enabled=None, hooked=None):
        if grad_enabled is None:
            grad_enabled, hooked = torch.is_grad_enabled(), _global_hooks()
        # Straight to forward() unless someone hooked the layer: nn.Module.__call__ costs microseconds per layer.
        call = layer if hooked or _has_own_hooks(layer) else layer.forward
        try:
            if not grad_enabled or self.contributes_loss[i]:
                out = call(*bottoms)
            else:
                with torch.no_grad():
                    out = call(*bottoms)
        except PipelineError:
            raise
        except RuntimeError as exc:
            shapes = ", ".join(f"{b} {list(t.shape)}" for b, t in zip(layer.bottom_names, bottoms))
            raise NetBuildError(f"forward failed on bottoms [{shapes}]: {exc}", layer.name, layer.type_name) from None
        return (out,) if isinstance(out, torch.Tensor) else tuple(out)

    def backward(self) -> None:
        if self.loss is None:
            raise NetBuildError(f"net '{self.name}' has no loss to back-propagate")
        if self.loss.requires_grad:  # else no layer needs backward (Caffe's Net::Backward then does nothing)
            self.loss.backward()

    def clear_param_diffs(self) -> None:
        for p in self.parameters():
            p.grad = None

    def extra_repr(self) -> str:
        phase = caffe_pb2.Phase.Name(self.phase)
        return f"name={self.name!r}, phase={phase}, inputs={self.input_names}, outputs={self.output_names}"


def _as_tensor(value) -> torch.Tensor:
    # as_tensor dispatches a no-op conversion even for a tensor; feeds are usually tensors already.
    return value if isinstance(value, torch.Tensor) else torch.as_tensor(value)


def _has_own_hooks(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks or module._backward_hooks)


def _global_hooks() -> bool:
    hooks = torch.nn.modules.module
    return bool(
        hooks._global_forward_hooks
        or hooks._global_forward_pre_hooks
        or hooks._global_backward_hooks
        or torch._C._get_tracing_state()
    )


def build_net(
    path: str,
    phase: int | str = TRAIN,
    variables: dict | None = None,
    level: int = 0,
    stages=(),
    seed: int | None = None,
) -> Net:
    """Render, parse and build a net prototxt file."""
    from pipeline.text.prototxt import read_net

    return Net(read_net(path, variables), phase=phase, level=level, stages=stages, seed=seed, source=str(path))
