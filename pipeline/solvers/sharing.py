"""Test nets use the train net's weights: Caffe's Net::ShareTrainedLayersWith."""

from __future__ import annotations

from pipeline.errors import SolverError


def share_weights(src, dst) -> list[str]:
    """Make every blob of each `dst` layer the very tensor of the `src` layer of the same name.

    Layers only `dst` has keep their own blobs; layers only `src` has are ignored. Returns the shared layer names.
    A name several layers share: each `src` layer of that name in turn gives its blobs to the first `dst` layer
    of the name (so the last one's stay), the other `dst` layers keep theirs, as Caffe's scan does.
    """
    shared = []
    first: dict[str, object] = {}
    for layer in dst.layers:
        first.setdefault(layer.name, layer)
    for source in src.layers:
        layer = first.get(source.name)
        if layer is None:
            continue
        mine = [a for a in layer.blob_names if getattr(layer, a, None) is not None]
        theirs = [getattr(source, a) for a in source.blob_names if getattr(source, a, None) is not None]
        if len(mine) != len(theirs):
            raise SolverError(
                f"layer '{layer.name}': cannot share weights: {len(theirs)} blob(s) in the train net, "
                f"{len(mine)} in net '{dst.name}' ({_phase(dst)})"
            )
        for index, (attr, tensor) in enumerate(zip(mine, theirs)):
            own = getattr(layer, attr)
            if own is tensor:
                continue
            if own.shape != tensor.shape:
                raise SolverError(
                    f"layer '{layer.name}' blob {index}: cannot share weights: shape "
                    f"{list(tensor.shape)} in the train net, {list(own.shape)} in net '{dst.name}' "
                    f"({_phase(dst)})"
                )
            setattr(layer, attr, tensor)
        if layer.name not in shared:
            shared.append(layer.name)
    return shared


def _phase(net) -> str:
    return "TEST" if net.phase == 1 else "TRAIN"
