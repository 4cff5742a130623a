"""TVM back-end: targets, budgets, tuning with database reuse, artifacts (fresh process, C++), RPC tuning.

Tuning runs use a few trials on two- or three-task graphs; each test's database is its own
temporary directory, so nothing depends on what an earlier run tuned.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("tvm")
pytest.importorskip("onnx")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import graphopt  # noqa: E402
from graphopt.errors import GraphoptError  # noqa: E402
from graphopt.backends import tvm as gtvm  # noqa: E402
from graphopt.backends.tvm import artifact as tvm_artifact  # noqa: E402
from graphopt.backends.tvm.tuning import Budget, Task, allocate  # noqa: E402

from conftest import traced_zoo_model  # noqa: E402


class MLP(torch.nn.Module):
    def __init__(self, hidden: int = 128, out: int = 16) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = torch.nn.Linear(64, hidden)
        self.b = torch.nn.Linear(hidden, out)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def mlp_graph(hidden: int = 128, out: int = 16):
    model = MLP(hidden, out).eval()
    x = torch.randn(4, 64)
    return model, (x,), graphopt.trace(model, (x,), dynamic="batch")


# ------------------------------------------------------------------ targets and budgets
def test_detect_target_fills_host_cpu_and_cores():
    target = gtvm.detect_target()
    config = json.loads(str(target))
    assert config["kind"] == "llvm"
    assert config["mcpu"] == gtvm.host_mcpu()
    assert config["num-cores"] >= 1
    explicit = json.loads(str(gtvm.detect_target({"kind": "llvm", "mcpu": "skylake-avx512", "num-cores": 4})))
    assert (explicit["mcpu"], explicit["num-cores"]) == ("skylake-avx512", 4)


@pytest.mark.parametrize("env, expected", [({}, "cores"), ({"TVM_NUM_THREADS": "1"}, "1"),
                                           ({"OMP_NUM_THREADS": "1"}, "1")])
def test_runtime_uses_every_core_unless_the_user_chose(env, expected):
    # TVM alone sizes its pool as hardware_concurrency / 2 on x86: one thread on 2 vCPUs.
    import os

    from graphopt.backends.tvm.artifact import physical_cores

    clean = {k: v for k, v in os.environ.items() if k not in ("TVM_NUM_THREADS", "OMP_NUM_THREADS")}
    probe = "import graphopt.backends.tvm, tvm; print(tvm.runtime.num_threads())"
    done = subprocess.run([sys.executable, "-c", probe], env={**clean, **env}, capture_output=True, text=True,
                          timeout=120, check=True)
    assert done.stdout.strip() == (str(physical_cores()) if expected == "cores" else expected)


def test_flag_string_targets_are_rejected_with_the_json_form():
    with pytest.raises(GraphoptError, match="JSON dict"):
        gtvm.detect_target("llvm -mcpu=znver4")


@pytest.mark.parametrize("tune, expected", [
    (None, None), (0, None), (12, Budget(trials=12)), ("90s", Budget(seconds=90.0)),
    ("15min", Budget(seconds=900.0)), ("1h", Budget(seconds=3600.0)),
])
def test_budget_parse(tune, expected):
    assert Budget.parse(tune) == expected


@pytest.mark.parametrize("bad", [True, -3, "fast", 1.5])
def test_budget_parse_rejects_ambiguous_values(bad):
    with pytest.raises(GraphoptError):
        Budget.parse(bad)


def test_allocate_weights_trials_by_flops_and_skips_tiny_and_tuned_tasks():
    big = Task("conv_big", weight=2, flops=4e9, mod=None)
    mid = Task("conv_mid", weight=1, flops=1e9, mod=None)
    tiny = Task("add", weight=1, flops=1e5, mod=None)
    done = Task("conv_done", weight=1, flops=3e9, mod=None, best_seconds=1e-3)
    groups = allocate([big, mid, tiny, done], trials=90)
    planned = {t.name: t.planned for g in groups.values() for t in g}
    assert planned == {"conv_big": 64, "conv_mid": 8}  # 80 and 10 rounded down to powers of two
    assert list(groups) == [64, 8]                      # the heaviest group first
    assert tiny.planned == 0 and done.planned == 0


def test_timed_steps_tune_every_task_then_follow_where_time_goes():
    from graphopt.backends.tvm.tuning import QUICK_TRIALS, _timed_steps

    big = Task("conv_big", weight=2, flops=4e9, mod=None)
    mid = Task("conv_mid", weight=1, flops=1e9, mod=None)
    small = Task("conv_small", weight=1, flops=2e9, mod=None)
    pool = Task("pool", weight=1, flops=1e5, mod=None)
    steps = _timed_steps([big, small, mid], [pool], 16)
    first = [next(steps) for _ in range(4)]
    assert [(t.name, n, kind) for t, n, kind in first] == [
        ("conv_big", 16, "quick"), ("conv_small", 16, "quick"), ("conv_mid", 16, "quick"),
        ("pool", QUICK_TRIALS, "quick")]
    # Measured: big 2 x 3 ms, mid 2 ms, pool 0.5 ms, small 0.1 ms; average 2.15 ms. Rounds go to
    # the tasks above half the average, largest first, by evolutionary search.
    big.best_seconds, mid.best_seconds, small.best_seconds, pool.best_seconds = 3e-3, 2e-3, 1e-4, 5e-4
    names = lambda n: [(t.name, kind) for t, _, kind in (next(steps) for _ in range(n))]  # noqa: E731
    assert names(2) == [("conv_big", None), ("conv_mid", None)]
    assert names(1) == [("conv_big", None)]
    big.best_seconds = 2.5e-3                       # big gained; mid has not, twice: it waits
    assert names(1) == [("conv_mid", None)]
    assert names(2) == [("conv_big", None), ("conv_big", None)]
    # big is stale now too: the threshold halves and the small pooling task gets searched.
    assert names(1) == [("pool", None)]


# ------------------------------------------------------------------ tuning and the database
def test_a_corrupt_saved_cost_model_is_ignored_with_a_warning(tmp_path):
    from graphopt.backends.tvm.tuning import COST_MODEL_FILE

    model, inputs, graph = mlp_graph()
    target_dir = gtvm.TuningDatabase(gtvm.detect_target(), tmp_path).path
    (target_dir / COST_MODEL_FILE).write_bytes(b"not a tar file")
    with pytest.warns(UserWarning, match="ignoring the saved TVM cost model"):
        tuned = gtvm.compile(graph, example_inputs=inputs, work_dir=tmp_path, tune=4, progress=False)
    torch.testing.assert_close(tuned(*inputs), model(*inputs), atol=1e-4, rtol=1e-4)
    assert (target_dir / COST_MODEL_FILE).read_bytes() != b"not a tar file"  # replaced by the new model


def test_small_tasks_get_a_quick_pass_and_the_cost_model_is_kept(tmp_path):
    from graphopt.backends.tvm.tuning import COST_MODEL_FILE, QUICK_TRIALS

    model, inputs, graph = mlp_graph(hidden=128, out=16)
    # min_share=0.3 makes the 128->16 layer (20% of the FLOPs) a small task.
    tuned = gtvm.compile(graph, example_inputs=inputs, work_dir=tmp_path, tune=40, min_share=0.3, progress=False)
    torch.testing.assert_close(tuned(*inputs), model(*inputs), atol=1e-4, rtol=1e-4)
    by_cost = sorted((t for t in tuned.report.tasks if t.cost), key=lambda t: -t.cost)
    assert by_cost[-1].measured == QUICK_TRIALS and by_cost[0].measured > QUICK_TRIALS
    assert all(t.best_seconds is not None for t in tuned.report.tasks)
    assert (tuned.database.path / COST_MODEL_FILE).stat().st_size > 0
    # A new graph tunes with the kept model (loaded, not rebuilt: a bad file would warn).
    import warnings

    model2, inputs2, graph2 = mlp_graph(hidden=96, out=16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        other = gtvm.compile(graph2, example_inputs=inputs2, work_dir=tmp_path, tune=8, progress=False)
    assert other.report.measured > 0
    torch.testing.assert_close(other(*inputs2), model2(*inputs2), atol=1e-4, rtol=1e-4)


def test_tuning_reuses_the_database_across_compiles_and_graphs(tmp_path):
    model, inputs, graph = mlp_graph()
    lines: list[str] = []
    tuned = gtvm.compile(graph, example_inputs=inputs, work_dir=tmp_path, tune=4, progress=lines.append)
    torch.testing.assert_close(tuned(*inputs), model(*inputs), atol=1e-4, rtol=1e-4)
    assert tuned.report.measured > 0
    assert all(t.best_seconds is not None for t in tuned.report.tasks)
    assert any("best" in line and "ms" in line for line in lines)

    # The same graph again: every task has a record, nothing is measured, no untuned warning.
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", gtvm.UntunedWarning)
        again = gtvm.compile(graph, example_inputs=inputs, work_dir=tmp_path, tune=4, progress=False)
        applied = gtvm.compile(graph, example_inputs=inputs, work_dir=tmp_path, progress=False)
    assert again.report.measured == 0 and applied.report.measured == 0
    torch.testing.assert_close(applied(*inputs), model(*inputs), atol=1e-4, rtol=1e-4)

    # A variant with a different output layer (as a pruned head would be): the first layer's
    # task is shared and reused; only the new task is measured.
    _, v_inputs, variant = mlp_graph(out=8)
    reused = gtvm.compile(variant, example_inputs=v_inputs, work_dir=tmp_path, tune=4, progress=False)
    measured = {t.name for t in reused.report.tasks if t.measured}
    shared = {t.name for t in reused.report.tasks if not t.measured}
    assert len(measured) == 1 and len(shared) == 1
    assert len(tuned.database) > 0


class ConvNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(8, 16, 3, padding=1)
        self.fc = torch.nn.Linear(16, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


@pytest.mark.parametrize("prepack", [True, False])
def test_prepacked_weights_match(tmp_path, prepack):
    # Layout-free weights (the default): tuned kernels may rewrite the weight layout, which the
    # build applies once to the bound weights; off, the traced layout stays.
    model, x = ConvNet().eval(), torch.randn(1, 8, 12, 12)
    graph = graphopt.trace(model, (x,))
    packed = gtvm.compile(graph, work_dir=tmp_path, tune=24, prepack=prepack, progress=False)
    assert packed.report.measured > 0
    torch.testing.assert_close(packed(x), model(x), atol=1e-4, rtol=1e-4)
    records = next(tmp_path.glob("*/database_tuning_record.json")).read_text()
    assert ("layout_rewrite" in records) == prepack


class Embed(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(1000, 32)
        self.fc = torch.nn.Linear(32, 8)

    def forward(self, ids):
        return self.fc(self.embed(ids))


def test_gather_tasks_are_measured_with_valid_indices(tmp_path):
    # MetaSchedule fills arguments with random values: as indices, they crashed every candidate.
    model, ids = Embed().eval(), torch.randint(0, 1000, (1, 16))
    graph = graphopt.trace(model, (ids,))
    tuned = gtvm.compile(graph, work_dir=tmp_path, tune=32, min_share=0.0, progress=False)
    take = [t for t in tuned.report.tasks if t.name.startswith("take")]
    assert take and all(t.measured and t.failed == 0 and t.best_seconds is not None for t in take)
    torch.testing.assert_close(tuned(ids), model(ids), atol=1e-4, rtol=1e-4)


def test_profile_times_each_kernel_in_the_model(tmp_path):
    model, inputs, graph = mlp_graph()
    tuned = gtvm.compile(graph, example_inputs=inputs, work_dir=tmp_path, tune=4, progress=False)
    rows = tuned.profile(*inputs, repeat=3)
    kernels = {r.name.removesuffix("_prepacked"): r for r in rows if r.estimated_ms is not None}
    assert set(kernels) == {t.name for t in tuned.report.tasks}  # every tuned task ran, with its estimate
    for task in tuned.report.tasks:
        assert kernels[task.name].calls == task.weight and kernels[task.name].ms > 0
    assert [r.ms for r in rows] == sorted((r.ms for r in rows), reverse=True)
    torch.testing.assert_close(tuned(*inputs), model(*inputs), atol=1e-4, rtol=1e-4)  # unaffected


def test_untuned_build_warns_and_names_the_remedies(tmp_path):
    _, inputs, graph = mlp_graph()
    with pytest.warns(gtvm.UntunedWarning, match=r"tune=.*onnx"):
        gtvm.compile(graph, example_inputs=inputs, work_dir=tmp_path, progress=False)


def test_static_shapes_are_checked_at_call_time(tmp_path):
    _, inputs, graph = mlp_graph()
    with pytest.warns(gtvm.UntunedWarning):
        module = gtvm.compile(graph, bind={"batch": 4}, work_dir=tmp_path, progress=False)
    with pytest.raises(GraphoptError, match=r"float32\[4, 64\]"):
        module(torch.randn(3, 64))


# ------------------------------------------------------------------ artifacts
@pytest.fixture(scope="module")
def resnet_artifact(tmp_path_factory):
    """A tiny ResNet-18 compiled (untuned), saved, with its inputs and torch's outputs."""
    model, inputs, graph = traced_zoo_model("resnet18")
    root = tmp_path_factory.mktemp("tvm_artifact")
    with pytest.warns(gtvm.UntunedWarning):
        module = gtvm.compile(graph, example_inputs=inputs, work_dir=root / "db", progress=False)
    directory = Path(module.save(root / "resnet18"))
    with torch.no_grad():
        expected = model(*inputs).numpy()
    return directory, [x.numpy() for x in inputs], expected


