"""Save and load a compiled TVM model: `model.so` + `manifest.json`, run with TVM's runtime only.

This module imports only the standard library, numpy and tvm, never torch or
the rest of graphopt, so a deployment needs `apache-tvm` and numpy alone. It
can also be run as a script straight from its file, without graphopt
installed at all:

    python artifact.py ARTIFACT_DIR [--inputs in.npz] [--outputs out.npz]

Layout of an artifact directory:
    model.so        the Relax VM executable (kernels and weights) from export_library
    manifest.json   format, entry function, inputs/outputs (name, shape, dtype), target,
                    graphopt / TVM / tvm-ffi versions, the graph passes applied, tuning summary,
                    and (format version 2) the size and SHA-256 of every other file ("files")

`save` writes an artifact as a whole: everything is built in a temporary sibling directory,
synced, and renamed into place; a previous artifact at the path is renamed aside first and
deleted only once the new one is in place, so at every instant the path holds either the
old artifact or the new one, never a mixture. `load` validates the manifest (JSON, required
fields and their types), the library's name (a plain file inside the artifact) and the
library's size and checksum before any native code is loaded: a truncated model.so used to
kill the interpreter with SIGBUS. Problems are reported as `ArtifactError` (a ValueError;
inside graphopt also a GraphoptError).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import struct
import sys
import tempfile
import timeit
import warnings

FORMAT = "graphopt-tvm-artifact"
FORMAT_VERSION = 2  # 2: "files" records each file's size and SHA-256; version 1 is still read
LIBRARY = "model.so"
MANIFEST = "manifest.json"


class ArtifactError(ValueError):
    """A saved artifact is unusable: a bad manifest, a library outside the artifact, a truncated or altered file.

    graphopt.backends.tvm replaces `_ERROR` below with a subclass that is also a
    graphopt.errors.GraphoptError; this module itself never imports graphopt.
    """


_ERROR: type = ArtifactError  # the class raised; always a subclass of ArtifactError


def _fail(message: str):
    raise _ERROR(message)


THREAD_VARIABLES = ("TVM_NUM_THREADS", "OMP_NUM_THREADS")
DTYPES = {"float64", "float32", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool"}


def physical_cores() -> int:
    """Cores this process may run on, counting SMT siblings once (MetaSchedule's 'physical')."""
    try:
        import psutil  # a MetaSchedule dependency; a runtime-only deployment may lack it

        physical = psutil.cpu_count(logical=False) or 0
    except ImportError:
        physical = 0
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(physical or usable, usable))


def default_runtime_threads() -> None:
    """Make TVM's thread pool use every core this process may run on, unless the user chose.

    TVM's runtime sizes its pool as hardware_concurrency / 2 on x86 (it assumes SMT), so on
    a 2-vCPU machine every kernel ran on one thread, and the pool pinned the main thread,
    and every thread started after it (ONNX Runtime's, torch's), to core 0: measured
    ResNet-18 49.7 ms on one thread vs 35.6 ms on two with the same schedules. The pool reads
    TVM_NUM_THREADS when it is first used, and processes started later (tuning workers, RPC
    servers) inherit it, so it is set before anything runs.
    """
    if any(os.environ.get(v) for v in THREAD_VARIABLES):
        return
    os.environ["TVM_NUM_THREADS"] = str(physical_cores())


def import_tvm_runtime():
    """`import tvm` without letting tvm_ffi import torch (unless torch is already imported).

    tvm_ffi imports torch whenever it is installed (a work-around for a symbol clash seen on
    Windows), which costs seconds and makes torch a run-time dependency of a deployed model.
    While tvm is first imported here, `import torch` fails, which tvm_ffi catches and skips;
    afterwards torch is importable again for whoever needs it.
    """
    if "tvm" in sys.modules or "torch" in sys.modules:
        import tvm

        return tvm
    sys.modules["torch"] = None  # makes `import torch` raise ImportError
    try:
        import tvm
    finally:
        if sys.modules.get("torch", 0) is None:
            del sys.modules["torch"]
    return tvm


