"""The on-disk graph format (graphopt/ir/serialize.py): save -> load gives the same graph, text and outputs.

Every zoo model (traced with its dynamic axes, canonicalized), quantized (int8, int4-weight) and pruned graphs,
and a dict-output transformers model round-trip; each refusal (newer version, missing file, corrupt JSON,
missing weight, unknown op, an attr kind the format does not store) is a GraphoptError naming what to fix.
"""

from __future__ import annotations

import collections
import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sympy
import torch

import graphopt
from graphopt import models_zoo
from graphopt.errors import GraphoptError
from graphopt.ir import dims as D
from graphopt.ir.graph import Graph
from graphopt.ir.interpreter import run_graph, structured_outputs
from graphopt.ir.serialize import (FORMAT_VERSION, GRAPH_FILE, WEIGHTS_FILE, graph_from_dict, graph_to_dict,
                                   load_graph, register_meta_decoder, save_graph)
from graphopt.passmanager import PassManager
from tiny_models import tiny_bert

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One thread here, restored after: the thread count is global, and other tests' golden digests depend
    on the zoo models built with the default."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _resize(inputs: tuple, dynamic_axes: dict, sizes: dict[str, int]) -> tuple:
    out = []
    for i, x in enumerate(inputs):
        for axis, name in dynamic_axes.get(i, {}).items():
            if name in sizes:
                x = x.index_select(axis, torch.arange(sizes[name]) % x.shape[axis])
        out.append(x)
    return tuple(out)


@functools.lru_cache(maxsize=None)
def _zoo(name: str):
    """(graph canonicalized, example inputs, inputs of another batch size) for a tiny zoo model."""
    torch.manual_seed(0)
    model, inputs = models_zoo.get(name, "tiny")
    axes = models_zoo.spec(name).dynamic_axes
    graph = graphopt.trace(model, inputs, dynamic=axes)
    graph, _ = PassManager.parse("canonicalize").run(graph, inputs)
    return graph, inputs, _resize(inputs, axes, {"batch": 3})


def _round_trip(graph: Graph, tmp_path: Path) -> Graph:
    written = save_graph(graph, tmp_path)
    assert sorted(p.name for p in written) == [GRAPH_FILE, WEIGHTS_FILE]
    assert sorted(os.listdir(tmp_path)) == [GRAPH_FILE, WEIGHTS_FILE]  # no temporary left behind
    loaded = load_graph(tmp_path)
    assert loaded.format(source=True) == graph.format(source=True)
    loaded.verify()
    return loaded


def _same_outputs(a: Graph, b: Graph, inputs: tuple) -> None:
    with torch.no_grad():
        want, got = run_graph(a, inputs), run_graph(b, inputs)
    assert len(want) == len(got)
    for w, g in zip(want, got):
        assert torch.equal(w, g)


def _same_values(a: Graph, b: Graph) -> None:
    """Every value: shape (symbols equal, assumptions included), dtype, kind, meta; weights' tensors equal."""
    assert [v.name for v in a.all_values()] == [v.name for v in b.all_values()]
    for va, vb in zip(a.all_values(), b.all_values()):
        assert va.shape == vb.shape and va.dtype == vb.dtype and va.kind == vb.kind, va.name
        assert va.meta == vb.meta, va.name
        if va.is_weight:
            assert torch.equal(va.data, vb.data), va.name
    for na, nb in zip(a.nodes, b.nodes):
        assert (na.op, na.name, na.attrs, na.meta) == (nb.op, nb.name, nb.attrs, nb.meta)
        assert [type(v) for v in na.attrs.values()] == [type(v) for v in nb.attrs.values()]
    assert list(a.weights) == list(b.weights)
    assert a._names == b._names
    assert a.symbols() == b.symbols()


@pytest.mark.parametrize("name", models_zoo.list_models())
def test_zoo_round_trip(name, tmp_path):
    graph, _, other_batch = _zoo(name)
    loaded = _round_trip(graph, tmp_path)
    assert loaded.format() == graph.format()
    _same_values(graph, loaded)
    assert loaded.meta == graph.meta
    _same_outputs(graph, loaded, other_batch)
    loaded.check_inputs(other_batch)


