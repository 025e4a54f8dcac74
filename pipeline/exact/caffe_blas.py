"""Caffe's own BLAS calls, for runs that must reproduce BVLC Caffe's float32 arithmetic bit for bit.

Caffe's CPU convolution and InnerProduct are im2col plus OpenBLAS `cblas_sgemm`, its softmax sums through
`cblas_sgemv`; a product summed in another order (oneDNN, torch's BLAS) differs in the last bits, and chaotic
training runs (AdaGrad, Adam, CIFAR10-quick) turn that into visible loss differences within tens of iterations.
With the OpenBLAS that Caffe was linked against (Debian's libopenblas0-pthread, 0.3.21 for the reference runs
of ../shared/caffe-reference, driven by its Haswell kernels and 2 threads) this module makes the same calls with
the same arguments, on memory in Caffe's order: every training run of the reference set then equals Caffe's bit
for bit, snapshots included.

Off by default (it is slower); on with `exact_blas(True)` (a context manager too) or CAFFE_EXACT_BLAS=1.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
from pathlib import Path

import torch

from pipeline.errors import PipelineError

#: Where Debian's OpenBLAS packages put the library (pthread variant first: the one Caffe was run with).
CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libopenblas.so.0",
)
ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112
_state: dict[str, object] = {"on": False}


def library_path() -> str | None:
    """The OpenBLAS this module would load (CAFFE_OPENBLAS overrides the search), or None."""
    explicit = os.environ.get("CAFFE_OPENBLAS")
    if explicit:
        return explicit
    return next((path for path in CANDIDATES if Path(path).exists()), None)


def _library() -> ctypes.CDLL:
    lib = _state.get("lib")
    if lib is None:
        path = library_path()
        if path is None:
            raise PipelineError(
                "exact Caffe BLAS needs OpenBLAS (Debian: apt-get install libopenblas0-pthread, or set CAFFE_OPENBLAS "
                "to the libopenblas.so Caffe used)"
            )
        if platform.machine() == "x86_64":
            # The reference Caffe ran OpenBLAS's Haswell kernels (the environment's OPENBLAS_CORETYPE): on this
            # AMD EPYC OpenBLAS would pick its Cooperlake ones, whose products round otherwise (LeNet's SGD loss
            # then leaves Caffe's at iteration 6). An explicit OPENBLAS_CORETYPE wins; it is read when loaded.
            os.environ.setdefault("OPENBLAS_CORETYPE", "Haswell")
        try:
            lib = ctypes.CDLL(path)
        except OSError as exc:
            raise PipelineError(f"cannot load OpenBLAS from {path}: {exc}") from None
        f, i, p = ctypes.c_float, ctypes.c_int, ctypes.c_void_p
        lib.cblas_sgemm.argtypes = [i, i, i, i, i, i, f, p, i, p, i, f, p, i]
        lib.cblas_sgemm.restype = None
        lib.cblas_sgemv.argtypes = [i, i, i, i, f, p, i, p, i, f, p, i]
        lib.cblas_sgemv.restype = None
        lib.cblas_saxpy.argtypes = [i, f, p, i, p, i]
        lib.cblas_saxpy.restype = None
        lib.cblas_sscal.argtypes = [i, f, p, i]
        lib.cblas_sscal.restype = None
        lib.cblas_sdot.argtypes = [i, p, i, p, i]
        lib.cblas_sdot.restype = f
        lib.cblas_sasum.argtypes = [i, p, i]
        lib.cblas_sasum.restype = f
        # Caffe's reference runs used OPENBLAS_NUM_THREADS=2, and OpenBLAS's threaded kernels round differently
        # from its single-threaded ones: pin the count so results do not depend on the machine's cores.
        lib.openblas_set_num_threads(int(os.environ.get("CAFFE_OPENBLAS_THREADS", "2")))
        _state["lib"] = lib
    return lib  # type: ignore[return-value]


def available() -> bool:
    return library_path() is not None


def is_on() -> bool:
    """Whether the bit-exact mode is switched on (whatever tensor comes)."""
    return bool(_state["on"])


def active(x: torch.Tensor) -> bool:
    """Whether exact Caffe BLAS is on and applies to `x` (float32 on the CPU, outside tracing and compiling)."""
    return (
        bool(_state["on"])
        and x.dtype == torch.float32
        and x.device.type == "cpu"
        and not torch.jit.is_tracing()
        and not torch.compiler.is_compiling()
    )


def _switch(enabled: bool) -> None:
    # OpenBLAS's two threads do the arithmetic of this mode. Torch's own OpenMP workers, spinning idle between
    # its small ops, would take their cores (CIFAR10-quick ran 3.7x slower): torch runs single-threaded meanwhile.
    if enabled and not _state["on"]:
        _state["torch_threads"] = torch.get_num_threads()
        torch.set_num_threads(1)
    elif not enabled and _state["on"]:
        torch.set_num_threads(int(_state.pop("torch_threads")))
    _state["on"] = enabled


@contextlib.contextmanager
def _restoring(previous: bool):
    try:
        yield
    finally:
        _switch(previous)


def exact_blas(enabled: bool = True):
    """Switch exact Caffe BLAS on or off; as a context manager, restores the previous setting on exit."""
    if enabled:
        _library()  # fail now, with the remedy, rather than mid-forward
    previous = bool(_state["on"])
    _switch(enabled)
    return _restoring(previous)


def address(routine: str) -> int:
    """The address of one of the library's cblas routines, for the C++ ops that loop over Caffe's calls."""
    return ctypes.cast(getattr(_library(), routine), ctypes.c_void_p).value


def _ptr(t: torch.Tensor, offset: int = 0) -> int:
    return t.data_ptr() + 4 * offset


def gemm(trans_a: bool, trans_b: bool, m: int, n: int, k: int, alpha: float, a, b, beta: float, c) -> None:
    """Caffe's caffe_cpu_gemm<float>: C (m x n) = alpha op(A) op(B) + beta C on row-major float32 buffers.

    a, b, c are (tensor, element offset) pairs of contiguous float32 CPU tensors."""
    lda = m if trans_a else k
    ldb = k if trans_b else n
    _library().cblas_sgemm(
        ROW_MAJOR,
        TRANS if trans_a else NO_TRANS,
        TRANS if trans_b else NO_TRANS,
        m,
        n,
        k,
        alpha,
        _ptr(*a),
        lda,
        _ptr(*b),
        ldb,
        beta,
        _ptr(*c),
        n,
    )


def gemv(trans_a: bool, m: int, n: int, alpha: float, a, x, beta: float, y) -> None:
    """Caffe's caffe_cpu_gemv<float>: y = alpha op(A) x + beta y, A row-major m x n."""
    _library().cblas_sgemv(
        ROW_MAJOR, TRANS if trans_a else NO_TRANS, m, n, alpha, _ptr(*a), n, _ptr(*x), 1, beta, _ptr(*y), 1
    )


