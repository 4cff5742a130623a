"""Hardening (issue 17) of saved artifacts: TVM artifacts and ONNX models with external data.

A save that fails at any step leaves the previous artifact (or nothing) behind, never a
mixture; a damaged or hostile artifact is refused with a message naming the file and the
field before any native code is loaded; TVM's "Scope Saving:/Scope Loaded:" noise is gone.
TVM tests share two tiny compiled models (module-scoped, untuned: a few seconds).
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

from graphopt.errors import GraphoptError
from graphopt.ir import Graph
from graphopt.ir import dims as D


class InjectedError(OSError):
    """The failure a test injects into one write step."""


class StepFailure:
    """Wraps functions so that the k-th call, counting all of them together, raises InjectedError."""

    def __init__(self, monkeypatch, targets, fail_at: int | None) -> None:
        self.calls: list[str] = []
        self.fail_at = fail_at
        for owner, name in targets:
            monkeypatch.setattr(owner, name, self._wrap(getattr(owner, name), f"{getattr(owner, '__name__', owner)}.{name}"))

    def step(self, label: str) -> None:
        self.calls.append(label)
        if self.fail_at is not None and len(self.calls) - 1 == self.fail_at:
            raise InjectedError(f"injected failure at step {self.fail_at} ({label})")

    def _wrap(self, real, label):
        def wrapper(*args, **kwargs):
            self.step(label)
            return real(*args, **kwargs)

        return wrapper


def _linear_graph(name: str, batch, seed: int, features: int = 8) -> Graph:
    torch.manual_seed(seed)
    g = Graph(name)
    x = g.add_input("x", [batch, features], torch.float32)
    w = g.add_weight("fc.weight", torch.randn(4, features))
    b = g.add_weight("fc.bias", torch.randn(4))
    y = g.create_node("linear", [x, w, b], name="fc").output
    g.outputs = [g.create_node("relu", [y], name="act").output]
    return g


# ====================================================================== TVM artifacts
@pytest.fixture(scope="module")
def tvm_models(tmp_path_factory):
    """Two tiny compiled TVM models (different weights), an input, and one saved artifact of the first."""
    pytest.importorskip("tvm")
    from graphopt.backends import tvm as gtvm

    root = tmp_path_factory.mktemp("tvm_hardening")
    modules = []
    for seed in (0, 1):
        with pytest.warns(gtvm.UntunedWarning):
            modules.append(gtvm.compile(_linear_graph(f"tiny{seed}", 2, seed), work_dir=root / "db", progress=False))
    x = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)
    saved = Path(modules[0].save(root / "saved" / "tiny"))
    expected = [m(torch.from_numpy(x)).numpy() for m in modules]
    return modules, x, expected, saved


def _copy(saved: Path, tmp_path: Path, name: str = "copy") -> Path:
    """A copy of the artifact under a new path (TVM's dlopen would reuse a library already loaded by path)."""
    target = tmp_path / name
    shutil.copytree(saved, target)
    return target


def _edit_manifest(directory: Path, edit) -> None:
    path = directory / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


def test_manifest_records_size_and_sha256_of_every_file(tvm_models):
    from graphopt.backends.tvm import artifact

    _, _, _, saved = tvm_models
    manifest = json.loads((saved / "manifest.json").read_text())
    assert manifest["format_version"] == artifact.FORMAT_VERSION == 2
    assert set(manifest["files"]) == {p.name for p in saved.iterdir()} - {"manifest.json"} == {"model.so"}
    assert manifest["files"]["model.so"] == artifact.describe_file(saved / "model.so")
    assert manifest["files"]["model.so"]["bytes"] == (saved / "model.so").stat().st_size
    assert sorted(p.name for p in saved.parent.iterdir()) == ["tiny"]  # no temporary siblings left
    assert oct((saved).stat().st_mode & 0o777) == oct(0o777 & ~_umask())  # not mkdtemp's 0700


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _save_steps(monkeypatch, module, fail_at):
    """Make artifact.save fail at its `fail_at`-th write step (None: count the steps)."""
    from graphopt.backends.tvm import artifact

    failure = StepFailure(monkeypatch, [(os, "rename"), (os, "replace"), (os, "fsync"), (artifact.json, "dump")],
                          fail_at)

    class FlakyExecutable:
        def export_library(self, path, *args, **kwargs):
            failure.step("export_library")
            return module.executable.export_library(path, *args, **kwargs)

    return failure, FlakyExecutable()


@pytest.mark.parametrize("previous", [True, False], ids=["over-an-artifact", "new"])
def test_a_failure_at_any_save_step_leaves_the_previous_artifact_or_nothing(tvm_models, tmp_path, monkeypatch,
                                                                            previous):
    from graphopt.backends import tvm as gtvm
    from graphopt.backends.tvm import artifact

    (old, new), x, expected, saved = tvm_models
    with monkeypatch.context() as m:  # count the steps of one successful save
        counting, executable = _save_steps(m, new, None)
        artifact.save(tmp_path / "count" / "tiny", executable, new.manifest())
    steps = counting.calls
    assert {"export_library", "json.dump", "os.rename", "os.fsync"} <= set(steps), steps
    raised = 0
    for k in range(len(steps)):
        parent = tmp_path / f"step{k}"  # a fresh path per step: see _copy
        parent.mkdir()
        target = parent / "tiny"
        if previous:
            shutil.copytree(saved, target)
        before = sorted(p.name for p in parent.iterdir())
        with monkeypatch.context() as m:
            _, executable = _save_steps(m, new, k)
            try:
                artifact.save(target, executable, new.manifest())
            except InjectedError:
                raised += 1
                failed = True
            else:  # a failure that does not matter (syncing the parent directory after the rename)
                failed = False
        assert sorted(p.name for p in parent.iterdir()) == (before if failed else ["tiny"]), f"step {k}: {steps[k]}"
        if failed and not previous:
            continue
        loaded = gtvm.load(target)
        np.testing.assert_allclose(loaded(x), expected[0] if failed else expected[1], atol=1e-5,
                                   err_msg=f"step {k}: {steps[k]}")
    assert raised >= len(steps) - 2  # only the directory syncs are best effort
    # and without a failure the new artifact replaces the old one
    target = tmp_path / "final" / "tiny"
    shutil.copytree(saved, target)
    new.save(target)
    np.testing.assert_allclose(gtvm.load(target)(x), expected[1], atol=1e-5)
    assert sorted(p.name for p in target.parent.iterdir()) == ["tiny"]


def test_save_refuses_to_replace_a_directory_holding_other_files(tvm_models, tmp_path):
    from graphopt.backends import tvm as gtvm

    (module, _), _, _, _ = tvm_models
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(GraphoptError, match=r"notes\.txt.*choose a new directory"):
        module.save(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    with pytest.raises(gtvm.ArtifactError):  # also a ValueError, and artifact.ArtifactError
        module.save(tmp_path)
    # an artifact with the temporary files a crashed save of format version 1 left inside is replaced
    old = tmp_path / "old"
    shutil.copytree(tvm_models[3], old)
    (old / ".model.abc123.so").write_bytes(b"partial")
    (old / ".manifest.json.tmp").write_text("{")
    module.save(old)
    assert sorted(p.name for p in old.iterdir()) == ["manifest.json", "model.so"]


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.update(library="../x.so"), r"field 'library' must be a file name inside the artifact.*'\.\./x\.so'"),
    (lambda m: m.update(library="/usr/lib/x.so"), r"field 'library' must be a file name.*'/usr/lib/x\.so'"),
    (lambda m: m.update(library="sub/model.so"), r"field 'library' must be a file name"),
    (lambda m: m.pop("inputs"), r"manifest\.json: field 'inputs' is missing"),
    (lambda m: m.update(inputs="x"), r"field 'inputs' must be a list"),
    (lambda m: m["inputs"][0].update(shape=["batch", 8]), r"field 'inputs\[0\]'\.shape must be a list of integers"),
    (lambda m: m["outputs"][0].pop("dtype"), r"field 'outputs\[0\]'\.dtype must be a string"),
    (lambda m: m.update(format_version="2"), r"field 'format_version' must be an integer"),
    (lambda m: m.update(format_version=99), r"format version 99 is newer"),
    (lambda m: m.update(format="other"), r"field 'format' is 'other'"),
    (lambda m: m.pop("files"), r"field 'files' is missing"),
    (lambda m: m["files"]["model.so"].update(sha256="abc"), r"field 'files\['model\.so'\]' must be"),
    (lambda m: m.update(files={}), r"field 'files' has no entry for the library 'model\.so'"),
], ids=["dotdot", "absolute", "subdir", "no-inputs", "inputs-type", "shape", "dtype", "version-type",
        "version-new", "format", "no-files", "bad-sha", "library-unlisted"])
