"""PyTorch front-end: `torch.export` a model and import the program into a graphopt Graph.

Why torch.export (and not symbolic fx tracing): it sees through functional
calls, in-place ops and Python control flow on shapes, functionalises the
program, and records each node's module path and source line, which graphopt
keeps for its diagnostics. The program is only functionalised
(`run_decompositions({})`), not decomposed to core ATen, so high-level ops the
passes care about (linear, conv, layer_norm, scaled_dot_product_attention)
stay whole.

Dynamic axes stay symbolic: by default the batch axis of every input is
exported as `Dim.AUTO`, so the graph (and what it lowers to) runs on other
batch sizes; pass `dynamic={input_index: {axis: name}}` for more (a sequence
axis, say). A batch-1 example keeps them too (torch_dynamic.py says how).
"""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping, Sequence

import sympy
import torch
import torch.fx

from graphopt.errors import GraphoptError, UnsupportedOpError
from graphopt.ir import dims as D
from graphopt.frontends.torch_inplace import rewrite_local_inplace
from graphopt.frontends.torch_dynamic import (  # noqa: F401 - StaticAxisWarning is public here
    Failure, StaticAxisWarning, batch_axes, differs_at_example, export_dynamic, export_static, failure_of,
)
from graphopt.ir.graph import Graph, Node, SourceLocation, Value
from graphopt.registry import Registry

Converter = Callable[["ImportContext", torch.fx.Node], "Value | Sequence[Value] | None"]

# Keyed by the source op (an aten overload or packet): one aten op may become several canonical ops and
# several aten ops one canonical op, so converters are a table of their own, not a column of the op table.
CONVERTERS: Registry[Converter] = Registry("torch converter")
_CONVERTERS = CONVERTERS  # the name tests and users already call
# Converters for an op whose tensor argument is complex (a `ComplexValue`): mul of two complex tensors,
# unsqueeze of one, ...; keyed like CONVERTERS. An op on a complex tensor without one stops the import.
COMPLEX_CONVERTERS: Registry[Converter] = Registry("torch converter of complex tensors")

# Ops that only assert or annotate; they compute nothing the graph needs.
_IGNORED = {
    "aten._assert_tensor_metadata",
    "aten._assert_scalar",
    "aten._assert_async",
    "aten.sym_constrain_range_for_size",
    "aten.sym_constrain_range",
    "aten._functional_sym_constrain_range",
    "aten._functional_sym_constrain_range_for_size",
    "aten._functional_assert_async",
    "aten._functional_assert_scalar",
}

REGISTER_HINT = (
    "To add a mapping, register a converter before tracing:\n"
    "    @graphopt.frontends.torch.register_torch_op('{op}')\n"
    "    def convert(ctx, node):\n"
    "        x = ctx.value(node.args[0])\n"
    "        return ctx.emit('<canonical op>', [x], {{...}})\n"
    "(see docs/ir.md for the canonical ops; graphopt.define_op adds a new one, see docs/custom_ops.md)."
)


def register_torch_op(*targets: str, replace: bool = False) -> Callable[[Converter], Converter]:
    """Register `fn(ctx, fx_node)` as the converter for the named torch ops.

    A target is an overload ("aten.conv2d.default") or a packet ("aten.conv2d",
    covering every overload without a converter of its own). A second
    converter for the same target raises `GraphoptError` unless `replace=True`.
    """
    return CONVERTERS.decorator(*targets, replace=replace)


def op_name(target: Any) -> str:
    """The name graphopt uses for an fx call target: 'aten.add.Tensor', 'operator.getitem', ..."""
    if isinstance(target, torch._ops.OpOverload):
        return str(target)
    if isinstance(target, torch._ops.OpOverloadPacket):
        return str(target)
    module = getattr(target, "__module__", None) or ""
    name = getattr(target, "__name__", repr(target))
    if module in ("_operator", "operator"):
        module = "operator"
    return f"{module}.{name}" if module else name