def versions() -> dict:
    """Versions of the packages an artifact was built with (graphopt's only when it is importable)."""
    import tvm

    found = {"tvm": tvm.__version__}
    try:
        from importlib import metadata

        for dist in ("apache-tvm-ffi", "graphopt"):
            try:
                found[dist.replace("apache-", "").replace("-", "_")] = metadata.version(dist)
            except metadata.PackageNotFoundError:
                pass
    except ImportError:  # pragma: no cover
        pass
    return found


def save(directory, executable, manifest: dict) -> str:
    """Write `executable` and `manifest` as the artifact `directory`, all or nothing.

    Everything is written into a temporary sibling directory (`.NAME.tmp-XXXX`), each file
    and the directory are fsynced, then it is renamed to `directory`. A previous artifact
    there is renamed aside (`.NAME.old-XXXX`) first and deleted after the new one is in
    place; if anything fails, the previous artifact is put back and the temporary directory
    removed. An existing `directory` holding anything but an artifact's files is refused
    (the whole directory is replaced, so other files in it would be lost).
    """
    directory = os.path.abspath(os.fspath(directory))
    parent, name = os.path.split(directory.rstrip(os.sep) or os.sep)
    if not name:
        _fail(f"cannot save an artifact as {directory!r}: give a directory name")
    directory = os.path.join(parent, name)
    if os.path.lexists(directory):
        _check_replaceable(directory)
    os.makedirs(parent, exist_ok=True)
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "library": LIBRARY, "entry": "main",
                **manifest, "versions": versions()}
    staging = _sibling_dir(parent, f".{name}.tmp-")
    try:
        library = os.path.join(staging, LIBRARY)
        with quiet_native_log():
            executable.export_library(library)
        _fsync_file(library)
        manifest["files"] = {LIBRARY: describe_file(library)}
        path = os.path.join(staging, MANIFEST)
        with open(path, "w") as f:
            json.dump(manifest, f, indent=2, sort_keys=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(staging)
        _move_into_place(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory


def _sibling_dir(parent: str, prefix: str) -> str:
    """A new, empty directory `parent/prefixXXXXXXXX`, with the permissions the umask gives (unlike mkdtemp's 0700)."""
    for _ in range(100):
        path = os.path.join(parent, prefix + os.urandom(4).hex())
        try:
            os.mkdir(path)
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"no free temporary name {prefix}XXXXXXXX in {parent}")  # pragma: no cover


def describe_file(path) -> dict:
    """{"bytes": size, "sha256": hex digest} of a file, as the manifest records it."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
            size += len(block)
    return {"bytes": size, "sha256": digest.hexdigest()}


def _check_replaceable(directory: str) -> None:
    if os.path.islink(directory) or not os.path.isdir(directory):
        _fail(f"cannot save an artifact as {directory}: it exists and is not a directory")
    # (and the temporary files of the first version of `save`, which wrote inside the directory)
    foreign = sorted(f for f in os.listdir(directory) if f not in (LIBRARY, MANIFEST, f".{MANIFEST}.tmp")
                     and not (f.startswith(".model.") and f.endswith(".so")))
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        _fail(f"cannot save an artifact as {directory}: it holds files that are not part of a graphopt "
              f"TVM artifact ({shown}), which replacing the directory would delete; choose a new directory")


def _move_into_place(staging: str, directory: str) -> None:
    """Rename `staging` to `directory`; an existing `directory` survives any failure."""
    parent, name = os.path.split(directory)
    if not os.path.lexists(directory):
        os.rename(staging, directory)
        _fsync_dir(parent)
        return
    aside = _sibling_dir(parent, f".{name}.old-")
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
    _fsync_dir(parent)
    shutil.rmtree(aside, ignore_errors=True)


# The ONNX exporter has the same two helpers; this module runs without graphopt, so it keeps its own.
def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: str) -> None:
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


_NATIVE_NOISE = ("Scope Saving:", "Scope Loaded:")


@contextlib.contextmanager
def quiet_native_log():
    """Drop TVM's "Scope Saving:"/"Scope Loaded:" warnings, which its runtime writes to stderr.

    TVM's VM executable logs one line per memory scope (LOG(WARNING) in
    src/runtime/vm/executable.cc) whenever it is exported or loaded, straight to std::cerr,
    with no level to turn it off. So the process's stderr (file descriptor 2) is redirected
    to a temporary file around the call, and every other line written meanwhile is passed
    on to the real stderr afterwards.
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (AttributeError, OSError, ValueError):  # no usable stderr: nothing to filter
        yield
        return
    capture = tempfile.TemporaryFile()
    try:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os.dup2(saved, 2)
    finally:
        os.close(saved)
        capture.seek(0)
        text = capture.read().decode("utf-8", "replace")
        capture.close()
        kept = "".join(line for line in text.splitlines(keepends=True)
                       if not any(noise in line for noise in _NATIVE_NOISE))
        if kept:
            with contextlib.suppress(Exception):
                sys.stderr.write(kept)
                sys.stderr.flush()


