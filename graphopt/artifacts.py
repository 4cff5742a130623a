"""Saved artifacts: a directory written all or nothing, its manifest, and the ONNX artifact's torch-free loader.

An artifact is a directory of files plus `manifest.json`, which records the
kind of artifact, its format version, the versions it was built with, and the
size and SHA-256 of every other file. `write_directory` writes one as a whole:
everything goes into a temporary sibling directory (`.NAME.tmp-XXXXXXXX`), each
file and the directory are fsynced, then it is renamed into place. A previous
artifact at the path is renamed aside (`.NAME.old-XXXXXXXX`) first and deleted
only once the new one is in place; if anything fails, the previous artifact is
put back and the temporary directory removed. At every instant the path holds
the old artifact or the new one, never a mixture.

`load_onnx` (what `graphopt.load` calls for kind "onnx") checks every file
against the manifest before ONNX Runtime sees it, and returns an `OnnxArtifact`
called with numpy arrays. This module imports neither torch nor onnx, nor any
other part of graphopt than its base layer, so a deployment needs only
onnxruntime and numpy. (backends/tvm/artifact.py has its own copy of the
directory writing: it runs as a script without graphopt at all.)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from graphopt.errors import GraphoptError, InputError
from graphopt.registry import close_names

MANIFEST = "manifest.json"
ONNX_KIND = "onnx"
ONNX_FORMAT = "graphopt-onnx-artifact"
ONNX_FORMAT_VERSION = 1
ONNX_MODEL = "model.onnx"
TORCH_KIND = "torch"
TORCH_FORMAT = "graphopt-torch-artifact"
TORCH_FORMAT_VERSION = 1
TORCH_GRAPH = "graph.json"  # with weights.safetensors: graphopt.ir.serialize's files


class ArtifactError(GraphoptError):
    """A saved artifact is unusable (no or a bad manifest, a missing, truncated or altered file) or cannot be written."""


class MissingManifestError(ArtifactError, FileNotFoundError):
    """The directory has no manifest.json (also a FileNotFoundError, as the TVM loader raised before)."""


# ----------------------------------------------------------------- inputs by position or name
def order_inputs(names: Sequence[str], positional: Sequence[Any], named: Mapping[str, Any],
                 *, what: str = "the optimized model") -> tuple:
    """Positional and named inputs in `names`' order; an unknown, repeated or missing name is an InputError."""
    names = list(names)
    unknown = sorted(set(named) - set(names))
    if unknown:
        raise InputError(f"{what} has no input {unknown[0]!r}{close_names(unknown[0], names)}; "
                         f"its inputs: {', '.join(names)}")
    given = dict(zip(names, positional))
    twice = sorted(set(given) & set(named))
    if twice:
        raise InputError(f"input {twice[0]!r} is given both by position and by name")
    given.update(named)
    missing = [name for name in names if name not in given]
    if missing:
        raise InputError(f"{what} needs input {missing[0]!r} too (its inputs: {', '.join(names)})")
    return tuple(given[name] for name in names)


# ----------------------------------------------------------------- output structure, JSON-safe
def encode_structure(spec: Any, num_outputs: int) -> dict:
    """A JSON-safe description of how the flat outputs rebuild the model's output structure.

    `spec` is the traced model's output TreeSpec (None when it does not describe the outputs: then
    one output stays one array and several become a tuple). Dicts, and dict-like classes whose
    pytree context is their keys (transformers' ModelOutput, for example), become
    {"kind": "dict", "keys", "items"}; tuples and lists (and namedtuples, as tuples) keep their kind;
    a tensor is {"kind": "leaf"}; a None in the structure is {"kind": "none"}.
    """
    if spec is None:
        leaf = {"kind": "leaf"}
        return leaf if num_outputs == 1 else {"kind": "tuple", "items": [dict(leaf) for _ in range(num_outputs)]}
    return _encode(spec)


