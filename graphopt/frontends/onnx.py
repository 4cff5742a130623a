"""ONNX front-end: load an ONNX model (a file, bytes or a ModelProto) into a graphopt Graph.

Why a model from another framework goes through the same IR: once imported,
it can be verified, pruned and compiled exactly like a traced torch model.
Initializers become weights under their ONNX names (floating-point tensors
`param`s, BatchNormalization statistics `buffer`s, scalars and integer tables
`const`s); each `dim_param` becomes a symbol (`batch`, `seq`), so the graph
stays dynamic.

Shape arithmetic is evaluated while importing, not imported. Exporters write
dynamic reshapes as Shape -> Gather -> Concat -> Reshape; the importer keeps
such tensors as *known values* (numpy arrays whose elements are ints or
symbolic dims) and folds every op over known values, so the Reshape receives
`[batch, 3, 64]` and becomes an ordinary canonical `reshape`. A known value
is only turned into graph nodes when a real computation reads it.

Converters live in the onnx_ops package, by op family, one per ONNX
operator, and the folders in onnx_ops/folding.py; `register_onnx_op` adds a
converter for an operator graphopt does not know.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import sympy
import torch

from graphopt.dtypes import to_torch_dtype, to_torch_tensor
from graphopt.errors import GraphoptError, UnsupportedOpError
from graphopt.ir import dims as D
from graphopt.ir.graph import Graph, Node, Value
from graphopt.registry import Registry

try:  # the importer is only usable with the optional `graphopt[onnx]` extra
    import onnx
    from onnx import helper
except ImportError as _exc:  # pragma: no cover - exercised without onnx installed
    raise ImportError("graphopt.frontends.onnx needs the 'onnx' package: pip install 'graphopt[onnx]'") from _exc

Converter = Callable[["OnnxImportContext", "onnx.NodeProto"], Any]
Folder = Callable[["OnnxImportContext", "onnx.NodeProto", list], "list[np.ndarray]"]

FOLD_LIMIT = 4096  # elements: fold small constant subgraphs, never copy a weight into a new constant

REGISTER_HINT = (
    "To add a mapping, register a converter before loading:\n"
    "    @graphopt.frontends.onnx.register_onnx_op('{op}'{domain})\n"
    "    def convert(ctx, node):\n"
    "        x = ctx.value(node.input[0])\n"
    "        return ctx.emit1('<canonical op>', [x], {{...}})\n"
    "(see docs/ir.md for the canonical ops; graphopt.define_op adds a new one, see docs/custom_ops.md)."
)

# Keyed by the source op ("Relu", or "com.example::Swish" outside the standard domain): a converter
# belongs to the ONNX operator it reads, not to one canonical op (Gemm becomes linear or matmul), so it
# is a table of its own, not an op-table column.
CONVERTERS: Registry[Converter] = Registry("converter from ONNX")
_CONVERTERS = CONVERTERS  # the name tests and users already call
# How to evaluate an ONNX op on known values at import (onnx_ops/folding.py), keyed by op_type.
FOLDERS: Registry[Folder] = Registry("folder of known values")


def register_onnx_op(*op_types: str, domain: str = "", replace: bool = False) -> Callable[[Converter], Converter]:
    """Register `fn(ctx, node)` as the converter of the named ONNX operators.

    The converter returns the Value of the node's output (a list for several
    outputs; None for an optional output it does not compute), built with
    `ctx.value(name)` / `ctx.emit(op, inputs, attrs)`. A second converter for
    the same operator raises `GraphoptError` unless `replace=True`.
    """
    return CONVERTERS.decorator(*(converter_key(op_type, domain) for op_type in op_types), replace=replace)


def folder(*op_types: str, replace: bool = False) -> Callable[[Folder], Folder]:
    """Register how to evaluate an op on known values (shape arithmetic) at import time."""
    return FOLDERS.decorator(*op_types, replace=replace)


class NotFoldable(Exception):
    """A folder found its inputs cannot be evaluated at import (e.g. symbolic comparisons)."""


def converter_key(op_type: str, domain: str = "") -> str:
    """The key of an ONNX operator's converter: 'Relu', or 'com.example::Swish' outside the standard domain."""
    domain = _domain(domain)
    return f"{domain}::{op_type}" if domain else op_type


