"""The graphopt IR: a Graph of Nodes that consume and produce typed Values.

Design choices, and why:
- A Value knows its producer and its uses, and every editing helper keeps both
  sides consistent, so a pass never has to remember a clean-up step.
- Parameters, buffers and constants are Values too (kind "param", "buffer",
  "const") that carry their tensor, so pruning slices a weight where the graph
  holds it and every consumer sees the new shape.
- Nodes are kept in a list in topological order; passes that insert nodes say
  where. Graphs here have at most a few thousand nodes, so a list is simpler
  and fast enough.
- Tensor data is shared between a graph and its clone: passes replace a
  Value's tensor, they never write into it, so cloning stays cheap even for
  large models.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch

from graphopt.errors import BindError, GraphoptError, InputError
from graphopt.ir import dims as D

VALUE_KINDS = ("input", "param", "buffer", "const", "node")


@dataclass(frozen=True)
class SourceLocation:
    """Where a node came from in the user's model, for diagnostics."""

    module: str = ""  # module path, e.g. "layer1.0.conv1"
    file: str = ""
    line: int = 0
    code: str = ""  # the source line itself

    def __str__(self) -> str:
        parts = []
        if self.file:
            parts.append(f"{self.file}:{self.line}")
        if self.module:
            parts.append(f"in module '{self.module}'")
        text = " ".join(parts)
        if self.code:
            text += f": `{self.code.strip()}`"
        return text


class Value:
    """A tensor in the graph: a graph input, a parameter/buffer/constant, or a node output."""

    __slots__ = ("name", "shape", "dtype", "kind", "data", "producer", "index", "_uses", "meta", "graph")

    def __init__(
        self,
        name: str,
        shape: Sequence[D.Dim],
        dtype: torch.dtype,
        kind: str = "node",
        data: torch.Tensor | None = None,
    ) -> None:
        if kind not in VALUE_KINDS:
            raise ValueError(f"unknown value kind {kind!r}; expected one of {VALUE_KINDS}")
        self.name = name
        self.shape: tuple = tuple(D.canon(d) for d in shape)
        self.dtype = dtype
        self.kind = kind
        self.data = data
        self.producer: Node | None = None
        self.index = 0  # position among the producer's outputs
        self._uses: list[tuple[Node, int]] = []
        self.meta: dict[str, Any] = {}
        self.graph: Graph | None = None

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def is_weight(self) -> bool:
        """True for values that hold data: parameters, buffers and constants."""
        return self.kind in ("param", "buffer", "const")

    def uses(self) -> list[tuple[Node, int]]:
        """(node, input index) pairs of every node input that reads this value."""
        return list(self._uses)

    @property
    def users(self) -> list[Node]:
        """Distinct consumer nodes, in order of first use."""
        seen: dict[int, Node] = {}
        for node, _ in self._uses:
            seen.setdefault(id(node), node)
        return list(seen.values())

    def is_graph_output(self) -> bool:
        """True if this value is one of its graph's outputs (what the graph returns)."""
        return self.graph is not None and any(out is self for out in self.graph.outputs)

    def is_used(self) -> bool:
        """True if a node reads this value or the graph returns it: erasing it would change the graph."""
        return bool(self._uses) or self.is_graph_output()

    def replace_all_uses_with(self, other: Value) -> None:
        """Make every reader of this value (nodes and graph outputs) read `other` instead."""
        if other is self:
            return
        for node, i in list(self._uses):
            node.set_input(i, other)
        if self.graph is not None:
            self.graph.outputs = [other if v is self else v for v in self.graph.outputs]

    def set_data(self, tensor: torch.Tensor) -> None:
        """Replace the tensor of a param/buffer/const, updating its type."""
        if not self.is_weight:
            raise GraphoptError(f"value %{self.name} ({self.kind}) holds no data")
        self.data = tensor
        self.shape = tuple(tensor.shape)
        self.dtype = tensor.dtype

    def type_str(self) -> str:
        return f"{dtype_str(self.dtype)}[{','.join(D.dim_str(d) for d in self.shape)}]"

    def __repr__(self) -> str:
        return f"%{self.name}: {self.type_str()}"


