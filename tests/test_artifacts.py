"""Saved ONNX artifacts: `OptimizedModel.save` -> `graphopt.load` in a fresh process without torch.

A pruned+quantized zoo convnet and a dict-output BERT are saved once (module fixture); a child
process loads and runs both with numpy alone and compares with the in-process outputs. The rest
checks what can go wrong: an interrupted save, damaged or missing files and manifests, wrong inputs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import graphopt
from graphopt import models_zoo
from graphopt.errors import GraphoptError, InputError
from tiny_models import tiny_bert

REPO = Path(__file__).resolve().parents[1]


def _bert():
    model = tiny_bert()
    ids = torch.randint(0, 64, (1, 8))
    return model, (ids, torch.ones(1, 8, dtype=torch.long))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """{name: (OptimizedModel, artifact dir, numpy inputs, numpy outputs in the model's structure)}."""
    root = tmp_path_factory.mktemp("artifacts")
    torch.manual_seed(0)
    model, inputs = models_zoo.get("resnet18", "tiny")
    batch = models_zoo.get("resnet18", "tiny", batch_size=4)[1]
    convnet = graphopt.optimize(model, inputs, prune=0.3, quantize="int8", calibration_data=[batch],
                                backend="onnx")
    assert convnet.report.prune and convnet.report.quantize[0].quantized
    bert_model, bert_inputs = _bert()
    bert = graphopt.optimize(bert_model, bert_inputs, backend="onnx")
    bert_batch = (torch.randint(0, 64, (3, 8)), torch.ones(3, 8, dtype=torch.long))
    cases = {}
    for name, opt, args in (("convnet", convnet, batch), ("bert", bert, bert_batch)):
        out = opt(*args)
        expected = {k: v.numpy() for k, v in out.items()} if name == "bert" else out.numpy()
        cases[name] = (opt, opt.save(root / name), tuple(a.numpy() for a in args), expected)
    return cases


def _copy(source: Path, tmp_path: Path, name: str = "copy") -> Path:
    return Path(shutil.copytree(source, tmp_path / name))


def test_save_writes_the_layout_and_manifest(saved):
    opt, directory, _, _ = saved["bert"]
    assert sorted(p.name for p in directory.iterdir()) == ["manifest.json", "model.onnx"]
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["kind"] == "onnx" and manifest["format_version"] == 1 and manifest["model"] == "model.onnx"
    assert set(manifest["versions"]) >= {"graphopt", "onnx", "onnxruntime"}
    assert [(i["name"], i["dtype"], i["shape"]) for i in manifest["inputs"]] == [
        ("input_ids", "int64", ["batch", 8]), ("attention_mask", "int64", ["batch1", 8])]
    assert manifest["structure"]["kind"] == "dict"
    assert manifest["structure"]["keys"] == ["last_hidden_state", "pooler_output"]
    assert manifest["pipeline"] == opt.report.pipeline and "params" in manifest["report"]["summary"]
    size = (directory / "model.onnx").stat().st_size
    assert manifest["files"]["model.onnx"]["bytes"] == size and len(manifest["files"]["model.onnx"]["sha256"]) == 64
    assert not [p for p in directory.parent.iterdir() if p.name.startswith(".")], "no temporary directories left"


def test_a_fresh_process_runs_the_artifacts_without_torch(saved, tmp_path):
    """Outputs equal the in-process model's (1e-5); the dict comes back a dict; torch is never imported."""
    jobs = []
    for name, (_, directory, inputs, expected) in saved.items():
        flat = expected if isinstance(expected, dict) else {"out": expected}
        np.savez(tmp_path / f"{name}.npz", **{f"in{i}": x for i, x in enumerate(inputs)},
                 **{f"out:{k}": v for k, v in flat.items()})
        jobs.append((name, str(directory), str(tmp_path / f"{name}.npz"), len(inputs)))
    script = textwrap.dedent(f"""
        import sys
        import numpy as np
        import graphopt
        for name, directory, data, count in {jobs!r}:
            model = graphopt.load(directory)
            saved = np.load(data)
            inputs = [saved[f"in{{i}}"] for i in range(count)]
            if name == "bert":  # by name, as OptimizedModel takes them
                out = model(input_ids=inputs[0], attention_mask=inputs[1])
                assert type(out) is dict and list(out) == ["last_hidden_state", "pooler_output"], out
            else:
                out = {{"out": model(*inputs)}}
            for key, value in out.items():
                assert isinstance(value, np.ndarray), type(value)
                np.testing.assert_allclose(value, saved[f"out:{{key}}"], atol=1e-5, rtol=1e-5)
            print(name, "ok")
        assert "torch" not in sys.modules, "loading and running imported torch"
        print("no torch")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["convnet", "ok", "bert", "ok", "no", "torch"]


def test_an_interrupted_save_leaves_the_previous_artifact(saved, tmp_path, monkeypatch):
    from graphopt import artifacts

    _, source, inputs, expected = saved["convnet"]
    target = _copy(source, tmp_path, "model")
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    bert = saved["bert"][0]

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(artifacts, "_write_manifest", crash)  # after model.onnx is written into the staging dir
    with pytest.raises(RuntimeError, match="disk full"):
        bert.save(target)
    monkeypatch.undo()
    real_rename = os.rename

    def rename(src, dst):  # the old artifact is moved aside, then the new one fails to move in
        if ".tmp-" in os.fspath(src):
            raise OSError("interrupted")
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(OSError, match="interrupted"):
        bert.save(target)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"], "temporary directories removed"
    np.testing.assert_allclose(graphopt.load(target)(*inputs), expected, atol=1e-5, rtol=1e-5)
    bert.save(target)  # a complete save replaces it, and the old copy is deleted
    assert isinstance(graphopt.load(target)(*saved["bert"][2]), dict)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_weights_in_a_data_file_are_listed_and_checked(saved, tmp_path):
    opt, _, inputs, expected = saved["convnet"]
    directory = opt.save(tmp_path / "external", external_data=True)
    manifest = json.loads((directory / "manifest.json").read_text())
    assert sorted(manifest["files"]) == ["model.onnx", "model.onnx.data"]
    assert manifest["files"]["model.onnx.data"]["bytes"] > manifest["files"]["model.onnx"]["bytes"]
    np.testing.assert_allclose(graphopt.load(directory)(*inputs), expected, atol=1e-5, rtol=1e-5)
    _flip(directory / "model.onnx.data")
    with pytest.raises(GraphoptError, match=r"model\.onnx\.data does not match its SHA-256"):
        graphopt.load(directory)


def test_a_directory_with_other_files_is_not_replaced(saved, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(GraphoptError, match=r"notes\.txt"):
        saved["bert"][0].save(tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _edit(key, value):
    def edit(directory: Path) -> None:
        manifest = json.loads((directory / "manifest.json").read_text())
        manifest[key] = value
        (directory / "manifest.json").write_text(json.dumps(manifest))
    return edit


@pytest.mark.parametrize("damage, message", [
    (lambda d: _flip(d / "model.onnx"), r"model\.onnx does not match its SHA-256 in manifest\.json.*save"),
    (lambda d: (d / "model.onnx").unlink(), r"model\.onnx is missing .*save it again"),
    (lambda d: (d / "model.onnx").write_bytes(b"x"), r"model\.onnx has 1 bytes, manifest\.json records"),
    (lambda d: (d / "manifest.json").unlink(), r"not a graphopt artifact: no manifest\.json"),
    (lambda d: (d / "manifest.json").write_text("{oops"), r"manifest\.json is not valid JSON"),
    (_edit("kind", "tflite"), r"manifest\.json: unknown artifact kind 'tflite'.*upgrade graphopt"),
    (_edit("format_version", 7), r"manifest\.json: format version 7 is newer than this loader.*upgrade graphopt"),
    (_edit("files", {}), r"manifest\.json: field 'files' must map every file"),
], ids=["flipped", "missing", "truncated", "no-manifest", "bad-json", "unknown-kind", "newer", "unlisted"])
def test_a_damaged_artifact_is_refused_naming_the_file(saved, tmp_path, damage, message):
    directory = _copy(saved["bert"][1], tmp_path)
    damage(directory)
    with pytest.raises(GraphoptError, match=message) as info:
        graphopt.load(directory)
    assert "\n" not in str(info.value)


def test_wrong_inputs_are_refused_naming_the_input(saved):
    _, directory, (ids, mask), expected = saved["bert"]
    model = graphopt.load(directory)
    with pytest.raises(InputError, match=r"input 'input_ids' .*has dtype float32; .*int64"):
        model(ids.astype(np.float32), mask)
    with pytest.raises(InputError, match=r"input 'attention_mask' .*size 9 on axis 1; the model needs 8"):
        model(ids, np.ones((3, 9), np.int64))
    with pytest.raises(InputError, match=r"input 'input_ids' .*has 1 dims"):
        model(ids[0], mask)
    with pytest.raises(InputError, match=r"no input 'input_idz'.*input_ids"):
        model(input_idz=ids, attention_mask=mask)
    with pytest.raises(InputError, match=r"needs input 'attention_mask' too"):
        model(input_ids=ids)
    with pytest.raises(InputError, match=r"takes 2 input\(s\)"):
        model(ids)
    out = model(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))  # torch in, numpy out
    assert all(isinstance(v, np.ndarray) for v in out.values())
    np.testing.assert_allclose(out["pooler_output"], expected["pooler_output"], atol=1e-5, rtol=1e-5)


def test_a_torch_artifact_loads_in_a_fresh_process_without_the_model_code(tmp_path):
    """backend="torch": pruned, layer-dropped and BN-folded; a fresh process that never imports the zoo (nor
    transformers) loads it and gets the same outputs, a trainable module and the pruning recipe back."""
    torch.manual_seed(0)
    model, inputs = models_zoo.get("resnet18", "tiny")
    batch = models_zoo.get("resnet18", "tiny", batch_size=4)[1]
    opt = graphopt.optimize(model, inputs, prune=0.3, drop_layers=1, calibration_data=[batch])
    assert opt.trainable_graph is not opt.graph and opt.recipe is not None
    directory = opt.save(tmp_path / "resnet")
    files = sorted(p.name for p in directory.iterdir())
    assert files == ["graph.json", "manifest.json", "trainable.graph.json", "trainable.weights.safetensors",
                     "weights.safetensors"]
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["kind"] == "torch" and manifest["trainable"] and set(manifest["files"]) == set(files) - {
        "manifest.json"}
    np.savez(tmp_path / "data.npz", x=batch[0].numpy(), y=opt(*batch).numpy())
    script = textwrap.dedent(f"""
        import sys
        import numpy as np
        import torch
        import graphopt
        model = graphopt.load({str(directory)!r})
        data = np.load({str(tmp_path / "data.npz")!r})
        out = model(data["x"])
        np.testing.assert_allclose(out.numpy(), data["y"], atol=1e-5, rtol=1e-5)
        module = model.torch_module()
        assert any(isinstance(m, torch.nn.Module) for m in module.modules())
        assert sum(p.numel() for p in module.parameters() if p.requires_grad) > 0
        assert model.recipe is not None and model.report.backend == "torch"
        assert "params" in str(model.report)
        assert not any(m.startswith(("graphopt.models_zoo", "transformers")) for m in sys.modules)
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["ok"]


def test_a_torch_artifact_keeps_a_dict_output_and_refuses_damage(tmp_path):
    bert_model, bert_inputs = _bert()
    opt = graphopt.optimize(bert_model, bert_inputs)
    directory = opt.save(tmp_path / "bert")
    loaded = graphopt.load(directory)
    out, expected = loaded(*bert_inputs), opt(*bert_inputs)
    # transformers is imported here, so the output comes back as its own ModelOutput (a dict), as the original's
    assert type(out) is type(expected) and list(out.keys()) == ["last_hidden_state", "pooler_output"]
    for key in expected.keys():
        torch.testing.assert_close(out[key], expected[key], rtol=1e-5, atol=1e-5)
    _flip(directory / "weights.safetensors")
    with pytest.raises(GraphoptError, match="weights.safetensors"):
        graphopt.load(directory)
    with pytest.raises(GraphoptError, match="on the CPU"):
        graphopt.load(directory, device="cuda")


def test_the_docs_section_runs(tmp_path, monkeypatch):
    from docblocks import run_blocks

    monkeypatch.chdir(tmp_path)
    run_blocks("docs/backends.md", section="Saving and loading")