class LoadedModel:
    """A saved model loaded with TVM's runtime: called with numpy arrays, returns numpy arrays."""

    def __init__(self, directory, device: str = "cpu") -> None:
        import numpy as np

        tvm = import_tvm_runtime()
        from tvm import relax

        self.directory = str(directory)
        self.manifest = read_manifest(self.directory)
        library = check_files(self.directory, self.manifest)
        self.inputs = self.manifest["inputs"]
        self.outputs = self.manifest["outputs"]
        self._np = np
        self.device = tvm.device(device)
        with quiet_native_log():
            lib = tvm.runtime.load_module(library)
            self.vm = relax.VirtualMachine(lib, self.device)
        entry = self.manifest.get("entry", "main")
        try:
            self._main = self.vm[entry]
        except AttributeError:
            _fail(f"{os.path.join(self.directory, MANIFEST)}: field 'entry' names {entry!r}, which the library "
                  f"does not define (graphopt saves 'main')")

    def __call__(self, *arrays):
        """Run one inference; inputs positionally in manifest order, outputs as numpy arrays (tuple if several)."""
        import tvm

        if len(arrays) != len(self.inputs):
            names = ", ".join(i["name"] for i in self.inputs)
            _fail(f"the model takes {len(self.inputs)} inputs ({names}), got {len(arrays)}")
        args = [tvm.runtime.tensor(self._check(spec, a), self.device) for spec, a in zip(self.inputs, arrays)]
        result = self._main(*args)
        outs = tuple(r.numpy() for r in _flatten(result))
        return outs[0] if len(outs) == 1 else outs

    def run(self, feeds: dict) -> dict:
        """Run with inputs by name; returns outputs by name."""
        missing = [i["name"] for i in self.inputs if i["name"] not in feeds]
        if missing:
            _fail(f"missing inputs {missing}")
        outs = self(*(feeds[i["name"]] for i in self.inputs))
        outs = outs if isinstance(outs, tuple) else (outs,)
        return {o["name"]: v for o, v in zip(self.outputs, outs)}

    def benchmark(self, *arrays, repeat: int = 20, warmup: int = 3) -> float:
        """Median latency in milliseconds over `repeat` calls."""
        # graphopt.timing.median_seconds does the same, but this module runs without graphopt
        for _ in range(warmup):
            self(*arrays)
        times = timeit.repeat(lambda: self(*arrays), number=1, repeat=repeat)
        return 1e3 * sorted(times)[len(times) // 2]

    def _check(self, spec, array):
        np = self._np
        if hasattr(array, "detach"):  # a torch tensor, without importing torch here
            array = array.detach().cpu().numpy()
        array = np.ascontiguousarray(array)
        if list(array.shape) != list(spec["shape"]) or array.dtype.name != spec["dtype"]:
            _fail(f"input '{spec['name']}' must be {spec['dtype']}{spec['shape']} (compiled static "
                  f"shape), got {array.dtype.name}{list(array.shape)}")
        return array

    def __repr__(self) -> str:
        sig = ", ".join(f"{i['name']}: {i['dtype']}{i['shape']}" for i in self.inputs)
        return f"<graphopt TVM model {self.manifest.get('graph', '?')}({sig}) from {self.directory}>"


def read_manifest(directory) -> dict:
    """The artifact's manifest, checked: JSON, a known format and version, the fields `load` uses."""
    path = os.path.join(str(directory), MANIFEST)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"{directory} is not a graphopt TVM artifact: no {MANIFEST}") from None
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        _fail(f"{path} is not valid JSON ({exc}); the artifact is damaged, save it again")
    if not isinstance(manifest, dict):
        _fail(f"{path}: expected a JSON object, got {type(manifest).__name__}")

    def field(key, kind, what, required=True):
        if key not in manifest:
            if required:
                _fail(f"{path}: field '{key}' is missing ({what} expected)")
            return None
        value = manifest[key]
        if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
            _fail(f"{path}: field '{key}' must be {what}, got {type(value).__name__} {value!r:.80}")
        return value

    if field("format", str, "a string") != FORMAT:
        _fail(f"{path}: field 'format' is {manifest['format']!r}, expected {FORMAT!r}")
    version = field("format_version", int, "an integer")
    if version < 1:
        _fail(f"{path}: field 'format_version' is {version}, expected 1 to {FORMAT_VERSION}")
    if version > FORMAT_VERSION:
        _fail(f"{path}: format version {version} is newer than this loader ({FORMAT_VERSION}); upgrade graphopt")
    if not _plain_name(field("library", str, "a file name")):
        _fail(f"{path}: field 'library' must be a file name inside the artifact directory, got {manifest['library']!r}")
    field("entry", str, "a function name", required=False)
    for key in ("inputs", "outputs"):
        specs = field(key, list, "a list of {name, shape, dtype}")
        for i, spec in enumerate(specs):
            where = f"{path}: field '{key}[{i}]'"
            if not isinstance(spec, dict):
                _fail(f"{where} must be an object with name, shape, dtype, got {type(spec).__name__}")
            for sub, kind, what in (("name", str, "a string"), ("dtype", str, "a string"),
                                    ("shape", list, "a list of integers")):
                if not isinstance(spec.get(sub), kind):
                    _fail(f"{where}.{sub} must be {what}, got {spec.get(sub)!r:.80}")
            if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in spec["shape"]):
                _fail(f"{where}.shape must be a list of integers >= 0, got {spec['shape']!r:.80}")
            if spec["dtype"] not in DTYPES:
                _fail(f"{where}.dtype must be one of {', '.join(sorted(DTYPES))}, got {spec['dtype']!r:.40}")
    if version >= 2:
        files = field("files", dict, "an object mapping file names to {bytes, sha256}")
        for name, entry in files.items():
            if not _plain_name(name):
                _fail(f"{path}: field 'files' names {name!r}, which is not a file name inside the artifact")
            ok = (isinstance(entry, dict) and isinstance(entry.get("bytes"), int)
                  and not isinstance(entry.get("bytes"), bool) and entry["bytes"] >= 0
                  and isinstance(entry.get("sha256"), str) and len(entry["sha256"]) == 64)
            if not ok:
                _fail(f"{path}: field 'files[{name!r}]' must be {{\"bytes\": size, \"sha256\": 64 hex digits}}, "
                      f"got {entry!r:.120}")
        if manifest["library"] not in files:
            _fail(f"{path}: field 'files' has no entry for the library {manifest['library']!r}")
    return manifest