def _packet(name: str) -> str:
    """'ns.op.overload' -> 'ns.op' (aten or a custom namespace such as a torch.library op's)."""
    return name.rsplit(".", 1)[0] if name.count(".") >= 2 and not name.startswith("torch.") else name


def find_converter(name: str) -> Converter | None:
    return CONVERTERS.get(name) or CONVERTERS.get(_packet(name))


def _reads_complex(ctx: "ImportContext", fx: torch.fx.Node) -> bool:
    args = list(fx.args) + list(fx.kwargs.values())
    flat = [a for arg in args for a in (arg if isinstance(arg, (list, tuple)) else [arg])]
    return any(isinstance(ctx._values.get(a), ComplexValue) for a in flat if isinstance(a, torch.fx.Node))


_FRAME = re.compile(r'File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<func>[^\n]+)\n(?P<code>[^\n]*)')
_INTERNAL_PATHS = ("/torch/", "/graphopt/frontends/", "<eval_with_key>")  # the last: fx's generated code


def source_location(node: torch.fx.Node) -> SourceLocation:
    """The user's module path and innermost file:line for an exported fx node."""
    module = ""
    stack = node.meta.get("nn_module_stack")
    if stack:
        path = list(stack.values())[-1][0]
        module = _clean_module_path(path)
    trace = node.meta.get("stack_trace") or ""
    frames = [m for m in _FRAME.finditer(trace) if not any(p in m.group("file") for p in _INTERNAL_PATHS)]
    if not frames:
        return SourceLocation(module=module)
    last = frames[-1]
    return SourceLocation(module=module, file=last.group("file"), line=int(last.group("line")), code=last.group("code").strip())


def _clean_module_path(path: str) -> str:
    path = re.sub(r"^L\['self'\]\.?", "", path)
    path = re.sub(r"\[(\d+)\]", r".\1", path)
    path = re.sub(r"\['([^']+)'\]", r".\1", path)
    path = re.sub(r"_modules\.|\.?_modules\[", "", path)
    return path.strip(".")


class ComplexValue:
    """A complex tensor while importing: the IR has no complex dtype, so its real and imaginary parts.

    `make(part)` emits the Value of "real" or "imag" (None: that part is zero) on first use, so a
    `.real` emits only what the real part needs. Only converters that know complex inputs (fft,
    real, imag, view_as_real) read it; any other op on it stops the import with the source line.
    """

    def __init__(self, fx: torch.fx.Node, make: Callable[[str], "Value | None"]) -> None:
        self.fx = fx
        self._make = make
        self._parts: dict[str, Value | None] = {}

    def part(self, ctx: "ImportContext", which: str) -> "Value | None":
        if which not in self._parts:
            current, ctx.current = ctx.current, self.fx  # its nodes carry the complex op's source line
            try:
                self._parts[which] = self._make(which)
            finally:
                ctx.current = current
        return self._parts[which]


class RaggedPiece:
    """Piece `index` of rows of `x` split by sizes computed at run time (`offsets`: their running sums).

    JetMoE runs its experts as `x.split(expert_size.tolist())`, one linear per piece, `cat`: the pieces
    never reach the graph; the linear converter records each piece's weight (`weight`, [out, in]) and
    the cat of all pieces, in order, becomes one `grouped_mm`.
    """

    def __init__(self, x: Value, offsets: Value, index: int, count: int, weight: Value | None = None) -> None:
        self.x, self.offsets, self.index, self.count, self.weight = x, offsets, index, count, weight


