"""A Graph on disk: its structure as JSON (`graph.json`), its weights as safetensors (`weights.safetensors`).

Nothing in either file is ever executed: the JSON holds only tagged data, symbolic dims are trees over an
allow-list of sympy (and torch's sympy) functions, and safetensors holds raw tensors. `docs/ir.md` ("On disk")
describes the format.

- `graph_to_dict(graph)` -> (JSON-safe dict, {tensor key: tensor}); `graph_from_dict(doc, tensors)` -> Graph.
- `save_graph(graph, directory)` writes the two files into an existing directory (each to a temporary
  name, then `os.replace`); `load_graph(directory)` reads them back.

Faithful means: `load_graph(...).format(source=True)` equals the saved graph's, every name, dtype, shape
(symbols with their assumptions), attr, weight kind and tensor comes back, as do the value and node meta
graphopt reads (`bits`, `source`, `torch_op`, `folded`, ...), the graph's meta (`out_spec`, the output
pytree spec, in a JSON form of our own; `input_names`; `example_sizes`) and the names the graph has used.
A value outside the supported kinds is refused with a `GraphoptError` naming where it is, never pickled.
Pruning and drop-layers recipes (`graph.meta["prune_recipes"]`, `["drop_recipes"]`) are objects of the
passes layer, which this module may not import: they are saved as their own JSON (`to_json()`) and come
back through a decoder registered with `register_meta_decoder`, else as JSON text in
`graph.meta["undecoded_meta"][key]` for a higher layer to decode.
"""

from __future__ import annotations

import collections
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable, Mapping

import sympy
import torch
import torch.utils._pytree as pytree

from graphopt.errors import GraphoptError
from graphopt.ir import dims as D
from graphopt.ir.graph import VALUE_KINDS, Graph, Node, SourceLocation, Value, dtype_from_str, dtype_str

FORMAT = "graphopt-graph"
FORMAT_VERSION = 1
GRAPH_FILE = "graph.json"
WEIGHTS_FILE = "weights.safetensors"

# graph.meta entries holding objects with `to_json()` (recipes), decoded by a registered decoder on load.
_RECIPE_KEYS = ("prune_recipes", "drop_recipes")
_META_DECODERS: dict[str, Callable[[str], Any]] = {}


def register_meta_decoder(key: str, decode: Callable[[str], Any]) -> None:
    """On load, turn each saved `graph.meta[key]` item (the JSON text its `to_json()` gave) back into an object.

    For the recipe keys (`prune_recipes`, `drop_recipes`): e.g. `register_meta_decoder("prune_recipes",
    PruneRecipe.from_json)`. Without a decoder the texts are kept in `graph.meta["undecoded_meta"][key]`.
    """
    _META_DECODERS[key] = decode


# ------------------------------------------------------------------------------------------- dims (sympy)
def _sympy_functions() -> dict[str, type]:
    """The sympy classes a dim expression may use, by the name the file gives them (no other name is read)."""
    table: dict[str, type] = {}
    for name in ("Add", "Mul", "Pow", "Rational", "floor", "ceiling", "Max", "Min", "Mod", "Abs"):
        table[f"sympy.{name}"] = getattr(sympy, name)
    try:
        import torch.utils._sympy.functions as tfun
    except ImportError:  # pragma: no cover - older torch
        return table
    for name in dir(tfun):
        cls = getattr(tfun, name)
        if isinstance(cls, type) and issubclass(cls, sympy.Basic) and cls.__module__ == tfun.__name__:
            table[f"torch.{name}"] = cls
    return table


_FUNCTIONS = _sympy_functions()
_FUNCTION_NAMES = {cls: name for name, cls in _FUNCTIONS.items()}


class _Symbols:
    """The symbols met while encoding (name -> assumptions), one per name."""

    def __init__(self) -> None:
        self.table: dict[str, dict[str, bool]] = {}

    def add(self, sym: sympy.Symbol, where: str) -> None:
        facts = {k: bool(v) for k, v in sorted(sym.assumptions0.items())}
        seen = self.table.setdefault(sym.name, facts)
        if seen != facts:
            raise GraphoptError(f"cannot save {where}: two symbols are named {sym.name!r} with different "
                                f"assumptions; rename one of them")


