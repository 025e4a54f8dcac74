"""The C maths library's float functions (expf, logf, powf), called as Caffe's compiled float code calls them:
glibc's results, which are not always the correctly rounded ones numpy or torch give."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.cache
def float_libm() -> ctypes.CDLL:
    """libm with expf, logf and powf declared (loaded on first use); OSError where there is none."""
    lib = ctypes.CDLL(ctypes.util.find_library("m"))
    for name, arity in (("expf", 1), ("logf", 1), ("powf", 2)):
        getattr(lib, name).argtypes, getattr(lib, name).restype = [ctypes.c_float] * arity, ctypes.c_float
    return lib
