"""Graph -> ONNX model: lowering, tidying, checking, and writing files atomically (external data past 2 GB).

The model has the graph's inputs and outputs by name, its dynamic axes as
`dim_param`s named after the graph's symbols (`batch`, `seq`), and its
weights as initializers under their state_dict names.

Lowering produces a *skeleton*: the model without weight data, the weights
declared as extra graph inputs. Tidying (onnx-graphsurgeon: small constant
subgraphs folded, dead nodes removed, topological order) and `onnx.checker`
(full type and shape inference) run on the skeleton, so they never copy or
serialise the weights; a model that fails the checker is a graphopt bug and
is reported as such. The weights are attached at the end, each copied once:
into the ModelProto (`to_onnx`), into a `.data` file (`export` of a large
model), or handed to ONNX Runtime without serialising them (`compile`).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import onnx
import torch
from onnx import helper

from graphopt.artifacts import fsync
from graphopt.errors import GraphoptError
from graphopt.ir import dims as D
from graphopt.ir.graph import Graph
from graphopt.backends.onnx.builder import OnnxBuilder, replace_name
from graphopt.backends.onnx.dtypes import fill_tensor_proto, to_onnx_dtype
from graphopt.backends.onnx import lowerings as _lowerings  # noqa: F401 - attaches the built-in lowerings
from graphopt.backends.onnx.lowering import OpsetTooLow, lowering_for

DEFAULT_OPSET = 17
MIN_OPSET = 17
# protobuf cannot serialise a message of 2 GiB or more; leave room for the graph itself
EXTERNAL_DATA_THRESHOLD = 2**31 - 2**26
FOLD_SIZE_THRESHOLD = 1 << 16  # bytes: fold shape arithmetic, never materialise big tensors
DATA_ALIGNMENT = 64


@dataclass
class LoweredModel:
    """A lowered graph: the model without weight data, and the weights it references by name."""

    skeleton: onnx.ModelProto  # weights appear as graph inputs (type and shape only)
    weights: dict[str, torch.Tensor]  # the graph's own tensors, not copies
    value_names: dict[str, str] = field(default_factory=dict)  # IR value name -> ONNX tensor name

    @property
    def weight_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.weights.values())

    def inline(self) -> onnx.ModelProto:
        """The complete model with every weight as an initializer holding its data."""
        model = self._without_weight_inputs()
        for name, tensor in self.weights.items():
            fill_tensor_proto(model.graph.initializer.add(), name, tensor)
        return model

    def with_external_data(self, location: str, directory: Path | None) -> onnx.ModelProto:
        """The model with weights stored externally at `location` (relative to the model file).

        With a `directory`, the data are written there into `location`; without,
        only the references are made (for ONNX Runtime's in-memory initializers).
        """
        model = self._without_weight_inputs()
        offset = 0
        handle = open(directory / location, "wb") if directory is not None else None
        try:
            for name, tensor in self.weights.items():
                data = _raw_bytes(tensor)
                proto = model.graph.initializer.add()
                proto.name = name
                proto.data_type = to_onnx_dtype(tensor.dtype)
                proto.dims.extend(tensor.shape)
                proto.data_location = onnx.TensorProto.EXTERNAL
                for key, value in (("location", location), ("offset", str(offset)), ("length", str(len(data)))):
                    entry = proto.external_data.add()
                    entry.key, entry.value = key, value
                if handle is not None:
                    handle.write(data)
                    pad = -len(data) % DATA_ALIGNMENT
                    handle.write(b"\0" * pad)
                    offset += len(data) + pad
        finally:
            if handle is not None:
                handle.close()
        return model

    def _without_weight_inputs(self) -> onnx.ModelProto:
        model = onnx.ModelProto()
        model.CopyFrom(self.skeleton)  # small: no weight data in it
        keep = [i for i in model.graph.input if i.name not in self.weights]
        del model.graph.input[:]
        model.graph.input.extend(keep)
        return model


def lower(graph: Graph, *, opset: int | None = None, **options: Any) -> LoweredModel:
    """Lower `graph` to a checked ONNX skeleton plus weight references (see `to_onnx` for the options).

    `opset=None` exports DEFAULT_OPSET, or the newer opset an op of the graph needs (integer bitwise
    ops, scatter reductions, blocked dequantisation): a user who did not ask for an opset gets a model,
    not an error; one who did is told which op needs more.
    """
    if opset is not None:
        return _lower(graph, opset, **options)
    chosen = DEFAULT_OPSET
    while True:
        try:
            return _lower(graph, chosen, **options)
        except OpsetTooLow as exc:
            if exc.needs <= chosen:
                raise
            chosen = exc.needs


def _lower(
    graph: Graph,
    opset: int,
    *,
    dynamic: bool = True,
    bind: Mapping[str, int] | None = None,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    fused_attention: bool = True,
    tidy: bool = True,
    check: bool = True,
) -> LoweredModel:
    _check_opset(opset)
    symbols = graph.symbols()
    bind = graph.checked_bind(bind)
    if not dynamic:
        missing = sorted(set(symbols) - set(bind))
        if missing:
            raise GraphoptError(f"a static export (dynamic=False) needs a size for every symbol; "
                                f"missing {missing}: pass bind={{{', '.join(f'{m!r}: ...' for m in missing)}}}")
    input_names = _check_names("input_names", input_names, len(graph.inputs))
    output_names = _check_names("output_names", output_names, len(graph.outputs))

    b = OnnxBuilder(graph, opset, bind=bind, input_names=input_names)
    b.fused_attention = fused_attention
    inputs = [_value_info(b, name, v.dtype, v.shape) for name, v in zip(b.input_names, graph.inputs)]
    for node in graph.nodes:
        _lower_node(b, node)
    b.current = None
    outputs = _bind_outputs(b, graph, output_names or [v.name for v in graph.outputs])
    weight_inputs = [_value_info(b, name, t.dtype, tuple(t.shape)) for name, t in b.weights.items()]

    graph_proto = helper.make_graph(b.nodes, graph.name, inputs + weight_inputs, outputs, b.initializers)
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in sorted(b.domains.items())]
    skeleton = helper.make_model(graph_proto, opset_imports=opsets,
                                 producer_name="graphopt", producer_version=_version())
    skeleton.ir_version = helper.find_min_ir_version_for(list(skeleton.opset_import), ignore_unknown=True)
    if tidy:
        skeleton = _tidy(skeleton)
    used = {name for node in skeleton.graph.node for name in node.input} | {o.name for o in skeleton.graph.output}
    weights = {name: t for name, t in b.weights.items() if name in used}
    if len(weights) != len(b.weights):  # a weight only dead code read
        keep = [i for i in skeleton.graph.input if i.name in weights or i.name not in b.weights]
        del skeleton.graph.input[:]
        skeleton.graph.input.extend(keep)
    if check:
        check_model(skeleton)
    value_names = {v.name: b._names[id(v)] for v in graph.all_values() if id(v) in b._names}
    return LoweredModel(skeleton, weights, value_names)


def to_onnx(graph: Graph, **options: Any) -> onnx.ModelProto:
    """Lower `graph` to an in-memory ONNX model with its weights inline.

    `dynamic=False` exports static shapes: every symbol must then be given a
    size in `bind` (e.g. `{"batch": 1}`); `bind` also fixes some symbols of a
    dynamic export. At opset >= 23, `sdpa` becomes the fused ONNX `Attention`
    op unless `fused_attention=False`; below, it is lowered to MatMul/Softmax.
    A model over 2 GB cannot be serialised from memory: write it with `export`.
    The keywords are those of `lower`: opset, dynamic, bind, input_names,
    output_names, fused_attention.
    """
    return lower(graph, **options).inline()


def export(graph: Graph, path: str | os.PathLike, *, external_data: bool | None = None, **options: Any) -> Path:
    """Write `graph` as an ONNX model to `path` and return the path.

    Weights go to a data file beside the model when they exceed protobuf's 2 GB
    limit (`external_data=None`), or always/never with True/False. The other
    keywords are those of `lower` (opset, dynamic, bind, input_names, ...).

    Files appear only once complete, and a failed export leaves the previous
    model at `path` working: everything is written under temporary names in a
    directory beside `path`, fsynced, then renamed into place. With external
    data, the model and its data are two files that no rename can replace
    together, so the data file of each export gets a name that the model now at
    `path` does not use: `<name>.data`, or `<name>.<8 hex digits>.data` when the
    current model uses `<name>.data`. The data is renamed into place first (no
    model refers to it yet), then the model (which swaps, in one rename, the old
    model and its data for the new model and its data), and only then is the
    previous data file deleted. At every instant the model file at `path`
    refers to data that matches it. Read the data file's name from the model
    (`onnx.load` follows it) rather than assuming `<name>.data`. A process killed
    between the two renames can leave an unreferenced data file behind, never a
    mismatched pair.
    """
    path = Path(path)
    lowered = lower(graph, **options)
    if external_data is None:
        external_data = lowered.weight_bytes >= EXTERNAL_DATA_THRESHOLD
    with _staging(path) as staging:
        previous = _data_files(path)
        if not external_data:
            onnx.save_model(lowered.inline(), staging / path.name)
            fsync(staging / path.name)
            os.replace(staging / path.name, path)
            fsync(path.parent)
            _remove_data_files(path, previous)
            return path
        data_name = _fresh_data_name(path, previous)
        model = lowered.with_external_data(data_name, staging)
        onnx.save_model(model, staging / path.name)
        onnx.checker.check_model(str(staging / path.name))
        fsync(staging / data_name)
        fsync(staging / path.name)
        # data first, under a name no model refers to yet; then the model, which switches to it
        os.replace(staging / data_name, path.parent / data_name)
        try:
            os.replace(staging / path.name, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(path.parent / data_name)
            raise
        fsync(path.parent)
        _remove_data_files(path, previous - {data_name})
    return path


def save_atomic(model: onnx.ModelProto, path: str | os.PathLike) -> Path:
    """Save a ModelProto to `path` through a temporary file beside it (fsynced), then os.replace.

    Data files that the replaced model used (`<name>.data`, `<name>.<hex>.data`, as
    `export` names them) are deleted afterwards unless `model` refers to them too.
    """
    path = Path(path)
    with _staging(path) as staging:
        previous = _data_files(path)
        onnx.save_model(model, staging / path.name)
        fsync(staging / path.name)
        os.replace(staging / path.name, path)
        fsync(path.parent)
        _remove_data_files(path, previous - _external_locations(model))
    return path


def check_model(model: onnx.ModelProto) -> None:
    """onnx.checker with full (strict) type and shape inference; failures are graphopt bugs."""
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise GraphoptError(f"the exported ONNX model of graph '{model.graph.name}' failed onnx.checker "
                            f"(a graphopt exporter bug, please report it): {exc}") from exc


# --------------------------------------------------------------- internals
class _staging:
    """A temporary directory beside `path` (same filesystem, so os.replace is atomic), always removed."""

    def __init__(self, path: Path) -> None:
        self.directory = path.parent if str(path.parent) else Path(".")
        if not self.directory.is_dir():
            raise GraphoptError(f"cannot write {path}: directory {self.directory} does not exist")
        self.name = path.name

    def __enter__(self) -> Path:
        self.path = Path(tempfile.mkdtemp(prefix=f".{self.name}.", suffix=".tmp", dir=self.directory))
        return self.path

    def __exit__(self, *exc) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def _external_locations(model: onnx.ModelProto) -> set[str]:
    """The `location`s of every tensor stored outside `model`, in its graph and subgraphs."""
    found: set[str] = set()

    def tensor(t) -> None:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            found.update(e.value for e in t.external_data if e.key == "location")

    def graph(g) -> None:
        for t in g.initializer:
            tensor(t)
        for node in g.node:
            for a in node.attribute:
                if a.HasField("t"):
                    tensor(a.t)
                for t in a.tensors:
                    tensor(t)
                if a.HasField("g"):
                    graph(a.g)
                for sub in a.graphs:
                    graph(sub)

    graph(model.graph)
    return found


def _data_files(path: Path) -> set[str]:
    """Data files (`export`'s names only) that the model now at `path` refers to; empty if none or unreadable."""
    if not path.is_file():
        return set()
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # a damaged previous file: nothing of it is worth keeping consistent
        return set()
    return {name for name in _external_locations(model) if _is_data_name(path, name)}


def _is_data_name(path: Path, name: str) -> bool:
    return name == f"{path.name}.data" or re.fullmatch(re.escape(path.name) + r"\.[0-9a-f]{8}\.data", name) is not None


def _fresh_data_name(path: Path, used: set[str]) -> str:
    name = f"{path.name}.data"
    while name in used or (name != f"{path.name}.data" and (path.parent / name).exists()):
        name = f"{path.name}.{os.urandom(4).hex()}.data"
    return name


def _remove_data_files(path: Path, names: set[str]) -> None:
    """Best effort: the model no longer refers to them, so a file left behind is only clutter."""
    for name in names:
        with contextlib.suppress(OSError):
            os.unlink(path.parent / name)


def _raw_bytes(tensor: torch.Tensor) -> memoryview:
    t = tensor.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    if t.numel() == 0:  # an empty weight (DINOv3 with no register tokens): memoryview cannot cast zero sizes
        return memoryview(b"")
    return memoryview(t.numpy()).cast("B")


def _check_opset(opset: int) -> None:
    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        raise GraphoptError(f"opset {opset} is not supported: graphopt exports opsets {MIN_OPSET} to {newest} "
                            "(the newest the installed onnx package knows)")


def _check_names(what: str, names: Sequence[str] | None, count: int) -> list[str] | None:
    if names is None:
        return None
    names = [str(n) for n in names]
    if len(names) != count:
        raise GraphoptError(f"{what} has {len(names)} names, the graph has {count}")
    if len(set(names)) != len(names):
        raise GraphoptError(f"{what} has duplicates: {names}")
    return names


def _value_info(b: OnnxBuilder, name: str, dtype: torch.dtype, shape) -> onnx.ValueInfoProto:
    dims = []
    for d in shape:
        d = b.resolve(d)
        dims.append(d if isinstance(d, int) else D.dim_str(d))
    return helper.make_tensor_value_info(name, to_onnx_dtype(dtype), dims)


def _lower_node(b: OnnxBuilder, node) -> None:
    fn = lowering_for(node.op)
    if fn is None:
        raise GraphoptError(f"the ONNX exporter has no lowering for op '{node.op}' ({node.where()}); add one with "
                            "graphopt.backends.onnx.register_lowering(op, fn), or define the op with "
                            "graphopt.define_op(..., onnx=fn)")
    b.current = node
    since = len(b.nodes)
    ins = [None if v is None else b.name_of(v) for v in node.inputs]
    try:
        result = fn(b, node, ins)
    except GraphoptError:
        raise
    except Exception as exc:  # a lowering tripping is an exporter bug; say which node
        raise GraphoptError(f"lowering {node.where()} to ONNX failed: {type(exc).__name__}: {exc}") from exc
    names = [result] if isinstance(result, str) else list(result)
    if len(names) != len(node.outputs):
        raise GraphoptError(f"the ONNX lowering of {node.where()} returned {len(names)} outputs, "
                            f"the op has {len(node.outputs)}")
    for value, name in zip(node.outputs, names):
        produced = b.dtypes.get(name)
        if produced is not None and produced != value.dtype:
            raise GraphoptError(f"the ONNX lowering of {node.where()} produced {produced} for %{value.name}, "
                                f"the graph says {value.dtype} (an exporter bug)")
        if b.rename_output(name, value.name, since):
            name = value.name  # the tensor a node computes carries the node's name
        b.set_name(value, name)


def _bind_outputs(b: OnnxBuilder, graph: Graph, names: Sequence[str]) -> list[onnx.ValueInfoProto]:
    """Give each graph output its name: rename the tensor that computes it, or add an Identity when
    that tensor is also a graph input, an initializer, or another output."""
    infos = []
    produced = {o for n in b.nodes for o in n.output}
    existing = produced | set(b.input_names) | set(b._init_by_name) | set(b.weights)
    done: set[str] = set()
    for value, want in zip(graph.outputs, names):
        have = b.name_of(value)
        if have != want:
            if want in existing:
                raise GraphoptError(f"output name '{want}' is already the name of another tensor in the exported model")
            sole = sum(v is value for v in graph.outputs) == 1
            if have in produced and have not in done and sole and have not in b._cached:
                _rename_everywhere(b, have, want)
                produced.add(want)
            else:
                b.nodes.append(helper.make_node("Identity", [have], [want], name=b.fresh(f"{want}:output")))
            existing.add(want)
            b._used.add(want)
        elif have in b.weights or have in b._init_by_name:
            raise GraphoptError(f"graph output %{value.name} is a weight; give it another name with output_names")
        done.add(want)
        infos.append(_value_info(b, want, value.dtype, value.shape))
    return infos


def _rename_everywhere(b: OnnxBuilder, old: str, new: str) -> None:
    replace_name(b.nodes, old, new)
    b._used.add(new)
    for key, name in list(b._names.items()):
        if name == old:
            b._names[key] = new


def _tidy(model: onnx.ModelProto) -> onnx.ModelProto:
    """Fold small constant subgraphs, drop dead nodes and sort topologically (onnx-graphsurgeon).

    Weights are graph inputs of the skeleton, so nothing that reads one is
    folded: every weight keeps its state_dict name in the file (ONNX Runtime
    folds what it can when it loads the model).
    """
    import onnx_graphsurgeon as gs

    g = gs.import_onnx(model)
    g.fold_constants(size_threshold=FOLD_SIZE_THRESHOLD, error_ok=False)
    g.cleanup().toposort()
    tidy = gs.export_onnx(g, do_type_check=True)
    tidy.ir_version = model.ir_version
    tidy.producer_name, tidy.producer_version = model.producer_name, model.producer_version
    del tidy.opset_import[:]
    tidy.opset_import.extend(model.opset_import)
    return tidy


def _version() -> str:
    from graphopt import __version__

    return __version__