def _encode_expr(expr: sympy.Basic, symbols: _Symbols, where: str) -> Any:
    if isinstance(expr, sympy.Integer):
        return int(expr)
    if isinstance(expr, sympy.Symbol):
        symbols.add(expr, where)
        return {"s": expr.name}
    if isinstance(expr, sympy.Rational):
        return {"f": "sympy.Rational", "a": [int(expr.p), int(expr.q)]}
    name = _FUNCTION_NAMES.get(type(expr))
    if name is None:
        raise GraphoptError(f"cannot save {where}: the symbolic expression {expr} uses {type(expr).__name__}, "
                            f"which the graph format does not know (it stores only "
                            f"{', '.join(sorted(n.split('.', 1)[1] for n in _FUNCTIONS))})")
    return {"f": name, "a": [_encode_expr(a, symbols, where) for a in expr.args]}


def _decode_expr(data: Any, symbols: Mapping[str, sympy.Symbol], where: str) -> Any:
    if isinstance(data, int) and not isinstance(data, bool):
        return sympy.Integer(data)
    if isinstance(data, dict) and set(data) == {"s"}:
        sym = symbols.get(data["s"])
        if sym is None:
            raise _corrupt(where, f"symbol {data['s']!r} is not in the file's symbol table")
        return sym
    if isinstance(data, dict) and set(data) == {"f", "a"} and isinstance(data["a"], list):
        cls = _FUNCTIONS.get(data["f"])
        if cls is None:
            raise _corrupt(where, f"unknown dim function {data['f']!r}")
        args = [_decode_expr(a, symbols, where) for a in data["a"]]
        try:
            return cls(*args)
        except Exception as exc:  # noqa: BLE001 - sympy rejects bad arguments in many ways
            raise _corrupt(where, f"dim function {data['f']} on {args}: {exc}") from None
    raise _corrupt(where, f"not a dim expression: {data!r:.80}")