class Node:
    """One operation: `op` applied to `inputs` with `attrs`, producing `outputs`."""

    __slots__ = ("op", "name", "_inputs", "outputs", "attrs", "meta", "graph")

    def __init__(self, op: str, name: str, attrs: dict[str, Any] | None = None) -> None:
        self.op = op
        self.name = name
        self._inputs: list[Value | None] = []
        self.outputs: list[Value] = []
        self.attrs: dict[str, Any] = dict(attrs or {})
        self.meta: dict[str, Any] = {}
        self.graph: Graph | None = None

    @property
    def inputs(self) -> tuple[Value | None, ...]:
        return tuple(self._inputs)

    @property
    def output(self) -> Value:
        if len(self.outputs) != 1:
            raise GraphoptError(f"node %{self.name} ({self.op}) has {len(self.outputs)} outputs, not one")
        return self.outputs[0]

    @property
    def source(self) -> SourceLocation | None:
        return self.meta.get("source")

    def is_dead(self) -> bool:
        """True if nothing reads any of the node's outputs: no node, no graph output."""
        return not any(out.is_used() for out in self.outputs)

    def set_input(self, index: int, value: Value | None) -> None:
        old = self._inputs[index]
        if old is value:
            return
        if old is not None:
            old._uses.remove((self, index))
        self._inputs[index] = value
        if value is not None:
            value._uses.append((self, index))

    def set_inputs(self, values: Iterable[Value | None]) -> None:
        self._detach_inputs()
        self._inputs = []
        for i, value in enumerate(values):
            self._inputs.append(value)
            if value is not None:
                value._uses.append((self, i))

    def _detach_inputs(self) -> None:
        for i, value in enumerate(self._inputs):
            if value is not None:
                value._uses.remove((self, i))

    def where(self) -> str:
        """A short description for error messages: name, op and source."""
        text = f"node %{self.name} ({self.op})"
        if self.source is not None and self.source.file:
            text += f" from {self.source}"
        elif self.source is not None and self.source.module:
            text += f" {self.source}"  # "in module '...'"
        return text

    def __repr__(self) -> str:
        return f"<Node %{self.name} = {self.op}>"


_NAME_SAFE = re.compile(r"[^A-Za-z0-9_.\-]")


