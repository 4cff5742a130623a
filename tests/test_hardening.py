"""Hostile but realistic use (issue 17): each case crashed, misbehaved or said nothing useful before.

Cases that can kill or poison the interpreter run in a subprocess.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

import graphopt
from graphopt.errors import GraphoptError


def run_python(code: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout)


def test_pipeline_parsing_is_thread_safe_from_a_cold_registry():
    """10 threads parsing at once, the pass modules not imported yet (a fresh process): no spurious errors.

    Before: a module-global stack of pipelines being expanded ("pipeline 'canonicalize' contains itself") and
    a loaded flag set before the pass modules were imported ("unknown pass 'canonicalize'"): 5,048 of 6,000
    parses failed.
    """
    done = run_python("""
        import collections, threading
        from graphopt.passmanager import PassManager
        errors = collections.Counter()
        def work():
            for _ in range(50):
                try:
                    PassManager.parse("canonicalize,simplify")
                except Exception as exc:
                    errors[str(exc)[:80]] += 1
        threads = [threading.Thread(target=work) for _ in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        print(sum(errors.values()), errors.most_common(2))
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "0 []"


def test_registering_over_a_builtin_criterion_needs_replace():
    from graphopt.passes.prune import CRITERIA, register_criterion

    builtin = CRITERIA["l2"]
    with pytest.raises(GraphoptError, match="'l2' is already registered.*replace=True"):
        register_criterion("l2")(lambda group: None)
    assert CRITERIA["l2"] is builtin
    try:
        replaced = register_criterion("l2", replace=True)(lambda group: builtin(group))
        assert CRITERIA["l2"] is replaced
    finally:
        CRITERIA["l2"] = builtin


@pytest.mark.parametrize("result,said", [(None, "returned None"), ("nan", "non-finite"), ("short", "shape"),
                                         ("text", "not numbers")])
def test_a_criterion_returning_no_usable_scores_is_named(result, said):
    import numpy as np
    import torch

    from graphopt.passes.prune import CRITERIA, register_criterion

    def bad(group):
        return {"nan": np.full(group.num_channels, np.nan), "short": np.ones(1), "text": ["a"] * group.num_channels,
                None: None}[result]

    register_criterion("broken-for-test")(bad)
    try:
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        with pytest.raises(GraphoptError, match=f"criterion 'broken-for-test' on channel group .*{said}"):
            graphopt.optimize(model, (torch.randn(2, 4),), prune={"ratio": 0.5, "criterion": "broken-for-test"})
    finally:
        CRITERIA.pop("broken-for-test")


def _dynamic_linear():
    import torch

    model = torch.nn.Sequential(torch.nn.Linear(4, 3)).eval()
    return graphopt.trace(model, (torch.randn(2, 4),))


@pytest.mark.parametrize("bind,said", [({"batch": -1}, "integer >= 1"), ({"batch": 0}, "integer >= 1"),
                                       ({"batch": 2.5}, "integer >= 1"), ({"batch": True}, "integer >= 1"),
                                       ({"seq": 3}, "not symbols"), ([1], "must map")])
def test_bad_bind_sizes_are_rejected_by_every_back_end(tmp_path, bind, said):
    """Before: TVM died with a segmentation fault on batch=-1 and compiled batch=0; ONNX export blamed -2 on
    "a graphopt exporter bug"."""
    from graphopt.backends import onnx as gonnx
    from graphopt.errors import BindError

    graph = _dynamic_linear()
    with pytest.raises(BindError, match=said):
        gonnx.export(graph, tmp_path / "m.onnx", bind=bind)
    assert not (tmp_path / "m.onnx").exists()
    tvm = pytest.importorskip("graphopt.backends.tvm")
    with pytest.raises(BindError, match=said):
        tvm.compile(graph, bind=bind)


def test_an_unknown_onnx_runtime_provider_is_rejected():
    """Before: providers=["NoSuchProvider"] ran silently on the CPU."""
    from graphopt.backends.onnx import compile as ort_compile

    graph = _dynamic_linear()
    with pytest.raises(GraphoptError, match="'NoSuchProvider' is not available.*available: .*CPUExecutionProvider"):
        ort_compile(graph, providers=["NoSuchProvider"])
    with pytest.raises(GraphoptError, match="did you mean 'CPUExecutionProvider'"):
        ort_compile(graph, providers=["CpuExecutionProvider"])
    with pytest.raises(GraphoptError, match="a list of provider names"):
        ort_compile(graph, providers="CPUExecutionProvider")
    assert ort_compile(graph, providers=[("CPUExecutionProvider", {})]).session.get_providers() == ["CPUExecutionProvider"]


def _conv_model():
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                               torch.nn.Linear(8 * 6 * 6, 2)).eval()


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_calling_an_optimized_model_checks_its_inputs_and_takes_numpy(backend):
    """Before: numpy gave "TypeError: 'int' object is not callable", float64 torch's dtype error, a wrong size a
    reshape error deep inside."""
    import torch

    from graphopt.errors import InputError

    x = torch.randn(2, 3, 8, 8)
    opt = graphopt.optimize(_conv_model(), (x,), backend=backend)
    torch.testing.assert_close(opt(x.numpy()), opt(x))
    with pytest.raises(InputError, match=r"input 0 \(%input: f32\[batch,3,8,8\]\) has dtype torch.float64.*x.to"):
        opt(x.double())
    with pytest.raises(InputError, match="size 9 on axis 2; the model needs 8 there"):
        opt(torch.randn(2, 3, 9, 9))
    with pytest.raises(InputError, match="takes 1 input"):
        opt(x, x)
    with pytest.raises(InputError, match="must be a torch tensor, got list"):
        opt([1.0])