def _encode(spec: Any) -> dict:
    if spec.is_leaf():
        return {"kind": "leaf"}
    kind = spec.type
    children = spec.children() if callable(getattr(spec, "children", None)) else spec.children_specs
    items = [_encode(child) for child in children]
    type_name = f"{kind.__module__}.{kind.__qualname__}"
    context = spec.context
    if kind is type(None):
        return {"kind": "none"}
    if kind in (list, tuple):
        return {"kind": kind.__name__, "items": items}
    keys = list(context) if isinstance(context, (list, tuple)) else None
    if keys is not None and len(keys) == len(items) and all(isinstance(k, (str, int)) for k in keys):
        return {"kind": "dict", "type": type_name, "keys": keys, "items": items}
    return {"kind": "tuple", "type": type_name, "items": items}  # namedtuple, other containers: by position


def rebuild_structure(structure: Mapping[str, Any], outputs: Sequence[Any]) -> Any:
    """The flat `outputs` in the structure `encode_structure` described."""
    flat = iter(outputs)

    def build(node: Mapping[str, Any]) -> Any:
        kind = node["kind"]
        if kind == "leaf":
            return next(flat)
        if kind == "none":
            return None
        items = [build(child) for child in node["items"]]
        if kind == "dict":
            return dict(zip(node["keys"], items))
        return items if kind == "list" else tuple(items)

    return build(structure)


class StructuredOutputs:
    """A loaded model whose flat outputs come back in the structure its manifest records: a TVM artifact that
    `OptimizedModel.save` wrote (TVM's own loader, which runs without graphopt, returns them flat).
    Everything else (`benchmark`, `inputs`, `manifest`) is the wrapped model's."""

    def __init__(self, model: Any, structure: Mapping[str, Any]) -> None:
        self.model, self.structure = model, structure

    def __call__(self, *arrays: Any) -> Any:
        outputs = self.model(*arrays)
        return rebuild_structure(self.structure, outputs if isinstance(outputs, tuple) else (outputs,))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)

    def __repr__(self) -> str:
        return repr(self.model)


def count_leaves(structure: Mapping[str, Any]) -> int:
    kind = structure.get("kind")
    if kind == "leaf":
        return 1
    if kind == "none":
        return 0
    return sum(count_leaves(child) for child in structure.get("items", []))


# ----------------------------------------------------------------- writing a directory atomically
def describe_file(path: str | os.PathLike) -> dict:
    """{"bytes": size, "sha256": hex digest} of a file, as the manifest records it."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
            size += len(block)
    return {"bytes": size, "sha256": digest.hexdigest()}


def write_directory(directory: str | os.PathLike, fill: Callable[[Path], dict]) -> Path:
    """Write an artifact at `directory`, all or nothing; return its absolute path.

    `fill(staging)` writes the artifact's files into the empty directory `staging` and returns
    the manifest (without "files"); this adds the size and SHA-256 of every file it wrote,
    writes manifest.json, fsyncs everything and swaps the directory into place. An existing
    `directory` is replaced only if it holds nothing but an artifact's files (its manifest
    and the files it lists): anything else would be lost, so it is refused.
    """
    directory = Path(os.path.abspath(os.fspath(directory)))
    if not directory.name:
        raise ArtifactError(f"cannot save an artifact as {str(directory)!r}: give a directory name")
    if os.path.lexists(directory):
        _check_replaceable(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = _sibling_dir(directory.parent, f".{directory.name}.tmp-")
    try:
        manifest = dict(fill(staging))
        files = {}
        for entry in sorted(staging.iterdir(), key=lambda p: p.name):
            if entry.name == MANIFEST:
                raise ArtifactError(f"an artifact's files may not include {MANIFEST}: it is written last")
            if entry.is_symlink() or not entry.is_file():
                raise ArtifactError(f"an artifact holds plain files only; {entry.name!r} is not one")
            _fsync_file(entry)
            files[entry.name] = describe_file(entry)
        manifest["files"] = files
        _write_manifest(staging / MANIFEST, manifest)
        _fsync_dir(staging)
        _move_into_place(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory


def _write_manifest(path: Path, manifest: dict) -> None:
    with open(path, "w") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def _sibling_dir(parent: Path, prefix: str) -> Path:
    """A new, empty directory `parent/prefixXXXXXXXX`, with the permissions the umask gives."""
    for _ in range(100):
        path = parent / (prefix + os.urandom(4).hex())
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"no free temporary name {prefix}XXXXXXXX in {parent}")  # pragma: no cover


def _check_replaceable(directory: Path) -> None:
    """An existing path may be replaced if it is a directory holding only an artifact's files (or nothing)."""
    if directory.is_symlink() or not directory.is_dir():
        raise ArtifactError(f"cannot save an artifact as {directory}: it exists and is not a directory")
    present = set(os.listdir(directory))
    if not present:
        return
    listed: set[str] = set()
    with contextlib.suppress(OSError, ValueError, AttributeError, TypeError):
        manifest = json.loads((directory / MANIFEST).read_text())
        listed = {MANIFEST, *manifest.get("files", {}), manifest.get("library", MANIFEST)}
    foreign = sorted(present - listed)
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise ArtifactError(f"cannot save an artifact as {directory}: it holds files that are not part of a "
                            f"graphopt artifact ({shown}), which replacing the directory would delete; "
                            f"choose a new directory")