def test_a_bad_manifest_is_named_with_its_field(tvm_models, tmp_path, edit, message):
    import graphopt
    from graphopt.backends.tvm import artifact

    directory = _copy(tvm_models[3], tmp_path)
    _edit_manifest(directory, edit)
    with pytest.raises(GraphoptError, match=message) as info:
        graphopt.load(directory)
    assert isinstance(info.value, artifact.ArtifactError) and isinstance(info.value, ValueError)
    assert str(directory / "manifest.json") in str(info.value) or "format version" in str(info.value)


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", "\xff\xfe"], ids=["syntax", "not-object", "not-utf8"])
def test_an_invalid_json_manifest_is_named(tvm_models, tmp_path, text):
    import graphopt

    directory = _copy(tvm_models[3], tmp_path)
    (directory / "manifest.json").write_bytes(text.encode("latin-1"))
    with pytest.raises(GraphoptError, match=r"manifest\.json(: expected a JSON object| is not valid JSON)"):
        graphopt.load(directory)


def test_a_library_linked_outside_the_artifact_is_refused(tvm_models, tmp_path):
    from graphopt.backends import tvm as gtvm

    directory = _copy(tvm_models[3], tmp_path)
    outside = tmp_path / "elsewhere.so"
    (directory / "model.so").rename(outside)
    (directory / "model.so").symlink_to(outside)
    with pytest.raises(gtvm.ArtifactError, match=r"field 'library' \('model\.so'\) is a link to .*outside"):
        gtvm.load(directory)


