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

Converters live in onnx_ops.py, one per ONNX operator; `register_onnx_op`
adds one for an operator graphopt does not know.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import sympy
import torch

from graphopt.errors import GraphoptError, UnsupportedOpError
from graphopt.ir import dims as D
from graphopt.ir.graph import Graph, Node, Value

try:  # the importer is only usable with the optional `graphopt[onnx]` extra
    import onnx
    from onnx import helper
except ImportError as _exc:  # pragma: no cover - exercised without onnx installed
    raise ImportError("graphopt.frontends.onnx needs the 'onnx' package: pip install 'graphopt[onnx]'") from _exc

from graphopt.backends.onnx.dtypes import to_torch_dtype, to_torch_tensor

Converter = Callable[["OnnxImportContext", "onnx.NodeProto"], Any]
Folder = Callable[["OnnxImportContext", "onnx.NodeProto", list], "list[np.ndarray]"]

_CONVERTERS: dict[tuple[str, str], Converter] = {}
FOLDERS: dict[str, Folder] = {}
FOLD_LIMIT = 4096  # elements: fold small constant subgraphs, never copy a weight into a new constant

REGISTER_HINT = (
    "To add a mapping, register a converter before loading:\n"
    "    @graphopt.frontends.onnx.register_onnx_op('{op}'{domain})\n"
    "    def convert(ctx, node):\n"
    "        x = ctx.value(node.input[0])\n"
    "        return ctx.emit1('<canonical op>', [x], {{...}})\n"
    "(see docs/ir.md for the canonical ops; graphopt.ir.register_op adds a new one)."
)


def register_onnx_op(*op_types: str, domain: str = "", replace: bool = False) -> Callable[[Converter], Converter]:
    """Register `fn(ctx, node)` as the converter of the named ONNX operators.

    The converter returns the Value of the node's output (a list for several
    outputs; None for an optional output it does not compute), built with
    `ctx.value(name)` / `ctx.emit(op, inputs, attrs)`.
    """

    def wrap(fn: Converter) -> Converter:
        for op_type in op_types:
            key = (_domain(domain), op_type)
            if key in _CONVERTERS and not replace:
                raise GraphoptError(f"a converter for ONNX op '{op_type}' is already registered; pass replace=True")
            _CONVERTERS[key] = fn
        return fn

    return wrap


def folder(*op_types: str) -> Callable[[Folder], Folder]:
    """Register how to evaluate an op on known values (shape arithmetic) at import time."""

    def wrap(fn: Folder) -> Folder:
        for op_type in op_types:
            FOLDERS[op_type] = fn
        return fn

    return wrap


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
            arr = arr.astype(np.int64 if dtype in (torch.int64, torch.int32) else _np(dtype))
    else:
        arr = arr.astype(_np(dtype), copy=False)
    return Known(dtype, arr)


def _has_symbols(array: Any) -> bool:
    if isinstance(array, np.ndarray):
        return array.dtype == object and any(isinstance(v, sympy.Basic) for v in array.flat)
    if isinstance(array, (list, tuple)):
        return any(_has_symbols(a) for a in array)
    return isinstance(array, sympy.Basic) and not array.is_Integer


def _np(dtype: torch.dtype):
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
            results = FOLDERS[node.op_type](ctx, node, [ctx.known(i) for i in node.input])
        except _NotFoldable:
            results = None
        if results is not None:
            for out, k in zip(node.output, results):
                if out:
                    ctx.knowns[out] = k
            return
    converter = _CONVERTERS.get((domain, node.op_type))
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


class _NotFoldable(Exception):
    """A folder found its inputs cannot be evaluated at import (e.g. symbolic comparisons)."""


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


# ------------------------------------------------- folding known values
# Each folder evaluates one ONNX op over known values (numbers, or ints and sympy
# dims in object arrays); raising _NotFoldable hands the node to its converter.
def _arr(k: Known) -> np.ndarray:
    return k.array


def _dims_of(ctx: OnnxImportContext, name: str) -> list:
    return [D.canon(d) for d in ctx.shape_of(name)]


def _elementwise(fn, *arrays: np.ndarray) -> np.ndarray:
    """Apply a Python function elementwise with numpy broadcasting (object arrays welcome)."""
    ufunc = np.frompyfunc(fn, len(arrays), 1)
    return np.asarray(ufunc(*arrays), dtype=object)


