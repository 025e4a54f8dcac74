"""Custom torch ops of this project (C++, built by pipeline/ops/build.py at `make setup` or first use, cached)."""