def test_a_dict_output_stays_a_dict_on_onnx_runtime():
    """Before: backend="onnx" returned a flat tuple for a dict (and a nested list) output."""
    import torch

    class Heads(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = torch.nn.Linear(4, 3)

        def forward(self, x):
            y = self.body(x)
            return {"logits": y, "extra": [y * 2, y.sum(-1)]}

    model, x = Heads().eval(), torch.randn(2, 4)
    want = model(x)
    for backend in ("torch", "onnx"):
        got = graphopt.optimize(model, (x,), backend=backend)(x)
        assert isinstance(got, dict) and set(got) == {"logits", "extra"} and isinstance(got["extra"], list)
        torch.testing.assert_close(got["logits"], want["logits"])
        torch.testing.assert_close(got["extra"][1], want["extra"][1])


@pytest.mark.parametrize("example", [None, (), 3, "x"])
def test_optimize_without_usable_example_inputs_says_so(example):
    """Before: optimize(example_inputs=None) raised TypeError: 'NoneType' object is not iterable."""
    from graphopt.errors import InputError

    with pytest.raises(InputError, match="example_inputs must be a tensor or a non-empty tuple"):
        graphopt.optimize(_conv_model(), example)


@pytest.mark.parametrize("options", [{"prune": 0.5}, {"quantize": "int8"}])
def test_calibration_data_of_the_wrong_size_is_rejected_before_any_pass(options):
    """Before: pruning accepted 16x16 calibration images for a model traced at 8x8 (a static size) silently;
    quantization failed inside the pass with a reshape error."""
    import torch

    from graphopt.errors import InputError

    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(InputError, match="calibration batch 1: input 0 .* has size 16 on axis 2"):
        graphopt.optimize(_conv_model(), (x,), calibration_data=[(x,), (torch.randn(2, 3, 16, 16),)], **options)


def test_the_onnx_loader_names_a_directory_as_one(tmp_path):
    """Before: a directory was reported as "does not exist"."""
    from graphopt.frontends.onnx import load

    (tmp_path / "model.onnx").write_bytes(b"")
    with pytest.raises(GraphoptError, match="is a directory, not an ONNX file.*it holds model.onnx"):
        load(tmp_path)


def test_inspect_picture_into_a_missing_folder_is_one_line_before_tracing(tmp_path):
    """Before: a full traceback after the trace and analysis."""
    done = subprocess.run([sys.executable, "-m", "graphopt.cli", "inspect", "resnet18", "--picture",
                           str(tmp_path / "missing" / "g.svg")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"error: cannot write {tmp_path / 'missing' / 'g.svg'}: "
                                                f"the folder {tmp_path / 'missing'} does not exist"]
    assert "Traceback" not in done.stderr + done.stdout


def _tiny_onnx(nodes, output_rank: int):
    from onnx import TensorProto, helper

    out = helper.make_tensor_value_info("y", TensorProto.INT64, [None] * output_rank)
    return helper.make_model(helper.make_graph(nodes, "bomb", [], [out]), opset_imports=[helper.make_opsetid("", 17)])


def _int_const(name, values, dims=()):
    from onnx import TensorProto, helper

    return helper.make_node("Constant", [], [name], value=helper.make_tensor(name, TensorProto.INT64, list(dims),
                                                                              values))


def test_a_tiny_onnx_file_cannot_make_the_importer_allocate_gigabytes():
    """Before: a 167-byte Range(0, 2e8) was folded into a 1.6 GB array (numpy MemoryError on smaller machines);
    broadcasting folders (Add of a [4096, 1] and a [1, 4096] range) had no output bound either."""
    import tracemalloc

    from onnx import helper

    from graphopt.frontends.onnx import load

    scalars = [_int_const("s", [0]), _int_const("l", [200_000_000]), _int_const("d", [1])]
    range_bomb = _tiny_onnx(scalars + [helper.make_node("Range", ["s", "l", "d"], ["y"])], 1)
    small = [_int_const("s", [0]), _int_const("l", [4096]), _int_const("d", [1]), _int_const("a0", [0], [1]),
             _int_const("a1", [1], [1]), helper.make_node("Range", ["s", "l", "d"], ["r"]),
             helper.make_node("Unsqueeze", ["r", "a1"], ["col"]), helper.make_node("Unsqueeze", ["r", "a0"], ["row"])]
    add_bomb = _tiny_onnx(small + [helper.make_node("Add", ["col", "row"], ["y"])], 2)
    for model, op, shape in ((range_bomb, "arange", "i64[200000000]"), (add_bomb, "add", "i64[4096,4096]")):
        assert len(model.SerializeToString()) < 400
        tracemalloc.start()
        try:
            graph = load(model)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 20e6, f"the importer allocated {peak / 1e6:.0f} MB"
        # not folded: the op stays in the graph, where its size only matters if the model is run
        assert [n.op for n in graph.nodes] == [op] and graph.outputs[0].type_str() == shape


def test_a_range_that_never_ends_is_named():
    from onnx import helper

    from graphopt.frontends.onnx import load

    model = _tiny_onnx([_int_const("s", [0]), _int_const("l", [5]), _int_const("d", [0]),
                        helper.make_node("Range", ["s", "l", "d"], ["y"])], 1)
    with pytest.raises(GraphoptError, match="Range with delta 0"):
        load(model)


def _recipe_case():
    """(canonicalised graph of a 3-layer MLP, the JSON recipe of pruning it by half: two groups)."""
    import torch

    from graphopt.passmanager import PassManager

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 8), torch.nn.ReLU(),
                                torch.nn.Linear(8, 2)).eval()
    x = torch.randn(4, 6)
    pruned = graphopt.optimize(model, (x,), prune=0.5)
    graph, _ = PassManager.parse("simplify").run(graphopt.trace(model, (x,)), (x,))
    return graph, pruned.recipe.to_json()


