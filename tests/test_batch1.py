"""A batch-1 example keeps the batch axis dynamic: the traced, pruned, ONNX and CLI models run at batch 4.

torch.export fixes an axis whose example size is 1; `trace` traces such an axis at size 2 and
checks the graph against the model on the batch-1 example. When the model's own code fixes the
batch, `trace` says so, naming the input, the axis and the source line.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import warnings

import pytest
import torch
import torch.nn as nn

import graphopt
from graphopt import models_zoo
from graphopt.backends.torch import to_module
from graphopt.frontends.torch import StaticAxisWarning

ZOO = ["resnet18", "vit", "bert", "llama"]


@functools.lru_cache(maxsize=None)
def traced_at_batch1(name: str):
    """(model, batch-1 inputs, graph, batch-4 inputs) for a tiny zoo model; tracing must not warn."""
    model, inputs = models_zoo.get(name, "tiny", batch_size=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", StaticAxisWarning)
        graph = graphopt.trace(model, inputs, dynamic=models_zoo.spec(name).dynamic_axes)
    _, inputs4 = models_zoo.get(name, "tiny", batch_size=4)  # distinct samples (and padded masks for bert)
    return model, inputs, graph, inputs4


def first(out):
    return out[0] if isinstance(out, (tuple, list)) else out


def line_of(fn, text: str) -> int:
    """The line number of the first source line of `fn` that contains `text`."""
    lines, start = inspect.getsourcelines(fn)
    return start + next(k for k, line in enumerate(lines) if text in line)


@pytest.mark.parametrize("name", ZOO)
def test_batch1_trace_runs_at_batch4_on_torch(name):
    model, inputs, graph, inputs4 = traced_at_batch1(name)
    assert graph.symbols()["batch"] == (0, 0)
    assert graph.meta["example_sizes"]["batch"] == 1
    module = to_module(graph)
    with torch.no_grad():
        torch.testing.assert_close(module(*inputs4), model(*inputs4))
        torch.testing.assert_close(module(*inputs), model(*inputs))


@pytest.mark.parametrize("name", ["resnet18", "bert"])
def test_optimize_prune_on_a_batch1_example_runs_at_batch4(name):
    model, inputs, _, inputs4 = traced_at_batch1(name)
    optimized = graphopt.optimize(model, inputs, prune=0.5)
    assert optimized.report.params_after < optimized.report.params_before
    assert "batch" in optimized.graph.symbols()
    out4 = first(optimized(*inputs4))
    assert out4.shape[0] == 4
    for i in range(4):  # each sample of the batch-4 run is what the model gives that sample alone
        alone = first(optimized(*(x[i:i + 1] for x in inputs4)))
        torch.testing.assert_close(out4[i:i + 1], alone, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ZOO)
def test_batch1_trace_runs_at_batch4_on_onnx_runtime(name):
    onnx_backend = pytest.importorskip("graphopt.backends.onnx")
    model, _, graph, inputs4 = traced_at_batch1(name)
    runtime = onnx_backend.compile(graph)
    with torch.no_grad():
        torch.testing.assert_close(first(runtime(*inputs4)), first(model(*inputs4)), atol=1e-4, rtol=1e-4)


def test_pruned_onnx_model_from_a_batch1_example_runs_at_batch4():
    pytest.importorskip("graphopt.backends.onnx")
    model, inputs, _, inputs4 = traced_at_batch1("resnet18")
    optimized = graphopt.optimize(model, inputs, prune=0.5, backend="onnx")
    reference = optimized.torch_module(trainable=False)
    with torch.no_grad():
        torch.testing.assert_close(optimized(*inputs4), reference(*inputs4), atol=1e-4, rtol=1e-4)


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def test_tvm_compiles_for_the_traced_example_sizes(tmp_path):
    gtvm = pytest.importorskip("graphopt.backends.tvm")
    model = ConvNet().eval()
    x1, x3 = torch.randn(1, 3, 8, 8), torch.randn(3, 3, 8, 8)
    graph = graphopt.trace(model, (x1,))
    assert "batch" in graph.symbols()  # dynamic, yet TVM compiles the batch it was traced at
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gtvm.UntunedWarning)
        at1 = gtvm.compile(graph, work_dir=tmp_path, progress=False)
        at3 = gtvm.compile(graphopt.trace(model, (x3,)), work_dir=tmp_path, progress=False)
        told = gtvm.compile(graph, bind={"batch": 3}, work_dir=tmp_path, progress=False)
    assert at1.bind == {"batch": 1} and at1.inputs[0].shape == [1, 3, 8, 8]
    assert at3.bind == {"batch": 3} and told.bind == {"batch": 3}
    with torch.no_grad():
        torch.testing.assert_close(at1(x1), model(x1), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(at3(x3), model(x3), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(told(x3), model(x3), atol=1e-4, rtol=1e-4)


def test_cli_demo_and_inspect_keep_the_batch_axis_of_a_batch1_example(capsys):
    from graphopt.cli import main

    assert main(["demo", "--model", "resnet18", "--batch", "1"]) == 0
    out = capsys.readouterr().out
    assert "batch 1" in out and "graphopt torch module at batch 3" in out
    if importlib.util.find_spec("onnxruntime") is not None:
        assert "ONNX Runtime at batch 3" in out
    row = next(line for line in out.splitlines() if "dynamic axes" in line)
    assert "batch" in row.split("dynamic axes")[1]
    assert main(["inspect", "bert", "--batch", "1"]) == 0
    assert "(%input_ids: i64[batch,seq], %attention_mask: i64[batch,seq])" in capsys.readouterr().out.replace(
        "batch1", "batch")
    assert main(["inspect", "bert", "--batch", "0"]) == 2
    assert "--batch must be at least 1" in capsys.readouterr().err


class ForcesBatch1(nn.Module):
    """Flattens with a literal batch of 1, as code written for single images does."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 5)

    def forward(self, x):
        h = torch.relu(self.conv(x))
        return self.fc(h.view(1, -1))