# ------------------------------------------------------------------------------------ tagged plain values
def _encode(value: Any, symbols: _Symbols, where: str) -> Any:
    """A JSON-safe form of an attr or meta value; a JSON object is always a tagged value (one key, '$...')."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return {"$float": repr(value)}  # 'inf', '-inf', 'nan': not JSON numbers
    if isinstance(value, list):
        return [_encode(v, symbols, where) for v in value]
    if isinstance(value, tuple):
        return {"$tuple": [_encode(v, symbols, where) for v in value]}
    if isinstance(value, torch.dtype):
        return {"$dtype": dtype_str(value)}
    if isinstance(value, sympy.Basic):
        if isinstance(value, sympy.Integer):
            return {"$dim": int(value)}
        return {"$dim": _encode_expr(value, symbols, where)}
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {"$dict": {k: _encode(v, symbols, where) for k, v in value.items()}}
    if isinstance(value, SourceLocation):
        return {"$source": [value.module, value.file, value.line, value.code]}
    raise GraphoptError(f"cannot save {where}: a {type(value).__module__}.{type(value).__qualname__} "
                        f"({value!r:.60}) is not one of the kinds the graph format stores (None, bool, int, float, "
                        f"str, list, tuple, dict with str keys, torch dtype, symbolic dim, SourceLocation); "
                        f"store it as one of those")


def _decode(data: Any, symbols: Mapping[str, sympy.Symbol], where: str) -> Any:
    if data is None or isinstance(data, (bool, int, float, str)):
        return data
    if isinstance(data, list):
        return [_decode(v, symbols, where) for v in data]
    if isinstance(data, dict) and len(data) == 1:
        (tag, body), = data.items()
        if tag == "$tuple" and isinstance(body, list):
            return tuple(_decode(v, symbols, where) for v in body)
        if tag == "$float" and body in ("inf", "-inf", "nan"):
            return float(body)
        if tag == "$dtype" and isinstance(body, str):
            return _dtype(body, where)
        if tag == "$dim":
            return D.canon(_decode_expr(body, symbols, where))
        if tag == "$dict" and isinstance(body, dict):
            return {k: _decode(v, symbols, where) for k, v in body.items()}
        if tag == "$source" and isinstance(body, list) and len(body) == 4:
            module, file, line, code = body
            return SourceLocation(str(module), str(file), int(line), str(code))
    raise _corrupt(where, f"unreadable value {data!r:.80}")


def _dtype(name: str, where: str) -> torch.dtype:
    try:
        dtype = dtype_from_str(name)
    except AttributeError:
        dtype = None
    if not isinstance(dtype, torch.dtype):
        raise _corrupt(where, f"unknown dtype {name!r}")
    return dtype


class _CorruptGraph(GraphoptError):
    """Raised inside decoding; `load_graph` adds the file name."""


def _corrupt(where: str, what: str) -> _CorruptGraph:
    return _CorruptGraph(f"{where}: {what}")


# --------------------------------------------------------------------------------- output pytree spec
_BUILTIN_SPECS = {tuple: "tuple", list: "list", dict: "dict", collections.OrderedDict: "OrderedDict"}


def _encode_spec(spec: Any, symbols: _Symbols, where: str) -> Any:
    """A TreeSpec as JSON: null for a leaf, else {type, context, children}; custom types by registered name."""
    if spec.is_leaf():
        return None
    children = [_encode_spec(c, symbols, where) for c in spec.children()]
    kind, context = spec.type, spec.context
    if kind in _BUILTIN_SPECS:
        return {"type": _BUILTIN_SPECS[kind], "context": _encode(context, symbols, where), "children": children}
    if kind is collections.namedtuple or (isinstance(context, type) and issubclass(context, tuple)):
        cls = context
        return {"type": "namedtuple", "context": {"$dict": {"name": cls.__name__, "qualname": _type_name(cls),
                                                            "fields": list(cls._fields)}}, "children": children}
    try:
        encoded = _encode(context, symbols, where)
    except GraphoptError:
        raise GraphoptError(f"cannot save {where}: the output structure uses {_type_name(kind)} with a "
                            f"context ({context!r:.60}) the format cannot store") from None
    return {"type": _type_name(kind), "context": encoded, "children": children}


def _type_name(cls: type) -> str:
    node = pytree.SUPPORTED_NODES.get(cls)
    name = getattr(node, "serialized_type_name", None) if node is not None else None
    if isinstance(name, str) and name != pytree.NO_SERIALIZED_TYPE_NAME_FOUND:
        return name
    return f"{cls.__module__}.{cls.__qualname__}"


def _decode_spec(data: Any, symbols: Mapping[str, sympy.Symbol], where: str, notes: list[str]) -> Any:
    if data is None:
        return pytree.treespec_leaf()
    if not isinstance(data, dict) or not isinstance(data.get("children"), list) or "type" not in data:
        raise _corrupt(where, f"not an output structure: {data!r:.80}")
    children = [_decode_spec(c, symbols, where, notes) for c in data["children"]]
    kind, context = data["type"], _decode(data.get("context"), symbols, where)
    builtin = {name: cls for cls, name in _BUILTIN_SPECS.items()}
    if kind in builtin:
        return pytree.TreeSpec(builtin[kind], context, children)
    if kind == "namedtuple":
        cls = _loaded_namedtuple(context)
        if cls is None:  # the user's class is not importable here: an equivalent namedtuple
            cls = collections.namedtuple(context["name"], context["fields"])
        return pytree.TreeSpec(collections.namedtuple, cls, children)
    cls = _registered_type(kind)
    if cls is not None:
        return pytree.TreeSpec(cls, context, children)
    # A type not registered in this process (e.g. a transformers ModelOutput before transformers is imported):
    # its keys, when the context lists them, rebuild it as a dict; else as a tuple.
    keys = context if isinstance(context, list) and len(context) == len(children) else None
    notes.append(f"output structure type {kind} is not registered with torch's pytree in this process: "
                 f"rebuilt as a {'dict' if keys is not None else 'tuple'}")
    if keys is not None and all(isinstance(k, str) for k in keys):
        return pytree.TreeSpec(dict, list(keys), children)
    return pytree.TreeSpec(tuple, None, children)


def _loaded_namedtuple(context: Any) -> type | None:
    """The user's namedtuple class when its module is already imported (looked up, never imported)."""
    if not isinstance(context, dict) or not isinstance(context.get("qualname"), str):
        return None
    module_name, _, qualname = context["qualname"].rpartition(".")
    obj: Any = None
    while module_name and obj is None:  # "pkg.mod.Outer.NT": the longest prefix that is a loaded module
        module = sys.modules.get(module_name)
        if module is not None:
            obj = module
            for part in qualname.split("."):
                obj = getattr(obj, part, None)
        else:
            module_name, _, head = module_name.rpartition(".")
            qualname = f"{head}.{qualname}"
    if isinstance(obj, type) and issubclass(obj, tuple) and list(getattr(obj, "_fields", ())) == context.get("fields"):
        return obj
    return None


