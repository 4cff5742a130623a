"""Custom ops in one place: `define_op` gives a new op every column graphopt reads.

A user layer graphopt does not know (a `torch.library` custom op, an aten op
without a converter) needs, to be traced, analysed, pruned and run: a shape
rule, a torch kernel, a converter from the traced torch op, a channel rule (or
the statement that channels stop there), optionally a MAC rule, and an ONNX
lowering. Each lives in the layer that reads it (the op table's columns,
`graphopt.ir.op_table`); `define_op` attaches them all in one call, or none of
them when one is refused, so a failed definition leaves nothing behind.
docs/custom_ops.md has the worked example.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence, Union

from graphopt.analysis.rule_columns import BARRIER, CHANNEL_RULE, MAC_RULE
from graphopt.errors import GraphoptError
from graphopt.frontends.torch import CONVERTERS, Converter, ImportContext, op_name
from graphopt.ir import op_table
from graphopt.ir.graph import Node
from graphopt.ir.op_table import ONNX_LOWERING
from graphopt.ir.ops import OPS, TORCH_KERNEL, OpDef, ShapeRule, register_op

__all__ = ["define_op", "CustomNode", "CUSTOM_CATEGORY"]

CUSTOM_CATEGORY = "custom"  # the docs/ir.md section user-defined ops are listed under
# "elementwise": the op's channels pass straight through, broadcasting like `mul` (whose rule it reuses)
_ELEMENTWISE_LIKE = "mul"
ChannelRule = Union[str, Callable[..., None], None]
# an ONNX lowering, fn(builder, node, input_names) -> output name(s); the builder is the ONNX back-end's
# OnnxBuilder, which this module does not import, so that defining an op needs no onnx install
Lowering = Callable[[Any, Node, list], "str | Sequence[str]"]
_COLUMN_KEYS = (TORCH_KERNEL, CHANNEL_RULE, MAC_RULE, ONNX_LOWERING)


def define_op(
    name: str,
    *,
    inputs: str,
    shape: ShapeRule | str,
    kernel: Callable[..., Any],
    attrs: Mapping[str, str] | None = None,
    doc: str = "",
    torch_targets: Iterable[Any] = (),
    convert: Converter | None = None,
    channel_rule: ChannelRule = None,
    macs: Callable[..., int] | None = None,
    onnx: Lowering | CustomNode | None = None,
    replace: bool = False,
) -> OpDef:
    """Define canonical op `name` with all its columns; returns its `OpDef`.

    - `inputs`: the inputs, "x, weight, bias?" ("?" optional, "*" variadic);
      `attrs`: attribute name -> meaning.
    - `shape`: `fn(node) -> [(shape, dtype), ...]`, or "same" (the first
      input's shape and dtype).
    - `kernel`: the torch implementation, `kernel(*inputs, **attrs)`.
    - `torch_targets`: the traced torch ops that become this op ("mylib::op",
      "aten.cumprod.default" or the op object); `convert(ctx, fx_node)` maps one,
      by default inputs then attributes in schema order.
    - `channel_rule`: None (a barrier, reported as having no rule), "barrier"
      (a barrier on purpose), "elementwise" (channels pass straight through),
      or a rule `fn(builder, node)`; `macs`: `fn(node, numel) -> int`.
    - `onnx`: a lowering `fn(builder, node, input_names) -> output name(s)`
      (a decomposition into standard ONNX ops), or `CustomNode(op_type, domain)`.

    Defining an op that exists, or a torch target that has a converter, raises
    `GraphoptError` unless `replace=True`; nothing is registered then.
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise GraphoptError(f"define_op: the op name must be an identifier such as 'scaled_swish', not {name!r}")
    opdef = OpDef(name, _shape_rule(name, shape), inputs, dict(attrs or {}), _shape_doc(shape),
                  CUSTOM_CATEGORY, doc or f"user-defined op '{name}'")
    columns = _columns(name, kernel, channel_rule, macs, onnx)
    targets = [_target_name(t) for t in torch_targets]
    if convert is not None and not targets:
        raise GraphoptError(f"define_op('{name}'): convert= maps torch ops onto the op; name them in torch_targets")
    converter = convert if convert is not None else (_default_converter(opdef) if targets else None)
    if not replace:
        _check_free(name, columns, targets)
    tables = [OPS, CONVERTERS, *(op_table.column(key) for key in _COLUMN_KEYS)]
    saved = [table.snapshot() for table in tables]
    try:
        register_op(opdef, replace=replace)
        for key in _COLUMN_KEYS:  # a redefinition keeps none of the columns it no longer gives
            op_table.column(key).unregister(name)
        for key, value in columns.items():
            op_table.register_op_attr(name, key, value)
        for target in targets:
            CONVERTERS.register(target, converter, replace=True)
    except GraphoptError:
        for table, snapshot in zip(tables, saved):
            table.restore(snapshot)
        raise
    return opdef


def _check_free(name: str, columns: dict[str, Any], targets: list[str]) -> None:
    """Refuse, before registering anything, a definition that would replace an existing one.

    Checked here rather than left to each registry: two definitions made by the
    same code (closures, lambdas) look like one re-registered function to them.
    """
    if name in OPS:
        raise GraphoptError(f"op '{name}' is already registered; pass replace=True to override it")
    taken = [key for key in columns if op_table.get_op_attr(name, key) is not None]
    if taken:
        raise GraphoptError(f"op '{name}' already has {', '.join(taken)}; pass replace=True to override it")
    for target in targets:
        if target in CONVERTERS:
            raise GraphoptError(f"a torch converter for '{target}' is already registered "
                                f"({CONVERTERS.get(target)!r}); pass replace=True to override it")


def _columns(name: str, kernel: Any, channel_rule: ChannelRule, macs: Any, onnx: Any) -> dict[str, Any]:
    """The op-table values to attach, checked before anything is registered."""
    if not callable(kernel):
        raise GraphoptError(f"define_op('{name}'): kernel must be a function computing the op with torch")
    columns: dict[str, Any] = {TORCH_KERNEL: _named(kernel, f"{name}_kernel")}
    rule = _channel_rule(name, channel_rule)
    if rule is not None:
        columns[CHANNEL_RULE] = rule
    if macs is not None:
        if not callable(macs):
            raise GraphoptError(f"define_op('{name}'): macs must be a function fn(node, numel) -> int")
        columns[MAC_RULE] = macs
    if onnx is not None:
        if not callable(onnx):
            raise GraphoptError(f"define_op('{name}'): onnx must be a lowering fn(builder, node, input_names) or "
                                "a CustomNode(op_type, domain)")
        columns[ONNX_LOWERING] = onnx
    return columns


def _named(fn: Callable[..., Any], name: str) -> Callable[..., Any]:
    """`fn`, or for a lambda a named function calling it: torch.fx names a call target by its
    source text, which a lambda typed in a notebook or exec'd example does not have."""
    if getattr(fn, "__name__", "") != "<lambda>":
        return fn

    def kernel(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    kernel.__name__ = kernel.__qualname__ = name
    return kernel


def _channel_rule(name: str, rule: ChannelRule) -> Any:
    if rule is None or callable(rule):
        return rule
    if rule == "barrier":
        return BARRIER
    if rule == "elementwise":
        return op_table.require_op_attr(_ELEMENTWISE_LIKE, CHANNEL_RULE)
    raise GraphoptError(f"define_op('{name}'): channel_rule must be None, 'barrier', 'elementwise' or a rule "
                        f"fn(builder, node), not {rule!r}")


def _same(node: Node) -> list[tuple]:
    x = node.inputs[0]
    return [(x.shape, x.dtype)]


def _shape_rule(name: str, shape: ShapeRule | str) -> ShapeRule:
    if shape == "same":
        return _same
    if callable(shape):
        return shape
    raise GraphoptError(f"define_op('{name}'): shape must be a rule fn(node) -> [(shape, dtype), ...] or 'same'")


def _shape_doc(shape: ShapeRule | str) -> str:
    if shape == "same":
        return "same as the first input"
    return (getattr(shape, "__doc__", None) or "").strip().split("\n")[0]


def _target_name(target: Any) -> str:
    """The front-end's name for a torch op: 'mylib::op' and op objects become 'mylib.op'."""
    if isinstance(target, str):
        return target.replace("::", ".")
    return op_name(target)


def _input_names(opdef: OpDef) -> list[str]:
    names = [s.strip() for s in opdef.inputs.split(",") if s.strip()]
    if any(n.endswith("*") for n in names):
        raise GraphoptError(f"define_op('{opdef.name}'): an op with variadic inputs needs its own convert=")
    return [n.rstrip("?") for n in names]


def _default_converter(opdef: OpDef) -> Converter:
    """Inputs first, then attributes, in the torch op's schema order (or by keyword)."""
    inputs, attrs = _input_names(opdef), list(opdef.attrs)

    def convert(ctx: ImportContext, node: Any) -> Any:
        args = list(node.args)
        values = [ctx.maybe_value(args[i] if i < len(args) else node.kwargs.get(n)) for i, n in enumerate(inputs)]
        rest = args[len(inputs):]
        if len(rest) > len(attrs):
            raise GraphoptError(f"node '{node.name}': {len(args)} arguments for op '{opdef.name}', which takes "
                                f"{len(inputs)} inputs and attributes {attrs}; pass convert= to define_op")
        values_of = dict(zip(attrs, rest))
        values_of.update((k, v) for k, v in node.kwargs.items() if k in opdef.attrs)
        emitted = ctx.emit(opdef.name, values, values_of)
        return emitted.outputs if len(emitted.outputs) > 1 else emitted.output

    return convert


@dataclass(frozen=True)
class CustomNode:
    """A lowering to one node of a custom ONNX domain, for a runtime that has a kernel for it.

    The node takes the op's inputs and attributes as they are in the IR (None
    attributes are left out) and the model imports `domain` at `version`.
    ONNX Runtime runs such a node only with a custom-op library registered in
    its session; to run anywhere, lower to standard ONNX ops instead.
    """

    op_type: str
    domain: str
    version: int = 1

    def __post_init__(self) -> None:
        if not self.domain or self.domain in ("ai.onnx", "ai.onnx.ml"):
            raise GraphoptError(f"CustomNode('{self.op_type}') needs a custom domain such as 'com.example', "
                                f"not {self.domain!r}: the standard domains' operators are fixed by ONNX")

    def __call__(self, b: Any, node: Node, ins: list) -> Any:
        attrs = {key: _attribute(node, key, value) for key, value in node.attrs.items()}
        b.domains[self.domain] = self.version
        outputs = len(node.outputs)
        return b.op(self.op_type, ins, attrs, outputs=outputs, dtype=node.outputs[0].dtype, domain=self.domain)


def _attribute(node: Node, key: str, value: Any) -> Any:
    """An IR attribute as an ONNX attribute value (numbers, strings and lists of them)."""
    items = value if isinstance(value, (list, tuple)) else [value]
    if value is None or all(isinstance(v, (bool, int, float, str)) for v in items):
        return [int(v) if isinstance(v, bool) else v for v in value] if isinstance(value, (list, tuple)) \
            else (int(value) if isinstance(value, bool) else value)
    raise GraphoptError(f"{node.where()}: attribute {key}={value!r} has no ONNX attribute form for a custom node "
                        "(numbers, strings and lists of them have)")
