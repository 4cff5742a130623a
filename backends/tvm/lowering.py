"""Graph -> Relax IRModule, through graphopt's ONNX back-end and TVM's ONNX importer.

Why through ONNX rather than one Relax builder function per canonical op: the
ONNX lowering is already written and tested op by op against the torch
back-end on every zoo model, and TVM's ONNX importer is maintained upstream
against the same opset. A second per-op lowering would double the surface that
has to follow `graphopt/ir/ops/`. The cost is that compiling (never loading)
needs the `onnx` package, and shapes are made static first: MetaSchedule tunes
static shapes, so every symbol (`batch`, `seq`) is bound to a size here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tvm

from graphopt.errors import GraphoptError
from graphopt.ir.graph import Graph

DEFAULT_BIND = {"batch": 1}


@dataclass
class TensorSpec:
    """Name, static shape and dtype (numpy name) of one model input or output."""

    name: str
    shape: list[int]
    dtype: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclass
class Lowered:
    """A graph as a Relax module with its weights bound, plus its static input/output signature."""

    mod: tvm.IRModule
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    bind: dict[str, int] = field(default_factory=dict)


def static_bind(graph: Graph, bind: Mapping[str, int] | None = None,
                example_inputs: Sequence[Any] | None = None) -> dict[str, int]:
    """Sizes for every symbol of `graph`: `bind`, else read off `example_inputs`, else the sizes of the
    example it was traced on (`graph.meta["example_sizes"]`), else batch=1."""
    symbols = graph.symbols()
    sizes = graph.checked_bind(bind)
    traced = graph.meta.get("example_sizes") or {}
    for name, (index, axis) in symbols.items():
        if name in sizes:
            continue
        if example_inputs is not None:
            sizes[name] = int(example_inputs[index].shape[axis])
        elif name in traced:
            sizes[name] = int(traced[name])
        elif name in DEFAULT_BIND:
            sizes[name] = DEFAULT_BIND[name]
    missing = sorted(set(symbols) - set(sizes))
    if missing:
        raise GraphoptError(f"TVM compiles static shapes: give a size for {missing}, e.g. "
                            f"bind={{{', '.join(f'{m!r}: 128' for m in missing)}}} or example_inputs=...")
    return sizes


def to_relax(graph: Graph, bind: Mapping[str, int]) -> Lowered:
    """Lower `graph` with every symbol bound; weights become constants of `main`."""
    try:
        from graphopt.backends.onnx import to_onnx
        from tvm.relax.frontend.onnx import from_onnx
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise GraphoptError("compiling with TVM lowers through ONNX and needs the onnx package: "
                            "pip install 'graphopt[onnx,tvm]'") from exc
    _check_importable(graph)
    model = to_onnx(graph, dynamic=False, bind=dict(bind))
    _check_tvm_imports(graph, model)
    mod = from_onnx(model)  # initializers become relax constants: the weights are bound
    inputs = [_spec(v) for v in model.graph.input]
    outputs = [_spec(v) for v in model.graph.output]
    return Lowered(mod, inputs, outputs, dict(bind))


# Ops whose ONNX lowering TVM's ONNX importer rejects (checked with apache-tvm 0.27): say so in graphopt's terms.
NOT_IMPORTABLE = {
    "matmul_nbits": "weight-only quantization lowers to ONNX Runtime's com.microsoft MatMulNBits, which TVM's "
                    "ONNX importer does not support; compile it with ONNX Runtime, or quantize with "
                    "mode='int8' / 'int8-dynamic' (TVM runs those as dequantize + fp32 kernels)",
}


def _check_importable(graph: Graph) -> None:
    for node in graph.nodes:
        why = NOT_IMPORTABLE.get(node.op)
        if why is not None:
            raise GraphoptError(f"the TVM back-end cannot compile {node.where()}: {why}")


def _check_tvm_imports(graph: Graph, model) -> None:
    """Every ONNX operator of the lowered model must be one TVM's ONNX importer converts.

    Checked before importing: TVM's own error for an operator it lacks (LSTM, GRU, DFT, Col2Im,
    QLinearConv, ...) names neither the model's layer nor what to do instead.
    """
    try:
        from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map
        known = set(_get_convert_map())
    except (ImportError, AttributeError, TypeError):  # another TVM release: leave the check to TVM
        return
    by_name = {node.name: node for node in graph.nodes}
    for onnx_node in model.graph.node:
        if onnx_node.domain in ("", "ai.onnx") and onnx_node.op_type in known:
            continue
        source = by_name.get(onnx_node.name.split("/", 1)[0])
        where = source.where() if source is not None else f"ONNX node '{onnx_node.name}'"
        op = f"{onnx_node.domain + '.' if onnx_node.domain else ''}{onnx_node.op_type}"
        raise GraphoptError(
            f"the TVM back-end cannot compile {where}: it lowers to the ONNX operator {op}, which TVM's ONNX "
            "importer does not convert. Run this model on ONNX Runtime (backend='onnx') or the torch back-end.")


def _spec(value_info) -> TensorSpec:
    from onnx import helper

    ttype = value_info.type.tensor_type
    shape = [d.dim_value for d in ttype.shape.dim]
    if any(d.dim_param for d in ttype.shape.dim):
        raise GraphoptError(f"'{value_info.name}' kept a symbolic dim after binding: a graphopt bug")
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(ttype.elem_type)).name
    return TensorSpec(value_info.name, shape, dtype)
