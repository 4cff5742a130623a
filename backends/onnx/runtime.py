"""Run a graph with ONNX Runtime behind the torch back-end's calling convention.

`compile(graph)` lowers the graph in memory and opens an InferenceSession;
the returned `OrtModule` is called with torch tensors (positionally, in graph
input order) and returns torch tensors (one tensor, or a tuple for several
outputs), so tests and benchmarks can swap it for `to_module(graph)`.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import onnx
import onnxruntime as ort
import torch

from graphopt.errors import GraphoptError
from graphopt.ir.graph import Graph
from graphopt.registry import close_names
from graphopt.backends.onnx.export import LoweredModel, lower

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

    def __init__(self, session: ort.InferenceSession, *, model: onnx.ModelProto | None = None,
                 lowered: LoweredModel | None = None, keep_alive: Any = None) -> None:
        self.session = session
        self.input_names = [i.name for i in session.get_inputs()]
        self.output_names = [o.name for o in session.get_outputs()]
        self._model = model
        self._lowered = lowered
        self._input_types = {i.name: _ORT_TYPES.get(i.type) for i in session.get_inputs()}
        self._keep_alive = keep_alive  # e.g. a temporary directory holding a model's files

    @property
    def model(self) -> onnx.ModelProto:
        """The ONNX model the session runs (built with its weights inline on first access)."""
        if self._model is None and self._lowered is not None:
            self._model = self._lowered.inline()
        return self._model

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
        if want is not None and tensor.dtype != want:
            raise GraphoptError(f"input '{name}' must be {want}, got {tensor.dtype}")
        if tensor.dtype == torch.bfloat16:
            raise GraphoptError(f"input '{name}' is bfloat16, which ONNX Runtime's Python API cannot take from numpy")
        return tensor.detach().cpu().contiguous().numpy()

    def __repr__(self) -> str:
        providers = ", ".join(self.session.get_providers())
        return f"<OrtModule inputs={self.input_names} outputs={self.output_names} on {providers}>"


_ORT_TYPES = {
    "tensor(float)": torch.float32, "tensor(float16)": torch.float16, "tensor(double)": torch.float64,
    "tensor(bfloat16)": torch.bfloat16, "tensor(int64)": torch.int64, "tensor(int32)": torch.int32,
    "tensor(int16)": torch.int16, "tensor(int8)": torch.int8, "tensor(uint8)": torch.uint8,
    "tensor(bool)": torch.bool,
}


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
    opset: int | None = None,
    **export_options: Any,
) -> OrtModule:
    """An ONNX Runtime session for `graph` (or an ONNX model), callable with torch tensors.

    `threads` sets intra_op_num_threads (None: ONNX Runtime's default, one per
    core); `optimization_level` is one of "disable", "basic", "extended",
    "all"; `providers` defaults to the CPU provider. Other keywords go to
    `to_onnx` (bind, fused_attention, ...).

    A graph's weights are handed to ONNX Runtime as in-memory initializers,
    never serialised, so compiling a model of any size costs one copy of its
    weights (ONNX Runtime's own).
    """
    opts = session_options(threads, optimization_level)
    providers = _checked_providers(providers)
    if isinstance(graph, onnx.ModelProto):
        return OrtModule(_session(graph.SerializeToString(), opts, providers, graph.graph.name), model=graph)
    lowered = lower(graph, opset=opset, **export_options)
    model = lowered.with_external_data("graphopt-in-memory", None)
    names, values = [], []
    for name, tensor in lowered.weights.items():
        names.append(name)
        values.append(_ort_value(tensor))
    if names:
        opts.add_external_initializers(names, values)
    session = _session(model.SerializeToString(), opts, providers, graph.name)
    return OrtModule(session, lowered=lowered)


def _checked_providers(providers: Sequence[Any] | None) -> list[Any]:
    """The execution providers to ask for; one this ONNX Runtime build lacks is an error, not a silent fallback."""
    if providers is None:
        return ["CPUExecutionProvider"]
    if isinstance(providers, str):
        raise GraphoptError(f"providers must be a list of provider names, e.g. [{providers!r}]")
    available = ort.get_available_providers()
    for provider in providers:
        name = provider[0] if isinstance(provider, tuple) else provider
        if name not in available:
            raise GraphoptError(f"ONNX Runtime provider {name!r} is not available in this build"
                                f"{close_names(name, available)}; "
                                f"available: {', '.join(available)}")
    return list(providers)


def _ort_value(tensor: torch.Tensor) -> ort.OrtValue:
    t = tensor.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:  # numpy has no bfloat16: hand over the bits with the ONNX type
        return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(t.view(torch.int16).numpy(),
                                                               onnx.TensorProto.BFLOAT16)
    return ort.OrtValue.ortvalue_from_numpy(t.numpy())


def _session(source: Any, opts: ort.SessionOptions, providers: list[str], name: str) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(source, sess_options=opts, providers=providers)
    except Exception as exc:
        raise GraphoptError(f"ONNX Runtime could not load the model of graph '{name}': {exc}") from exc