def _domain(domain: str) -> str:
    return "" if domain in ("", "ai.onnx") else domain


@dataclass
class Known:
    """A tensor whose value the importer knows: a constant, or shape arithmetic over symbolic dims.

    `array` holds numbers, or (dtype=object) ints and sympy expressions; it is
    read lazily from `proto` for initializers, so large weights are decoded
    once, when something needs them.
    """

    dtype: torch.dtype
    _array: np.ndarray | None = None
    proto: Any = None  # onnx.TensorProto for initializers
    base_dir: str = ""
    is_initializer: bool = False

    @property
    def array(self) -> np.ndarray:
        if self._array is None:
            self._array = to_torch_tensor(self.proto, self.base_dir).numpy() if self.dtype != torch.bfloat16 \
                else to_torch_tensor(self.proto, self.base_dir).float().numpy()
        return self._array

    @property
    def shape(self) -> tuple[int, ...]:
        if self._array is None and self.proto is not None:
            return tuple(int(d) for d in self.proto.dims)
        return tuple(self.array.shape)

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def symbolic(self) -> bool:
        return self._array is not None and self._array.dtype == object

    def tensor(self) -> torch.Tensor:
        if self.proto is not None:
            return to_torch_tensor(self.proto, self.base_dir)
        if self.symbolic:
            raise GraphoptError("a symbolic known value has no tensor")
        return torch.from_numpy(np.array(self.array, copy=True)).to(self.dtype)


def known(array: Any, dtype: torch.dtype) -> Known:
    """A Known from numbers or dims; object arrays with only ints become numeric."""
    arr = np.asarray(array, dtype=object) if _has_symbols(array) else np.asarray(array)
    if arr.dtype == object:
        flat = [D.canon(v) if isinstance(v, (int, sympy.Basic)) and not isinstance(v, bool) else v for v in arr.flat]
        arr = np.array(flat, dtype=object).reshape(arr.shape)
        if not any(isinstance(v, sympy.Basic) for v in arr.flat):
            arr = arr.astype(np.int64 if dtype in (torch.int64, torch.int32) else numpy_dtype(dtype))
    else:
        arr = arr.astype(numpy_dtype(dtype), copy=False)
    return Known(dtype, arr)


def _has_symbols(array: Any) -> bool:
    if isinstance(array, np.ndarray):
        return array.dtype == object and any(isinstance(v, sympy.Basic) for v in array.flat)
    if isinstance(array, (list, tuple)):
        return any(_has_symbols(a) for a in array)
    return isinstance(array, sympy.Basic) and not array.is_Integer


def numpy_dtype(dtype: torch.dtype):
    """The numpy dtype that holds `dtype`'s values (float32 for bf16, which numpy lacks)."""
    return torch.empty((), dtype=dtype).numpy().dtype if dtype != torch.bfloat16 else np.float32


