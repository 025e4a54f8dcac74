"""Compile the C++ sources of pipeline/csrc into torch op libraries, once per build key, with a clear error when
there is no compiler or the build fails.

Each library is built in its own folder, `<cache>/<name>_<key>` (cache: TORCH_EXTENSIONS_DIR, else
~/.cache/torch_extensions), where the key hashes everything the binary depends on: the sources' bytes, the
compiler flags, the compiler (its path and version), torch and Python versions, and, for flags that target
the build machine (`-march=native`), the CPU (model name and feature flags). Two checkouts, two torch
installs or two CPU models sharing a cache therefore never rebuild each other's library nor load one built
for another instruction set, and an unchanged build is loaded straight from its folder (no compiler run).

`python -m pipeline.ops.build` (run by `make setup`) builds every library ahead of first use.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import PipelineError

CSRC = Path(__file__).resolve().parents[1] / "csrc"
_DONE = "built.ok"  # written once the library is complete: a folder without it is (re)built


@dataclass(frozen=True)
class OpLibrary:
    name: str
    sources: tuple[str, ...]
    cflags: tuple[str, ...]
    what: str
    minutes: str  # how long a build takes, for the log line


#: Every op library of the project (pipeline/ops/distill.py, fast_ops.py and caffe_cpu.py load them by these names).
# The distillation op is tuned for the build machine (-march=native, fast-math): its key includes the CPU. The
# Caffe arithmetic ops are portable -O2 without fast-math: their division and summation order are Caffe's.
DISTILL = OpLibrary(
    "caffe_pipeline_distill",
    ("distill.cpp",),
    ("-O3", "-std=c++17", "-ffast-math", "-fopenmp-simd", "-march=native"),
    "distillation op",
    "about a minute",
)
# The default path's fused SoftmaxWithLoss op, apart from the bit-exact mode's ops: a failed exact build leaves
# the fast path built (pipeline/ops/fast_ops.py loads only this one).
FAST = OpLibrary(
    "caffe_pipeline_fast",
    ("fast_ops.cpp",),
    ("-O2", "-std=c++17"),
    "fused SoftmaxWithLoss op",
    "under a minute",
)
CAFFE_CPU = OpLibrary(
    "caffe_pipeline_caffe_cpu",
    ("caffe_cpu.cpp", "caffe_conv.cpp"),
    ("-O2", "-std=c++17"),
    "Caffe CPU arithmetic ops (bit-exact mode)",
    "about two minutes",
)
LIBRARIES = (DISTILL, FAST, CAFFE_CPU)


def compiler() -> str:
    return os.environ.get("CXX", "c++")


@functools.cache
def compiler_identity(command: str) -> str:
    """The compiler's resolved path and first `--version` line ('' where it is missing)."""
    path = shutil.which(command)
    if path is None:
        return ""
    try:
        version = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        version = ""
    return f"{os.path.realpath(path)}\n{version.splitlines()[0] if version else ''}"


@functools.cache
def cpu_identity() -> str:
    """The CPU model and its feature flags (Linux /proc/cpuinfo; elsewhere what the platform module says)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return f"{platform.machine()} {platform.processor()}"
    fields = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("vendor_id", "model name", "flags", "Features", "CPU implementer", "CPU part") and key not in fields:
            fields[key] = " ".join(sorted(value.split())) if key in ("flags", "Features") else value.strip()
    return "\n".join(f"{k}: {v}" for k, v in sorted(fields.items())) or platform.machine()


def targets_build_cpu(cflags) -> bool:
    """Whether the flags make code for the build machine's CPU only (-march=native and the like)."""
    return any(flag.startswith(("-march=native", "-mcpu=native", "-mtune=native")) for flag in cflags)


def build_key(sources, cflags, compiler_id: str, cpu: str | None = None, *, length: int = 12) -> str:
    """A short hash of what the built library depends on. `sources` are paths; `cpu` counts only where the
    flags target the build machine."""
    import torch

    digest = hashlib.sha256()
    for part in (
        "\0".join(cflags),
        compiler_id,
        torch.__version__,
        str(getattr(torch._C, "_GLIBCXX_USE_CXX11_ABI", "")),
        f"{sys.implementation.cache_tag}",
        cpu if cpu is not None and targets_build_cpu(cflags) else "",
    ):
        digest.update(part.encode() + b"\1")
    for path in sources:
        digest.update(Path(path).name.encode() + b"\0" + Path(path).read_bytes() + b"\1")
    return digest.hexdigest()[:length]


def cache_root() -> Path:
    explicit = os.environ.get("TORCH_EXTENSIONS_DIR")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "torch_extensions"


def library_folder(library: OpLibrary) -> tuple[str, Path]:
    """The keyed module name and its build folder."""
    paths = [CSRC / s for s in library.sources]
    key = build_key(paths, library.cflags, compiler_identity(compiler()), cpu_identity())
    name = f"{library.name}_{key}"
    return name, cache_root() / name


def _announce(message: str) -> None:
    log = logging.getLogger("pipeline")
    if log.hasHandlers() and log.isEnabledFor(logging.INFO):
        log.info(message)
    else:
        print(message, file=sys.stderr, flush=True)


def build_op_library(library: OpLibrary) -> Path:
    """Load `library`, building it first where its keyed folder holds no complete build; returns the .so path."""
    import torch

    name, folder = library_folder(library)
    built = folder / f"{name}.so"
    if (folder / _DONE).exists() and built.exists():
        torch.ops.load_library(str(built))
        return built
    command = compiler()
    if shutil.which(command) is None:
        raise PipelineError(
            f"the {library.what} is C++ and needs a compiler: '{command}' was not found "
            "(install g++, e.g. `apt-get install g++`, or set CXX)"
        )
    from torch.utils.cpp_extension import load

    paths = [CSRC / s for s in library.sources]
    _announce(f"building the {library.what} ({library.minutes}, once; cached in {folder})")
    folder.mkdir(parents=True, exist_ok=True)
    try:
        path = load(
            name=name,
            sources=[str(p) for p in paths],
            extra_cflags=list(library.cflags),
            build_directory=str(folder),
            is_python_module=False,
            verbose=False,
        )
    except (RuntimeError, OSError, ImportError) as exc:
        raise PipelineError(f"building the {library.what} from {', '.join(map(str, paths))} failed: {exc}") from None
    (folder / _DONE).write_text(f"{name}\n")
    return Path(path)


def main() -> int:
    """Build every op library (`make setup`); a library that cannot be built is reported, not fatal: the code
    falls back (ATen formulations) or names the problem where the op is used."""
    failed = 0
    for library in LIBRARIES:
        try:
            path = build_op_library(library)
            print(f"{library.what}: {path}")
        except PipelineError as exc:
            failed += 1
            print(f"{library.what}: not built: {exc}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())


_optional_lock = threading.Lock()


def load_optional(state: dict, library: OpLibrary, register_python_kernels: Callable[[], None], fallback: str) -> bool:
    """Build (first time only) and load `library` with its Python-side kernels; where it cannot be built, False
    with one warning ending in `fallback` (what runs instead). `state` is the caller's cache of the answer."""
    ready = state.get("ready")
    if ready is not None:
        return ready
    with _optional_lock:
        if "ready" not in state:
            try:
                build_op_library(library)
                register_python_kernels()
                state["ready"] = True
            except PipelineError as exc:
                warnings.warn(f"{exc}; {fallback}", stacklevel=3)
                state["ready"] = False
    return state["ready"]
