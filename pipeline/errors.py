"""Error types. Every user-facing failure is one of these, never a bare torch or protobuf traceback."""


class PipelineError(Exception):
    """Base of all errors this project raises on bad input."""


class PrototxtError(PipelineError):
    """A prototxt (net or solver) that does not parse: carries file:line:column."""

    def __init__(self, message: str, path: str = "<string>", line: int | None = None, column: int | None = None):
        self.path, self.line, self.column = path, line, column
        where = path if line is None else f"{path}:{line}" + ("" if column is None else f":{column}")
        super().__init__(f"{where}: {message}")


class TemplateError(PipelineError):
    """A Jinja template that does not render (syntax error, undefined variable)."""


class NetBuildError(PipelineError):
    """A net that cannot be built: names the layer (and blob, shapes) at fault."""

    def __init__(
        self, message: str, layer: str | None = None, layer_type: str | None = None, location: str | None = None
    ):
        """`location`: where the layer was written (`lenet.prototxt:42`), when the net came from a text."""
        self.layer, self.layer_type, self.location, self.detail = layer, layer_type, location, message
        prefix = f"layer '{layer}' ({layer_type}): " if layer is not None and layer_type else ""
        if layer is not None and not layer_type:
            prefix = f"layer '{layer}': "
        if location:
            prefix = f"{location}: {prefix}"
        super().__init__(prefix + message)


class WeightsError(PipelineError):
    """A weights file (caffemodel, HDF5, binaryproto) that cannot be read or does not fit the net."""


class SolverError(PipelineError):
    """A solver prototxt that cannot drive training."""


class DataError(PipelineError):
    """A data source that is missing, unreadable or corrupt."""