def test_saved_artifact_has_library_and_manifest(resnet_artifact):
    directory, inputs, _ = resnet_artifact
    manifest = json.loads((directory / "manifest.json").read_text())
    assert (directory / manifest["library"]).is_file()
    assert manifest["inputs"] == [{"name": "x", "shape": list(inputs[0].shape), "dtype": "float32"}]
    assert manifest["outputs"][0]["dtype"] == "float32"
    assert manifest["target"]["kind"] == "llvm" and "mcpu" in manifest["target"]
    assert {"tvm", "tvm_ffi", "graphopt"} <= set(manifest["versions"])
    assert manifest["passes"] == "canonicalize"
    assert not list(directory.glob(".*"))  # no temporary files left behind


def test_artifact_loads_in_a_fresh_process_without_torch(resnet_artifact, tmp_path):
    directory, inputs, expected = resnet_artifact
    np.savez(tmp_path / "in.npz", x=inputs[0])
    # graphopt/__init__ imports torch, so the loader module is imported from its file; and
    # tvm_ffi imports torch whenever it is installed, so the child blocks it first: the
    # check is that neither the loader nor TVM's runtime needs it.
    script = textwrap.dedent(f"""
        import importlib.util, sys
        import numpy as np
        sys.modules["torch"] = None
        spec = importlib.util.spec_from_file_location("graphopt_tvm_artifact", {str(tvm_artifact.__file__)!r})
        artifact = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(artifact)
        model = artifact.load({str(directory)!r})
        out = model(np.load({str(tmp_path / 'in.npz')!r})["x"])
        np.save({str(tmp_path / 'out.npy')!r}, out)
        assert sys.modules.get("torch") is None, "torch was imported"
        assert not any(m.startswith("graphopt") for m in sys.modules), "graphopt was imported"
        print("ok", type(model).__name__)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ok LoadedModel" in done.stdout
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), expected, atol=1e-4, rtol=1e-4)


def test_graphopt_load_never_imports_torch(resnet_artifact, tmp_path):
    """With torch installed, `import graphopt; graphopt.load(dir)` runs the model without importing it."""
    directory, inputs, expected = resnet_artifact
    np.savez(tmp_path / "in.npz", x=inputs[0])
    script = textwrap.dedent(f"""
        import sys
        import numpy as np
        import graphopt
        model = graphopt.load({str(directory)!r})
        np.save({str(tmp_path / 'out.npy')!r}, model(np.load({str(tmp_path / 'in.npz')!r})["x"]))
        print(sorted(m for m in ("torch", "onnx", "onnxruntime") if m in sys.modules), type(model).__name__)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["[]", "LoadedModel"]
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), expected, atol=1e-4, rtol=1e-4)