class ImportContext:
    """What a converter sees: fx arguments as graph Values, and a way to emit canonical nodes."""

    def __init__(self, graph: Graph, rename: dict) -> None:
        self.graph = graph
        self._values: dict[torch.fx.Node, Any] = {}
        self._rename = rename
        self._consts: dict[tuple, Value] = {}
        self.current: torch.fx.Node | None = None

    # -- reading arguments
    def value(self, arg: Any) -> Value:
        """The Value of a tensor argument (an fx node), or a constant for a Python scalar."""
        if isinstance(arg, torch.fx.Node):
            found = self._values.get(arg)
            if isinstance(found, Value):
                return found
            if isinstance(found, RaggedPiece):
                raise GraphoptError(
                    f"{self._where()} reads %{arg.name}, rows split by sizes read from tensor values (from "
                    f"{source_location(arg)}); only one linear per piece, concatenated back in order, is supported")
            if isinstance(found, ComplexValue):
                raise GraphoptError(
                    f"{self._where()} reads the complex tensor %{arg.name} ({op_name(found.fx.target)} from "
                    f"{source_location(found.fx)}); graphopt's IR has no complex dtype: only .real, .imag or "
                    "view_as_real of a Fourier transform can be imported")
            raise GraphoptError(f"argument %{arg.name} of {self._where()} is not a tensor the importer knows")
        if isinstance(arg, (bool, int, float)):
            return self.scalar(arg)
        raise GraphoptError(f"{self._where()}: expected a tensor argument, got {type(arg).__name__}")

    def maybe_value(self, arg: Any) -> Value | None:
        return None if arg is None else self.value(arg)

    def scalar(self, number: bool | int | float, dtype: torch.dtype | None = None) -> Value:
        """A 0-d constant; like a Python scalar, it does not widen a tensor's dtype."""
        if dtype is None:
            dtype = torch.bool if isinstance(number, bool) else torch.int64 if isinstance(number, int) else torch.float32
        key = (type(number), number, dtype)
        if key not in self._consts:
            self._consts[key] = self.graph.add_const(torch.tensor(number, dtype=dtype), name="const")
        return self._consts[key]

    def dim(self, arg: Any) -> D.Dim:
        """A shape argument as a Dim: an int, or a symbolic expression over the dynamic axes."""
        if isinstance(arg, torch.fx.Node):
            arg = arg.meta.get("val")
        if isinstance(arg, torch.SymInt):
            return self.rename(arg.node.expr)
        return D.canon(arg)

    def dims(self, args: Sequence[Any]) -> list[D.Dim]:
        return [self.dim(a) for a in args]

    def rename(self, expr):
        expr = D.canon(expr)
        return expr if isinstance(expr, int) else D.canon(expr.xreplace(self._rename))

    def out_shape(self, node: torch.fx.Node | None = None, index: int | None = None) -> tuple:
        val = (node or self.current).meta["val"]
        if index is not None:
            val = val[index]
        return self.shape_of(val)

    def shape_of(self, val: torch.Tensor) -> tuple:
        """A traced (fake) tensor's shape as Dims, symbols renamed to the graph's axis names."""
        return tuple(self.rename(d.node.expr) if isinstance(d, torch.SymInt) else int(d) for d in val.shape)

    def out_dtype(self, node: torch.fx.Node | None = None) -> torch.dtype:
        val = (node or self.current).meta["val"]
        return val.dtype if isinstance(val, torch.Tensor) else val[0].dtype

    # -- emitting
    def emit(self, op: str, inputs: Sequence[Value | None], attrs: dict[str, Any] | None = None) -> Node:
        """Append a canonical node carrying the current fx node's name and source location."""
        fx = self.current
        source = source_location(fx) if fx is not None else None
        node = self.graph.create_node(op, inputs, attrs, name=_node_name(op, inputs, source))
        if fx is not None:
            node.meta["source"] = source
            node.meta["torch_op"] = op_name(fx.target)
        return node

    def emit1(self, op: str, inputs: Sequence[Value | None], attrs: dict[str, Any] | None = None) -> Value:
        return self.emit(op, inputs, attrs).output

    def _where(self) -> str:
        fx = self.current
        return f"node '{fx.name}' ({op_name(fx.target)})" if fx is not None else "the importer"


def _node_name(op: str, inputs: Sequence[Value | None], source: SourceLocation | None) -> str:
    """Name a layer's main node after its module ('layer1.0.conv1'), anything else after its op."""
    module = source.module if source is not None else ""
    if module and any(v is not None and v.is_weight and v.name.startswith(module + ".") for v in inputs):
        return module
    return op


