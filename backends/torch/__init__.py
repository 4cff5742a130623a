"""Torch back-end: lower a Graph to a runnable, trainable `torch.fx.GraphModule`.

Why generate an fx module rather than interpret the graph: the generated
forward is plain Python with no per-node dispatch, it can be printed
(`module.code`), `torch.compile`d or exported again, and parameters live as
`nn.Parameter`s under their original state_dict names, so a pruned model can be
fine-tuned and its checkpoint read by name.
"""

from __future__ import annotations

import operator
from typing import Any, Callable

import sympy
import torch
import torch.fx
from torch.utils import _pytree as pytree

from graphopt.errors import GraphoptError
from graphopt.ir import dims as D
from graphopt.ir.graph import Graph, Node, Value
from graphopt.ir.interpreter import output_spec, torch_kernel
from graphopt.timing import register_graph_runner
from graphopt.ir.ops import CREATION, TRAINING_AWARE, has_trait
from graphopt.backends.torch.fake_quant import dequantized, fake_quantize, fused_pair, requantized, shadowed_weights
from graphopt.backends.torch.kernels import KERNELS, register_kernel

__all__ = ["to_module", "load_weights", "register_kernel", "KERNELS"]

_RESERVED = {"graph", "code", "forward", "training", "meta", "_code", "_graph"}


def eval_dim(text: str, names: tuple[str, ...], *values: int) -> int:
    """Runtime value of a symbolic dim (called from generated code)."""
    return D.evaluate_text(text, dict(zip(names, values)))


def unflatten_outputs(flat: list, spec: Any) -> Any:
    """Rebuild the model's original output structure (tuple, dict, dataclass) from flat tensors."""
    return pytree.tree_unflatten(flat, spec)


def _attr_path(name: str) -> list[str]:
    parts = [p if p.isidentifier() or p.isdigit() else "".join(c if c.isalnum() else "_" for c in p) for p in name.split(".")]
    if parts[0] in _RESERVED:
        parts[0] = f"{parts[0]}_"
    return parts


def _install(module: torch.nn.Module, name: str, tensor: torch.Tensor, kind: str) -> str:
    """Register `tensor` under the dotted path `name`, creating container modules as needed."""
    parts = _attr_path(name)
    owner = module
    for part in parts[:-1]:
        child = owner._modules.get(part)
        if child is None:
            if hasattr(owner, part):  # the path is taken by a tensor: fall back to a flat name
                return _install(module, "_".join(parts), tensor, kind)
            child = torch.nn.Module()
            owner.add_module(part, child)
        owner = child
    leaf = parts[-1]
    if leaf in owner._modules or leaf in owner._parameters or leaf in owner._buffers:
        return _install(module, "_".join(parts) + "_", tensor, kind)
    if kind == "param":
        owner.register_parameter(leaf, torch.nn.Parameter(tensor, requires_grad=tensor.is_floating_point()))
    else:
        owner.register_buffer(leaf, tensor, persistent=(kind == "buffer"))
    return ".".join(parts[:-1] + [leaf])


def to_module(graph: Graph, *, copy_weights: bool = True) -> torch.fx.GraphModule:
    """Lower `graph` to a `torch.fx.GraphModule` computing the same function.

    `copy_weights=True` (default) gives the module its own tensors, so training
    it never writes into the graph or the model it was traced from.
    """
    root = torch.nn.Module()
    paths: dict[str, str] = {}
    shadows = shadowed_weights(graph)  # int8 weights installed as float, fake-quantized where read
    for name, value in graph.weights.items():
        tensor = value.data.detach().clone() if copy_weights and value.data.device.type != "meta" else value.data
        if name in shadows and value.data.device.type != "meta":
            tensor = dequantized(shadows[name])
        paths[name] = _install(root, name, tensor, value.kind)
    lowering = _Lowering(graph, paths, set(shadows))
    for node in graph.nodes:
        lowering.emit(node)
    lowering.output(root)

    module = torch.fx.GraphModule(root, lowering.fx, class_name=_class_name(graph.name))
    for name, value in graph.weights.items():  # weights no node reads still keep their state_dict entry
        path = paths[name]
        try:
            module.get_submodule(path.rpartition(".")[0]) if "." in path else module
            _ = module.get_parameter(path) if value.kind == "param" else module.get_buffer(path)
        except AttributeError:
            _install(module, path, root.get_parameter(path) if value.kind == "param" else root.get_buffer(path), value.kind)
    module.graphopt_input_names = [v.name for v in graph.inputs]
    module.graphopt_weight_paths = paths  # graph weight name -> attribute path in the module
    return module.eval()  # the graph has inference semantics; call .train() to fine-tune