@pytest.mark.parametrize("mode", ["int8", "int4-weight"])
def test_quantized_round_trip(mode, tmp_path):
    from graphopt.passes import Quantize

    graph, inputs, other_batch = _zoo("resnet18")
    quantized, _ = PassManager([Quantize(mode=mode, progress=False, keep_float=0)]).run(graph, inputs)
    loaded = _round_trip(quantized, tmp_path)
    _same_values(quantized, loaded)
    ints = [v for v in loaded.weights.values() if v.dtype == torch.int8]
    assert ints, "no int8 weights survived"
    if mode == "int4-weight":
        assert loaded.find_nodes("matmul_nbits") or any(v.meta.get("bits") == 4 for v in ints)
        assert any(v.meta.get("bits") == 4 for v in ints)
    from graphopt.analysis.cost import estimate_cost  # the cost analysis reads meta["bits"]

    assert estimate_cost(loaded).total_params == estimate_cost(quantized).total_params
    _same_outputs(quantized, loaded, other_batch)


def test_int4_linear_round_trip(tmp_path):
    """Linears quantized int4-weight become matmul_nbits with {bits, block_size}: op, attrs and bits survive."""
    from graphopt.passes import Quantize

    graph, inputs, other_batch = _zoo("gmlp")
    quantized, _ = PassManager([Quantize(mode="int4-weight", progress=False, keep_float=0)]).run(graph, inputs)
    assert quantized.find_nodes("matmul_nbits")
    loaded = _round_trip(quantized, tmp_path)
    _same_values(quantized, loaded)
    _same_outputs(quantized, loaded, other_batch)


def test_pruned_round_trip(tmp_path):
    graph, inputs, other_batch = _zoo("resnet18")
    pruned, _ = PassManager.parse("prune{ratio=0.5}").run(graph, inputs)
    assert pruned.num_params() < graph.num_params()
    loaded = _round_trip(pruned, tmp_path)
    _same_values(pruned, loaded)
    _same_outputs(pruned, loaded, other_batch)
    # the recipe: the prune pass registers its decoder, so it loads as a recipe again
    assert [r.to_json() for r in loaded.meta["prune_recipes"]] == [r.to_json() for r in pruned.meta["prune_recipes"]]
    from graphopt.ir import serialize

    decoder = serialize._META_DECODERS.pop("prune_recipes")
    try:  # without a decoder: kept as its JSON text, and saved again as such
        raw = load_graph(tmp_path)
        texts = raw.meta["undecoded_meta"]["prune_recipes"]
        assert texts == [r.to_json() for r in pruned.meta["prune_recipes"]]
        (tmp_path / "again").mkdir()
        again = _round_trip(raw, tmp_path / "again")
        assert again.meta["undecoded_meta"] == raw.meta["undecoded_meta"]
    finally:
        register_meta_decoder("prune_recipes", decoder)


# ------------------------------------------------------------------------------- dict outputs (transformers)
@functools.lru_cache(maxsize=None)
def _bert():
    model = tiny_bert()
    ids = torch.randint(0, 64, (2, 8))
    graph = graphopt.trace(model, (ids,))
    return graph, ids


def test_dict_output_round_trip(tmp_path):
    graph, ids = _bert()
    loaded = _round_trip(graph, tmp_path)
    spec, back = graph.meta["out_spec"], loaded.meta["out_spec"]
    assert back == spec and back.type is spec.type
    other = ids[:1]
    with torch.no_grad():
        want = structured_outputs(graph, run_graph(graph, (other,)))
        got = structured_outputs(loaded, run_graph(loaded, (other,)))
    assert type(got) is type(want) and list(got.keys()) == list(want.keys())
    for key in want.keys():
        assert torch.equal(got[key], want[key])


def test_dict_output_in_fresh_process(tmp_path):
    """A fresh process, with no transformers imported: the graph loads, runs, and rebuilds a dict by key."""
    graph, ids = _bert()
    save_graph(graph, tmp_path)
    torch.save(ids[:1], tmp_path / "ids.pt")
    want = structured_outputs(graph, run_graph(graph, (ids[:1],)))
    code = (
        "import sys, torch\n"
        "from graphopt.ir.serialize import load_graph\n"
        "from graphopt.ir.interpreter import run_graph, structured_outputs\n"
        f"g = load_graph({str(tmp_path)!r})\n"
        "assert 'transformers' not in sys.modules\n"
        f"out = structured_outputs(g, run_graph(g, (torch.load({str(tmp_path / 'ids.pt')!r}),)))\n"
        "print(type(out).__name__, sorted(out), g.meta['load_notes'])\n"
        "torch.save(dict(out), sys.argv[1])\n"
    )
    result_path = tmp_path / "out.pt"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", code, str(result_path)], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("dict ") and "not registered" in proc.stdout
    got = torch.load(result_path)
    assert list(got) == list(want.keys())
    for key in want.keys():
        assert torch.equal(got[key], want[key])