def _default_dynamic(args: Sequence[Any]) -> dict[int, dict[int, str]]:
    return {i: {0: "batch"} for i, a in enumerate(args) if isinstance(a, torch.Tensor) and a.dim() > 0}


def export_program(model: torch.nn.Module, args: tuple, kwargs: dict, dynamic,
                   rejected: Failure | None = None, asked=None) -> torch.export.ExportedProgram:
    """torch.export the model, functionalised but not decomposed; raise a clear error if export fails.

    The `dynamic` axes stay symbolic even where the example has size 1 (`rejected`: why a program
    traced so was not the model at size 1; those axes are then traced as given). Each axis that
    still comes out static is named, with the source line that forced it, in a `StaticAxisWarning`
    (`asked`: the (input, axis) meant to be dynamic; default all of `dynamic`).
    """
    try:
        if dynamic:
            ep = export_dynamic(model, args, kwargs, dynamic, asked=asked, rejected=rejected)
        else:
            ep = export_static(model, args, kwargs)
    except GraphoptError as exc:
        explained = _data_dependent_branch(model, exc)
        if explained is None:
            raise
        raise explained from exc
    # Functionalising re-traces the whole program (about 2/3 of the time on a 7B-size
    # decoder, 3/4 on ResNet-50), so do it only when the program has in-place ops that
    # need it: writes to fresh activations (ReLU(inplace=True), `out += identity`) are
    # renamed into their functional twins instead (torch_inplace.py).
    if _has_mutations(ep):
        if rewrite_local_inplace(ep.graph):
            ep.graph_module.recompile()
        else:
            ep = ep.run_decompositions({})
    return ep


_GUARD = re.compile(r"Could not guard on data-dependent expression (?P<expr>[^\n]+?)(?: \(unhinted|\.?\n|$)")
_RAISED_AT = re.compile(r'The following call raised this error:\s*\n\s*File "(?P<file>[^"]+)", line (?P<line>\d+), '
                        r'in (?P<func>[^\n]+)\n\s*(?P<code>[^\n]*)')


def _data_dependent_branch(model: torch.nn.Module, exc: GraphoptError) -> GraphoptError | None:
    """torch.export's data-dependent guard error, said in its first line: the model's source line that
    branches on a tensor's values, that this is torch.export's limit, and what the user can do."""
    text = str(exc.__cause__ or exc)
    guard = _GUARD.search(text)
    if guard is None:
        return None
    at = _RAISED_AT.search(text)
    line = failure_of(exc.__cause__).line if exc.__cause__ is not None else None  # the model's frame, if any
    where = (f"{at.group('file')}:{at.group('line')} in {at.group('func').strip()}: `{at.group('code').strip()}`"
             if at else line or "a line of the model")
    return GraphoptError(
        f"torch.export could not trace {type(model).__name__}: {where} branches on the values of a tensor "
        f"(data-dependent guard {guard.group('expr').strip()}). This is a limit of torch.export, not of "
        "graphopt: an exported program cannot take a Python branch that depends on tensor data. Rewrite that "
        "line without the branch (torch.where, or torch.cond for two code paths), or call the model with inputs "
        "that skip it (often an explicit argument, such as a mask, that the branch would compute).\n\n"
        f"torch.export said: {text}")


def _has_mutations(ep: torch.export.ExportedProgram) -> bool:
    for node in ep.graph.nodes:
        schema = getattr(node.target, "_schema", None)
        if node.op == "call_function" and schema is not None and schema.is_mutable:
            return True
    return False


