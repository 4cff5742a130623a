"""graphopt: a compiler-style graph transformation framework for neural networks.

Trace a model into graphopt's IR (`graphopt.trace`), transform it with passes,
and lower it to a backend (`graphopt.backends.torch.to_module`, ...).
"""

from pathlib import Path as _Path

from graphopt._source_layout import install_if_source_checkout as _install_source_layout

_install_source_layout(_Path(__file__).resolve().parent)

from graphopt.errors import GraphoptError, ShapeError, UnsupportedOpError, VerificationError  # noqa: E402
from graphopt.frontends.torch import register_torch_op, trace  # noqa: E402
from graphopt.ir import Graph, Node, Value  # noqa: E402
from graphopt.passmanager import (  # noqa: E402
    Pass, PassManager, PassResult, PreservedAnalyses, register_analysis, register_pass,
)
from graphopt import analysis  # noqa: E402,F401 - registers the channel-groups and cost analyses
from graphopt.api import OptimizedModel, optimize  # noqa: E402

__version__ = "0.1.0"


def load(path, device: str = "cpu"):
    """Load a compiled artifact (TVM: model.so + manifest.json); imports tvm only when called."""
    from graphopt.backends.tvm.artifact import load as _load

    return _load(path, device)


__all__ = [
    "Graph", "Node", "Value", "trace", "register_torch_op",
    "Pass", "PassResult", "PassManager", "PreservedAnalyses", "register_pass", "register_analysis",
    "optimize", "OptimizedModel", "load",
    "GraphoptError", "ShapeError", "UnsupportedOpError", "VerificationError", "__version__",
]
