"""TVM back-end: compile a graph to a tuned CPU library, save it, and run it with TVM's runtime.

    from graphopt.backends import tvm as gtvm
    module = gtvm.compile(graph, tune="15min")     # MetaSchedule, records kept in ~/.cache/graphopt/tvm
    y = module(x)                                  # torch tensors in, torch tensors out
    module.save("resnet_tvm/")                     # model.so + manifest.json
    run = gtvm.load("resnet_tvm/")                 # TVM runtime only; numpy in, numpy out

`import graphopt` never imports tvm (the dependency is the optional `graphopt[tvm]` extra), and
neither does importing this package: its names are imported on first use (PEP 562), so
`graphopt.load` reaches `artifact`, which imports tvm and numpy only, without the compiler side
(and torch). Importing this package sets TVM_NUM_THREADS to the number of cores, unless
TVM_NUM_THREADS or OMP_NUM_THREADS is set (see artifact.default_runtime_threads).

`artifact` cannot import graphopt (it runs on its own in a deployment), so it raises its own
`artifact.ArtifactError` (a ValueError); importing this package makes it raise `ArtifactError`
below instead, a subclass of both that is also a `graphopt.errors.GraphoptError`, so
`graphopt.load` and `gtvm.load` report a damaged artifact as a GraphoptError.
"""

from __future__ import annotations

import importlib
from typing import Any

from graphopt.backends.tvm import artifact as _artifact
from graphopt.backends.tvm.artifact import LoadedModel, default_runtime_threads, load
from graphopt.errors import GraphoptError
from graphopt.timing import register_graph_runner


class ArtifactError(_artifact.ArtifactError, GraphoptError):
    """A saved TVM artifact is unusable (bad manifest, library outside the artifact, damaged file)."""


_artifact._ERROR = ArtifactError

_LAZY = {
    "TensorSpec": "lowering", "static_bind": "lowering", "to_relax": "lowering",
    "TvmModule": "module", "UntunedWarning": "module", "compile": "module",
    "LocalCluster": "rpc", "rpc_runner": "rpc",
    "detect_target": "target", "host_mcpu": "target",
    "Budget": "tuning", "TuneReport": "tuning", "TuningDatabase": "tuning",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'graphopt.backends.tvm' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"graphopt.backends.tvm.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    "ArtifactError",
    "Budget",
    "LoadedModel",
    "LocalCluster",
    "TensorSpec",
    "TuneReport",
    "TuningDatabase",
    "TvmModule",
    "UntunedWarning",
    "compile",
    "detect_target",
    "host_mcpu",
    "load",
    "rpc_runner",
    "static_bind",
    "to_relax",
]

default_runtime_threads()


def _latency_runner(graph: Any, inputs: tuple, threads: int) -> Any:
    """The latency runner "tvm" of `graphopt.timing`: `graph` built on TVM's default schedules (applying what
    the tuning database already holds; no tuning), NHWC for convolutions as `optimize` builds it. TVM's
    thread count is the process's (TVM_NUM_THREADS), not `threads`."""
    import warnings

    from graphopt.backends.tvm.module import UntunedWarning, compile as tvm_compile

    convolutional = any(n.op == "conv" and n.inputs[1].rank == 4 for n in graph.nodes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UntunedWarning)
        module = tvm_compile(graph, example_inputs=inputs, pipeline=None, progress=False,
                             layout="NHWC" if convolutional else None)
    return lambda: module(*inputs)


register_graph_runner("tvm", _latency_runner)
