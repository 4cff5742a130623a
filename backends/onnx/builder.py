"""The ONNX graph under construction: tensor names, constants, nodes, and symbolic dims computed at run time.

Lowering functions (the lowerings package) only talk to this class. It owns three
concerns they should not repeat:
- naming: every tensor gets a unique, readable name derived from the IR node
  it implements, so a failing ONNX node points back to the graphopt node;
- constants and weights: small constants are interned as initializers (casts
  of constants are done here rather than left as Cast nodes); weights are
  only referenced (`weights`: name -> the graph's own tensor), so exporting a
  large model copies each weight once, straight into its final place;
- symbolic dims: a dim such as `batch`, `3*batch` or `floor(seq/2) + 1` is
  turned into Shape -> arithmetic nodes over the graph inputs, once per
  expression, so the exported model runs on every batch size and length.
"""

from __future__ import annotations

import itertools
from typing import Any, Iterable, Mapping, Sequence

import onnx
import sympy
import torch
from onnx import helper

from graphopt.errors import GraphoptError
from graphopt.ir import dims as D
from graphopt.ir.graph import Graph, Node, Value
from graphopt.backends.onnx.dtypes import tensor_proto, to_onnx_dtype, to_torch_tensor

INT64_MAX = 2**63 - 1
SMALL_CONST = 64  # elements: graph constants up to this size are stored with the graph, not as weights


