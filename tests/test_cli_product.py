"""The product CLI through a subprocess: `graphopt demo`, `optimize`, `bench`, and one-line errors for bad input.

docs/cli.md's example block runs here verbatim (in order, in one directory), so the reference
cannot drift from what the commands do.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def graphopt(*args: str, cwd: Path, timeout: int = 120) -> subprocess.CompletedProcess:
    """`graphopt ARGS` in `cwd`, as a user runs it (stdout and stderr captured, bounded)."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    env.pop("GRAPHOPT_TRACEBACK", None)
    return subprocess.run([sys.executable, "-m", "graphopt.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


def doc_examples() -> list[list[str]]:
    """The commands of docs/cli.md's `## Examples` bash block, each split like a shell would."""
    section = (REPO / "docs" / "cli.md").read_text().split("\n## Examples", 1)[1].split("\n## ", 1)[0]
    block = re.findall(r"^```bash\n(.*?)^```", section, flags=re.S | re.M)
    assert len(block) == 1, "docs/cli.md's Examples section has one bash block"
    return [shlex.split(line) for line in block[0].splitlines() if line.strip()]


def test_doc_examples_demo_optimize_bench(tmp_path):
    commands = doc_examples()
    assert [c[:2] for c in commands] == [["graphopt", "demo"], ["graphopt", "optimize"], ["graphopt", "bench"]]
    demo, optimize, bench = (graphopt(*c[1:], cwd=tmp_path) for c in commands)

    assert demo.returncode == 0, demo.stderr[-3000:]
    png = tmp_path / "demo.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert "wrote the plot to" in demo.stdout and "accuracy" in demo.stdout
    for stage in ("dense, torch", "dense, ORT", "pruned 50%, torch", "pruned 50% + int8, ORT"):
        assert stage in demo.stdout

    assert optimize.returncode == 0, optimize.stderr[-3000:]
    report = json.loads(optimize.stdout)  # --json: stdout is the JSON and nothing else
    assert report["backend"] == "onnx" and report["quantize"][0]["mode"] == "int8"
    assert report["params"]["after"] < report["params"]["before"]
    assert report["weight_bytes"]["after"] < report["weight_bytes"]["before"] / 3
    assert report["prune"][0]["ratio"] == pytest.approx(0.3) and report["passes"]
    assert 0.0 < report["prune"][0]["achieved_ratio"] < 1.0 and isinstance(report["prune"][0]["why"], list)
    assert all(p["seconds"] >= 0 for p in report["passes"])
    assert Path(report["output"]) == (tmp_path / "resnet18-int8").resolve()
    assert (tmp_path / "resnet18-int8" / "manifest.json").is_file()
    assert "optimized in" in optimize.stderr  # the stage lines go to stderr

    assert bench.returncode == 0, bench.stderr[-3000:]
    assert re.search(r"latency: \d+\.\d+ ms", bench.stdout)
    assert re.search(r"speed-up over the original: \d+\.\d+x", bench.stdout)


def _export_small_onnx(path: Path) -> None:
    import torch

    import graphopt
    from graphopt.backends.onnx import export

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 10)).eval()
    export(graphopt.trace(model, (torch.randn(2, 3, 16, 16),)), path)


