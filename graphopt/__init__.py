"""graphopt: a compiler-style graph transformation framework for neural networks.

Trace a model into graphopt's IR (`graphopt.trace`), transform it with passes,
and lower it to a backend (`graphopt.backends.torch.to_module`, ...).

`import graphopt` is light: the public names below are imported on first use
(PEP 562), so a deployment that only runs a saved artifact (`graphopt.load`)
needs neither torch nor onnx, and the command line starts fast.
"""

from __future__ import annotations

import importlib
from pathlib import Path as _Path
from typing import TYPE_CHECKING, Any

from graphopt._source_layout import install_if_source_checkout as _install_source_layout
from graphopt.errors import GraphoptError, ShapeError, UnsupportedOpError, VerificationError

_install_source_layout(_Path(__file__).resolve().parent)

__version__ = "0.1.0"

# public name -> the module that defines it, imported when the name is first read
_LAZY = {
    "Graph": "graphopt.ir", "Node": "graphopt.ir", "Value": "graphopt.ir",
    "trace": "graphopt.frontends.torch", "register_torch_op": "graphopt.frontends.torch",
    "Pass": "graphopt.passmanager", "PassResult": "graphopt.passmanager", "PassManager": "graphopt.passmanager",
    "PreservedAnalyses": "graphopt.passmanager", "register_pass": "graphopt.passmanager",
    "Analysis": "graphopt.analysis",
    "optimize": "graphopt.api", "OptimizedModel": "graphopt.api",
    "define_op": "graphopt.custom_ops",
}
_SUBMODULES = {"analysis", "api", "backends", "cli", "frontends", "ir", "models_zoo", "passes", "passmanager", "train"}

if TYPE_CHECKING:  # what the lazy names are, for type checkers and IDEs
    from graphopt.analysis import Analysis
    from graphopt.api import OptimizedModel, optimize
    from graphopt.frontends.torch import register_torch_op, trace
    from graphopt.ir import Graph, Node, Value
    from graphopt.passmanager import (
        Pass, PassManager, PassResult, PreservedAnalyses, register_pass,
    )


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module), name)
        globals()[name] = value  # later reads skip __getattr__
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"graphopt.{name}")
    raise AttributeError(f"module 'graphopt' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | _SUBMODULES)


def load(path, device: str = "cpu"):
    """Load a saved artifact with its runtime only: torch only for a torch artifact, nor graphopt's heavy parts.

    The artifact's manifest.json says what it is: kind "onnx" (`OptimizedModel.save` of a
    backend="onnx" model) loads with ONNX Runtime and numpy (`graphopt.artifacts.OnnxArtifact`);
    kind "torch" (backend="torch") as an `OptimizedModel`, without the original model's code;
    a TVM artifact (model.so + manifest.json, `TvmModule.save`) with TVM's runtime. Every file is
    checked against the sizes and SHA-256 digests the manifest records before any runtime reads
    it. A missing or damaged manifest, an unknown kind, a newer format or an altered file is a
    GraphoptError saying which file and what to do.
    """
    from graphopt.artifacts import ONNX_KIND, TORCH_KIND, ArtifactError, load_onnx, read_manifest

    manifest = read_manifest(path)
    kind = manifest.get("kind")
    if kind == ONNX_KIND:
        return load_onnx(path, device, manifest=manifest)
    if kind == TORCH_KIND:
        if device != "cpu":
            raise ArtifactError(f"a torch artifact loads on the CPU (got device={device!r}); move its "
                                f"torch_module() to {device!r} after loading")
        from graphopt.api import load_torch_artifact

        return load_torch_artifact(path, manifest)
    if kind not in (None, "tvm"):  # TVM manifests have no "kind": their "format" names them
        raise ArtifactError(f"{_Path(path) / 'manifest.json'}: unknown artifact kind {kind!r} (this graphopt "
                            f"loads 'onnx', 'torch' and TVM artifacts); upgrade graphopt, or save the model again")
    from graphopt.artifacts import StructuredOutputs
    from graphopt.backends.tvm.artifact import load as _load

    loaded = _load(path, device)
    structure = manifest.get("structure")  # OptimizedModel.save records it: a dict output comes back a dict
    return StructuredOutputs(loaded, structure) if isinstance(structure, dict) else loaded


__all__ = [
    "Graph", "Node", "Value", "trace", "register_torch_op",
    "Pass", "PassResult", "PassManager", "PreservedAnalyses", "register_pass", "Analysis",
    "optimize", "OptimizedModel", "load", "define_op",
    "GraphoptError", "ShapeError", "UnsupportedOpError", "VerificationError", "__version__",
]