def _edited(text: str, edit) -> str:
    import json

    data = json.loads(text)
    edit(data)
    return json.dumps(data)


@pytest.mark.parametrize("edit,said", [
    (lambda d: d["steps"][0].pop("structure"), r"steps\[0\].structure must be the structure hash"),
    (lambda d: d["steps"][0]["groups"][0].update(removed=["0", "1"]), r"steps\[0\].groups\[0\].removed must be"),
    (lambda d: d["steps"][0]["groups"][0].update(removed=[1, 1]), "lists channel 1 more than once"),
    (lambda d: d["steps"][0]["groups"][0].update(removed=[-1]), "integers >= 0"),
    (lambda d: d.update(steps={}), "'steps' must be a non-empty list"),
    (lambda d: d["steps"][0]["groups"][0].pop("anchor"), r"groups\[0\].anchor must be"),
    (lambda d: d.update(format=7), "unsupported recipe format 7"),
])
def test_an_edited_recipe_is_refused_naming_the_field(edit, said):
    """Before: KeyError: 'structure', ValueError on string ids, {"steps": {}} applied as a silent no-op,
    duplicate channel ids accepted."""
    from graphopt.passes.prune import PruneRecipe, RecipeError

    _, text = _recipe_case()
    with pytest.raises(RecipeError, match=said):
        PruneRecipe.from_json(_edited(text, edit))


