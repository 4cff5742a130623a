"""ONNX back-end: export a graph to an ONNX model and run it with ONNX Runtime.

    from graphopt.backends import onnx as gonnx
    gonnx.export(graph, "model.onnx")          # file with dynamic axes named after the graph's symbols
    run = gonnx.compile(graph, threads=2)       # ONNX Runtime session, called with torch tensors
    y = run(x)

Importing this package imports onnx; onnxruntime is imported on first use of
`compile` (so exporting and `graphopt.frontends.onnx` work without it).
`import graphopt` imports neither: they are the optional `graphopt[onnx]`
extra. The reverse direction, ONNX -> graph, is `graphopt.frontends.onnx.load`.
"""

from __future__ import annotations

from typing import Any

from graphopt.backends.onnx.export import DEFAULT_OPSET, LoweredModel, export, lower, save_atomic, to_onnx
from graphopt.backends.onnx import lowerings as _lowerings  # noqa: F401 - attaches the built-in lowerings
from graphopt.backends.onnx.lowering import LOWERINGS, register_lowering
from graphopt.backends.onnx.compare import Difference, first_difference
from graphopt.backends.onnx import latency as _latency  # noqa: F401 - registers the latency runner "onnx"

__all__ = [
    "DEFAULT_OPSET", "export", "to_onnx", "lower", "LoweredModel", "save_atomic",
    "compile", "OrtModule", "session_options",
    "register_lowering", "LOWERINGS", "first_difference", "Difference",
]

_RUNTIME = ("compile", "OrtModule", "session_options", "OPTIMIZATION_LEVELS")


def __getattr__(name: str) -> Any:
    if name in _RUNTIME:  # onnxruntime is heavy and only needed to run models
        from graphopt.backends.onnx import runtime

        return getattr(runtime, name)
    raise AttributeError(f"module 'graphopt.backends.onnx' has no attribute '{name}'")
