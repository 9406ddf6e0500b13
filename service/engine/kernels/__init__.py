"""Fused kernels: a model function compiled as one loop, where a graph runtime pays per operation.

A manifest names a kernel by its kind (a function entry's `"kernel"`) and gives its weights as a
safetensors file (`files.kernel`). A kind names what the kernel computes, never a model family.
Each kind's module defines `KIND` and a class taking (weights, threads) with `inputs`,
`warm_up()` and `run(**inputs) -> dict of outputs`.
"""

import importlib

KINDS = {"dilated_gated_stack": "service.engine.kernels.dilated_stack"}


def kernel_class(kind: str):
    """The kernel class of a kind (its module is imported, and numba with it, on first use only)."""
    if kind not in KINDS:
        raise ValueError(f"unknown kernel {kind!r}; known: {sorted(KINDS)}")
    return importlib.import_module(KINDS[kind]).Kernel