class Graph:
    """A dataflow graph with named inputs, outputs, weights and topologically ordered nodes."""

    def __init__(self, name: str = "graph") -> None:
        self.name = name
        self.inputs: list[Value] = []
        self.outputs: list[Value] = []
        self.weights: dict[str, Value] = {}  # params, buffers and constants by name
        self.nodes: list[Node] = []
        self.meta: dict[str, Any] = {}
        self._names: set[str] = set()
        self._counter = itertools.count()

    # ----------------------------------------------------------------- naming
    def unique_name(self, base: str) -> str:
        base = _NAME_SAFE.sub("_", base) or "v"
        if base not in self._names:
            self._names.add(base)
            return base
        for i in itertools.count(1):
            candidate = f"{base}_{i}"
            if candidate not in self._names:
                self._names.add(candidate)
                return candidate
        raise AssertionError("unreachable")

    def _adopt(self, value: Value) -> Value:
        value.graph = self
        return value

    # --------------------------------------------------------------- building
    def add_input(self, name: str, shape: Sequence[D.Dim], dtype: torch.dtype) -> Value:
        value = self._adopt(Value(self.unique_name(name), shape, dtype, kind="input"))
        self.inputs.append(value)
        return value

    def add_weight(self, name: str, tensor: torch.Tensor, kind: str = "param") -> Value:
        """Register a parameter, buffer or constant tensor under `name` (kept exact when free)."""
        if kind not in ("param", "buffer", "const"):
            raise ValueError(f"weight kind must be param, buffer or const, not {kind!r}")
        if name in self._names:
            name = self.unique_name(name)
        else:
            self._names.add(name)
        value = self._adopt(Value(name, tuple(tensor.shape), tensor.dtype, kind=kind, data=tensor))
        self.weights[name] = value
        return value

    def add_const(self, tensor: torch.Tensor, name: str = "const") -> Value:
        return self.add_weight(name, tensor, kind="const")

    def create_node(
        self,
        op: str,
        inputs: Sequence[Value | None],
        attrs: dict[str, Any] | None = None,
        *,
        name: str | None = None,
        before: Node | None = None,
        after: Node | None = None,
        output_types: Sequence[tuple[Sequence[D.Dim], torch.dtype]] | None = None,
        meta: dict[str, Any] | None = None,
    ) -> Node:
        """Create a node, infer its output types from the op's shape rule, and insert it.

        The node goes at the end unless `before`/`after` name an anchor. Pass
        `output_types` only for ops whose types cannot be inferred.
        """
        from graphopt.ir.ops import infer_types  # ops imports this module

        node = Node(op, self.unique_name(name or op), attrs)
        node.graph = self
        if meta:
            node.meta.update(meta)
        node.set_inputs(inputs)
        types = list(output_types) if output_types is not None else infer_types(node)
        for i, (shape, dtype) in enumerate(types):
            out_name = node.name if len(types) == 1 else self.unique_name(f"{node.name}.{i}")
            value = self._adopt(Value(out_name, shape, dtype, kind="node"))
            value.producer = node
            value.index = i
            node.outputs.append(value)
        self._insert(node, before=before, after=after)
        return node

    def _insert(self, node: Node, *, before: Node | None, after: Node | None) -> None:
        if before is not None and after is not None:
            raise ValueError("give at most one of before/after")
        if before is not None:
            self.nodes.insert(self.index_of(before), node)
        elif after is not None:
            self.nodes.insert(self.index_of(after) + 1, node)
        else:
            self.nodes.append(node)

    def index_of(self, node: Node) -> int:
        for i, candidate in enumerate(self.nodes):
            if candidate is node:
                return i
        raise GraphoptError(f"{node.where()} is not in graph '{self.name}'")

    # ---------------------------------------------------------------- editing
    def erase_node(self, node: Node) -> None:
        """Remove a node whose outputs nobody reads."""
        for out in node.outputs:
            if out.is_used():
                readers = ", ".join(f"%{n.name}" for n in out.users) or "graph outputs"
                raise GraphoptError(f"cannot erase {node.where()}: output %{out.name} is still read by {readers}")
        node._detach_inputs()
        node._inputs = []
        self.nodes.pop(self.index_of(node))
        node.graph = None

    def erase_if_dead(self, node: Node | None) -> bool:
        """Erase `node` if it is in this graph and nothing reads its outputs; True if it was erased."""
        if node is None or node.graph is not self or not node.is_dead():
            return False
        self.erase_node(node)
        return True

    def replace_node(self, old: Node, new_outputs: Sequence[Value] | Value) -> None:
        """Redirect all readers of `old`'s outputs to `new_outputs`, then erase `old`."""
        if isinstance(new_outputs, Value):
            new_outputs = [new_outputs]
        if len(new_outputs) != len(old.outputs):
            raise GraphoptError(
                f"replacing {old.where()}: it has {len(old.outputs)} outputs, replacement has {len(new_outputs)}"
            )
        for out, new in zip(old.outputs, new_outputs):
            out.replace_all_uses_with(new)
        self.erase_node(old)

    def remove_weight(self, value: Value) -> None:
        if value.is_used():
            raise GraphoptError(f"cannot remove weight %{value.name}: it is still used")
        self.weights.pop(value.name, None)

    def remove_weight_if_unused(self, value: Value | None) -> bool:
        """Remove `value` if it is a weight of this graph that nothing reads; True if it was removed."""
        if value is None or self.weights.get(value.name) is not value or value.is_used():
            return False
        del self.weights[value.name]
        return True

    def remove_unused_weights(self) -> int:
        unused = [v for v in self.weights.values() if not v.is_used()]
        for value in unused:
            del self.weights[value.name]
        return len(unused)

    def slice_weight(self, value: Value, axis: int, indices: Sequence[int] | torch.Tensor) -> None:
        """Keep only `indices` of `value`'s tensor along `axis` (structured pruning's primitive).

        Shapes downstream are not touched; call `infer_shapes()` once all slices are done.
        """
        if not value.is_weight or value.data is None:
            raise GraphoptError(f"%{value.name} is not a weight tensor")
        index = torch.as_tensor(indices, dtype=torch.long, device=value.data.device)
        value.set_data(torch.index_select(value.data, axis, index).contiguous())

    def infer_shapes(self) -> None:
        """Recompute every node output's type from the shape rules (after edits to weights or attrs)."""
        from graphopt.ir.ops import infer_types

        for node in self.nodes:
            types = infer_types(node)
            for out, (shape, dtype) in zip(node.outputs, types):
                out.shape = tuple(D.canon(d) for d in shape)
                out.dtype = dtype

    # -------------------------------------------------------------- queries
    def __iter__(self) -> Iterator[Node]:
        return iter(list(self.nodes))

    def __len__(self) -> int:
        return len(self.nodes)

    def find_nodes(self, op: str) -> list[Node]:
        return [n for n in self.nodes if n.op == op]

    def node(self, name: str) -> Node:
        for candidate in self.nodes:
            if candidate.name == name:
                return candidate
        raise KeyError(f"no node named %{name} in graph '{self.name}'")

    def value(self, name: str) -> Value:
        for v in self.all_values():
            if v.name == name:
                return v
        raise KeyError(f"no value named %{name} in graph '{self.name}'")

    def all_values(self) -> Iterator[Value]:
        yield from self.inputs
        yield from self.weights.values()
        for node in self.nodes:
            yield from node.outputs

    def params(self) -> dict[str, Value]:
        return {k: v for k, v in self.weights.items() if v.kind == "param"}

    def num_params(self) -> int:
        return sum(v.data.numel() for v in self.weights.values() if v.kind == "param" and v.data is not None)

    def symbols(self) -> dict[str, tuple[int, int]]:
        """Each dynamic-axis symbol and the (input index, axis) that binds it."""
        bound: dict[str, tuple[int, int]] = {}
        for i, value in enumerate(self.inputs):
            for axis, d in enumerate(value.shape):
                if not isinstance(d, int) and d.is_Symbol and str(d) not in bound:
                    bound[str(d)] = (i, axis)
        return bound

    def check_inputs(self, inputs: Sequence[Any], *, what: str = "the inputs") -> dict[str, int]:
        """Check `inputs` against the graph's inputs (count, tensor, dtype, rank, sizes); the symbols' sizes.

        A symbolic axis takes any size >= 1, the same for every axis that shares its symbol; a
        static axis must match. `what` names the inputs in the message ("calibration batch 3").
        Raises `InputError` saying what was expected and what to do, before any kernel sees them.
        """
        if len(inputs) != len(self.inputs):
            names = ", ".join(f"%{v.name}: {v.type_str()}" for v in self.inputs)
            constants = [x for x in inputs if not isinstance(x, (torch.Tensor, np.ndarray))]
            hint = (f" (non-tensor arguments such as {constants[0]!r:.40} were fixed when the model was traced: "
                    f"leave them out)" if constants else "")
            raise InputError(f"{what}: the model takes {len(self.inputs)} input(s) ({names}), "
                             f"got {len(inputs)}{hint}")
        sizes: dict[str, tuple[int, str]] = {}
        for index, (given, value) in enumerate(zip(inputs, self.inputs)):
            label = f"{what}: input {index} (%{value.name}: {value.type_str()})"
            if not isinstance(given, torch.Tensor):
                hint = " (convert it with torch.from_numpy)" if isinstance(given, np.ndarray) else ""
                raise InputError(f"{label} must be a torch tensor, got {type(given).__name__}{hint}")
            if given.dtype != value.dtype:
                raise InputError(f"{label} has dtype {given.dtype}; the model was traced with {value.dtype}: "
                                 f"cast it, e.g. x.to({value.dtype})")
            if given.dim() != len(value.shape):
                raise InputError(f"{label} has {given.dim()} dims {tuple(given.shape)}; expected {len(value.shape)}")
            for axis, (have, want) in enumerate(zip(given.shape, value.shape)):
                if isinstance(want, int):
                    if have != want:
                        raise InputError(f"{label} has size {have} on axis {axis}; the model needs {want} there "
                                         f"(that axis was traced static)")
                elif getattr(want, "is_Symbol", False):
                    seen = sizes.setdefault(str(want), (int(have), f"input {index} axis {axis}"))
                    if seen[0] != have:
                        raise InputError(f"{label} has size {have} on axis {axis}, but {seen[1]} gave "
                                         f"{want} = {seen[0]}; they must agree")
        return {name: size for name, (size, _) in sizes.items()}

    def checked_bind(self, bind: Mapping[str, Any] | None) -> dict[str, int]:
        """`bind` (symbol -> size) as ints, each naming a symbol of this graph and at least 1, else `BindError`.

        Back-ends compile or export for these sizes: a size of 0 or less, or a name that is not a symbol,
        is a mistake to report before any work (TVM crashed on a negative batch).
        """
        if bind is None:
            return {}
        if not isinstance(bind, Mapping):
            raise BindError(f"bind must map symbol names to sizes, e.g. {{'batch': 1}}, got {type(bind).__name__}")
        symbols = self.symbols()
        unknown = sorted(str(k) for k in bind if k not in symbols)
        if unknown:
            raise BindError(f"bind names {unknown}, which are not symbols of graph '{self.name}' "
                            f"(its symbols: {sorted(symbols) or 'none'})")
        sizes = {}
        for name, size in bind.items():
            if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
                raise BindError(f"bind[{name!r}] = {size!r}: a size must be an integer >= 1")
            sizes[name] = int(size)
        return sizes

    # -------------------------------------------------------------- copying
    def clone(self) -> Graph:
        """A structural copy; tensors are shared (passes replace tensors, never mutate them)."""
        new = Graph(self.name)
        new.meta = dict(self.meta)
        new._names = set(self._names)
        mapping: dict[int, Value] = {}

        def copy_value(v: Value) -> Value:
            c = Value(v.name, v.shape, v.dtype, kind=v.kind, data=v.data)
            c.meta = dict(v.meta)
            c.graph = new
            mapping[id(v)] = c
            return c

        new.inputs = [copy_value(v) for v in self.inputs]
        new.weights = {k: copy_value(v) for k, v in self.weights.items()}
        for node in self.nodes:
            c = Node(node.op, node.name, _copy_attrs(node.attrs))
            c.meta = dict(node.meta)
            c.graph = new
            c.set_inputs(None if v is None else mapping[id(v)] for v in node._inputs)
            for out in node.outputs:
                co = copy_value(out)
                co.producer = c
                co.index = out.index
                c.outputs.append(co)
            new.nodes.append(c)
        new.outputs = [mapping[id(v)] for v in self.outputs]
        return new

    def take_over(self, other: Graph) -> None:
        """Become `other` (its inputs, nodes, weights, outputs and meta); `other` is left empty.

        For edits that must be all or nothing: work on `clone()`, then take the result over only
        once every step succeeded, so a failure leaves this graph exactly as it was.
        """
        self.name, self.inputs, self.outputs, self.weights = other.name, other.inputs, other.outputs, other.weights
        self.nodes, self.meta, self._names, self._counter = other.nodes, other.meta, other._names, other._counter
        for value in self.all_values():
            value.graph = self
        for node in self.nodes:
            node.graph = self
        other.__init__(other.name)

    # ------------------------------------------------------ checks and text
    def verify(self) -> None:
        """Raise `VerificationError` listing every structural, type or shape problem."""
        from graphopt.ir.verifier import verify

        verify(self)

    def format(self, *, source: bool = False, weights: bool = True) -> str:
        from graphopt.ir.printer import format_graph

        return format_graph(self, source=source, weights=weights)

    def __str__(self) -> str:
        return self.format()

    def __repr__(self) -> str:
        return f"<Graph '{self.name}': {len(self.inputs)} inputs, {len(self.nodes)} nodes, {len(self.weights)} weights>"


def _copy_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, list) else v) for k, v in attrs.items()}


_DTYPE_NAMES = {
    torch.float32: "f32",
    torch.float16: "f16",
    torch.bfloat16: "bf16",
    torch.float64: "f64",
    torch.int64: "i64",
    torch.int32: "i32",
    torch.int16: "i16",
    torch.int8: "i8",
    torch.uint8: "u8",
    torch.bool: "b8",
    torch.complex64: "c64",
}
_DTYPES_BY_NAME = {v: k for k, v in _DTYPE_NAMES.items()}


def dtype_str(dtype: torch.dtype) -> str:
    return _DTYPE_NAMES.get(dtype, str(dtype).replace("torch.", ""))


def dtype_from_str(name: str) -> torch.dtype:
    if name in _DTYPES_BY_NAME:
        return _DTYPES_BY_NAME[name]
    return getattr(torch, name)