def _is_sym(v: Any) -> bool:
    return isinstance(v, sympy.Basic) and not v.is_Number


def _to_python(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    return v


@folder("Constant")
def _f_constant(ctx, node, ins):
    for attr in node.attribute:
        if attr.name == "value":
            t = attr.t
            return [Known(to_torch_dtype(t.data_type), proto=t, base_dir=ctx.base_dir)]
        if attr.name == "value_float":
            return [known(np.float32(attr.f), torch.float32)]
        if attr.name == "value_floats":
            return [known(np.array(attr.floats, dtype=np.float32), torch.float32)]
        if attr.name == "value_int":
            return [known(np.int64(attr.i), torch.int64)]
        if attr.name == "value_ints":
            return [known(np.array(attr.ints, dtype=np.int64), torch.int64)]
    raise GraphoptError(f"{ctx.where()}: Constant with {[a.name for a in node.attribute]} is not supported "
                        "(sparse and string constants have no tensor in graphopt)")


@folder("Shape")
def _f_shape(ctx, node, ins):
    dims = _dims_of(ctx, node.input[0])
    rank = len(dims)
    start = OnnxImportContext.attr(node, "start", 0)
    end = OnnxImportContext.attr(node, "end", rank)
    start, end = (max(0, min(rank, v + rank if v < 0 else v)) for v in (start, end))
    return [known(np.array(dims[start:end], dtype=object), torch.int64)]


@folder("Size")
def _f_size(ctx, node, ins):
    return [known(np.array(D.prod(_dims_of(ctx, node.input[0])), dtype=object), torch.int64)]


@folder("Identity")
def _f_identity(ctx, node, ins):
    return [ins[0]]


@folder("Cast")
def _f_cast(ctx, node, ins):
    dtype = to_torch_dtype(OnnxImportContext.attr(node, "to"))
    a = _arr(ins[0])
    if a.dtype == object:
        if dtype.is_floating_point or dtype in (torch.int64, torch.int32):
            return [known(_elementwise(lambda v: v if dtype.is_floating_point or not _is_sym(v) or v.is_integer
                                       else sympy.floor(v), a), dtype)]
        raise _NotFoldable
    return [known(a.astype(_np(dtype)), dtype)]


@folder("Gather")
def _f_gather(ctx, node, ins):
    axis = OnnxImportContext.attr(node, "axis", 0)
    return [known(np.take(_arr(ins[0]), _arr(ins[1]).astype(np.int64), axis=axis), ins[0].dtype)]


@folder("Unsqueeze")
def _f_unsqueeze(ctx, node, ins):
    a = _arr(ins[0])
    axes = OnnxImportContext.attr(node, "axes") if ctx.opset < 13 else [int(v) for v in _arr(ins[1]).ravel()]
    rank = a.ndim + len(axes)
    for axis in sorted(int(x) % rank for x in axes):
        a = np.expand_dims(a, axis)
    return [known(a, ins[0].dtype)]


@folder("Squeeze")
def _f_squeeze(ctx, node, ins):
    a = _arr(ins[0])
    axes = OnnxImportContext.attr(node, "axes") if ctx.opset < 13 else (
        None if len(ins) < 2 or ins[1] is None else [int(v) for v in _arr(ins[1]).ravel()])
    if axes is None:
        return [known(np.squeeze(a), ins[0].dtype)]
    return [known(np.squeeze(a, axis=tuple(int(x) % a.ndim for x in axes)), ins[0].dtype)]


@folder("Concat")
def _f_concat(ctx, node, ins):
    arrays = [_arr(k) for k in ins]
    if any(a.dtype == object for a in arrays):
        arrays = [a.astype(object) for a in arrays]
    return [known(np.concatenate(arrays, axis=OnnxImportContext.attr(node, "axis")), ins[0].dtype)]


@folder("Slice")
def _f_slice(ctx, node, ins):
    a = _arr(ins[0])
    if ctx.opset < 10:
        starts, ends = OnnxImportContext.attr(node, "starts"), OnnxImportContext.attr(node, "ends")
        axes, steps = OnnxImportContext.attr(node, "axes"), None
    else:
        starts, ends = _ints_of(ins[1]), _ints_of(ins[2])
        axes = _ints_of(ins[3]) if len(ins) > 3 and ins[3] is not None else None
        steps = _ints_of(ins[4]) if len(ins) > 4 and ins[4] is not None else None
    axes = axes or list(range(len(starts)))
    steps = steps or [1] * len(starts)
    index = [slice(None)] * a.ndim
    for s, e, ax, st in zip(starts, ends, axes, steps):
        index[int(ax) % a.ndim] = slice(int(s), int(e), int(st))
    return [known(a[tuple(index)], ins[0].dtype)]


def _ints_of(k: Known) -> list[int]:
    values = [_to_python(v) for v in _arr(k).ravel()]
    if any(_is_sym(v) for v in values):
        raise _NotFoldable
    return [int(v) for v in values]


@folder("Reshape")
def _f_reshape(ctx, node, ins):
    a = _arr(ins[0])
    target = _ints_of(ins[1])
    allowzero = OnnxImportContext.attr(node, "allowzero", 0)
    shape = [a.shape[i] if d == 0 and not allowzero else d for i, d in enumerate(target)]
    return [known(a.reshape(shape), ins[0].dtype)]


@folder("Transpose")
def _f_transpose(ctx, node, ins):
    return [known(np.transpose(_arr(ins[0]), OnnxImportContext.attr(node, "perm")), ins[0].dtype)]


def _arith(fn_num, fn_sym):
    def fold(ctx, node, ins):
        a, b = _arr(ins[0]), _arr(ins[1])
        dtype = ins[0].dtype
        if a.dtype != object and b.dtype != object:
            return [known(fn_num(a, b, dtype), dtype)]

        def one(x, y):
            r = fn_sym(_to_python(x), _to_python(y), dtype)
            return r if isinstance(r, float) else D.canon(r)

        return [known(_elementwise(one, a, b), dtype)]

    return fold


def _trunc_div_num(a, b, dtype):
    if dtype.is_floating_point:
        return a / b
    q = np.abs(a) // np.abs(b)
    return (q * np.sign(a) * np.sign(b)).astype(a.dtype)


def _div_sym(x, y, dtype):
    if dtype.is_floating_point:
        return sympy.nsimplify(x) / sympy.nsimplify(y) if _is_sym(x) or _is_sym(y) else x / y
    if isinstance(x, int) and isinstance(y, int):
        q = abs(x) // abs(y)
        return q if (x >= 0) == (y >= 0) else -q
    return D.floordiv(x, y)  # dims are non-negative: truncation is floor


folder("Add")(_arith(lambda a, b, t: a + b, lambda x, y, t: x + y))
folder("Sub")(_arith(lambda a, b, t: a - b, lambda x, y, t: x - y))
folder("Mul")(_arith(lambda a, b, t: a * b, lambda x, y, t: x * y))
folder("Div")(_arith(_trunc_div_num, _div_sym))
folder("Mod")(_arith(lambda a, b, t: np.mod(a, b) if not t.is_floating_point else np.fmod(a, b),
                     lambda x, y, t: sympy.Mod(x, y)))


@folder("Max", "Min")
def _f_maxmin(ctx, node, ins):
    arrays = [_arr(k) for k in ins]
    if all(a.dtype != object for a in arrays):
        fn = np.maximum if node.op_type == "Max" else np.minimum
        out = arrays[0]
        for a in arrays[1:]:
            out = fn(out, a)
        return [known(out, ins[0].dtype)]
    fn = sympy.Max if node.op_type == "Max" else sympy.Min
    out = arrays[0]
    for a in arrays[1:]:
        out = _elementwise(lambda x, y: D.canon(fn(_to_python(x), _to_python(y))), out, a)
    return [known(out, ins[0].dtype)]


@folder("Neg", "Abs", "Floor", "Ceil", "Sqrt", "Not")
def _f_unary(ctx, node, ins):
    a = _arr(ins[0])
    op = node.op_type
    if a.dtype != object:
        fn = {"Neg": np.negative, "Abs": np.abs, "Floor": np.floor, "Ceil": np.ceil, "Sqrt": np.sqrt,
              "Not": np.logical_not}[op]
        return [known(fn(a), ins[0].dtype)]
    if op in ("Sqrt", "Not"):
        raise _NotFoldable
    fn = {"Neg": lambda v: -v, "Abs": lambda v: v if _is_sym(v) else abs(v), "Floor": sympy.floor,
          "Ceil": sympy.ceiling}[op]

    def one(v):
        r = fn(_to_python(v))
        return r if isinstance(r, float) else D.canon(r)

    return [known(_elementwise(one, a), ins[0].dtype)]


def _compare_fold(np_fn, relation=None):
    """Comparisons fold when decidable: `batch == -1` is False (dims are positive), `batch == 1` is not known."""

    def fold(ctx, node, ins):
        a, b = _arr(ins[0]), _arr(ins[1])
        if a.dtype != object and b.dtype != object:
            return [known(np_fn(a, b), torch.bool)]
        if relation is None:
            raise _NotFoldable

        def one(x, y):
            x, y = _to_python(x), _to_python(y)
            r = relation(sympy.sympify(x), sympy.sympify(y))
            if r is sympy.true or r is True:
                return True
            if r is sympy.false or r is False:
                return False
            raise _NotFoldable

        return [known(_elementwise(one, a, b).astype(bool), torch.bool)]

    return fold


folder("Equal")(_compare_fold(np.equal, sympy.Eq))
folder("Less")(_compare_fold(np.less, sympy.Lt))
folder("Greater")(_compare_fold(np.greater, sympy.Gt))
folder("LessOrEqual")(_compare_fold(np.less_equal, sympy.Le))
folder("GreaterOrEqual")(_compare_fold(np.greater_equal, sympy.Ge))
folder("And")(_compare_fold(np.logical_and))
folder("Or")(_compare_fold(np.logical_or))


@folder("Where")
def _f_where(ctx, node, ins):
    cond = _arr(ins[0])
    if cond.dtype == object:
        raise _NotFoldable
    a, b = _arr(ins[1]), _arr(ins[2])
    out = np.where(cond.astype(bool), a.astype(object) if b.dtype == object else a,
                   b.astype(object) if a.dtype == object else b)
    return [known(out, ins[1].dtype)]


@folder("Expand")
def _f_expand(ctx, node, ins):
    a = _arr(ins[0])
    shape = _ints_of(ins[1])
    target = np.broadcast_shapes(a.shape, tuple(shape))
    if math.prod(target) > 4096:
        raise _NotFoldable
    return [known(np.broadcast_to(a, target).copy(), ins[0].dtype)]


@folder("ConstantOfShape")
def _f_constant_of_shape(ctx, node, ins):
    shape = [_to_python(v) for v in _arr(ins[0]).ravel()]
    if any(_is_sym(v) for v in shape) or math.prod(shape) > 4096:
        raise _NotFoldable  # becomes a `full` node
    value = OnnxImportContext.attr(node, "value")
    dtype, fill = (torch.float32, 0.0) if value is None else tensor_scalar(value)
    return [known(np.full(shape, fill, dtype=_np(dtype)), dtype)]


def tensor_scalar(t) -> tuple[torch.dtype, Any]:
    """(dtype, value) of a one-element TensorProto attribute, e.g. ConstantOfShape's `value`."""
    arr = onnx.numpy_helper.to_array(t)
    return to_torch_dtype(t.data_type), arr.ravel()[0].item()


@folder("Range")
def _f_range(ctx, node, ins):
    values = [_to_python(_arr(k).ravel()[0]) for k in ins]
    if any(_is_sym(v) for v in values):
        raise _NotFoldable  # becomes an `arange` node
    out = np.arange(*values)
    if out.size > 4096:
        raise _NotFoldable
    return [known(out.astype(_np(ins[0].dtype)), ins[0].dtype)]


@folder("ReduceProd", "ReduceSum")
def _f_reduce(ctx, node, ins):
    a = _arr(ins[0])
    axes = OnnxImportContext.attr(node, "axes")
    if axes is None and len(ins) > 1 and ins[1] is not None:
        axes = _ints_of(ins[1])
    keep = bool(OnnxImportContext.attr(node, "keepdims", 1))
    fn = np.prod if node.op_type == "ReduceProd" else np.sum
    out = fn(a, axis=None if not axes else tuple(axes), keepdims=keep)
    return [known(np.asarray(out, dtype=a.dtype), ins[0].dtype)]