class OnnxImportContext:
    """What a converter sees: tensors by ONNX name (Values or known values) and a way to emit canonical nodes."""

    def __init__(self, graph: Graph, model: "onnx.ModelProto", base_dir: str) -> None:
        self.graph = graph
        self.model = model
        self.base_dir = base_dir
        self.opset = next((o.version for o in model.opset_import if _domain(o.domain) == ""), 1)
        self.values: dict[str, Value | None] = {}
        self.knowns: dict[str, Known] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        self.value_info: dict[str, Any] = {}
        self.current: onnx.NodeProto | None = None
        self._materialized: dict[str, Value] = {}
        self.fused: dict[str, Value] = {}  # outputs of nodes a converter already folded into an earlier node
        self.transposed_weights: dict[str, str] = {}  # Transpose output -> the 2-d weight it transposes
        self.graph_outputs: set[str] = set()
        self._scalar_cache: dict[tuple, Value] = {}

    # ----------------------------------------------------------- reading
    def has(self, name: str) -> bool:
        return bool(name) and (name in self.values or name in self.knowns)

    def known(self, name: str) -> Known | None:
        """The known value of a tensor (constant or shape arithmetic), or None if computed at run time."""
        return self.knowns.get(name) if name else None

    def value(self, name: str, *, kind: str | None = None) -> Value:
        """The graph Value of tensor `name`; a known value becomes a weight (or `full` nodes) on first use.

        `kind` overrides the weight kind chosen for an initializer (e.g. "buffer" for running statistics).
        """
        if name in self.values:
            value = self.values[name]
            if value is None:
                raise GraphoptError(f"{self.where()} reads '{name}', an output its producer does not compute")
            return value
        if name in self._materialized:
            return self._materialized[name]
        k = self.knowns.get(name)
        if k is None:
            raise GraphoptError(f"{self.where()} reads '{name}', which no node, input or initializer defines")
        value = self._materialize(name, k, kind)
        self._materialized[name] = value
        return value

    def maybe_value(self, name: str | None) -> Value | None:
        return self.value(name) if name else None

    def input(self, node: "onnx.NodeProto", i: int) -> str | None:
        """The name of input `i` of `node`, or None when absent or empty (an omitted optional input)."""
        return node.input[i] if i < len(node.input) and node.input[i] else None

    def shape_of(self, name: str) -> tuple:
        if name in self.values and self.values[name] is not None:
            return tuple(self.values[name].shape)
        k = self.knowns.get(name)
        if k is not None:
            return k.shape
        raise GraphoptError(f"{self.where()}: no shape known for '{name}'")

    def dtype_of(self, name: str) -> torch.dtype:
        if name in self.values and self.values[name] is not None:
            return self.values[name].dtype
        k = self.knowns.get(name)
        if k is not None:
            return k.dtype
        raise GraphoptError(f"{self.where()}: no type known for '{name}'")

    def ints(self, name: str | None, what: str = "input") -> list | None:
        """A known 1-d (or 0-d) integer input as a list of dims (ints or symbolic); None if absent."""
        if not name:
            return None
        k = self.knowns.get(name)
        if k is None:
            raise GraphoptError(f"{self.where()}: its {what} '{name}' is computed from tensor data at run time; "
                                "graphopt needs it to be a constant or computed from shapes")
        return [D.canon(v) if isinstance(v, sympy.Basic) else int(v) for v in np.ravel(k.array)]

    def floats(self, name: str | None) -> list[float] | None:
        if not name:
            return None
        k = self.knowns.get(name)
        if k is None or k.symbolic:
            raise GraphoptError(f"{self.where()}: input '{name}' must be a constant")
        return [float(v) for v in np.ravel(k.array)]

    def scalar_const(self, name: str | None) -> Any:
        """A known single-element input as a Python number (None when absent)."""
        if not name:
            return None
        k = self.knowns.get(name)
        if k is None or k.numel != 1:
            return None
        v = np.ravel(k.array)[0]
        if isinstance(v, sympy.Basic):
            return None
        return bool(v) if k.dtype == torch.bool else int(v) if not k.dtype.is_floating_point else float(v)

    @staticmethod
    def attr(node: "onnx.NodeProto", name: str, default: Any = None) -> Any:
        for a in node.attribute:
            if a.name == name:
                v = helper.get_attribute_value(a)
                if isinstance(v, bytes):
                    return v.decode()
                if isinstance(v, list) and v and isinstance(v[0], bytes):
                    return [s.decode() for s in v]
                return v
        return default

    # ----------------------------------------------------------- emitting
    def emit(self, op: str, inputs: Sequence[Value | None], attrs: dict[str, Any] | None = None) -> Node:
        """Append a canonical node named after the ONNX node being converted."""
        onnx_node = self.current
        name = _node_name(onnx_node) if onnx_node is not None else op
        node = self.graph.create_node(op, inputs, attrs, name=name)
        if onnx_node is not None:
            node.meta["onnx_op"] = onnx_node.op_type
            node.meta["onnx_node"] = onnx_node.name
        return node

    def emit1(self, op: str, inputs: Sequence[Value | None], attrs: dict[str, Any] | None = None) -> Value:
        return self.emit(op, inputs, attrs).output

    def scalar(self, number: bool | int | float, dtype: torch.dtype) -> Value:
        """A 0-d constant of `dtype`."""
        key = (number, dtype)
        if key not in self._scalar_cache:
            self._scalar_cache[key] = self.graph.add_const(torch.tensor(number, dtype=dtype), name="const")
        return self._scalar_cache[key]

    def weight(self, name: str, tensor: torch.Tensor, kind: str = "param") -> Value:
        """A new weight (for a converter that must reshape or transpose an initializer)."""
        return self.graph.add_weight(_clean_weight_name(name), tensor, kind=kind)

    def fuse(self, node: "onnx.NodeProto", value: Value) -> None:
        """Record that `node` (later in the model) is already computed by `value`: it will not be converted."""
        self.fused[node.output[0]] = value

    def only_consumer(self, name: str) -> "onnx.NodeProto | None":
        """The single node reading tensor `name`, if exactly one does and it is not a graph output."""
        readers = self.consumers.get(name, [])
        if len(readers) != 1 or name in self.graph_outputs:
            return None
        return readers[0]

    def where(self) -> str:
        n = self.current
        return f"node '{n.name or n.output[0]}' ({n.op_type})" if n is not None else "the ONNX importer"

    # -------------------------------------------------------- internals
    def _materialize(self, name: str, k: Known, kind: str | None = None) -> Value:
        if not k.symbolic:
            if kind is None:
                # trainable-looking initializers are params; scalars, integer tables and Constant nodes are consts
                kind = "param" if _is_weight_like(k) else "const"
            return self.graph.add_weight(_clean_weight_name(name), k.tensor(), kind=kind)
        # shape arithmetic read as data: one `full` per element, concatenated
        flat = list(np.ravel(k.array))
        parts = [self.emit1("full", [], {"shape": [1], "value": v, "dtype": k.dtype}) if isinstance(v, sympy.Basic)
                 else self.graph.add_const(torch.tensor([v], dtype=k.dtype), name="const") for v in flat]
        out = parts[0] if len(parts) == 1 else self.emit1("concat", parts, {"axis": 0})
        if list(k.shape) != [len(flat)]:
            out = self.emit1("reshape", [out], {"shape": list(k.shape)})
        return out


