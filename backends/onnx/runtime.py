"""Run a graph with ONNX Runtime behind the torch back-end's calling convention.

`compile(graph)` exports the graph in memory and opens an InferenceSession;
the returned `OrtModule` is called with torch tensors (positionally, in graph
input order) and returns torch tensors (one tensor, or a tuple for several
outputs), so tests and benchmarks can swap it for `to_module(graph)`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx
import onnxruntime as ort
import torch

from graphopt.errors import GraphoptError
from graphopt.ir.graph import Graph
from graphopt.backends.onnx.dtypes import to_onnx_dtype, to_torch_dtype
from graphopt.backends.onnx.export import DEFAULT_OPSET, EXTERNAL_DATA_THRESHOLD, save_atomic, to_onnx

OPTIMIZATION_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
if hasattr(ort.GraphOptimizationLevel, "ORT_ENABLE_LAYOUT"):
    OPTIMIZATION_LEVELS["layout"] = ort.GraphOptimizationLevel.ORT_ENABLE_LAYOUT


class OrtModule:
    """An ONNX Runtime session called like a torch module: torch tensors in, torch tensors out."""

    def __init__(self, model: onnx.ModelProto, session: ort.InferenceSession, *, keep_alive: Any = None) -> None:
        self.model = model
        self.session = session
        self.input_names = [i.name for i in session.get_inputs()]
        self.output_names = [o.name for o in session.get_outputs()]
        self._input_types = {i.name: i.type.tensor_type.elem_type for i in model.graph.input}
        self._keep_alive = keep_alive  # a temporary directory holding a >2 GB model's files

    def __call__(self, *args: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        if len(args) != len(self.input_names):
            raise GraphoptError(f"the model takes {len(self.input_names)} inputs ({', '.join(self.input_names)}), "
                                f"got {len(args)}")
        feeds = {name: self._feed(name, arg) for name, arg in zip(self.input_names, args)}
        results = self.session.run(self.output_names, feeds)
        device = next((a.device for a in args if isinstance(a, torch.Tensor)), torch.device("cpu"))
        outs = tuple(torch.from_numpy(np.asarray(r)).to(device) for r in results)
        return outs[0] if len(outs) == 1 else outs

    def _feed(self, name: str, arg: Any) -> np.ndarray:
        tensor = arg if isinstance(arg, torch.Tensor) else torch.as_tensor(arg)
        want = self._input_types.get(name)
        if want is not None and to_onnx_dtype(tensor.dtype) != want:
            raise GraphoptError(f"input '{name}' must be {to_torch_dtype(want)}, got {tensor.dtype}")
        if tensor.dtype == torch.bfloat16:
            raise GraphoptError(f"input '{name}' is bfloat16, which ONNX Runtime's Python API cannot take from numpy")
        return tensor.detach().cpu().contiguous().numpy()

    def __repr__(self) -> str:
        providers = ", ".join(self.session.get_providers())
        return f"<OrtModule '{self.model.graph.name}' inputs={self.input_names} outputs={self.output_names} on {providers}>"


def session_options(threads: int | None = None, optimization_level: str = "all") -> ort.SessionOptions:
    """SessionOptions with `threads` intra-op threads and a named graph optimization level."""
    try:
        level = OPTIMIZATION_LEVELS[optimization_level]
    except KeyError:
        raise GraphoptError(f"optimization_level must be one of {sorted(OPTIMIZATION_LEVELS)}, "
                            f"not {optimization_level!r}") from None
    opts = ort.SessionOptions()
    opts.graph_optimization_level = level
    if threads is not None:
        if threads < 1:
            raise GraphoptError(f"threads must be >= 1, got {threads}")
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    return opts


def compile(  # noqa: A001 - the back-end verb, as in torch.compile
    graph: Graph | onnx.ModelProto,
    *,
    threads: int | None = None,
    optimization_level: str = "all",
    providers: Sequence[str] | None = None,
    opset: int = DEFAULT_OPSET,
    **export_options: Any,
) -> OrtModule:
    """An ONNX Runtime session for `graph` (or an ONNX model), callable with torch tensors.

    `threads` sets intra_op_num_threads (None: ONNX Runtime's default, one per
    core); `optimization_level` is one of "disable", "basic", "extended",
    "all"; `providers` defaults to the CPU provider. Other keywords go to
    `to_onnx` (bind, fused_attention, ...).
    """
    model = graph if isinstance(graph, onnx.ModelProto) else to_onnx(graph, opset=opset, **export_options)
    opts = session_options(threads, optimization_level)
    providers = list(providers) if providers is not None else ["CPUExecutionProvider"]
    keep_alive = None
    if sum(len(t.raw_data) for t in model.graph.initializer) >= EXTERNAL_DATA_THRESHOLD:
        # too big to serialise in one message: go through files
        keep_alive = tempfile.TemporaryDirectory(prefix="graphopt-ort-")
        path = Path(keep_alive.name) / "model.onnx"
        save_atomic(model, path, external_data=True)
        source: Any = os.fspath(path)
    else:
        source = model.SerializeToString()
    try:
        session = ort.InferenceSession(source, sess_options=opts, providers=providers)
    except Exception as exc:
        raise GraphoptError(f"ONNX Runtime could not load the model of graph '{model.graph.name}': {exc}") from exc
    return OrtModule(model, session, keep_alive=keep_alive)