# ------------------------------------------------------------------------------------------ attr kinds
def _tiny_graph() -> Graph:
    graph = Graph("tiny")
    x = graph.add_input("x", (D.symbol("batch"), 4), torch.float32)
    w = graph.add_weight("w", torch.randn(3, 4))
    graph.add_weight("tied", w.data, kind="buffer")  # the same tensor: stored once, loaded for both
    node = graph.create_node("linear", [x, w, None])
    graph.outputs = [node.output]
    return graph


def test_every_attr_kind_and_symbol_round_trips(tmp_path):
    graph = _tiny_graph()
    batch, seq = D.symbol("batch"), sympy.Symbol("s0", integer=True, nonnegative=True)
    node = graph.nodes[0]
    node.attrs.update(i=3, f=0.5, inf=float("inf"), ninf=-float("inf"), b=True, none=None, s="text",
                      lst=[1, [2, 3]], tup=(1, (2.5, "a")), dt=torch.bfloat16, dim=batch * 3,
                      expr=[sympy.floor(batch / 2) + sympy.Max(seq, 1), sympy.Mod(seq, 4)],
                      dic={"k": (1, 2)}, rational=sympy.Rational(1, 2) * batch)
    node.meta["folded"] = ("bn1", "bn2")
    graph.weights["w"].meta["bits"] = 4
    graph.meta["free"] = {"note": [1, 2.0]}
    doc, tensors = graph_to_dict(graph)
    assert len(tensors) == 1  # the tied buffer refers to the parameter's tensor
    json.dumps(doc, allow_nan=False)  # JSON-safe
    loaded = graph_from_dict(json.loads(json.dumps(doc)), tensors)
    got = loaded.nodes[0].attrs
    assert got == node.attrs and [type(v) for v in got.values()] == [type(v) for v in node.attrs.values()]
    assert type(got["tup"][1]) is tuple and got["expr"][1] == sympy.Mod(seq, 4)
    assert got["expr"][0].free_symbols == {batch, seq}
    assert loaded.nodes[0].meta == node.meta and loaded.weights["w"].meta == {"bits": 4}
    assert loaded.meta["free"] == {"note": [1, 2.0]}
    assert loaded.weights["tied"].kind == "buffer" and torch.equal(loaded.weights["tied"].data, graph.weights["w"].data)
    # the saved files hold the tensor twice (safetensors refuses shared memory), still equal
    save_graph(graph, tmp_path)
    assert load_graph(tmp_path).format() == graph.format()
    assert load_graph(tmp_path).inputs[0].shape == (batch, 4)


def test_torch_sympy_functions_round_trip():
    from torch.utils._sympy.functions import FloorDiv, ModularIndexing

    graph = _tiny_graph()
    batch = D.symbol("batch")
    graph.nodes[0].attrs["sizes"] = [FloorDiv(batch, 2), ModularIndexing(batch, 1, 4)]
    loaded = graph_from_dict(*graph_to_dict(graph))
    assert loaded.nodes[0].attrs["sizes"] == graph.nodes[0].attrs["sizes"]


@pytest.mark.parametrize("bad", [torch.device("cpu"), object(), {1: 2}, torch.zeros(2), sympy.Float(1.5) * D.symbol("b")])
def test_unsupported_attr_is_refused(bad):
    graph = _tiny_graph()
    graph.nodes[0].attrs["weird"] = bad
    with pytest.raises(GraphoptError, match=r"%linear \(linear\).*attr 'weird'"):
        graph_to_dict(graph)


def test_unsupported_meta_is_refused():
    graph = _tiny_graph()
    graph.meta["callback"] = print
    with pytest.raises(GraphoptError, match=r"meta\['callback'\]"):
        graph_to_dict(graph)


# ------------------------------------------------------------------------------------------ refusals
@pytest.fixture
def saved(tmp_path) -> Path:
    save_graph(_tiny_graph(), tmp_path)
    return tmp_path


def _edit(saved: Path, change) -> None:
    path = saved / GRAPH_FILE
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def test_newer_version_is_refused(saved):
    _edit(saved, lambda d: d.update(version=FORMAT_VERSION + 1))
    with pytest.raises(GraphoptError, match=rf"graph.json has graph format version {FORMAT_VERSION + 1}.*upgrade"):
        load_graph(saved)


def test_not_a_graph_is_refused(saved):
    _edit(saved, lambda d: d.pop("format"))
    with pytest.raises(GraphoptError, match="is not a graphopt graph"):
        load_graph(saved)