def test_optimize_an_onnx_file_then_bench_it(tmp_path):
    pytest.importorskip("onnxruntime")
    source = tmp_path / "small.onnx"
    _export_small_onnx(source)
    done = graphopt("optimize", str(source), "--prune", "0.5", "--backend", "onnx", "-o", "out", "--json",
                    cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["params"]["after"] < report["params"]["before"] and report["output"]
    bench = graphopt("bench", "out", "--original", str(source), "--runs", "5", "--warmup", "1", "--batch", "3",
                     "--json", cwd=tmp_path)
    assert bench.returncode == 0, bench.stderr[-3000:]
    result = json.loads(bench.stdout)
    assert result["latency_ms"] > 0 and result["original_latency_ms"] > 0 and result["speedup"] > 0
    assert list(result["inputs"].values())[0][0] == 3  # the symbolic batch axis took --batch


FACTORY = '''
import torch

def build():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    return model, (torch.randn(4, 8),)

def bare():
    return torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
'''


def test_factory_model_with_calibration_file_to_a_torch_artifact(tmp_path):
    (tmp_path / "mymodels.py").write_text(FACTORY)
    np.savez(tmp_path / "calib.npz", np.random.default_rng(0).standard_normal((40, 8)))  # float64: cast to float32
    done = graphopt("optimize", "mymodels:build", "--prune", "0.5", "--calib", "calib.npz", "--calib-batch", "16",
                    "--quantize", "int8", "--backend", "torch", "-o", "art", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["backend"] == "torch" and report["params"]["after"] < report["params"]["before"]
    assert report["quantize"][0]["calibration_batches"] == 3  # 40 samples in batches of 16
    bench = graphopt("bench", "art", "--runs", "3", "--warmup", "1", cwd=tmp_path)
    assert bench.returncode == 0 and "latency:" in bench.stdout, bench.stderr[-3000:]
    bare = graphopt("optimize", "mymodels:bare", "--input-shape", "2,8", "--backend", "torch", cwd=tmp_path)
    assert bare.returncode == 0 and "params" in bare.stdout, bare.stderr[-3000:]
    budget = graphopt("optimize", "mymodels:build", "--target-params", "0.5", "--backend", "torch", "--json",
                      cwd=tmp_path)
    assert budget.returncode == 0, budget.stderr[-3000:]
    [prune] = json.loads(budget.stdout)["prune"]
    assert prune["target_fraction"] == 0.5 and abs(prune["achieved_fraction"] / 0.5 - 1) <= 0.05, prune


def test_tvm_backend_saves_an_artifact_bench_runs(tmp_path):
    pytest.importorskip("tvm")
    (tmp_path / "mymodels.py").write_text(FACTORY)
    done = graphopt("optimize", "mymodels:build", "--backend", "tvm", "-o", "art", "--json", cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout)["backend"] == "tvm"
    bench = graphopt("bench", "art", "--original", "mymodels:build", "--runs", "3", "--warmup", "1", "--batch", "4",
                     cwd=tmp_path)
    assert bench.returncode == 0, bench.stderr[-3000:]
    assert "artifact (tvm)" in bench.stdout and re.search(r"speed-up over the original: \d+\.\d+x", bench.stdout)


@pytest.mark.parametrize("args, code, reason", [
    (["optimize", "missing.onnx"], 1, "no such ONNX file"),
    (["optimize", "zoo:no-such-model"], 2, "unknown zoo model"),
    (["optimize", "zoo:resnet18", "--prune", "1.5"], 2, "[0, 1)"),
    (["optimize", "zoo:resnet18", "--quantize", "int3"], 2, "unknown mode"),
    (["optimize", "zoo:resnet18", "--target-macs", "1.5"], 2, "--target-macs"),
    (["optimize", "zoo:resnet18", "--prune", "0.3", "--target-latency", "0.5"], 2, "give one of"),
    (["optimize", "zoo:resnet18", "--passes", "canonicalize,no-such-pass"], 2, "unknown pass"),
    (["optimize", "zoo:resnet18", "--tune", "10min", "--backend", "onnx"], 2, "--backend tvm"),
    (["optimize", "zoo:resnet18", "--calib", "garbage.npz"], 1, "cannot read calibration file"),
    (["optimize", "zoo:resnet18", "--calib", "missing.npz"], 1, "no such calibration file"),
    (["bench", "no-such-dir"], 1, "no such artifact directory"),
    (["bench", "not-an-artifact"], 1, "manifest"),
])
def test_bad_input_is_one_line_without_traceback(tmp_path, args, code, reason):
    (tmp_path / "garbage.npz").write_bytes(b"this is not a zip archive\n")
    (tmp_path / "not-an-artifact").mkdir()
    done = graphopt(*args, cwd=tmp_path, timeout=60)
    assert done.returncode == code, (done.returncode, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and reason in lines[0], done.stderr
    assert "Traceback" not in done.stderr + done.stdout