def test_a_version_1_manifest_still_loads_with_a_warning(tvm_models, tmp_path):
    from graphopt.backends import tvm as gtvm

    directory = _copy(tvm_models[3], tmp_path)

    def downgrade(m):
        m["format_version"] = 1
        del m["files"]

    _edit_manifest(directory, downgrade)
    with pytest.warns(UserWarning, match="format version 1, without checksums"):
        loaded = gtvm.load(directory)
    np.testing.assert_allclose(loaded(tvm_models[1]), tvm_models[2][0], atol=1e-5)


def test_a_damaged_library_is_refused_before_it_is_loaded(tvm_models, tmp_path):
    """A truncated model.so killed the interpreter (SIGBUS in dlopen): checked in a child process."""
    saved = tvm_models[3]
    cases = {}
    truncated = cases["truncated"] = _copy(saved, tmp_path, "truncated")
    with open(truncated / "model.so", "r+b") as f:
        f.truncate((truncated / "model.so").stat().st_size // 2)
    flipped = cases["flipped"] = _copy(saved, tmp_path, "flipped")
    data = bytearray((flipped / "model.so").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (flipped / "model.so").write_bytes(bytes(data))
    old = cases["truncated-v1"] = _copy(truncated, tmp_path, "truncated-v1")
    _edit_manifest(old, lambda m: (m.update(format_version=1), m.pop("files")))
    script = textwrap.dedent(f"""
        import sys, warnings
        import graphopt
        from graphopt.errors import GraphoptError
        warnings.simplefilter("ignore")
        for name, path in {[(k, str(v)) for k, v in cases.items()]!r}:
            try:
                graphopt.load(path)
            except GraphoptError as exc:
                print(name, "REFUSED", exc)
            else:
                print(name, "LOADED")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, f"the loader died (return code {done.returncode}):\n{done.stderr[-3000:]}"
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines())
    assert lines["truncated"].startswith("REFUSED") and "bytes, the manifest records" in lines["truncated"]
    assert lines["flipped"].startswith("REFUSED") and "does not match the SHA-256" in lines["flipped"]
    assert lines["truncated-v1"].startswith("REFUSED") and "is truncated" in lines["truncated-v1"]


def test_save_and_load_print_no_scope_lines(tvm_models, tmp_path, capfd):
    from graphopt.backends import tvm as gtvm

    (module, _), x, expected, _ = tvm_models
    capfd.readouterr()
    module.save(tmp_path / "quiet")
    np.testing.assert_allclose(gtvm.load(tmp_path / "quiet")(x), expected[0], atol=1e-5)
    out, err = capfd.readouterr()
    assert "Scope" not in out + err, err


def test_quiet_native_log_passes_other_stderr_lines_on(capfd):
    pytest.importorskip("tvm")
    from graphopt.backends.tvm import artifact

    with artifact.quiet_native_log():
        os.write(2, b"[12:00:00] executable.cc:276: Warning: Scope Saving:\nsomething that matters\n")
        print("from python", file=sys.stderr)
    _, err = capfd.readouterr()
    assert "Scope" not in err and "something that matters\n" in err and "from python\n" in err


# ====================================================================== ONNX external data
def _ort_outputs(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def _data_locations(path: Path) -> set[str]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}


@pytest.mark.parametrize("layout", ["external", "inline"])
def test_a_failure_at_any_export_step_leaves_the_previous_model_and_data_working(tmp_path, monkeypatch, layout):
    pytest.importorskip("onnxruntime")
    import onnx

    from graphopt.backends import onnx as gonnx

    old_graph, new_graph = _linear_graph("m", D.symbol("batch"), 0, 64), _linear_graph("m", D.symbol("batch"), 1, 64)
    x = np.random.default_rng(0).standard_normal((2, 64)).astype(np.float32)
    external = layout == "external"
    targets = [(os, "replace"), (os, "fsync"), (os, "unlink"), (onnx, "save_model")]
    (tmp_path / "count").mkdir()
    gonnx.export(old_graph, tmp_path / "count" / "m.onnx", external_data=True)
    with monkeypatch.context() as m:  # count the steps of one successful export over a model with data
        counting = StepFailure(m, targets, None)
        gonnx.export(new_graph, tmp_path / "count" / "m.onnx", external_data=external)
    steps = counting.calls
    assert steps.count("os.replace") == (2 if external else 1), steps
    for k in range(len(steps)):
        parent = tmp_path / f"step{k}"
        parent.mkdir()
        path = gonnx.export(old_graph, parent / "m.onnx", external_data=True)
        want_old = _ort_outputs(path, x)
        before = sorted(p.name for p in parent.iterdir())
        with monkeypatch.context() as m:
            StepFailure(m, targets, k)
            try:
                gonnx.export(new_graph, path, external_data=external)
            except InjectedError:
                failed = True
            else:  # after the model's rename only best-effort steps remain (syncing the directory, removing old data)
                failed = False
                assert k > max(i for i, s in enumerate(steps) if s == "os.replace"), steps[k]
        if failed:
            assert sorted(p.name for p in parent.iterdir()) == before, f"step {k}: {steps[k]}"
            np.testing.assert_allclose(_ort_outputs(path, x), want_old, atol=1e-5, err_msg=f"step {k}: {steps[k]}")
        else:
            assert not np.allclose(_ort_outputs(path, x), want_old)
    # without a failure: the new model, and only its own data file beside it
    path = gonnx.export(new_graph, tmp_path / "step0" / "m.onnx", external_data=external)
    new_out = _ort_outputs(path, x)
    assert not np.allclose(new_out, want_old)
    expected = ["m.onnx", *sorted(_data_locations(path))]
    assert sorted(p.name for p in path.parent.iterdir()) == sorted(expected)


def test_repeated_external_data_exports_keep_one_matching_data_file(tmp_path):
    pytest.importorskip("onnxruntime")
    from graphopt.backends import onnx as gonnx

    x = np.random.default_rng(0).standard_normal((2, 64)).astype(np.float32)
    path = tmp_path / "m.onnx"
    names = []
    for seed in range(3):
        graph = _linear_graph("m", D.symbol("batch"), seed, 64)
        gonnx.export(graph, path, external_data=True)
        (location,) = _data_locations(path)
        names.append(location)
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["m.onnx", location])
        w, b = graph.weights["fc.weight"].data.numpy(), graph.weights["fc.bias"].data.numpy()
        np.testing.assert_allclose(_ort_outputs(path, x), np.maximum(x @ w.T + b, 0), atol=1e-4)
    assert names[0] == "m.onnx.data" and names[1] != names[0] and names[2] == "m.onnx.data"
    gonnx.export(_linear_graph("m", D.symbol("batch"), 0, 64), path, external_data=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # the replaced data file is removed