@pytest.mark.parametrize("name", [GRAPH_FILE, WEIGHTS_FILE])
def test_missing_file_is_refused(saved, name):
    (saved / name).unlink()
    with pytest.raises(GraphoptError, match=rf"{name} is missing"):
        load_graph(saved)


def test_missing_directory_is_refused(tmp_path):
    with pytest.raises(GraphoptError, match="is missing"):
        load_graph(tmp_path / "nowhere")
    with pytest.raises(GraphoptError, match="does not exist"):
        save_graph(_tiny_graph(), tmp_path / "nowhere")


def test_truncated_json_is_refused(saved):
    path = saved / GRAPH_FILE
    path.write_text(path.read_text()[:100])
    with pytest.raises(GraphoptError, match=r"graph.json is not valid JSON.*truncated or corrupt"):
        load_graph(saved)


def test_truncated_weights_are_refused(saved):
    path = saved / WEIGHTS_FILE
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(GraphoptError, match=r"weights.safetensors is not a readable safetensors file"):
        load_graph(saved)


def test_missing_weight_is_refused(saved):
    from safetensors.torch import save_file

    save_file({"other": torch.zeros(1)}, str(saved / WEIGHTS_FILE))
    with pytest.raises(GraphoptError, match=r"weights.safetensors has no tensor 'w' for weight %w"):
        load_graph(saved)


def test_wrong_weight_shape_is_refused(saved):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2, 2)}, str(saved / WEIGHTS_FILE))
    with pytest.raises(GraphoptError, match=r"tensor 'w' for weight %w is f32\[2, 2\]"):
        load_graph(saved)


def test_unknown_op_is_refused(saved):
    _edit(saved, lambda d: d["nodes"][0].update(op="my_custom_op"))
    with pytest.raises(GraphoptError, match=r"node %linear \(my_custom_op\) uses op 'my_custom_op'.*register"):
        load_graph(saved)


@pytest.mark.parametrize("change", [
    lambda d: d["nodes"][0].update(inputs=["nope", "w", None]),
    lambda d: d["nodes"][0]["attrs"].update(bad={"$dim": {"f": "os.system", "a": []}}),
    lambda d: d["inputs"][0].update(dtype="zeros"),
    lambda d: d["inputs"][0].update(shape=[{"$dim": {"s": "unknown"}}, 4]),
    lambda d: d.pop("nodes"),
])
def test_corrupt_document_is_refused(saved, change):
    _edit(saved, change)
    with pytest.raises(GraphoptError, match=r"graph.json is corrupt"):
        load_graph(saved)


Pair = collections.namedtuple("Pair", "left right")


class _Nested(torch.nn.Module):
    def forward(self, x):
        return x + 1, {"a": x * 2, "b": Pair(x - 1, [x.sum(1)])}


def test_nested_output_structure_round_trips(tmp_path):
    x = torch.randn(2, 3)
    graph = graphopt.trace(_Nested(), (x,))
    loaded = _round_trip(graph, tmp_path)
    assert loaded.meta["out_spec"] == graph.meta["out_spec"] and "load_notes" not in loaded.meta
    out = structured_outputs(loaded, run_graph(loaded, (x[:1],)))
    assert isinstance(out[1]["b"], Pair) and torch.equal(out[1]["b"].right[0], x[:1].sum(1))
    # a namedtuple whose class this process lacks comes back as an equivalent namedtuple
    doc, tensors = graph_to_dict(graph)
    doc["meta"]["out_spec"]["$spec"]["children"][1]["children"][1]["context"]["$dict"]["qualname"] = "gone.Pair"
    other = structured_outputs(graph_from_dict(doc, tensors), run_graph(graph, (x,)))[1]["b"]
    assert type(other) is not Pair and other._fields == ("left", "right")


def test_onnx_imported_graph_round_trips(tmp_path):
    """The ONNX front-end's meta (onnx_op, onnx_node, onnx_opset, source) survives too."""
    pytest.importorskip("onnx")
    from graphopt.backends import onnx as onnx_backend
    from graphopt.frontends import onnx as onnx_frontend

    graph, _, other_batch = _zoo("mobilenet_v2")
    imported = onnx_frontend.load(onnx_backend.to_onnx(graph))
    loaded = _round_trip(imported, tmp_path)
    _same_values(imported, loaded)
    assert loaded.meta == imported.meta and "onnx_opset" in loaded.meta
    _same_outputs(imported, loaded, other_batch)