def trace(
    model: torch.nn.Module,
    example_inputs: Sequence[Any] | torch.Tensor,
    example_kwargs: Mapping[str, Any] | None = None,
    *,
    dynamic: str | Mapping[int, Mapping[int, str]] | None = "batch",
    name: str | None = None,
) -> Graph:
    """Trace `model` on example inputs into a graphopt Graph (inference semantics: eval mode).

    `dynamic`: "batch" (default) keeps axis 0 of every tensor input symbolic;
    a mapping {input_index: {axis: symbol_name}} chooses the axes (inputs are
    numbered over positional then keyword inputs); None traces static shapes.
    An example of size 1 on such an axis (batch 1) keeps it dynamic too. With "batch",
    the batch is the first tensor input's axis 0, and every tensor input with that size
    there is batched (with batch 1, every input whose axis 0 is 1: name the batched
    inputs with a mapping when one is not). A batch axis or mapped axis that torch.export
    still fixes gives a `StaticAxisWarning` naming it and the source line that fixed it.
    `graph.meta["example_sizes"]` keeps each symbol's size in the example (the
    sizes the TVM back-end compiles for unless told otherwise).
    """
    import graphopt.frontends.torch_ops  # noqa: F401 - registers the aten converters

    args = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    kwargs = dict(example_kwargs or {})
    flat_inputs = list(args) + list(kwargs.values())
    asked = None  # with a mapping, every axis it names
    if dynamic == "batch":
        dynamic_map: Mapping[int, Mapping[int, str]] | None = _default_dynamic(flat_inputs)
        asked = batch_axes(flat_inputs)
    elif dynamic is None or isinstance(dynamic, Mapping):
        dynamic_map = dynamic
    else:
        raise GraphoptError(f"dynamic must be 'batch', None or a mapping, not {dynamic!r}")

    was_training = model.training
    model.eval()
    try:
        graph = _trace_eval(model, args, kwargs, dynamic_map, asked, name or type(model).__name__)
    finally:
        model.train(was_training)
    graph.meta["example_sizes"] = _example_sizes(graph, flat_inputs)
    return graph


def _trace_eval(model: torch.nn.Module, args: tuple, kwargs: dict, dynamic, asked, name: str) -> Graph:
    """Export and import; a size-1 axis traced at size 2 must give a graph that computes the model at size 1."""
    graph = import_program(export_program(model, args, kwargs, dynamic, asked=asked), name=name, dynamic=dynamic or {})
    failure = differs_at_example(graph, model, args, kwargs, dynamic, asked) if dynamic else None
    if failure is not None:
        graph = import_program(export_program(model, args, kwargs, dynamic, rejected=failure, asked=asked),
                               name=name, dynamic=dynamic)
    return graph


def _example_sizes(graph: Graph, flat_inputs: Sequence[Any]) -> dict[str, int]:
    """Each symbol's size in the user's example (not the widened one torch.export saw)."""
    tensors = [a for a in flat_inputs if isinstance(a, torch.Tensor)]
    if len(tensors) != len(graph.inputs):  # inputs nested in lists: the graph's sizes are all there is
        return {}
    return {name: int(tensors[index].shape[axis]) for name, (index, axis) in graph.symbols().items()}