def test_a_recipe_that_fails_half_way_leaves_the_graph_as_it_was():
    """Before: the first group was removed, then the second failed: a half-pruned graph."""
    from graphopt.passes.prune import PruneRecipe, RecipeError, apply_recipe

    graph, text = _recipe_case()
    before, params = graph.format(), graph.num_params()
    bad_second = _edited(text, lambda d: d["steps"][0]["groups"][-1].update(removed=[0, 1, 99]))
    assert len(PruneRecipe.from_json(text).steps[0].groups) >= 2
    with pytest.raises(RecipeError, match="removes channel 99 of the group"):
        apply_recipe(graph, PruneRecipe.from_json(bad_second))
    assert graph.format() == before
    graph.verify()
    apply_recipe(graph, PruneRecipe.from_json(text))  # the good recipe still applies, and prunes
    assert graph.num_params() < params


def test_recipe_files_that_cannot_be_read_or_written_are_named(tmp_path):
    """Before: FileNotFoundError naming a temporary file (save), or a bare one (load)."""
    from graphopt.passes.prune import PruneRecipe, RecipeError

    _, text = _recipe_case()
    recipe = PruneRecipe.from_json(text)
    with pytest.raises(RecipeError, match="the folder .*missing does not exist"):
        recipe.save(tmp_path / "missing" / "r.json")
    with pytest.raises(RecipeError, match="does not exist"):
        PruneRecipe.load(tmp_path / "nothing.json")
    with pytest.raises(RecipeError, match="is a folder"):
        PruneRecipe.load(tmp_path)
    assert PruneRecipe.load(recipe.save(tmp_path / "r.json")).to_json() == recipe.to_json()


def test_a_converter_refusal_names_the_model_line():
    """Before: "node 'index': indexing with a boolean mask ..." without saying where in the model."""
    import torch

    class Masked(torch.nn.Module):
        def forward(self, x):
            return x[x > 0]  # the line the error must name

    with pytest.raises(GraphoptError, match=r"boolean mask.*test_hardening.py:\d+: `return x\[x > 0\]"):
        graphopt.trace(Masked(), (torch.randn(3, 4),))


def test_non_tensor_example_arguments_are_constants_of_the_trace():
    """optimize(model, (x, 3, True)): the flags are fixed by the trace; the optimized model takes x alone."""
    import torch

    class Scaled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(4, 4)

        def forward(self, x, k=2, flag=True):
            return self.fc(x) * k if flag else x

    model, x = Scaled().eval(), torch.randn(2, 4)
    opt = graphopt.optimize(model, (x, 3, True))
    torch.testing.assert_close(opt(x), model(x, 3, True))
    with pytest.raises(GraphoptError, match="such as 3 were fixed when the model was traced: leave them out"):
        opt(x, 3, True)


def test_a_pass_that_fails_half_way_leaves_the_callers_graph_as_it_was():
    """A pass edits the graph, then raises: the caller's graph prints exactly as before (the manager works on
    a clone), and the error names the pass."""
    import torch

    from graphopt.passmanager import Pass, PassFailedError, PassManager

    class HalfWay(Pass):
        """Erases the last node, then fails."""

        name = "half-way-for-test"

        def run(self, graph, analyses):
            graph.outputs[0] = graph.nodes[-1].inputs[0]
            graph.erase_node(graph.nodes[-1])
            raise RuntimeError("failed after editing")

    graph = _dynamic_linear()
    x = torch.randn(2, 4)
    graph = PassManager.parse("canonicalize").run(graph, (x,))[0]
    before = graph.format()
    with pytest.raises(PassFailedError, match="half-way-for-test.*failed after editing"):
        PassManager([HalfWay()]).run(graph, (x,))
    assert graph.format() == before
    graph.verify()


def test_an_optimized_hugging_face_model_takes_its_inputs_by_name():
    """A transformers model is called with input_ids=..., attention_mask=...; so is its optimized version."""
    import torch

    from graphopt.errors import InputError

    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=32)
    torch.manual_seed(0)
    model = transformers.BertModel(config).eval()
    ids, mask = torch.randint(1, 64, (1, 8)), torch.ones(1, 8, dtype=torch.long)
    opt = graphopt.optimize(model, (ids, mask), backend="onnx")
    want = model(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(opt(input_ids=ids, attention_mask=mask)["last_hidden_state"], want,
                               atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(opt(ids, attention_mask=mask.numpy())["last_hidden_state"], want, atol=1e-4, rtol=1e-4)
    with pytest.raises(InputError, match="no input 'input_id'.*did you mean 'input_ids'"):
        opt(input_id=ids, attention_mask=mask)
    with pytest.raises(InputError, match="'input_ids' is given both by position and by name"):
        opt(ids, input_ids=ids, attention_mask=mask)
    with pytest.raises(InputError, match="needs input 'attention_mask' too"):
        opt(input_ids=ids)