def _move_into_place(staging: Path, directory: Path) -> None:
    """Rename `staging` to `directory`; an existing `directory` survives any failure, and is deleted after."""
    if not os.path.lexists(directory):
        os.rename(staging, directory)
        _fsync_dir(directory.parent)
        return
    aside = _sibling_dir(directory.parent, f".{directory.name}.old-")
    try:
        os.rename(directory, aside)  # replaces the empty directory `aside`
    except BaseException:
        with contextlib.suppress(OSError):
            os.rmdir(aside)
        raise
    try:
        os.rename(staging, directory)
    except BaseException:
        os.rename(aside, directory)
        raise
    _fsync_dir(directory.parent)
    shutil.rmtree(aside, ignore_errors=True)


def fsync(path: str | os.PathLike) -> None:
    """Flush a file to disk (errors raise), or a directory's entries after a rename (best effort): every
    atomic write of graphopt (artifact directories here, ONNX model + data files in backends/onnx/export.py)."""
    (_fsync_dir if os.path.isdir(path) else _fsync_file)(Path(path))


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # pragma: no cover - platforms that cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - file systems that do not sync directories
        pass
    finally:
        os.close(fd)


# ----------------------------------------------------------------- reading
def read_manifest(directory: str | os.PathLike) -> dict:
    """The manifest of the artifact at `directory` as a JSON object; missing or unparsable is an ArtifactError."""
    path = Path(directory) / MANIFEST
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise MissingManifestError(f"{directory} is not a graphopt artifact: no {MANIFEST}; give the directory "
                                   f"that OptimizedModel.save (or TvmModule.save) wrote") from None
    except OSError as exc:
        raise ArtifactError(f"{path} cannot be read ({exc.strerror or exc}); check its permissions") from None
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ArtifactError(f"{path} is not valid JSON ({exc}); the artifact is damaged, save it again") from None
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{path}: expected a JSON object, got {type(manifest).__name__}; the artifact is "
                            f"damaged, save it again")
    return manifest


def _plain_name(name: Any) -> bool:
    """A file name without directories: not empty, '.', '..', absolute, or holding a separator or NUL."""
    separators = {os.sep, "/", "\0"} | ({os.altsep} if os.altsep else set())
    return isinstance(name, str) and bool(name) and name not in (".", "..") and not any(s in name for s in separators)


