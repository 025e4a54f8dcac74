"""Compile one C++ source of pipeline/csrc into a torch op library, once, cached by torch.utils.cpp_extension
(under TORCH_EXTENSIONS_DIR), with a clear error when there is no compiler or the build fails."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from pipeline.errors import PipelineError

CSRC = Path(__file__).resolve().parents[1] / "csrc"


def build_op_library(name: str, source: str | list[str], extra_cflags: list[str], what: str) -> None:
    """Build (first time only) and load `csrc/<source>` (or several sources) as the op library `name`; `what`
    names it in errors."""
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        raise PipelineError(
            f"the {what} is C++ and needs a compiler: '{compiler}' was not found "
            "(install g++, e.g. `apt-get install g++`, or set CXX)"
        )
    from torch.utils.cpp_extension import load

    paths = [CSRC / s for s in ([source] if isinstance(source, str) else source)]
    try:
        load(
            name=name, sources=[str(p) for p in paths], extra_cflags=extra_cflags, is_python_module=False, verbose=False
        )
    except (RuntimeError, OSError, ImportError) as exc:
        raise PipelineError(f"building the {what} from {', '.join(map(str, paths))} failed: {exc}") from None
