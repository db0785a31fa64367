"""Triton kernels (one file per kernel): each holds the kernel, then its wrapper that checks,
allocates and launches, and the one ``configs(target)`` its autotuning draws from.

Importing this package does not import triton; the kernel modules do.
"""