def check_manifest(directory: Path, manifest: dict, newest: int) -> None:
    """The fields every artifact kind's loader reads (format version at most `newest`, the model file, every
    file's size and digest, inputs, outputs and their structure) are present and well-formed."""
    path = directory / MANIFEST
    version = manifest.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ArtifactError(f"{path}: field 'format_version' must be an integer >= 1, got {version!r:.40}; "
                            f"the artifact is damaged, save it again")
    if version > newest:
        raise ArtifactError(f"{path}: format version {version} is newer than this loader ({newest}); "
                            f"upgrade graphopt")
    if not _plain_name(manifest.get("model")):
        raise ArtifactError(f"{path}: field 'model' must be a file name inside the artifact directory, "
                            f"got {manifest.get('model')!r:.80}")
    files = manifest.get("files")
    if not isinstance(files, dict) or manifest["model"] not in files:
        raise ArtifactError(f"{path}: field 'files' must map every file (the model {manifest['model']!r} "
                            f"included) to its bytes and sha256; the artifact is damaged, save it again")
    for name, entry in files.items():
        ok = (_plain_name(name) and isinstance(entry, dict) and isinstance(entry.get("bytes"), int)
              and isinstance(entry.get("sha256"), str) and len(entry["sha256"]) == 64)
        if not ok:
            raise ArtifactError(f"{path}: field 'files[{name!r}]' must be a file name mapped to "
                                f"{{\"bytes\": size, \"sha256\": 64 hex digits}}, got {entry!r:.120}")
    for key in ("inputs", "outputs"):
        specs = manifest.get(key)
        good = isinstance(specs, list) and all(
            isinstance(s, dict) and isinstance(s.get("name"), str) and isinstance(s.get("dtype"), str)
            and isinstance(s.get("shape"), list) for s in specs)
        if not good:
            raise ArtifactError(f"{path}: field '{key}' must be a list of {{name, dtype, shape}}; the artifact "
                                f"is damaged, save it again")
    structure = manifest.get("structure")
    if not isinstance(structure, dict) or count_leaves(structure) != len(manifest["outputs"]):
        raise ArtifactError(f"{path}: field 'structure' must describe the {len(manifest['outputs'])} outputs; "
                            f"the artifact is damaged, save it again")


def check_files(directory: str | os.PathLike, manifest: dict) -> None:
    """Every file the manifest lists is a regular file of the artifact with the recorded size and SHA-256."""
    directory = Path(directory)
    root = os.path.realpath(directory)
    for name, expected in manifest["files"].items():
        target = directory / name
        if not target.is_file():
            raise ArtifactError(f"{target} is missing (listed in {MANIFEST}); the artifact is incomplete, "
                                f"save it again")
        if os.path.dirname(os.path.realpath(target)) != root:
            raise ArtifactError(f"{target} is a link to {os.path.realpath(target)}, outside the artifact; "
                                f"save the artifact again")
        size = target.stat().st_size
        if size != expected["bytes"]:
            raise ArtifactError(f"{target} has {size} bytes, {MANIFEST} records {expected['bytes']}: the file is "
                                f"truncated or was replaced; save the artifact again")
        if describe_file(target)["sha256"] != expected["sha256"].lower():
            raise ArtifactError(f"{target} does not match its SHA-256 in {MANIFEST}: the file is damaged or was "
                                f"replaced; save the artifact again")


_PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


def load_onnx(directory: str | os.PathLike, device: str = "cpu", *, manifest: dict | None = None) -> "OnnxArtifact":
    """Load an ONNX artifact written by `OptimizedModel.save`, after checking every file; see `OnnxArtifact`."""
    directory = Path(directory)
    manifest = read_manifest(directory) if manifest is None else manifest
    if manifest.get("kind") != ONNX_KIND:
        raise ArtifactError(f"{directory / MANIFEST}: kind is {manifest.get('kind')!r}, not {ONNX_KIND!r}")
    check_manifest(directory, manifest, ONNX_FORMAT_VERSION)
    check_files(directory, manifest)
    return OnnxArtifact(directory, manifest, device)