def test_artifact_runs_as_a_script(resnet_artifact, tmp_path):
    directory, inputs, expected = resnet_artifact
    np.savez(tmp_path / "in.npz", x=inputs[0])
    done = subprocess.run([sys.executable, tvm_artifact.__file__, str(directory), "--inputs", str(tmp_path / "in.npz"),
                           "--outputs", str(tmp_path / "out.npz")], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    out = np.load(tmp_path / "out.npz")
    np.testing.assert_allclose(out[out.files[0]], expected, atol=1e-4, rtol=1e-4)


def test_load_in_process_matches(resnet_artifact):
    directory, inputs, expected = resnet_artifact
    loaded = gtvm.load(directory)
    np.testing.assert_allclose(loaded(*inputs), expected, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="takes 1 inputs"):
        loaded()


def test_top_level_load_runs_the_artifact(resnet_artifact):
    import graphopt

    directory, inputs, expected = resnet_artifact
    np.testing.assert_allclose(graphopt.load(directory)(*inputs), expected, atol=1e-4, rtol=1e-4)


def test_load_rejects_a_directory_without_manifest(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a graphopt TVM artifact"):
        gtvm.load(tmp_path)


@pytest.mark.skipif(shutil.which("g++") is None, reason="no C++ compiler")
def test_cpp_runner_runs_the_artifact(resnet_artifact, tmp_path):
    from graphopt.backends.tvm.cpp_runner import build_runner

    directory, inputs, expected = resnet_artifact
    binary = build_runner(tmp_path / "graphopt_tvm_run")
    (tmp_path / "in").mkdir()
    (tmp_path / "out").mkdir()
    inputs[0].tofile(tmp_path / "in" / "input_0.bin")
    done = subprocess.run([str(binary), str(directory), str(tmp_path / "in"), str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("fc: float32[")
    out = np.fromfile(tmp_path / "out" / "output_0.bin", dtype=np.float32).reshape(expected.shape)
    np.testing.assert_allclose(out, expected, atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------ RPC
def test_rpc_tuning_on_a_loopback_tracker_with_two_servers(tmp_path):
    pytest.importorskip("tornado")  # the tracker needs it
    model, inputs, graph = mlp_graph(hidden=96)
    with gtvm.LocalCluster(servers=2, key="graphopt-test") as cluster:
        runner = gtvm.rpc_runner(cluster.tracker_address, "graphopt-test")
        module = gtvm.compile(graph, example_inputs=inputs, work_dir=tmp_path, tune=2, runner=runner,
                              progress=False)
    assert module.report.measured > 0
    assert all(t.failed == 0 for t in module.report.tasks), [t.first_error for t in module.report.tasks]
    torch.testing.assert_close(module(*inputs), model(*inputs), atol=1e-4, rtol=1e-4)


def test_rpc_runner_reports_an_unreachable_tracker():
    with pytest.raises(GraphoptError, match="cannot reach the RPC tracker"):
        gtvm.rpc_runner("127.0.0.1:1", "nobody")


def test_tuning_workers_start_without_torch():
    """Workers started during tuning skip tvm_ffi's torch import (seconds per builder pool)."""
    import os
    import subprocess
    import sys

    from graphopt.backends.tvm.tuning import _workers_without_torch

    before = os.environ.get("PYTHONPATH")
    probe = [sys.executable, "-c", "import tvm_ffi, sys; print('torch' in sys.modules and sys.modules['torch'] is not None)"]
    with _workers_without_torch():
        assert subprocess.run(probe, capture_output=True, text=True, check=True).stdout.strip() == "False"
    assert os.environ.get("PYTHONPATH") == before
    assert "torch" in sys.modules  # this process keeps its torch


def test_an_operator_tvm_cannot_import_is_named_before_tvm_sees_it():
    """TVM's ONNX importer has no LSTM: the error names the layer and the back-ends that run it."""

    class Tagger(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = torch.nn.LSTM(8, 16, batch_first=True)
            self.head = torch.nn.Linear(16, 4)

        def forward(self, x):
            return self.head(self.rnn(x)[0])

    graph = graphopt.trace(Tagger().eval(), (torch.randn(2, 5, 8),))
    with pytest.raises(GraphoptError, match=r"cannot compile node %rnn \(lstm\).*ONNX operator LSTM.*ONNX Runtime"):
        gtvm.compile(graph)
