"""A net build error as the user wrote the net: the prototxt `file:line` of the layer at fault and blob names as
written, not the Split copies Caffe's builder reads (Net uses these while it builds)."""

from __future__ import annotations

from pipeline.errors import NetBuildError
from pipeline.proto import caffe_pb2
from pipeline.text import source_map


def as_written(
    exc: NetBuildError,
    written: caffe_pb2.NetParameter,
    building: int | None,
    origins: list[int],
    split_sources: dict[str, str],
) -> NetBuildError:
    """`exc` as the user wrote the net: the file:line of the layer at fault (when the net came from a
    prototxt parsed here), and blob names as written rather than the Split copies Caffe's builder reads."""
    if exc.location is not None or exc.layer is None:
        return exc
    if building is not None and building < len(origins):
        index = origins[building]
    else:
        index = next((i for i, layer in enumerate(written.layer) if layer.name == exc.layer), None)
    location = source_map.locate(written.layer, index) if index is not None else None
    detail = exc.detail
    for split in sorted(split_sources, key=len, reverse=True):
        detail = detail.replace(split, split_sources[split])
    if location is None and detail == exc.detail:
        return exc
    where = None if location is None else str(location)
    try:  # the same class (a LayerDataError stays a DataError too)
        return type(exc)(detail, exc.layer, exc.layer_type, where)
    except TypeError:
        return NetBuildError(detail, exc.layer, exc.layer_type, where)


def split_origins(written: caffe_pb2.NetParameter, split: caffe_pb2.NetParameter) -> tuple[list[int], dict[str, str]]:
    """For each layer of `split` (= insert_splits(written)), the index of its layer in `written` (an inserted
    Split: its producer's); and each inserted Split top -> the blob it copies, as written."""
    origins: list[int] = []
    sources: dict[str, str] = {}
    i = 0
    for layer in split.layer:
        if i < len(written.layer) and layer.name == written.layer[i].name and layer.type == written.layer[i].type:
            origins.append(i)
            i += 1
        else:
            origins.append(max(i - 1, 0))
            sources.update(dict.fromkeys(layer.top, layer.bottom[0]))
    return origins, sources