class OnnxArtifact:
    """A saved ONNX artifact run by ONNX Runtime: numpy arrays in, numpy arrays out, no torch needed.

    Call it like the OptimizedModel it was saved from: inputs by position (forward()'s order) or
    by name, each checked against the manifest (dtype, rank, static sizes, one size per symbolic
    axis name) with an InputError naming the input. Torch tensors are accepted too (converted
    with `.numpy()`), but the outputs are numpy arrays either way, in the original output
    structure (a dict stays a dict).
    """

    def __init__(self, directory: Path, manifest: dict, device: str = "cpu") -> None:
        import numpy as np
        import onnxruntime as ort

        self.directory = Path(directory)
        self.manifest = manifest
        self.inputs = manifest["inputs"]
        self.outputs = manifest["outputs"]
        self.input_names = [spec["name"] for spec in self.inputs]
        self._np = np
        provider = _PROVIDERS.get(device)
        if provider is None or provider not in ort.get_available_providers():
            raise ArtifactError(f"device {device!r} is not available to this ONNX Runtime "
                                f"(available: {', '.join(ort.get_available_providers())}); use device='cpu'")
        model = self.directory / manifest["model"]
        try:
            self.session = ort.InferenceSession(str(model), providers=[provider])
        except Exception as exc:
            raise ArtifactError(f"ONNX Runtime could not load {model}: {exc}") from exc
        self._onnx_inputs = [spec.get("onnx_name", spec["name"]) for spec in self.inputs]
        self._onnx_outputs = [spec.get("onnx_name", spec["name"]) for spec in self.outputs]

    def __call__(self, *inputs: Any, **named: Any) -> Any:
        arrays = order_inputs(self.input_names, inputs, named, what="the model") if named else inputs
        if len(arrays) != len(self.inputs):
            signature = ", ".join(f"{s['name']}: {s['dtype']}{s['shape']}" for s in self.inputs)
            raise InputError(f"the model takes {len(self.inputs)} input(s) ({signature}), got {len(arrays)}")
        feeds = self._checked(arrays)
        results = self.session.run(self._onnx_outputs, feeds)
        return rebuild_structure(self.manifest["structure"], [self._np.asarray(r) for r in results])

    def _checked(self, arrays: Sequence[Any]) -> dict:
        np = self._np
        feeds, sizes = {}, {}
        for index, (spec, given) in enumerate(zip(self.inputs, arrays)):
            if hasattr(given, "detach") and hasattr(given, "numpy"):  # a torch tensor, without importing torch
                given = given.detach().cpu().numpy()
            array = np.ascontiguousarray(given)
            label = f"input {spec['name']!r} (input {index}: {spec['dtype']}{spec['shape']})"
            if array.dtype.name != spec["dtype"]:
                raise InputError(f"{label} has dtype {array.dtype.name}; the model was saved for {spec['dtype']}: "
                                 f"cast it, e.g. x.astype({spec['dtype']!r})")
            if array.ndim != len(spec["shape"]):
                raise InputError(f"{label} has {array.ndim} dims {list(array.shape)}; expected {len(spec['shape'])}")
            for axis, (have, want) in enumerate(zip(array.shape, spec["shape"])):
                if isinstance(want, int):
                    if have != want:
                        raise InputError(f"{label} has size {have} on axis {axis}; the model needs {want} there "
                                         f"(that axis was traced static)")
                elif isinstance(want, str) and want.isidentifier():
                    seen = sizes.setdefault(want, (have, f"input {spec['name']!r} axis {axis}"))
                    if seen[0] != have:
                        raise InputError(f"{label} has size {have} on axis {axis}, but {seen[1]} gave "
                                         f"{want} = {seen[0]}; they must agree")
            feeds[self._onnx_inputs[index]] = array
        return feeds

    def __repr__(self) -> str:
        signature = ", ".join(f"{s['name']}: {s['dtype']}{s['shape']}" for s in self.inputs)
        return f"<graphopt ONNX model {self.manifest.get('graph', '?')}({signature}) from {self.directory}>"
