"""ONNX back-end: export a graph to an ONNX model and run it with ONNX Runtime.

    from graphopt.backends import onnx as gonnx
    gonnx.export(graph, "model.onnx")          # file with dynamic axes named after the graph's symbols
    run = gonnx.compile(graph, threads=2)       # ONNX Runtime session, called with torch tensors
    y = run(x)

Importing this package imports onnx and onnxruntime; `import graphopt` never
does (the dependency is the optional `graphopt[onnx]` extra). The reverse
direction, ONNX -> graph, is `graphopt.frontends.onnx.load`.
"""

from graphopt.backends.onnx.export import DEFAULT_OPSET, export, save_atomic, to_onnx
from graphopt.backends.onnx.lower_ops import LOWERINGS, register_lowering
from graphopt.backends.onnx.runtime import OrtModule, compile, session_options

__all__ = [
    "DEFAULT_OPSET", "export", "to_onnx", "save_atomic", "compile", "OrtModule", "session_options",
    "register_lowering", "LOWERINGS",
]