class ForcesBatch2(nn.Module):
    def forward(self, x):
        return x.view(2, -1) * 2


class SqueezesTheBatch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 2)

    def forward(self, x):
        return self.fc(x).squeeze()


def test_a_model_that_forces_batch1_warns_naming_axis_and_source_line():
    model, x = ForcesBatch1().eval(), torch.randn(1, 3, 8, 8)
    with pytest.warns(StaticAxisWarning) as caught:
        graph = graphopt.trace(model, (x,))
    message = str(caught[0].message)
    assert "input 0 'x' axis 0 ('batch') is fixed at 1" in message
    line = line_of(ForcesBatch1.forward, "h.view(1, -1)")
    assert f"test_batch1.py:{line}: return self.fc(h.view(1, -1))" in message
    assert caught[0].filename == __file__  # the warning points at the caller of trace
    assert graph.inputs[0].type_str() == "f32[1,3,8,8]" and not graph.symbols()
    torch.testing.assert_close(to_module(graph)(x), model(x))


def test_an_axis_specialised_by_the_code_is_named_with_its_line():
    with pytest.warns(StaticAxisWarning) as caught:
        graph = graphopt.trace(ForcesBatch2(), (torch.randn(2, 6),))
    message = str(caught[0].message)
    line = line_of(ForcesBatch2.forward, "x.view(2, -1)")
    assert "input 0 'x' axis 0 ('batch') is fixed at 2: torch.export specialised it to 2" in message
    assert f"test_batch1.py:{line}: return x.view(2, -1) * 2" in message
    assert graph.inputs[0].type_str() == "f32[2,6]"


def test_a_model_that_computes_something_else_at_batch1_keeps_its_batch1_meaning():
    # At batch 2 squeeze() keeps the batch axis; at batch 1 it drops it: the graph checked at batch 1 says so.
    model, x = SqueezesTheBatch().eval(), torch.randn(1, 6)
    with pytest.warns(StaticAxisWarning, match="differs from the model's .*float32\\[1, 2\\].*float32\\[2\\]") as caught:
        graph = graphopt.trace(model, (x,))
    line = line_of(SqueezesTheBatch.forward, "squeeze()")  # the warning names the line that does it
    assert f"test_batch1.py:{line}: return self.fc(x).squeeze()" in str(caught[0].message)
    assert graph.inputs[0].type_str() == "f32[1,6]"
    torch.testing.assert_close(to_module(graph)(x), model(x))