def _registered_type(name: Any) -> type | None:
    """A pytree node type registered (by the libraries imported so far) under `name`; no import is attempted."""
    if not isinstance(name, str):
        return None
    cls = pytree.SERIALIZED_TYPE_TO_PYTHON_TYPE.get(name)
    if cls is not None:
        return cls
    for candidate in pytree.SUPPORTED_NODES:
        if f"{candidate.__module__}.{candidate.__qualname__}" == name:
            return candidate
    return None


# ------------------------------------------------------------------------------------------ to a dict
def graph_to_dict(graph: Graph) -> tuple[dict, dict[str, torch.Tensor]]:
    """The graph as a JSON-safe dict and its weight tensors by key (what `weights.safetensors` holds)."""
    symbols = _Symbols()
    names: dict[str, Value] = {}
    for value in graph.all_values():
        other = names.setdefault(value.name, value)
        if other is not value:
            raise GraphoptError(f"cannot save graph '{graph.name}': two values are named %{value.name} "
                                f"(run graph.verify() to find the pass that made them)")

    def shape(value: Value, where: str) -> list:
        return [_encode(d, symbols, f"{where} shape") for d in value.shape]

    def meta(m: Mapping[str, Any], where: str) -> dict:
        return {str(k): _encode(v, symbols, f"{where} meta[{k!r}]") for k, v in m.items()}

    def value_doc(value: Value, where: str) -> dict:
        doc = {"name": value.name, "dtype": dtype_str(value.dtype), "shape": shape(value, where)}
        if value.meta:
            doc["meta"] = meta(value.meta, where)
        return doc

    tensors: dict[str, torch.Tensor] = {}
    stored: dict[tuple, str] = {}  # one copy of a tensor that several weights hold
    weights = []
    for key, value in graph.weights.items():
        where = f"weight %{value.name}"
        if value.data is None or value.data.device.type == "meta":
            raise GraphoptError(f"cannot save {where}: it holds no data (a meta-device or missing tensor); "
                                f"load real weights into the graph first")
        doc = value_doc(value, where)
        doc["kind"] = value.kind
        if key != value.name:
            doc["key"] = key
        data = value.data.detach()
        ident = (data.untyped_storage().data_ptr(), data.storage_offset(), tuple(data.shape), tuple(data.stride()),
                 data.dtype) if data.numel() else None
        if ident in stored:
            doc["tensor"] = stored[ident]
        else:
            tensors[value.name] = data
            doc["tensor"] = value.name
            if ident is not None:
                stored[ident] = value.name
        weights.append(doc)

    nodes = []
    for node in graph.nodes:
        where = node.where()
        doc = {"op": node.op, "name": node.name,
               "inputs": [None if v is None else v.name for v in node.inputs],
               "attrs": {k: _encode(v, symbols, f"{where} attr {k!r}") for k, v in node.attrs.items()},
               "outputs": [value_doc(out, f"{where} output %{out.name}") for out in node.outputs]}
        if node.meta:
            doc["meta"] = meta(node.meta, where)
        nodes.append(doc)

    graph_meta, recipes = {}, {}
    for key, item in graph.meta.items():
        where = f"graph '{graph.name}' meta[{key!r}]"
        if key == "out_spec" and item is not None:
            graph_meta[key] = {"$spec": _encode_spec(item, symbols, where)}
        elif key in _RECIPE_KEYS and isinstance(item, (list, tuple)):
            texts = []
            for recipe in item:
                if not callable(getattr(recipe, "to_json", None)):
                    raise GraphoptError(f"cannot save {where}: {type(recipe).__name__} has no to_json()")
                texts.append(recipe.to_json())
            recipes[key] = texts
        elif key == "undecoded_meta" and isinstance(item, dict):  # recipes loaded without a decoder
            for k, texts in item.items():
                recipes.setdefault(str(k), list(texts))
        else:
            graph_meta[key] = _encode(item, symbols, where)

    doc = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "name": graph.name,
        "symbols": symbols.table,
        "inputs": [value_doc(v, f"input %{v.name}") for v in graph.inputs],
        "weights": weights,
        "nodes": nodes,
        "outputs": [v.name for v in graph.outputs],
        "meta": graph_meta,
        "recipes": recipes,
        "names": sorted(graph._names),
    }
    return doc, tensors


