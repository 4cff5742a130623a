"""TVM back-end: compile a graph to a tuned CPU library, save it, and run it with TVM's runtime.

    from graphopt.backends import tvm as gtvm
    module = gtvm.compile(graph, tune="15min")     # MetaSchedule, records kept in ~/.cache/graphopt/tvm
    y = module(x)                                  # torch tensors in, torch tensors out
    module.save("resnet_tvm/")                     # model.so + manifest.json
    run = gtvm.load("resnet_tvm/")                 # TVM runtime only; numpy in, numpy out

Importing this package imports tvm; `import graphopt` never does (the dependency is the
optional `graphopt[tvm]` extra). `artifact` imports tvm and numpy only. Importing it sets
TVM_NUM_THREADS to the number of cores, unless TVM_NUM_THREADS or OMP_NUM_THREADS is set
(see artifact.default_runtime_threads).
"""

from graphopt.backends.tvm.artifact import LoadedModel, default_runtime_threads, load
from graphopt.backends.tvm.lowering import TensorSpec, static_bind, to_relax
from graphopt.backends.tvm.module import TvmModule, UntunedWarning, compile
from graphopt.backends.tvm.rpc import LocalCluster, rpc_runner
from graphopt.backends.tvm.target import detect_target, host_mcpu
from graphopt.backends.tvm.tuning import Budget, TuneReport, TuningDatabase

__all__ = [
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