def _node_name(node: "onnx.NodeProto") -> str:
    name = node.name or (node.output[0] if node.output else node.op_type.lower())
    name = name.strip("/").replace("/", ".")
    return name or node.op_type.lower()


def _clean_weight_name(name: str) -> str:
    return name if name and not name.startswith("/") else (name.strip("/").replace("/", ".") or "weight")


_SYMBOL_SAFE = re.compile(r"[^A-Za-z0-9_]")


def _symbol_name(text: str) -> str:
    name = _SYMBOL_SAFE.sub("_", text.strip()) or "dim"
    return name if name[0].isalpha() or name[0] == "_" else f"d_{name}"


def load(source: "str | os.PathLike | bytes | onnx.ModelProto", *, name: str | None = None,
         check: bool = True) -> Graph:
    """Import an ONNX model into a Graph.

    `source` is a path, the serialized bytes, or a ModelProto. The model is
    validated with onnx.checker first (`check=False` skips it); a file that is
    not a readable ONNX model raises GraphoptError saying so. Operators with no
    converter raise UnsupportedOpError naming the node and how to register one.
    """
    import graphopt.frontends.onnx_ops  # noqa: F401 - registers the converters

    model, base_dir, label = _read(source)
    if check:
        try:  # a file is checked by path: that works past protobuf's 2 GB limit
            onnx.checker.check_model(str(source) if base_dir else model)
        except Exception as exc:
            raise GraphoptError(f"{label} is not a valid ONNX model: {exc}".rstrip()) from exc
    graph = Graph(name or model.graph.name or "onnx_model")
    ctx = OnnxImportContext(graph, model, base_dir)
    _import_graph(ctx, model.graph)
    graph.meta["onnx_opset"] = ctx.opset
    graph.meta["input_names"] = [v.name for v in graph.inputs]
    graph.meta["source"] = label
    graph.verify()
    return graph