# ---------------------------------------------------------------------------------------- from a dict
def graph_from_dict(doc: Mapping[str, Any], tensors: Mapping[str, torch.Tensor], *,
                    where: str = "the graph document", weights_where: str = "the weights") -> Graph:
    """The Graph that `graph_to_dict` described; `GraphoptError` naming what is wrong when the data is not one."""
    from graphopt.ir.ops import OPS

    if not isinstance(doc, Mapping) or doc.get("format") != FORMAT:
        raise GraphoptError(f"{where} is not a graphopt graph (no \"format\": \"{FORMAT}\")")
    version = doc.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise GraphoptError(f"{where} has no integer format version")
    if version > FORMAT_VERSION:
        raise GraphoptError(f"{where} has graph format version {version}, newer than this graphopt reads "
                            f"({FORMAT_VERSION}): upgrade graphopt to load it")
    if version < 1:
        raise GraphoptError(f"{where} has unknown graph format version {version} (this graphopt reads 1 to "
                            f"{FORMAT_VERSION})")
    try:
        return _build(doc, tensors, OPS, weights_where)
    except _CorruptGraph as exc:
        raise GraphoptError(f"{where} is corrupt: {exc}; save the graph again") from None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise GraphoptError(f"{where} is corrupt ({type(exc).__name__}: {exc}); save the graph again") from None


def _build(doc: Mapping[str, Any], tensors: Mapping[str, torch.Tensor], ops: Any, weights_where: str) -> Graph:
    symbols = {name: sympy.Symbol(name, **{k: bool(v) for k, v in facts.items()})
               for name, facts in doc["symbols"].items()}
    graph = Graph(str(doc["name"]))
    values: dict[str, Value] = {}

    def make(d: Mapping[str, Any], kind: str, where: str, data: torch.Tensor | None = None) -> Value:
        name = d["name"]
        if not isinstance(name, str) or name in values:
            raise _corrupt(where, f"value name {name!r} is missing or used twice")
        shape = tuple(_decode(x, symbols, f"{where} shape") for x in d["shape"])
        value = Value(name, shape, _dtype(d["dtype"], where), kind=kind, data=data)
        value.meta = dict(_decode_meta(d.get("meta", {}), symbols, where))
        value.graph = graph
        values[name] = value
        return value

    for d in doc["inputs"]:
        graph.inputs.append(make(d, "input", f"input %{d.get('name')}"))
    for d in doc["weights"]:
        where = f"weight %{d.get('name')}"
        kind = d.get("kind")
        if kind not in VALUE_KINDS or kind in ("input", "node"):
            raise _corrupt(where, f"weight kind {kind!r} is not param, buffer or const")
        tensor = tensors.get(d["tensor"])
        if tensor is None:
            raise GraphoptError(f"{weights_where} has no tensor {d['tensor']!r} for {where}: the weights file "
                                f"does not belong to this graph or is incomplete; save the graph again")
        value = make(d, kind, where, tensor)
        if tuple(tensor.shape) != value.shape or tensor.dtype != value.dtype:
            raise GraphoptError(f"{weights_where}: tensor {d['tensor']!r} for {where} is "
                                f"{dtype_str(tensor.dtype)}{list(tensor.shape)}, the graph says {value.type_str()}: "
                                f"the weights file does not belong to this graph; save the graph again")
        graph.weights[d.get("key", value.name)] = value
    for d in doc["nodes"]:
        op, name = d["op"], d["name"]
        where = f"node %{name} ({op})"
        if op not in ops:
            raise GraphoptError(f"{where} uses op '{op}', which this graphopt does not know: register it "
                                f"(graphopt.ir.ops.register_op, or import the module that registers the custom "
                                f"op) before loading")
        node = Node(op, name, {k: _decode(v, symbols, f"{where} attr {k!r}") for k, v in d["attrs"].items()})
        node.meta = dict(_decode_meta(d.get("meta", {}), symbols, where))
        node.graph = graph
        inputs = []
        for ref in d["inputs"]:
            if ref is not None and ref not in values:
                raise _corrupt(where, f"input %{ref} is not defined before the node")
            inputs.append(None if ref is None else values[ref])
        node.set_inputs(inputs)
        for index, od in enumerate(d["outputs"]):
            out = make(od, "node", f"{where} output %{od.get('name')}")
            out.producer, out.index = node, index
            node.outputs.append(out)
        graph.nodes.append(node)
    for ref in doc["outputs"]:
        if ref not in values:
            raise _corrupt("graph outputs", f"%{ref} is not a value of the graph")
        graph.outputs.append(values[ref])

    notes: list[str] = []
    for key, item in doc.get("meta", {}).items():
        where = f"graph meta[{key!r}]"
        if isinstance(item, dict) and set(item) == {"$spec"}:
            graph.meta[key] = _decode_spec(item["$spec"], symbols, where, notes)
        else:
            graph.meta[key] = _decode(item, symbols, where)
    for key, texts in doc.get("recipes", {}).items():
        decode = _META_DECODERS.get(key)
        if decode is None:
            graph.meta.setdefault("undecoded_meta", {})[key] = [str(t) for t in texts]
        else:
            graph.meta[key] = [decode(t) for t in texts]
    if notes:
        graph.meta["load_notes"] = notes
    graph._names = set(doc.get("names", ())) | set(values) | {n.name for n in graph.nodes}
    return graph


