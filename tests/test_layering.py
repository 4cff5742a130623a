"""The import contract: graphopt's layers import one way, and no two packages import each other.

    base (errors, registry, dtypes, timing) <- ir <- analysis <- passmanager <- passes
        <- frontends | backends <- api (graphopt/__init__, api, cli, custom_ops, coverage, train/)

Every import in graphopt/, passes/ and backends/ counts, including those inside functions: an
upward import deferred to call time is still an upward dependency. docs/architecture.md explains
where each kind of change goes.
"""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parent.parent

# (layer, rank): a module may import modules of its own rank or lower ranks, except that
# frontends and backends, side by side at one rank, do not import each other.
LAYERS = {"base": 0, "ir": 1, "analysis": 2, "passmanager": 3, "passes": 4, "frontends": 5, "backends": 5,
          "models_zoo": 0, "api": 6}
_TOP_MODULES = {"__init__", "api", "cli", "custom_ops", "coverage", "__main__", "train"}  # train/: a package
_PACKAGE_BASE_NAMES = {"__version__", "GraphoptError", "ShapeError", "UnsupportedOpError", "VerificationError"}
_SUBPACKAGES = {"analysis", "api", "backends", "cli", "frontends", "ir", "models_zoo", "passes", "passmanager",
                "errors", "registry", "dtypes", "timing", "custom_ops", "coverage", "train"}
_FOLDERS = {"passes": "graphopt.passes", "backends": "graphopt.backends", "models_zoo": "graphopt.models_zoo"}


def module_name(path: Path, root: Path) -> str:
    """The dotted name a source file is imported under (the mapped folders live in graphopt.*)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[0] in _FOLDERS:
        parts = _FOLDERS[parts[0]].split(".") + parts[1:]
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def layer_of(module: str) -> str | None:
    """The layer of a graphopt module, or None for third-party modules."""
    parts = module.split(".")
    if parts[0] != "graphopt":
        return None
    if len(parts) == 1 or parts[1] in _TOP_MODULES:
        return "api"
    if parts[1] in LAYERS:
        return parts[1]
    return "base"  # errors, registry, dtypes, timing, _source_layout


def package_of(module: str) -> str:
    """The package a module belongs to for the cycle check: graphopt.<layer>, or for the
    plug-in layers (passes, backends) graphopt.<layer>.<one pass family or back-end>."""
    parts = module.split(".")
    return ".".join(parts[:3] if len(parts) >= 3 and parts[1] in ("passes", "backends") else parts[:2])


def imports_of(path: Path, module: str) -> list[tuple[str, int]]:
    """Every module `path` imports (absolute names, relative imports resolved), with line numbers."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            if base != "graphopt":
                found.append((base, node.lineno))
                continue
            # `from graphopt import passes` imports graphopt.passes; the version and the error types
            # are the package's own base-layer names, anything else must come from its defining module
            for alias in node.names:
                if alias.name not in _PACKAGE_BASE_NAMES:
                    is_module = alias.name in _SUBPACKAGES
                    found.append((f"graphopt.{alias.name}" if is_module else "graphopt", node.lineno))
    return found


def source_files(root: Path) -> list[Path]:
    return sorted(p for folder in ("graphopt", "passes", "backends", "models_zoo") for p in (root / folder).rglob("*.py"))


def layering_violations(root: Path) -> list[str]:
    """Upward or sideways imports between layers, and import cycles between packages."""
    problems = []
    packages = nx.DiGraph()
    for path in source_files(root):
        module = module_name(path, root)
        here = layer_of(module)
        for target, line in imports_of(path, module):
            there = layer_of(target)
            if there is None or target == "graphopt" and here == "api":
                continue
            where = f"{path.relative_to(root)}:{line}: {module} ({here}) imports {target} ({there})"
            if target == "graphopt":
                problems.append(f"{where}: import the module that defines the name, not the graphopt package")
            elif LAYERS[there] > LAYERS[here] or (LAYERS[there] == LAYERS[here] and there != here):
                problems.append(f"{where}: a lower layer must not import a higher or sibling one")
            source, sink = package_of(module), package_of(target)
            if not (source.startswith(sink) or sink.startswith(source)):  # a package and its parent are one
                packages.add_edge(source, sink)
    for cycle in nx.simple_cycles(packages):
        problems.append(f"import cycle between packages: {' -> '.join(cycle + cycle[:1])}")
    return problems


def test_the_tree_imports_one_way():
    problems = layering_violations(ROOT)
    assert not problems, "layering violations:\n" + "\n".join(problems)


# a miniature tree that imports one way: each layer imports the one below it
_CLEAN_TREE = {
    "graphopt/__init__.py": "from graphopt.api import optimize\n",
    "graphopt/api.py": "from graphopt.backends.torch import to_module\nfrom graphopt.frontends.torch import trace\n",
    "graphopt/errors.py": "", "graphopt/ir/__init__.py": "from graphopt.errors import GraphoptError\n",
    "graphopt/analysis/__init__.py": "from graphopt.ir import Graph\n",
    "graphopt/passmanager/__init__.py": "from graphopt.analysis import channel_groups\n",
    "graphopt/frontends/__init__.py": "", "graphopt/frontends/torch.py": "from graphopt.passmanager import Pass\n",
    "passes/__init__.py": "from . import prune\n", "passes/prune/__init__.py": "from graphopt.passmanager import Pass\n",
    "backends/__init__.py": "", "backends/torch/__init__.py": "from ...ir import Graph\n",
    "models_zoo/__init__.py": "",
}


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


@pytest.mark.parametrize("name, text, expected", [
    ("graphopt/ir/bad.py", "def f():\n    from graphopt.passmanager import PassManager\n", "lower layer"),
    ("graphopt/analysis/bad.py", "from graphopt.backends.torch import to_module\n", "lower layer"),
    ("graphopt/frontends/bad.py", "from graphopt.backends.onnx.dtypes import x\n", "sibling"),
    ("passes/bad.py", "from ..backends import torch\n", "lower layer"),
    ("graphopt/ir/bad.py", "import graphopt\n", "not the graphopt package"),
])
def test_an_upward_import_is_caught(tmp_path, name, text, expected):
    _write(tmp_path, _CLEAN_TREE)
    assert not layering_violations(tmp_path)
    _write(tmp_path, {name: text})
    problems = layering_violations(tmp_path)
    assert any(expected in p and name.split("/")[-1] in p for p in problems), problems


def test_a_cycle_between_packages_is_caught(tmp_path):
    _write(tmp_path, _CLEAN_TREE)
    _write(tmp_path, {
        "backends/onnx/__init__.py": "from graphopt.backends.tvm import x\n",
        "backends/tvm/__init__.py": "from graphopt.backends.onnx import y\n",
    })
    problems = layering_violations(tmp_path)
    assert any("import cycle" in p and "graphopt.backends.onnx" in p and "graphopt.backends.tvm" in p
               for p in problems), problems


def test_module_names_and_layers():
    assert module_name(ROOT / "passes/prune/criteria.py", ROOT) == "graphopt.passes.prune.criteria"
    assert module_name(ROOT / "backends/torch/__init__.py", ROOT) == "graphopt.backends.torch"
    assert [layer_of(m) for m in ("graphopt.errors", "graphopt.ir.graph", "graphopt.cli", "graphopt", "torch",
                                  "graphopt.train.optimizer")] == ["base", "ir", "api", "api", None, "api"]
    assert list(itertools.islice(source_files(ROOT), 1))
