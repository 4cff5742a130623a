"""Save and load a compiled TVM model: `model.so` + `manifest.json`, run with TVM's runtime only.

This module imports only the standard library, numpy and tvm, never torch or
the rest of graphopt, so a deployment needs `apache-tvm` and numpy alone. It
can also be run as a script straight from its file, without graphopt
installed at all:

    python artifact.py ARTIFACT_DIR [--inputs in.npz] [--outputs out.npz]

Layout of an artifact directory:
    model.so        the Relax VM executable (kernels and weights) from export_library
    manifest.json   format, entry function, inputs/outputs (name, shape, dtype), target,
                    graphopt / TVM / tvm-ffi versions, the graph passes applied, tuning summary
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import timeit

FORMAT = "graphopt-tvm-artifact"
FORMAT_VERSION = 1
LIBRARY = "model.so"
MANIFEST = "manifest.json"


THREAD_VARIABLES = ("TVM_NUM_THREADS", "OMP_NUM_THREADS")


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
    """Write `executable` and `manifest` to `directory` (created); complete files only.

    The library is exported under a temporary name and renamed into place, and the
    manifest is written last, so a directory with a manifest always has its library.
    """
    os.makedirs(directory, exist_ok=True)
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "library": LIBRARY, "entry": "main",
                **manifest, "versions": versions()}
    fd, tmp_lib = tempfile.mkstemp(prefix=".model.", suffix=".so", dir=directory)
    os.close(fd)
    try:
        executable.export_library(tmp_lib)
        os.replace(tmp_lib, os.path.join(directory, LIBRARY))
    finally:
        if os.path.exists(tmp_lib):
            os.unlink(tmp_lib)
    tmp_manifest = os.path.join(directory, f".{MANIFEST}.tmp")
    with open(tmp_manifest, "w") as f:
        json.dump(manifest, f, indent=2, sort_keys=False)
        f.write("\n")
    os.replace(tmp_manifest, os.path.join(directory, MANIFEST))
    return str(directory)


class LoadedModel:
    """A saved model loaded with TVM's runtime: called with numpy arrays, returns numpy arrays."""

    def __init__(self, directory, device: str = "cpu") -> None:
        import numpy as np

        tvm = import_tvm_runtime()
        from tvm import relax

        self.directory = str(directory)
        path = os.path.join(self.directory, MANIFEST)
        try:
            with open(path) as f:
                self.manifest = json.load(f)
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.directory} is not a graphopt TVM artifact: no {MANIFEST}") from None
        if self.manifest.get("format") != FORMAT:
            raise ValueError(f"{path}: format {self.manifest.get('format')!r}, expected {FORMAT!r}")
        if self.manifest.get("format_version", 0) > FORMAT_VERSION:
            raise ValueError(f"{path}: format version {self.manifest['format_version']} is newer than this "
                             f"loader ({FORMAT_VERSION}); upgrade graphopt")
        self.inputs = self.manifest["inputs"]
        self.outputs = self.manifest["outputs"]
        self._np = np
        self.device = tvm.device(device)
        lib = tvm.runtime.load_module(os.path.join(self.directory, self.manifest["library"]))
        self.vm = relax.VirtualMachine(lib, self.device)
        self._main = self.vm[self.manifest.get("entry", "main")]

    def __call__(self, *arrays):
        """Run one inference; inputs positionally in manifest order, outputs as numpy arrays (tuple if several)."""
        import tvm

        if len(arrays) != len(self.inputs):
            names = ", ".join(i["name"] for i in self.inputs)
            raise ValueError(f"the model takes {len(self.inputs)} inputs ({names}), got {len(arrays)}")
        args = [tvm.runtime.tensor(self._check(spec, a), self.device) for spec, a in zip(self.inputs, arrays)]
        result = self._main(*args)
        outs = tuple(r.numpy() for r in _flatten(result))
        return outs[0] if len(outs) == 1 else outs

    def run(self, feeds: dict) -> dict:
        """Run with inputs by name; returns outputs by name."""
        missing = [i["name"] for i in self.inputs if i["name"] not in feeds]
        if missing:
            raise ValueError(f"missing inputs {missing}")
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
            raise ValueError(f"input '{spec['name']}' must be {spec['dtype']}{spec['shape']} (compiled static "
                             f"shape), got {array.dtype.name}{list(array.shape)}")
        return array

    def __repr__(self) -> str:
        sig = ", ".join(f"{i['name']}: {i['dtype']}{i['shape']}" for i in self.inputs)
        return f"<graphopt TVM model {self.manifest.get('graph', '?')}({sig}) from {self.directory}>"


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