class _Lowering:
    """Builds the fx graph of `to_module`: one call of the op's torch kernel per node."""

    def __init__(self, graph: Graph, paths: dict[str, str], shadows: set[str] = frozenset()) -> None:
        self.graph = graph
        self.paths = paths  # graph weight name -> attribute path in the module
        self.shadows = shadows  # int8 weights the module holds as float (backends/torch/fake_quant.py)
        self.fx = torch.fx.Graph()
        self.env: dict[int, torch.fx.Node] = {}
        for value in graph.inputs:
            name = value.name if value.name.isidentifier() else f"input_{len(self.env)}"
            self.env[id(value)] = self.fx.placeholder(name)
        self.sym_nodes: dict[str, torch.fx.Node] = {
            sym: self.fx.call_method("size", (self.env[id(graph.inputs[index])], axis))
            for sym, (index, axis) in graph.symbols().items()
        }
        self.cache: dict[str, torch.fx.Node] = {}  # symbolic dim text -> the node computing it
        self.training: torch.fx.Node | None = None
        self.device: torch.fx.Node | None = None

    def resolve(self, obj: Any) -> Any:
        """An attribute with its symbolic dims replaced by nodes computing them from the input sizes."""
        if isinstance(obj, sympy.Basic):
            names = tuple(sorted(str(s) for s in obj.free_symbols))
            missing = [n for n in names if n not in self.sym_nodes]
            if missing:
                raise GraphoptError(f"symbolic dim {obj} uses {missing}, which no graph input's shape binds")
            if obj.is_Symbol:
                return self.sym_nodes[str(obj)]
            key = str(obj)
            if key not in self.cache:
                self.cache[key] = self.fx.call_function(eval_dim, (key, names, *(self.sym_nodes[n] for n in names)))
            return self.cache[key]
        if isinstance(obj, (list, tuple)):
            return type(obj)(self.resolve(o) for o in obj)
        return obj

    def read(self, value: Value | None) -> Any:
        if value is None:
            return None
        if id(value) not in self.env:
            if value.is_weight:
                self.env[id(value)] = self.fx.get_attr(self.paths[value.name])
            else:
                raise GraphoptError(f"%{value.name} is read before it is computed")
        return self.env[id(value)]

    def emit(self, node: Node) -> None:
        pair = fused_pair(node)
        shadow = node.op == "dequantize_linear" and node.inputs[0].name in self.shadows and node.inputs[0].is_weight
        if pair is not None or shadow:  # fake-quant with a straight-through gradient (backends/torch/fake_quant.py)
            source = node.inputs[0] if shadow else pair.inputs[0]
            args = (self.read(source), self.read(node.inputs[1]), self.read(node.inputs[2]))
            kwargs = {"axis": node.attrs.get("axis", 1), "narrow": shadow}
            self.env[id(node.outputs[0])] = self.fx.call_function(fake_quantize, args, kwargs)
            return
        fn = torch_kernel(node)
        kwargs = {k: self.resolve(v) for k, v in node.attrs.items()}
        if has_trait(node.op, TRAINING_AWARE):
            self.training = self.training or self.fx.get_attr("training")
            kwargs["training"] = self.training
        if has_trait(node.op, CREATION) and self.graph.inputs:
            self.device = self.device or self.fx.call_function(getattr, (self.env[id(self.graph.inputs[0])], "device"))
            kwargs["device"] = self.device
        call = self.fx.call_function(fn, tuple(self.read(v) for v in node.inputs), kwargs)
        call.name = node.name.replace(".", "_")
        if len(node.outputs) == 1:
            self.env[id(node.outputs[0])] = call
        else:
            for i, out in enumerate(node.outputs):
                self.env[id(out)] = self.fx.call_function(operator.getitem, (call, i))

    def output(self, root: torch.nn.Module) -> None:
        """The output node, in the traced model's output structure when the graph has one."""
        outs = [self.read(v) for v in self.graph.outputs]
        spec = output_spec(self.graph, len(outs))
        if spec is not None:
            root._graphopt_out_spec = spec
            self.fx.output(self.fx.call_function(unflatten_outputs, (outs, self.fx.get_attr("_graphopt_out_spec"))))
        else:
            self.fx.output(outs[0] if len(outs) == 1 else tuple(outs))


def load_weights(graph: Graph, module: torch.nn.Module) -> Graph:
    """Copy `module`'s parameters and buffers into `graph`'s weights (e.g. after fine-tuning it).

    `module` must come from `to_module(graph)`: weights are matched by name and
    must keep their shapes.
    """
    paths = getattr(module, "graphopt_weight_paths", None)
    if paths is None:
        raise GraphoptError("load_weights needs a module made by graphopt.backends.torch.to_module")
    shadows = shadowed_weights(graph)
    for name, path in paths.items():
        value = graph.weights.get(name)
        if value is None:
            raise GraphoptError(f"the module has weight '{name}', which graph '{graph.name}' lacks")
        tensor = module.get_parameter(path) if value.kind == "param" else module.get_buffer(path)
        if name in shadows and tensor.is_floating_point():  # a fine-tuned int8 weight: round it back
            scale = shadows[name].inputs[1]
            trained = module.get_parameter(paths[scale.name]) if scale.kind == "param" else scale.data
            tensor = requantized(shadows[name], tensor, trained)
        if tuple(tensor.shape) != tuple(value.data.shape):
            raise GraphoptError(f"weight '{name}' has shape {list(tensor.shape)} in the module but "
                                f"{list(value.data.shape)} in the graph")
        value.set_data(tensor.detach().clone())
    return graph


def _class_name(name: str) -> str:
    cleaned = "".join(c if c.isalnum() else "_" for c in name)
    return cleaned if cleaned and cleaned[0].isalpha() else f"Graph_{cleaned}"


def eager_runner(graph: Graph, inputs: tuple, threads: int) -> Callable[[], Any]:
    """A call that runs `graph` once on `inputs` as a torch eager module with `threads` intra-op threads
    (the latency runner "torch" of `graphopt.timing`; the process's own thread count is restored after)."""
    module = to_module(graph).eval()

    def call() -> Any:
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            with torch.inference_mode():
                return module(*inputs)
        finally:
            torch.set_num_threads(before)

    return call


register_graph_runner("torch", eager_runner)