def _decode_meta(data: Any, symbols: Mapping[str, sympy.Symbol], where: str) -> dict:
    if not isinstance(data, dict):
        raise _corrupt(where, "meta is not an object")
    return {k: _decode(v, symbols, f"{where} meta[{k!r}]") for k, v in data.items()}


# ----------------------------------------------------------------------------------------------- files
def save_graph(graph: Graph, directory: str | os.PathLike, *, prefix: str = "") -> list[Path]:
    """Write `graph.json` and `weights.safetensors` into `directory` (which must exist); the paths written.
    With `prefix`, the names start with it (a second graph beside the first: `trainable.graph.json`).

    Each file is written under a temporary name and renamed into place. Tensors are saved from the CPU,
    contiguous; weights sharing one tensor are stored once.
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    if not directory.is_dir():
        raise GraphoptError(f"cannot save graph '{graph.name}' to {directory}: the folder does not exist")
    doc, tensors = graph_to_dict(graph)
    text = json.dumps(doc, indent=1, allow_nan=False)
    weights_path, graph_path = directory / (prefix + WEIGHTS_FILE), directory / (prefix + GRAPH_FILE)
    plain = {key: t.detach().to("cpu").contiguous() for key, t in tensors.items()}
    seen: set[int] = set()
    for key, t in plain.items():  # safetensors refuses tensors sharing memory, so all but one sharer are copied
        ptr = t.untyped_storage().data_ptr()
        whole = t.storage_offset() == 0 and t.numel() * t.element_size() == t.untyped_storage().nbytes()
        if ptr in seen or not whole:
            plain[key] = t.clone()
        seen.add(ptr)
    tmp_weights = weights_path.with_name(weights_path.name + ".tmp")
    tmp_graph = graph_path.with_name(graph_path.name + ".tmp")
    try:
        save_file(plain, str(tmp_weights), metadata={"format": FORMAT, "version": str(FORMAT_VERSION)})
        tmp_graph.write_text(text, encoding="utf-8")
        os.replace(tmp_weights, weights_path)
        os.replace(tmp_graph, graph_path)
    finally:
        for tmp in (tmp_weights, tmp_graph):
            if tmp.exists():
                tmp.unlink()
    return [graph_path, weights_path]


def load_graph(directory: str | os.PathLike, *, prefix: str = "") -> Graph:
    """The graph `save_graph` wrote into `directory` (under `prefix`); `GraphoptError` naming the file when it
    cannot be read."""
    from safetensors import SafetensorError, safe_open

    directory = Path(directory)
    graph_path, weights_path = directory / (prefix + GRAPH_FILE), directory / (prefix + WEIGHTS_FILE)
    for path in (graph_path, weights_path):
        if not path.is_file():
            raise GraphoptError(f"cannot load a graph from {directory}: {path.name} is missing (a saved graph is "
                                f"{GRAPH_FILE} and {WEIGHTS_FILE}, written by graphopt.ir.serialize.save_graph)")
    try:
        doc = json.loads(graph_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise GraphoptError(f"{graph_path} is not valid JSON ({exc}): the file is truncated or corrupt; "
                            f"save the graph again") from None
    try:
        tensors = {}
        with safe_open(str(weights_path), framework="pt") as f:
            for key in f.keys():
                tensor = f.get_tensor(key)
                # safetensors' tensors sit at 8-byte offsets: a fresh (aligned) copy computes bit for bit what
                # the saved graph computed (kernels sum in another order on unaligned data)
                tensors[key] = tensor if tensor.data_ptr() % 64 == 0 else tensor.clone()
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise GraphoptError(f"{weights_path} is not a readable safetensors file ({exc}): it is truncated or "
                            f"corrupt; save the graph again") from None
    return graph_from_dict(doc, tensors, where=str(graph_path), weights_where=str(weights_path))
