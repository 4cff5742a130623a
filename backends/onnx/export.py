"""Graph -> ONNX ModelProto, and writing it to disk atomically (external data past 2 GB).

The model has the graph's inputs and outputs by name, its dynamic axes as
`dim_param`s named after the graph's symbols (`batch`, `seq`), and its
weights as initializers under their state_dict names. After lowering, the
model is tidied with onnx-graphsurgeon (small constant subgraphs folded,
dead nodes removed, topological order) and must pass `onnx.checker` with
full type and shape inference: a model that fails is a graphopt bug, and is
reported as such rather than written.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Mapping, Sequence

import onnx
from onnx import helper

from graphopt.errors import GraphoptError
from graphopt.ir import dims as D
from graphopt.ir.graph import Graph, Value
from graphopt.backends.onnx.builder import OnnxBuilder
from graphopt.backends.onnx.dtypes import to_onnx_dtype
from graphopt.backends.onnx.lower_ops import LOWERINGS

DEFAULT_OPSET = 17
MIN_OPSET = 17
PROTOBUF_LIMIT = 2**31 - 1
# Leave room for the graph itself under protobuf's 2 GiB message limit.
EXTERNAL_DATA_THRESHOLD = 2**31 - 2**26
FOLD_SIZE_THRESHOLD = 1 << 16  # bytes: fold shape arithmetic, never materialise big tensors


def to_onnx(
    graph: Graph,
    *,
    opset: int = DEFAULT_OPSET,
    dynamic: bool = True,
    bind: Mapping[str, int] | None = None,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    fused_attention: bool = True,
    tidy: bool = True,
    check: bool = True,
) -> onnx.ModelProto:
    """Lower `graph` to an in-memory ONNX model.

    `dynamic=False` exports static shapes: every symbol must then be given a
    size in `bind` (e.g. `{"batch": 1}`); `bind` also fixes some symbols of a
    dynamic export. At opset >= 23, `sdpa` becomes the fused ONNX `Attention`
    op unless `fused_attention=False`; below, it is lowered to MatMul/Softmax.
    """
    _check_opset(opset)
    symbols = graph.symbols()
    bind = dict(bind or {})
    unknown = sorted(set(bind) - set(symbols))
    if unknown:
        raise GraphoptError(f"bind names {unknown}, which are not symbols of graph '{graph.name}' "
                            f"(its symbols: {sorted(symbols) or 'none'})")
    if not dynamic:
        missing = sorted(set(symbols) - set(bind))
        if missing:
            raise GraphoptError(f"a static export (dynamic=False) needs a size for every symbol; "
                                f"missing {missing}: pass bind={{{', '.join(f'{m!r}: ...' for m in missing)}}}")
    input_names = _check_names("input_names", input_names, len(graph.inputs))
    output_names = _check_names("output_names", output_names, len(graph.outputs))

    b = OnnxBuilder(graph, opset, bind=bind, input_names=input_names)
    b.fused_attention = fused_attention
    inputs = [_value_info(b, name, v) for name, v in zip(b.input_names, graph.inputs)]
    for node in graph.nodes:
        _lower_node(b, node)
    b.current = None
    outputs = _bind_outputs(b, graph, output_names or [v.name for v in graph.outputs])

    graph_proto = helper.make_graph(b.nodes, graph.name, inputs, outputs, b.initializers)
    model = helper.make_model(graph_proto, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="graphopt", producer_version=_version())
    model.ir_version = helper.find_min_ir_version_for(list(model.opset_import))
    small = _initializer_bytes(model) < EXTERNAL_DATA_THRESHOLD
    if tidy:
        model = _tidy(model, fold=small, keep=set(graph.weights))
    if check and small:
        check_model(model)
    return model


def export(
    graph: Graph,
    path: str | os.PathLike,
    *,
    opset: int = DEFAULT_OPSET,
    dynamic: bool = True,
    bind: Mapping[str, int] | None = None,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    fused_attention: bool = True,
    external_data: bool | None = None,
) -> Path:
    """Write `graph` as an ONNX model to `path` and return the path.

    The file appears only once complete: it is written under a temporary name
    in the same directory and moved into place, so a failed export never leaves
    a truncated model (or clobbers the previous one). Weights go to a
    `<name>.data` file beside the model when they exceed protobuf's 2 GB limit
    (`external_data=None`), or always/never with True/False.
    """
    path = Path(path)
    model = to_onnx(graph, opset=opset, dynamic=dynamic, bind=bind, input_names=input_names,
                    output_names=output_names, fused_attention=fused_attention)
    if external_data is None:
        external_data = _initializer_bytes(model) >= EXTERNAL_DATA_THRESHOLD
    save_atomic(model, path, external_data=external_data)
    return path


def save_atomic(model: onnx.ModelProto, path: Path, *, external_data: bool = False) -> None:
    """Save `model` to `path` through a temporary directory beside it, then os.replace."""
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise GraphoptError(f"cannot write {path}: directory {directory} does not exist")
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory))
    try:
        staged = staging / path.name
        if external_data:
            data_name = f"{path.name}.data"
            onnx.save_model(model, staged, save_as_external_data=True, all_tensors_to_one_file=True,
                            location=data_name, size_threshold=1024)
            onnx.checker.check_model(str(staged))
            # data first: the model at `path` must never point at data that is not there yet
            if (staging / data_name).exists():  # tensors under 1 KiB stay inline
                os.replace(staging / data_name, directory / data_name)
        else:
            onnx.save_model(model, staged)
        os.replace(staged, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def check_model(model: onnx.ModelProto) -> None:
    """onnx.checker with full (strict) type and shape inference; failures are graphopt bugs."""
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise GraphoptError(f"the exported ONNX model of graph '{model.graph.name}' failed onnx.checker "
                            f"(a graphopt exporter bug, please report it): {exc}") from exc
    except onnx.shape_inference.InferenceError as exc:
        raise GraphoptError(f"the exported ONNX model of graph '{model.graph.name}' failed ONNX shape/type "
                            f"inference (a graphopt exporter bug, please report it): {exc}") from exc


# --------------------------------------------------------------- internals
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


def _dims(b: OnnxBuilder, value: Value) -> list:
    out = []
    for d in value.shape:
        d = b.resolve(d)
        out.append(d if isinstance(d, int) else D.dim_str(d))
    return out


def _value_info(b: OnnxBuilder, name: str, value: Value) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, to_onnx_dtype(value.dtype), _dims(b, value))


def _lower_node(b: OnnxBuilder, node) -> None:
    fn = LOWERINGS.get(node.op)
    if fn is None:
        raise GraphoptError(f"the ONNX exporter has no lowering for op '{node.op}' ({node.where()}); add one with "
                            "graphopt.backends.onnx.register_lowering(op, fn)")
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
    existing = produced | set(b.input_names) | set(b._init_by_name)
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
        done.add(want)
        infos.append(_value_info(b, want, value))
    return infos


def _rename_everywhere(b: OnnxBuilder, old: str, new: str) -> None:
    for node in b.nodes:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
        for i, name in enumerate(node.output):
            if name == old:
                node.output[i] = new
    b._used.add(new)
    for key, name in list(b._names.items()):
        if name == old:
            b._names[key] = new


def _initializer_bytes(model: onnx.ModelProto) -> int:
    return sum(len(t.raw_data) for t in model.graph.initializer)


def _tidy(model: onnx.ModelProto, *, fold: bool, keep: set[str]) -> onnx.ModelProto:
    """Fold small constant subgraphs, drop dead nodes and sort topologically (onnx-graphsurgeon).

    Nodes reading a graph weight are not folded, so every weight keeps its
    state_dict name in the file (ONNX Runtime folds them at load anyway).
    """
    import onnx_graphsurgeon as gs

    g = gs.import_onnx(model)
    if fold:
        g.fold_constants(size_threshold=FOLD_SIZE_THRESHOLD, error_ok=False,
                         should_exclude_node=lambda node: any(t.name in keep for t in node.inputs))
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