def _plain_name(name: str) -> bool:
    """A file name without directories: not empty, '.', '..', absolute, or holding a separator or NUL."""
    separators = {os.sep, "/", "\0"} | ({os.altsep} if os.altsep else set())
    return bool(name) and name not in (".", "..") and not any(s in name for s in separators)


def check_files(directory, manifest: dict) -> str:
    """The library's path, after checking it is a file of the artifact matching the manifest.

    The library must be a plain file name (no directories, no '..', not absolute) naming a
    regular file in the artifact directory, or a symbolic link resolving inside it. Format
    version 2 records the size and SHA-256 of each file, which must match: dlopen maps a
    truncated library and the process dies with SIGBUS on the first touch of the missing
    pages. Version 1 manifests have no checksums: the library's ELF headers are checked to
    lie within the file instead (which catches truncation), with a warning.
    """
    directory = str(directory)
    path = os.path.join(directory, MANIFEST)
    name = manifest["library"]
    library = os.path.join(directory, name)
    root = os.path.realpath(directory)
    if os.path.dirname(os.path.realpath(library)) != root:
        _fail(f"{path}: field 'library' ({name!r}) is a link to {os.path.realpath(library)}, outside the "
              f"artifact directory {root}")
    if not os.path.isfile(library):
        _fail(f"{directory}: the library {name!r} named in {MANIFEST} is missing or not a file; the artifact "
              f"is incomplete, save it again")
    files = manifest.get("files")
    if files is None:
        warnings.warn(f"{path} has format version {manifest['format_version']}, without checksums: only the "
                      f"library's headers are checked; save the model again to record them", stacklevel=3)
        _check_elf_extent(library)
        return library
    for file, expected in files.items():
        target = os.path.join(directory, file)
        if not os.path.isfile(target):
            _fail(f"{directory}: {file!r} listed in {MANIFEST} is missing; the artifact is incomplete")
        size = os.path.getsize(target)
        if size != expected["bytes"]:
            _fail(f"{target} has {size} bytes, the manifest records {expected['bytes']}: the file is truncated "
                  f"or was replaced; save the artifact again")
        if describe_file(target)["sha256"] != expected["sha256"].lower():
            _fail(f"{target} does not match the SHA-256 in {MANIFEST}: the file is damaged or was replaced; "
                  f"save the artifact again")
    return library