def import_program(ep: torch.export.ExportedProgram, *, name: str = "graph", dynamic: Mapping[int, Mapping[int, str]] | None = None) -> Graph:
    """Import an ExportedProgram (already functionalised) into a Graph."""
    import graphopt.frontends.torch_ops  # noqa: F401

    graph = Graph(name)
    sig = ep.graph_signature
    kinds: dict[str, tuple[str, str]] = {}
    for spec in sig.input_specs:
        kind = spec.kind.name
        if kind == "PARAMETER":
            kinds[spec.arg.name] = ("param", spec.target)
        elif kind == "BUFFER":
            kinds[spec.arg.name] = ("buffer", spec.target)
        elif kind == "CONSTANT_TENSOR":
            kinds[spec.arg.name] = ("const", spec.target)
        elif kind == "USER_INPUT":
            kinds[spec.arg.name] = ("input", spec.arg.name)
        else:
            raise GraphoptError(f"unsupported exported input kind {kind} for '{spec.arg.name}'")

    user_placeholders = [n for n in ep.graph.nodes if n.op == "placeholder" and kinds.get(n.name, ("",))[0] == "input"]
    rename = _symbol_names(user_placeholders, dynamic or {})
    ctx = ImportContext(graph, rename)

    for fx in ep.graph.nodes:
        ctx.current = fx
        if fx.op == "placeholder":
            kind, target = kinds.get(fx.name, ("input", fx.name))
            if kind == "input":
                val = fx.meta["val"]
                if not isinstance(val, torch.Tensor):
                    ctx._values[fx] = val  # a non-tensor input was specialised by export
                    continue
                ctx._values[fx] = graph.add_input(fx.name, ctx.out_shape(fx), val.dtype)
            else:
                tensor = ep.state_dict.get(target) if kind != "const" else None
                if tensor is None:
                    tensor = ep.constants.get(target)
                if tensor is None:
                    raise GraphoptError(f"exported program has no tensor for {kind} '{target}'")
                ctx._values[fx] = graph.add_weight(target, tensor.detach(), kind=kind)
        elif fx.op == "call_function":
            _import_call(ctx, fx)
        elif fx.op == "get_attr":
            ctx._values[fx] = getattr(ep.graph_module, fx.target)  # a sub-graph of a higher-order op
        elif fx.op == "output":
            outs = fx.args[0]
            outs = outs if isinstance(outs, (list, tuple)) else (outs,)
            user_outs = [o for o, s in zip(outs, sig.output_specs) if s.kind.name == "USER_OUTPUT"]
            graph.outputs = [ctx.value(o) for o in user_outs]
        else:
            raise GraphoptError(f"unexpected fx node kind '{fx.op}' ({fx.name}) in the exported program")
    ctx.current = None
    graph.meta["out_spec"] = ep.call_spec.out_spec
    graph.meta["input_names"] = [v.name for v in graph.inputs]
    _check_sizes_come_from_inputs(graph)
    return graph


def _check_sizes_come_from_inputs(graph: Graph) -> None:
    """Every size in the graph is a number or an expression of the inputs' dynamic axes.

    torch.export names a size computed from tensor values (`x[: int(t.item())]`, Reformer's axial
    position columns) with an unbacked symbol (u0): a graph holding one could not run, export or
    compile, so the trace stops here, at the first node that makes one, instead of later, anywhere.
    """
    bound = set(graph.symbols())
    for node in graph.nodes:
        for out in node.outputs:
            loose = sorted({str(s) for d in out.shape if not isinstance(d, int) for s in d.free_symbols} - bound)
            if loose:
                raise GraphoptError(
                    f"{node.where()} makes a tensor of size {list(out.shape)}, where {', '.join(loose)} is computed "
                    "from tensor values, not from the inputs' shapes: graphopt's graphs size every tensor from "
                    "their inputs' shapes. Compute that size from shapes or constants (for example from "
                    "x.shape[1] instead of a tensor's value), or pass it in as a constant.")


def _symbol_names(placeholders, dynamic: Mapping[int, Mapping[int, str]]) -> dict:
    """Map torch's symbols (s0, s77, ...) to names that say which axis they are."""
    rename: dict = {}
    used: set[str] = set()
    for i, fx in enumerate(placeholders):
        val = fx.meta.get("val")
        if not isinstance(val, torch.Tensor):
            continue
        for axis, d in enumerate(val.shape):
            if not isinstance(d, torch.SymInt):
                continue
            expr = d.node.expr
            if not isinstance(expr, sympy.Symbol) or expr in rename:
                continue
            base = dynamic.get(i, {}).get(axis) or ("batch" if axis == 0 else f"{fx.name}_{axis}")
            name, k = base, 1
            while name in used:
                name, k = f"{base}{k}", k + 1
            used.add(name)
            rename[expr] = D.symbol(name)
    return rename


def _is_tensor_val(val: Any) -> bool:
    if isinstance(val, torch.Tensor):
        return True
    return isinstance(val, (list, tuple)) and len(val) > 0 and all(isinstance(v, torch.Tensor) for v in val)


