"""The ONNX back-end's graph runner for latency measurement (`graphopt.timing.GRAPH_RUNNERS["onnx"]`).

Latency-aware pruning times one-node graphs of a few microseconds: the call it times is the bare
`InferenceSession.run` on feeds converted once, not `OrtModule.__call__` (which converts torch
tensors and wraps the outputs on every call). onnxruntime is imported on the first measurement.
"""

from __future__ import annotations

from typing import Any, Callable

from graphopt.ir.graph import Graph
from graphopt.timing import register_graph_runner


def ort_runner(graph: Graph, inputs: tuple, threads: int) -> Callable[[], Any]:
    """A call that runs `graph` once on `inputs` in an ONNX Runtime session with `threads` intra-op threads."""
    from graphopt.backends.onnx.runtime import compile as ort_compile

    module = ort_compile(graph, threads=threads)
    feeds = {name: module._feed(name, x) for name, x in zip(module.input_names, inputs)}
    session, outputs = module.session, module.output_names
    return lambda: session.run(outputs, feeds)


register_graph_runner("onnx", ort_runner)