def axpy_at(n: int, alpha: float, x, y) -> None:
    """saxpy on n elements of raw row-major buffers: x, y are (tensor, element offset) pairs, as for `gemm`."""
    _library().cblas_saxpy(n, alpha, _ptr(*x), 1, _ptr(*y), 1)


def _caffe_order(x: torch.Tensor, y: torch.Tensor):
    # OpenBLAS's vector kernels treat the last n % 16 elements (and, threaded, the last ones of each thread's
    # share) in plain C, without the fused multiply-add of the vector body: which element is rounded which way
    # depends on its position in memory. Run them on Caffe's row-major (NCHW) order, whatever layout we keep.
    return x.contiguous(), (y if y.is_contiguous() else y.contiguous())


def axpy(alpha: float, x: torch.Tensor, y: torch.Tensor) -> bool:
    """Caffe's caffe_axpy<float>: y += alpha x through OpenBLAS saxpy, if exact BLAS is on for float32 CPU
    tensors of one shape; returns whether it did (else the caller does it its own way)."""
    if not active(y) or x.shape != y.shape:
        return False
    xc, yc = _caffe_order(x, y)
    _library().cblas_saxpy(xc.numel(), alpha, xc.data_ptr(), 1, yc.data_ptr(), 1)
    if yc is not y:
        y.copy_(yc)
    return True


def axpby(alpha: float, x: torch.Tensor, beta: float, y: torch.Tensor) -> bool:
    """Caffe's caffe_cpu_axpby<float>: y = alpha x + beta y; like `axpy`, returns whether it applied.

    Not OpenBLAS's saxpby: Caffe built without MKL defines cblas_saxpby itself (mkl_alternate.hpp) as
    sscal(beta, y) then saxpy(alpha, x, y), i.e. beta y rounded, then mostly fused with alpha x."""
    if not active(y) or x.shape != y.shape:
        return False
    xc, yc = _caffe_order(x, y)
    lib = _library()
    lib.cblas_sscal(yc.numel(), beta, yc.data_ptr(), 1)
    lib.cblas_saxpy(xc.numel(), alpha, xc.data_ptr(), 1, yc.data_ptr(), 1)
    if yc is not y:
        y.copy_(yc)
    return True


def dot_at(n: int, x, incx: int, y, incy: int) -> float:
    """sdot of n elements of raw buffers with strides: x, y are (tensor, element offset) pairs."""
    return _library().cblas_sdot(n, _ptr(*x), incx, _ptr(*y), incy)


def asum_at(n: int, x) -> float:
    """sasum (sum of absolute values) of n elements of a raw buffer: x is a (tensor, element offset) pair."""
    return _library().cblas_sasum(n, _ptr(*x), 1)


def dot(x: torch.Tensor, y: torch.Tensor) -> float:
    """Caffe's caffe_cpu_dot<float>: OpenBLAS sdot over two contiguous float32 CPU tensors of equal size."""
    x, y = x.contiguous(), y.contiguous()
    return _library().cblas_sdot(x.numel(), x.data_ptr(), 1, y.data_ptr(), 1)


if os.environ.get("CAFFE_EXACT_BLAS", "") not in ("", "0"):
    _switch(True)