def _check_elf_extent(library: str) -> None:
    """A little-endian ELF64 file must hold its program and section headers and its loaded segments."""
    size = os.path.getsize(library)
    with open(library, "rb") as f:
        header = f.read(64)
        if len(header) < 64 or header[:4] != b"\x7fELF" or header[4] != 2 or header[5] != 1:
            return  # not a little-endian ELF64 file (a Mach-O .dylib, 32-bit, big-endian...): not checked
        phoff, shoff = struct.unpack_from("<QQ", header, 0x20)
        phentsize, phnum, shentsize, shnum = struct.unpack_from("<HHHH", header, 0x36)
        extents = [phoff + phentsize * phnum, shoff + shentsize * shnum]
        if phoff + phentsize * phnum <= size and phentsize >= 56:
            f.seek(phoff)
            table = f.read(phentsize * phnum)
            for i in range(phnum):
                p_type, _, p_offset, _, _, p_filesz = struct.unpack_from("<IIQQQQ", table, i * phentsize)
                if p_type == 1:  # PT_LOAD
                    extents.append(p_offset + p_filesz)
    if max(extents) > size:
        _fail(f"{library} is truncated: {size} bytes, its headers need {max(extents)}; save the artifact again")


def load(directory, device: str = "cpu") -> LoadedModel:
    """Load an artifact saved by `TvmModule.save` (or `graphopt.backends.tvm.save`)."""
    default_runtime_threads()
    return LoadedModel(directory, device)


def _flatten(result):
    if hasattr(result, "numpy"):
        return [result]
    out = []
    for item in result:
        out.extend(_flatten(item))
    return out


def main(argv=None) -> int:
    import argparse

    import numpy as np

    parser = argparse.ArgumentParser(description="Run a graphopt TVM artifact once with TVM's runtime.")
    parser.add_argument("artifact")
    parser.add_argument("--inputs", help=".npz with one array per input name (default: zeros / ones)")
    parser.add_argument("--outputs", help="write the outputs to this .npz")
    parser.add_argument("--repeat", type=int, default=0, help="also time this many runs")
    args = parser.parse_args(argv)
    model = load(args.artifact)
    if args.inputs:
        data = np.load(args.inputs)
        feeds = {i["name"]: data[i["name"]] for i in model.inputs}
    else:
        feeds = {i["name"]: np.ones(i["shape"], dtype=i["dtype"]) for i in model.inputs}
    outs = model.run(feeds)
    for name, value in outs.items():
        print(f"{name}: {value.dtype}{list(value.shape)} first values {value.reshape(-1)[:4].tolist()}")
    if args.outputs:
        np.savez(args.outputs, **outs)
    if args.repeat:
        print(f"median latency {model.benchmark(*feeds.values(), repeat=args.repeat):.3f} ms")
    return 0


if __name__ == "__main__":
    # tvm_ffi imports torch when it is installed; a deployment runner has no use for it.
    sys.modules.setdefault("torch", None)
    sys.exit(main())
