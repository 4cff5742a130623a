"""The op definition (`OpDef`), the registry of canonical ops, and the helpers shape rules share.

Each op family module (`elementwise`, `nn`, `layout`, `reduce`, `creation`)
registers its ops here with `@op(...)` next to their shape rules, and attaches
each op's reference torch implementation as the op-table column
"torch_kernel" with `@kernel(...)`, so an op's definition and what it computes
are read in one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import torch

from graphopt.errors import GraphoptError, ShapeError
from graphopt.ir import dims as D
from graphopt.ir import op_table
from graphopt.ir.graph import Node, Value
from graphopt.registry import Registry, close_names

TensorType = tuple  # (shape tuple, torch.dtype)
ShapeRule = Callable[[Node], "list[TensorType]"]
Kernel = Callable[..., Any]

TORCH_KERNEL = op_table.TORCH_KERNEL
op_table.column(TORCH_KERNEL, "reference torch implementation (inputs positional, attributes as keywords)")

# Traits the ir layer gives ops; later layers read them instead of keeping their own op sets.
ELEMENTWISE = "elementwise"  # output element i depends on input element i only (after broadcasting)
TRAINING_AWARE = "training_aware"  # the kernel takes `training` (batch_norm, dropout)
# Unary and flat (or nearly) over a tail of its input (sigmoid, SiLU, GELU, ...): an error in the input there
# barely reaches the output, so a quantizer may clip the input where the op is flat.
SATURATING = "saturating"
CREATION = "creation"  # no tensor inputs; the kernel takes `device`, the inputs' device
REDUCTION = "reduction"
LAYOUT = "layout"


@dataclass(frozen=True)
class OpDef:
    """How one canonical op is called and how its output types follow from its inputs."""

    name: str
    rule: ShapeRule
    inputs: str  # e.g. "x, weight, bias?" ("?" optional, "*" variadic)
    attrs: dict[str, str] = field(default_factory=dict)  # attribute -> meaning
    shape_doc: str = ""
    category: str = "other"
    doc: str = ""
    traits: frozenset[str] = frozenset()


OPS: Registry[OpDef] = Registry("op", hint="register it with graphopt.ir.ops.register_op")


def register_op(opdef: OpDef, *, replace: bool = False) -> OpDef:
    """Add an op to the canonical set (a user's own layer, for instance)."""
    if opdef.name in OPS and not replace:
        raise GraphoptError(f"op '{opdef.name}' is already registered; pass replace=True to override it")
    return OPS.register(opdef.name, opdef, replace=True)


def op(name: str, inputs: str, *, attrs: dict[str, str] | None = None, shape: str = "", category: str = "other",
       doc: str = "", traits: Iterable[str] = ()) -> Callable[[ShapeRule], ShapeRule]:
    """Decorator registering the decorated shape rule as op `name`."""

    def wrap(rule: ShapeRule) -> ShapeRule:
        register_op(OpDef(name, rule, inputs, dict(attrs or {}), shape, category, doc, frozenset(traits)))
        return rule

    return wrap


def kernel(*names: str) -> Callable[[Kernel], Kernel]:
    """Decorator attaching the decorated function as the torch kernel of each op in `names`."""

    def wrap(fn: Kernel) -> Kernel:
        for name in names:
            op_table.register_op_attr(name, TORCH_KERNEL, fn)
        return fn

    return wrap


def get_op(name: str) -> OpDef:
    opdef = OPS.get(name)
    if opdef is None:
        raise GraphoptError(f"op '{name}' is not in the canonical op set{close_names(name, OPS)}; "
                            "register it with graphopt.ir.ops.register_op")
    return opdef


def has_trait(op: str, trait: str) -> bool:
    """Whether op `op` has `trait` (False for a name that is not a registered op)."""
    opdef = OPS.get(op)
    return opdef is not None and trait in opdef.traits


def ops_with(trait: str) -> frozenset[str]:
    """Names of the registered ops that have `trait`."""
    return frozenset(name for name, opdef in OPS.items() if trait in opdef.traits)


def infer_types(node: Node) -> list[TensorType]:
    """Output (shape, dtype) pairs of `node`, from its op's shape rule."""
    opdef = get_op(node.op)
    try:
        return [(tuple(D.canon(d) for d in s), t) for s, t in opdef.rule(node)]
    except (ShapeError, GraphoptError):
        raise
    except Exception as exc:  # a rule tripping over bad inputs is a shape error of that node
        raise ShapeError(f"shape rule of {node.where()} failed: {type(exc).__name__}: {exc}") from exc


# ------------------------------------------------------------------ helpers
def in_(node: Node, i: int) -> Value:
    """Input `i` of `node`, which the op requires."""
    value = node.inputs[i] if i < len(node.inputs) else None
    if value is None:
        raise ShapeError(f"{node.where()}: required input {i} is missing")
    return value


def norm_axis(axis: int, rank: int) -> int:
    if not -max(rank, 1) <= axis < max(rank, 1):
        raise ShapeError(f"axis {axis} out of range for rank {rank}")
    return axis % max(rank, 1)


def broadcast(*shapes: Sequence[D.Dim]) -> tuple:
    rank = max(len(s) for s in shapes)
    out = []
    for i in range(rank):
        dim: D.Dim = 1
        for s in shapes:
            j = i - (rank - len(s))
            if j < 0:
                continue
            d = s[j]
            if isinstance(d, int) and d == 1:
                continue
            if isinstance(dim, int) and dim == 1:
                dim = d
            elif not D.dims_equal(dim, d) and isinstance(dim, int) and isinstance(d, int):
                raise ShapeError(f"shapes {[list(s) for s in shapes]} do not broadcast")
            elif not isinstance(d, int):
                dim = d if isinstance(dim, int) and dim == 1 else dim
        out.append(dim)
    return tuple(out)


def _meta(value: Value) -> torch.Tensor:
    return torch.empty((1,) * value.rank, dtype=value.dtype, device="meta")


def result_dtype(*values: Value) -> torch.dtype:
    """torch's type promotion over the inputs (0-d tensors count as wrapped scalars)."""
    result = _meta(values[0])
    for value in values[1:]:
        other = _meta(value)
        dtype = torch.result_type(result, other)
        result = torch.empty((1,) * max(result.dim(), other.dim()), dtype=dtype, device="meta")
    return result.dtype


def same(node: Node) -> list[TensorType]:
    """Shape rule: the output has the first input's shape and dtype."""
    x = in_(node, 0)
    return [(x.shape, x.dtype)]


def pair_list(value: Any, n: int) -> list:
    """A per-spatial-axis attribute as a list of `n` entries (a scalar or a shorter list is repeated)."""
    if isinstance(value, (list, tuple)):
        return list(value) if len(value) == n else list(value) * (n // len(value))
    return [value] * n