class OnnxBuilder:
    """Collects the nodes, small initializers and weight references of one exported graph."""

    def __init__(self, graph: Graph, opset: int, *, bind: Mapping[str, int] | None = None,
                 input_names: Sequence[str] | None = None) -> None:
        self.graph = graph
        self.opset = opset
        self.bind = {D.symbol(k): int(v) for k, v in (bind or {}).items()}
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._init_by_name: dict[str, onnx.TensorProto] = {}
        self.dtypes: dict[str, torch.dtype] = {}
        self.current: Node | None = None  # the IR node being lowered, for names and errors
        self._used: set[str] = set()  # reserved (every IR value's name) or emitted
        self._emitted: set[str] = set()  # names of tensors that exist in the ONNX graph
        self._counter = itertools.count()
        self._consts: dict[tuple, str] = {}
        self._dim_cache: dict[tuple[str, str], str] = {}
        self._cached: set[str] = set()  # tensors other lowerings may reuse: never renamed
        self._names: dict[int, str] = {}  # id(IR value) -> ONNX tensor name
        self.weights: dict[str, torch.Tensor] = {}  # ONNX name -> tensor, for initializers attached at the end
        self.fused_attention = True
        self.domains: dict[str, int] = {}  # custom operator domain -> its opset version, for the opset imports
        self._symbols = graph.symbols()
        for value in graph.all_values():
            self._used.add(value.name)
        self.input_names = list(input_names) if input_names else [v.name for v in graph.inputs]
        for value, name in zip(graph.inputs, self.input_names):
            self._names[id(value)] = name
            self._used.add(name)
            self._emitted.add(name)
            self.dtypes[name] = value.dtype

    # ------------------------------------------------------------- naming
    def fresh(self, base: str) -> str:
        """A tensor/node name nobody uses yet, derived from `base`."""
        base = base or "t"
        if base not in self._used:
            self._used.add(base)
            return base
        while True:
            candidate = f"{base}_{next(self._counter)}"
            if candidate not in self._used:
                self._used.add(candidate)
                return candidate

    def where(self) -> str:
        return self.current.where() if self.current is not None else "the exporter"

    # ------------------------------------------------------------- values
    def name_of(self, value: Value) -> str:
        """The ONNX tensor holding an IR value; weights become initializers (by name) on first use."""
        found = self._names.get(id(value))
        if found is not None:
            return found
        if value.is_weight:
            if value.data is None or value.data.device.type == "meta":
                raise GraphoptError(f"weight %{value.name} has no data to export (read by {self.where()})")
            if value.kind == "const" and value.data.numel() <= SMALL_CONST:
                self._append_initializer(tensor_proto(value.name, value.data))
            else:
                self.weights[value.name] = value.data
                self._emitted.add(value.name)
            self._names[id(value)] = value.name
            self.dtypes[value.name] = value.dtype
            return value.name
        raise GraphoptError(f"%{value.name} is read by {self.where()} before it is computed")

    def set_name(self, value: Value, name: str, dtype: torch.dtype | None = None) -> None:
        self._names[id(value)] = name
        self.dtypes.setdefault(name, dtype or value.dtype)

    def add_initializer(self, name_hint: str, tensor: torch.Tensor) -> str:
        name = self.fresh(name_hint)
        self._append_initializer(tensor_proto(name, tensor))
        self.dtypes[name] = tensor.dtype
        return name

    def _append_initializer(self, proto: onnx.TensorProto) -> None:
        self.initializers.append(proto)
        self._init_by_name[proto.name] = proto
        self._emitted.add(proto.name)

    # ----------------------------------------------------------- constants
    def const(self, data: Any, dtype: torch.dtype, *, hint: str = "const") -> str:
        """An interned constant initializer (scalars stay 0-d, lists become 1-d)."""
        tensor = torch.as_tensor(data, dtype=dtype) if not isinstance(data, torch.Tensor) else data.to(dtype)
        key = (dtype, tuple(tensor.shape), tensor.cpu().contiguous().view(-1).tolist().__repr__())
        if key not in self._consts:
            self._consts[key] = self.add_initializer(hint, tensor)
        return self._consts[key]

    def i64(self, values: Sequence[int] | int) -> str:
        """An int64 constant: a list gives a 1-d tensor, an int a 0-d one."""
        return self.const(values, torch.int64, hint="shape" if isinstance(values, (list, tuple)) else "i64")

    # -------------------------------------------------------------- nodes
    def op(self, op_type: str, inputs: Sequence[str | None], attrs: Mapping[str, Any] | None = None, *,
           outputs: int = 1, dtype: torch.dtype | None = None, hint: str | None = None,
           domain: str = "") -> Any:
        """Append one ONNX node; returns its output name (or list of names when outputs > 1).

        `dtype` records the element type of the outputs, for later casts.
        """
        base = hint or (f"{self.current.name}/{op_type}" if self.current is not None else op_type)
        outs = [self.fresh(base if outputs == 1 else f"{base}.{i}") for i in range(outputs)]
        clean_attrs = {k: v for k, v in (attrs or {}).items() if v is not None}
        if domain and domain != "ai.onnx":
            self.domains.setdefault(domain, 1)
        node = helper.make_node(op_type, [i or "" for i in inputs], outs, name=self.fresh(base + ":node"),
                                domain=domain or None, **clean_attrs)
        self.nodes.append(node)
        self._emitted.update(outs)
        if dtype is not None:
            for o in outs:
                self.dtypes[o] = dtype
        return outs[0] if outputs == 1 else outs

    def cast(self, name: str, dtype: torch.dtype, src: torch.dtype | None = None) -> str:
        """`name` converted to `dtype` (constants are converted here, not with a Cast node)."""
        src = src or self.dtypes.get(name)
        if src == dtype:
            return name
        init = self._init_by_name.get(name)
        if init is not None and len(init.dims) <= 1 and _numel(init.dims) <= SMALL_CONST:
            return self.const(to_torch_tensor(init).to(dtype), dtype, hint=f"{name}_{str(dtype)[6:]}")
        return self.op("Cast", [name], {"to": to_onnx_dtype(dtype)}, dtype=dtype)

    def rename_output(self, old: str, new: str, since: int) -> bool:
        """Rename tensor `old`, produced by a node appended at or after index `since`."""
        if new == old:
            return True
        if new in self._emitted or old in self._cached:
            return False
        producer = None
        for node in self.nodes[since:]:
            if old in node.output:
                producer = node
        if producer is None:
            return False
        replace_name(self.nodes[since:], old, new)
        self._used.add(new)
        self._emitted.add(new)
        if old in self.dtypes:
            self.dtypes[new] = self.dtypes[old]
        return True

    # --------------------------------------------------- symbolic dims
    def resolve(self, d: D.Dim) -> D.Dim:
        """`d` with symbols fixed by `bind` replaced by their values."""
        if isinstance(d, int) or not self.bind:
            return d
        return D.canon(d.xreplace(self.bind))

    def dim(self, d: D.Dim) -> str:
        """A 1-d int64 tensor of one element holding `d` at run time."""
        d = self.resolve(D.canon(d))
        if isinstance(d, int):
            return self.i64([d])
        key = ("1d", str(d))
        if key not in self._dim_cache:
            self._dim_cache[key] = self._emit_expr(d)
            self._cached.add(self._dim_cache[key])
        return self._dim_cache[key]

    def scalar_dim(self, d: D.Dim) -> str:
        """A 0-d int64 tensor holding `d` at run time."""
        d = self.resolve(D.canon(d))
        if isinstance(d, int):
            return self.i64(d)
        key = ("0d", str(d))
        if key not in self._dim_cache:
            self._dim_cache[key] = self.op("Reshape", [self.dim(d), self.i64([])], dtype=torch.int64,
                                           hint=f"dim_{_safe(d)}_scalar")
            self._cached.add(self._dim_cache[key])
        return self._dim_cache[key]

    def shape(self, dims: Iterable[D.Dim]) -> str:
        """A 1-d int64 tensor with `dims`; runs of static dims stay one constant."""
        dims = [self.resolve(D.canon(d)) for d in dims]
        if all(isinstance(d, int) for d in dims):
            return self.i64(dims)
        pieces: list[str] = []
        run: list[int] = []
        for d in dims:
            if isinstance(d, int):
                run.append(d)
                continue
            if run:
                pieces.append(self.i64(run))
                run = []
            pieces.append(self.dim(d))
        if run:
            pieces.append(self.i64(run))
        key = ("shape", ",".join(pieces))
        if key not in self._dim_cache:
            self._dim_cache[key] = self.op("Concat", pieces, {"axis": 0}, dtype=torch.int64, hint="shape")
            self._cached.add(self._dim_cache[key])
        return self._dim_cache[key]

    def _emit_expr(self, expr: sympy.Expr) -> str:
        hint = f"dim_{_safe(expr)}"
        if expr.is_Integer:
            return self.i64([int(expr)])
        if expr.is_Symbol:
            where = self._symbols.get(str(expr))
            if where is None:
                raise GraphoptError(f"{self.where()}: symbolic dim '{expr}' is not the size of any graph input axis, "
                                    "so the exported model cannot compute it; bind it with export(..., bind=...)")
            index, axis = where
            return self.op("Shape", [self._names[id(self.graph.inputs[index])]], {"start": axis, "end": axis + 1},
                           dtype=torch.int64, hint=f"dim_{expr}")
        num, den = sympy.fraction(sympy.together(expr))
        if den != 1:
            if not den.is_Integer:
                raise GraphoptError(f"{self.where()}: cannot compute dim {expr} (a non-integer divisor)")
            return self.op("Div", [self.dim(num), self.i64([int(den)])], dtype=torch.int64, hint=hint)
        name = type(expr).__name__
        args = expr.args
        if expr.is_Add or expr.is_Mul:
            kind = "Add" if expr.is_Add else "Mul"
            parts = [self.dim(a) for a in args]
            out = parts[0]
            for part in parts[1:]:
                out = self.op(kind, [out, part], dtype=torch.int64, hint=hint)
            return out
        if expr.is_Pow and args[1].is_Integer and int(args[1]) > 0:
            base = self.dim(args[0])
            out = base
            for _ in range(int(args[1]) - 1):
                out = self.op("Mul", [out, base], dtype=torch.int64, hint=hint)
            return out
        if name in ("floor", "ceiling"):
            n, d = sympy.fraction(sympy.together(args[0]))
            if not d.is_Integer:
                raise GraphoptError(f"{self.where()}: cannot compute dim {expr} (a non-integer divisor)")
            if name == "ceiling":
                n = n + (int(d) - 1)
            return self._floordiv(self.dim(n), self.i64([int(d)]), hint)
        if name == "FloorDiv":
            return self._floordiv(self.dim(args[0]), self.dim(args[1]), hint)
        if name == "CeilDiv":
            return self._floordiv(self.dim(args[0] + args[1] - 1), self.dim(args[1]), hint)
        if name in ("CleanDiv", "IntTrueDiv"):
            return self.op("Div", [self.dim(args[0]), self.dim(args[1])], dtype=torch.int64, hint=hint)
        if name in ("Mod", "PythonMod"):
            return self.op("Mod", [self.dim(args[0]), self.dim(args[1])], {"fmod": 0}, dtype=torch.int64, hint=hint)
        if name in ("Max", "Min"):
            return self.op(name, [self.dim(a) for a in args], dtype=torch.int64, hint=hint)
        raise GraphoptError(f"{self.where()}: the ONNX exporter cannot compute the symbolic dim {expr} "
                            f"({name}); bind its symbols with export(..., bind=...)")

    def _floordiv(self, a: str, b: str, hint: str) -> str:
        # ONNX integer Div truncates; (a - a mod b) / b is floor division for either sign.
        rem = self.op("Mod", [a, b], {"fmod": 0}, dtype=torch.int64, hint=hint)
        diff = self.op("Sub", [a, rem], dtype=torch.int64, hint=hint)
        return self.op("Div", [diff, b], dtype=torch.int64, hint=hint)


def _numel(dims) -> int:
    n = 1
    for d in dims:
        n *= d
    return n


def _safe(expr) -> str:
    text = str(expr)
    return "".join(c if c.isalnum() else "_" for c in text)[:40]


def replace_name(nodes: Iterable[onnx.NodeProto], old: str, new: str) -> None:
    """Rename tensor `old` to `new` wherever `nodes` read or write it."""
    for node in nodes:
        for names in (node.input, node.output):
            for i, name in enumerate(names):
                if name == old:
                    names[i] = new