def _read(source) -> tuple["onnx.ModelProto", str, str]:
    if isinstance(source, onnx.ModelProto):
        return source, "", f"model '{source.graph.name}'"
    if isinstance(source, (bytes, bytearray)):
        try:
            return onnx.load_model_from_string(bytes(source)), "", "the given bytes"
        except Exception as exc:
            raise GraphoptError(f"the given bytes are not an ONNX model (could not parse the protobuf: {exc})") from exc
    path = Path(source)
    if path.is_dir():
        found = sorted(p.name for p in path.glob("*.onnx"))[:3]
        hint = f"; it holds {', '.join(found)}" if found else ""
        raise GraphoptError(f"{path} is a directory, not an ONNX file: give the path of the .onnx file{hint}")
    if not path.is_file():
        raise GraphoptError(f"ONNX file {path} does not exist")
    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except Exception as exc:
        raise GraphoptError(f"{path} is not a readable ONNX model (corrupted or truncated?): "
                            f"{type(exc).__name__}: {exc}") from exc
    if not model.graph.node and not model.graph.input and not model.graph.output:
        raise GraphoptError(f"{path} is not a readable ONNX model (corrupted or truncated?): it holds no graph")
    try:
        from onnx.external_data_helper import load_external_data_for_model, uses_external_data

        if any(uses_external_data(t) for t in model.graph.initializer):
            load_external_data_for_model(model, str(path.parent))
    except Exception as exc:
        raise GraphoptError(f"could not read the external weight data of {path}: {exc}") from exc
    return model, str(path.parent), str(path)


def _import_graph(ctx: OnnxImportContext, g: "onnx.GraphProto") -> None:
    graph = ctx.graph
    init_names = {t.name for t in g.initializer}
    for t in g.initializer:
        ctx.knowns[t.name] = Known(to_torch_dtype(t.data_type), proto=t, base_dir=ctx.base_dir, is_initializer=True)
    for vi in list(g.value_info) + list(g.output):
        ctx.value_info[vi.name] = vi
    for inp in g.input:
        if inp.name in init_names:
            continue  # IR < 4 models list initializers as inputs too
        ctx.values[inp.name] = graph.add_input(inp.name, _input_shape(inp), _input_dtype(inp))
    ctx.graph_outputs = {o.name for o in g.output}
    for node in g.node:
        for name in node.input:
            ctx.consumers.setdefault(name, []).append(node)
    for node in g.node:
        ctx.current = node
        _import_node(ctx, node)
    ctx.current = None
    outputs = []
    for out in g.output:
        outputs.append(ctx.value(out.name))
    graph.outputs = outputs


def _input_dtype(vi) -> torch.dtype:
    t = vi.type.tensor_type
    if not vi.type.HasField("tensor_type"):
        raise GraphoptError(f"graph input '{vi.name}' is not a tensor; graphopt imports tensor inputs only")
    return to_torch_dtype(t.elem_type)


def _input_shape(vi) -> list:
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        raise GraphoptError(f"graph input '{vi.name}' has no shape in the ONNX model; graphopt needs at least its rank")
    dims: list = []
    for axis, d in enumerate(t.shape.dim):
        if d.HasField("dim_value") and d.dim_value > 0:
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param") and d.dim_param:
            dims.append(D.symbol(_symbol_name(d.dim_param)))
        else:  # unnamed dynamic axis
            dims.append(D.symbol(_symbol_name(f"{vi.name}_{axis}")))
    return dims