def _import_call(ctx: ImportContext, fx: torch.fx.Node) -> None:
    name = op_name(fx.target)
    if name == "operator.getitem":
        source = ctx._values.get(fx.args[0])
        if isinstance(source, (list, tuple)):
            ctx._values[fx] = source[fx.args[1]]
            return
    if _packet(name) in _IGNORED or name in _IGNORED:
        return
    if name in _INLINED_HIGHER_ORDER:
        ctx._values[fx] = _inline_subgraph(ctx, fx)
        return
    val = fx.meta.get("val")
    if not _is_tensor_val(val):
        return  # shape arithmetic on SymInts: read through meta["val"] where used
    converter = find_converter(name)
    if _reads_complex(ctx, fx):
        converter = COMPLEX_CONVERTERS.get(name) or COMPLEX_CONVERTERS.get(_packet(name)) or converter
    if converter is None:
        raise UnsupportedOpError(name, fx.name, source=str(source_location(fx)) or None,
                                 hint=REGISTER_HINT.format(op=name))
    try:
        result = converter(ctx, fx)
    except GraphoptError as exc:  # a converter's refusal: say where in the model, if it did not
        source = source_location(fx)
        if source.file and source.file not in str(exc):
            exc.args = (f"{exc} (at {source})", *exc.args[1:])
        raise
    if result is None:
        raise GraphoptError(f"converter for '{name}' returned nothing for node '{fx.name}'")
    ctx._values[fx] = result
    if isinstance(result, ComplexValue) or isinstance(result, list) and any(isinstance(r, RaggedPiece) for r in result):
        return
    if isinstance(result, RaggedPiece):
        return
    _check_types(ctx, fx, result)


# Higher-order ops that only change autograd/autocast state around a sub-graph: at
# inference the sub-graph's computation is all that matters, so it is inlined.
_INLINED_HIGHER_ORDER = {"torch.ops.higher_order.wrap_with_set_grad_enabled",
                         "torch.ops.higher_order.wrap_with_autocast"}


def _inline_subgraph(ctx: ImportContext, fx: torch.fx.Node) -> Any:
    first_arg = 1 if "set_grad_enabled" in op_name(fx.target) else 4
    submodule = ctx._values[fx.args[first_arg]]
    args = fx.args[first_arg + 1:]
    placeholders = [n for n in submodule.graph.nodes if n.op == "placeholder"]
    for placeholder, arg in zip(placeholders, args):
        ctx._values[placeholder] = ctx._values.get(arg, arg) if isinstance(arg, torch.fx.Node) else arg
    result: Any = None
    for inner in submodule.graph.nodes:
        if inner.op == "call_function":
            ctx.current = inner
            _import_call(ctx, inner)
        elif inner.op == "get_attr":
            ctx._values[inner] = getattr(submodule, inner.target)
        elif inner.op == "output":
            outs = inner.args[0]
            result = [ctx._values.get(o) for o in outs] if isinstance(outs, (list, tuple)) else ctx._values.get(outs)
    ctx.current = fx
    return result


def _data_dependent(dim: D.Dim) -> bool:
    """Whether a dim uses torch's unbacked symbols (u0, u1, ...: sizes read from tensor values)."""
    return not isinstance(dim, int) and any(re.fullmatch(r"u\d+", str(s)) for s in D.free_symbols(dim))


def _check_types(ctx: ImportContext, fx: torch.fx.Node, result) -> None:
    """Catch converter mistakes at import: the graph's types must equal what torch computed."""
    vals = fx.meta["val"]
    pairs = list(zip(result, vals)) if isinstance(result, (list, tuple)) else [(result, vals)]
    for i, (value, val) in enumerate(pairs):
        if value is None:  # an output the canonical op does not produce (e.g. batch-norm statistics)
            continue
        expected = ctx.shape_of(val)
        # a dim torch only knows from tensor values (u0 + u1 + ...: the rows of ragged pieces put back together)
        expected = tuple(have if _data_dependent(want) else want for have, want in zip(value.shape, expected))
        if not D.shapes_equal(value.shape, expected) or value.dtype != val.dtype:
            raise GraphoptError(
                f"importing node '{fx.name}' ({op_name(fx.target)}) gave %{value.name}: {value.type_str()}, "
                f"but torch computed {val.dtype}{list(expected)} (output {i}); this is a graphopt converter bug"
            )
