"""The bit-exact engine's own modules: Caffe's BLAS (OpenBLAS through ctypes) and Caffe's random streams.

Imports only the package root and pipeline.ops (whose C++ kernels it loads).
"""
