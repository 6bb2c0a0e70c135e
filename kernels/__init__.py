"""Triton kernels (imported as klas.kernels)."""