def _import_node(ctx: OnnxImportContext, node: "onnx.NodeProto") -> None:
    if node.output and node.output[0] in ctx.fused:
        ctx.values[node.output[0]] = ctx.fused[node.output[0]]
        return
    domain = _domain(node.domain)
    if domain == "" and node.op_type in FOLDERS and _foldable(ctx, node):
        try:
            results = FOLDERS.lookup(node.op_type)(ctx, node, [ctx.known(i) for i in node.input])
        except NotFoldable:
            results = None
        except GraphoptError:
            raise
        except Exception as exc:  # numpy's refusal of inconsistent inputs: the model's mistake, named
            raise GraphoptError(f"{ctx.where()}: its known inputs do not fit the op ({type(exc).__name__}: {exc}); "
                                f"the model is malformed") from exc
        if results is not None:
            for out, k in zip(node.output, results):
                if out:
                    ctx.knowns[out] = k
            return
    converter = CONVERTERS.get(converter_key(node.op_type, domain))
    if converter is None:
        op = node.op_type if not domain else f"{domain}::{node.op_type}"
        raise UnsupportedOpError(op, node.name or node.output[0],
                                 hint=REGISTER_HINT.format(op=node.op_type,
                                                           domain=f", domain='{domain}'" if domain else ""))
    try:
        result = converter(ctx, node)
    except (GraphoptError, UnsupportedOpError):
        raise
    except Exception as exc:
        raise GraphoptError(f"converting {ctx.where()} failed: {type(exc).__name__}: {exc}") from exc
    results = list(result) if isinstance(result, (list, tuple)) else [result]
    for i, out in enumerate(node.output):
        if not out:
            continue
        item = results[i] if i < len(results) else None
        if isinstance(item, Known):
            ctx.knowns[out] = item
        else:
            ctx.values[out] = item
            if item is not None:
                _check_type(ctx, out, item)


def _foldable(ctx: OnnxImportContext, node: "onnx.NodeProto") -> bool:
    if node.op_type in ("Shape", "Size"):
        return ctx.has(node.input[0])
    if node.op_type == "Constant":
        return True
    names = [n for n in node.input if n]
    if not names or not all(n in ctx.knowns for n in names):
        return False
    # a weight read by the node stays a named weight (with its consumers) rather than vanish into a constant
    return all(ctx.knowns[n].numel <= FOLD_LIMIT and not _is_weight_like(ctx.knowns[n]) for n in names)


def _is_weight_like(k: Known) -> bool:
    return k.is_initializer and k.dtype.is_floating_point and len(k.shape) > 0


def _check_type(ctx: OnnxImportContext, name: str, value: Value) -> None:
    """Catch converter mistakes: a static shape the model declares must be what the IR computed."""
    vi = ctx.value_info.get(name)
    if vi is None or not vi.type.HasField("tensor_type") or not vi.type.tensor_type.HasField("shape"):
        return
    dims = vi.type.tensor_type.shape.dim
    declared = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    if len(declared) != value.rank:
        raise GraphoptError(f"converting {ctx.where()} gave %{value.name} of rank {value.rank}, the model declares "
                            f"'{name}' with rank {len(declared)} (a converter bug)")
    for a, b in zip(declared, value.shape):
        if a and isinstance(b, int) and a != b:
            raise GraphoptError(f"converting {ctx.where()} gave %{value.name}: {value.type_str()}, the model declares "
                                f"'{name}' as {declared} (a converter bug)")


def tensor_scalar(t) -> tuple[torch.dtype, Any]:
    """(dtype, value) of a one-element TensorProto attribute, e.g. ConstantOfShape's `value`."""
    arr = onnx.numpy_helper.to_array(t)
    return to_torch_dtype(t.data_type), arr.ravel()[0].item()
