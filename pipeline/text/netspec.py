"""NetParameter -> NetParameter steps Caffe does before building a net: state filtering and Split insertion."""

from __future__ import annotations

from collections import defaultdict

from pipeline.errors import NetBuildError
from pipeline.proto import caffe_pb2


def net_state(net: caffe_pb2.NetParameter, phase: int, level: int = 0, stages=()) -> caffe_pb2.NetState:
    """The state a net is built in: the file's `state` overridden by the requested phase, level and stages."""
    state = caffe_pb2.NetState()
    state.CopyFrom(net.state)
    state.phase = phase
    if level:
        state.level = level
    state.stage.extend(s for s in stages if s not in state.stage)
    return state


def state_meets_rule(state: caffe_pb2.NetState, rule: caffe_pb2.NetStateRule) -> bool:
    if rule.HasField("phase") and rule.phase != state.phase:
        return False
    if rule.HasField("min_level") and state.level < rule.min_level:
        return False
    if rule.HasField("max_level") and state.level > rule.max_level:
        return False
    if any(stage not in state.stage for stage in rule.stage):
        return False
    return not any(stage in state.stage for stage in rule.not_stage)


def filter_net(net: caffe_pb2.NetParameter, state: caffe_pb2.NetState | None = None) -> caffe_pb2.NetParameter:
    """Keep the layers whose include/exclude rules admit `state` (by default the net's own `state`), as Caffe's
    Net::FilterNet does. Everything else is copied as written: the result's `state` is the input's (none if it
    had none), never `state`."""
    state = net.state if state is None else state
    filtered = caffe_pb2.NetParameter()
    filtered.CopyFrom(net)
    del filtered.layer[:]
    for layer in net.layer:
        if layer.include and layer.exclude:
            raise NetBuildError("specify either include rules or exclude rules, not both", layer.name)
        if layer.include:
            keep = any(state_meets_rule(state, rule) for rule in layer.include)
        else:
            keep = not any(state_meets_rule(state, rule) for rule in layer.exclude)
        if keep:
            filtered.layer.add().CopyFrom(layer)
    return filtered


def split_layer_name(layer: str, blob: str, top_index: int) -> str:
    return f"{blob}_{layer}_{top_index}_split"


def split_blob_name(layer: str, blob: str, top_index: int, k: int) -> str:
    return f"{blob}_{layer}_{top_index}_split_{k}"


def insert_splits(net: caffe_pb2.NetParameter) -> caffe_pb2.NetParameter:
    """Give every blob read by several layers (or read and used as a loss) a Split layer, named as Caffe does.

    Each consumer then reads its own split top, so the gradients of the consumers are summed in the Split's
    backward, exactly like Caffe's insert_splits.cpp.
    """
    last_top: dict[str, tuple[int, int]] = {}
    source_of: dict[tuple[int, int], tuple[int, int]] = {}
    consumers: dict[tuple[int, int], int] = defaultdict(int)
    loss_weight_of: dict[tuple[int, int], float] = {}
    for i, layer in enumerate(net.layer):
        for j, blob in enumerate(layer.bottom):
            if blob not in last_top:
                raise NetBuildError(
                    f"unknown bottom blob '{blob}' (bottom index {j}); no earlier layer produces it",
                    layer.name,
                    layer.type,
                )
            source_of[(i, j)] = last_top[blob]
            consumers[last_top[blob]] += 1
        for j, blob in enumerate(layer.top):
            last_top[blob] = (i, j)
        for j in range(min(len(layer.loss_weight), len(layer.top))):
            top = last_top[layer.top[j]]
            loss_weight_of[top] = layer.loss_weight[j]
            if layer.loss_weight[j]:
                consumers[top] += 1

    result = caffe_pb2.NetParameter()
    result.CopyFrom(net)
    del result.layer[:]
    used: dict[tuple[int, int], int] = defaultdict(int)
    for i, original in enumerate(net.layer):
        layer = result.layer.add()
        layer.CopyFrom(original)
        for j, blob in enumerate(original.bottom):
            source = source_of[(i, j)]
            if consumers[source] > 1:
                producer = net.layer[source[0]].name
                layer.bottom[j] = split_blob_name(producer, blob, source[1], used[source])
                used[source] += 1
        for j, blob in enumerate(original.top):
            n = consumers[(i, j)]
            if n <= 1:
                continue
            weight = loss_weight_of.get((i, j), 0.0)
            split = caffe_pb2.LayerParameter(name=split_layer_name(original.name, blob, j), type="Split")
            split.bottom.append(blob)
            split.top.extend(split_blob_name(original.name, blob, j, k) for k in range(n))
            if weight:
                # The loss is taken from the first split top; the producer gives up its own loss weight.
                split.loss_weight.extend([weight] + [0.0] * (n - 1))
                del layer.loss_weight[:]
                used[(i, j)] += 1
            result.layer.append(split)
    return result
