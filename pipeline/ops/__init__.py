"""Custom torch ops of this project (C++, built on first use and cached by torch.utils.cpp_extension)."""
