"""The error a data layer raises: a DataError (what went wrong) that is also a NetBuildError (which layer).

Net construction re-wraps plain errors from a layer's set-up as NetBuildError; raising this type keeps both the
layer's name and the DataError type, so callers can catch either.
"""

from __future__ import annotations

from pipeline.errors import DataError, NetBuildError


class LayerDataError(NetBuildError, DataError):
    """A missing, unreadable or corrupt data source, named together with the layer reading it."""


def layer_data_error(layer, problem: Exception | str) -> LayerDataError:
    """`problem` (a DataError from pipeline.data, or a message) as raised by `layer`."""
    if isinstance(problem, LayerDataError):
        return problem
    return LayerDataError(str(problem), layer.name, layer.type_name or layer.param.type)