class TwoInputs(nn.Module):
    """Tokens and a padding mask, plus inputs that are not batched: a 0-d temperature and an int."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(50, 16)
        self.proj = nn.Linear(16, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, ids, mask, temperature, repeats: int):
        h = self.embed(ids)
        for _ in range(repeats):
            h = h + torch.tanh(self.proj(h))
        weights = mask.unsqueeze(-1).to(h.dtype)
        pooled = (h * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        return self.head(pooled) / temperature


def test_a_two_input_model_at_batch1_runs_at_batch4_on_torch_and_onnx():
    model = TwoInputs().eval()
    ids1, mask1 = torch.randint(0, 50, (1, 7)), torch.ones(1, 7, dtype=torch.long)
    ids4, mask4 = torch.randint(0, 50, (4, 7)), torch.ones(4, 7, dtype=torch.long)
    mask4[1, 4:] = 0
    temperature = torch.tensor(2.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", StaticAxisWarning)
        graph = graphopt.trace(model, (ids1, mask1, temperature, 2))
    assert [v.type_str() for v in graph.inputs] == ["i64[batch,7]", "i64[batch,7]", "f32[]"]  # the mask meets h: one batch
    expected = model(ids4, mask4, temperature, 2)
    torch.testing.assert_close(to_module(graph)(ids4, mask4, temperature), expected)
    onnx_backend = pytest.importorskip("graphopt.backends.onnx")
    torch.testing.assert_close(onnx_backend.compile(graph)(ids4, mask4, temperature), expected, atol=1e-5, rtol=1e-4)


class SharedBias(nn.Module):
    """A (1, 8) bias table broadcast over the batch: its axis 0 is not a batch axis."""

    def forward(self, x, table):
        return x * 2 + table


def test_a_mapping_says_which_inputs_are_batched():
    x1, x4, table = torch.randn(1, 8), torch.randn(4, 8), torch.randn(1, 8)
    graph = graphopt.trace(SharedBias(), (x1, table), dynamic={0: {0: "batch"}})
    assert [v.type_str() for v in graph.inputs] == ["f32[batch,8]", "f32[1,8]"]
    torch.testing.assert_close(to_module(graph)(x4, table), SharedBias()(x4, table))


class MaskedScores(nn.Module):
    """An additive (S, S) attention mask shared by the batch: its axis 0 is the sequence, not the batch."""

    def forward(self, x, mask):
        return ((x @ x.transpose(1, 2)) + mask).softmax(-1) @ x


def test_inputs_that_are_not_batched_are_neither_widened_nor_warned_about():
    x1, x4, mask = torch.randn(1, 6, 4), torch.randn(4, 6, 4), torch.triu(torch.full((6, 6), -1e4), 1)
    table = torch.randn(1, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error", StaticAxisWarning)
        masked = graphopt.trace(MaskedScores(), (x1, mask))
        shared = graphopt.trace(SharedBias(), (torch.randn(4, 8), table))  # batch 4: the (1, 8) table is not batched
    assert [v.type_str() for v in masked.inputs] == ["f32[batch,6,4]", "f32[6,6]"]
    torch.testing.assert_close(to_module(masked)(x4, mask), MaskedScores()(x4, mask))
    assert [v.type_str() for v in shared.inputs] == ["f32[batch,8]", "f32[1,8]"]
    x3 = torch.randn(3, 8)
    torch.testing.assert_close(to_module(shared)(x3, table), SharedBias()(x3, table))


def test_dynamic_none_asks_for_static_shapes():
    model, x = ConvNet().eval(), torch.randn(1, 3, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error", StaticAxisWarning)
        graph = graphopt.trace(model, (x,), dynamic=None)
        optimized = graphopt.optimize(model, (x,), dynamic=None)
    assert graph.inputs[0].type_str() == "f32[1,3,8,8]" and not graph.symbols()
    assert not optimized.graph.symbols() and graph.meta["example_sizes"] == {}


def _hf_models():
    transformers = pytest.importorskip("transformers")
    small = dict(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                 max_position_embeddings=64)
    return {
        "bert": lambda: transformers.BertModel(transformers.BertConfig(**small)),
        "llama": lambda: transformers.LlamaModel(transformers.LlamaConfig(**small, num_key_value_heads=2,
                                                                          use_cache=False)),
    }


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_hugging_face_model_traced_at_batch1_runs_at_batch4(arch):
    torch.manual_seed(0)
    model = _hf_models()[arch]().eval()
    ids1, mask1 = torch.randint(1, 96, (1, 8)), torch.ones(1, 8, dtype=torch.long)
    ids4, mask4 = torch.randint(1, 96, (4, 8)), torch.ones(4, 8, dtype=torch.long)
    mask4[2, 5:] = 0
    with warnings.catch_warnings():
        warnings.simplefilter("error", StaticAxisWarning)
        graph = graphopt.trace(model, (), {"input_ids": ids1, "attention_mask": mask1})
    assert "batch" in graph.symbols()
    expected = model(input_ids=ids4, attention_mask=mask4).last_hidden_state
    torch.testing.assert_close(to_module(graph)(ids4, mask4)["last_hidden_state"], expected)
    onnx_backend = pytest.importorskip("graphopt.backends.onnx")
    torch.testing.assert_close(first(onnx_backend.compile(graph)(ids4, mask4)), expected, atol=1e-4, rtol=1e-4)
    pruned = graphopt.optimize(model, (ids1, mask1), prune=0.5, backend="onnx")  # pruned at batch 1, run at 4
    assert pruned.report.params_after < pruned.report.params_before
    reference = pruned.torch_module(trainable=False)(ids4, mask4)["last_hidden_state"]
    torch.testing.assert_close(pruned(ids4, mask4)["last_hidden_state"], reference, atol=1e-4, rtol=1e-4)


class Varargs(nn.Module):
    """forward(self, first, *rest, scale=...): torch.export takes *rest's dynamic axes as one tuple."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, first, *rest, scale=None):
        out = self.fc(first + rest[0] * rest[1])
        return out if scale is None else out * scale


@pytest.mark.parametrize("kwargs", [None, {"scale": torch.full((1, 3), 2.0)}], ids=["args", "args_and_kwargs"])
def test_a_varargs_forward_keeps_its_batch_axis(kwargs, recwarn):
    model, xs = Varargs().eval(), tuple(torch.randn(1, 4) for _ in range(3))
    graph = graphopt.trace(model, xs, kwargs)
    assert graph.symbols() and graph.inputs[0].type_str() == "f32[batch,4]"
    assert not [w for w in recwarn if issubclass(w.category, StaticAxisWarning)]
    x4 = tuple(torch.randn(4, 4) for _ in range(3))
    extra = () if kwargs is None else (torch.full((4, 3), 2.0),)
    torch.testing.assert_close(to_module(graph)(*x4, *extra), model(*x4, **({} if kwargs is None else
                                                                          {"scale": extra[0]})))
