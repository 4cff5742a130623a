"""Make `graphopt.passes`, `graphopt.backends` and `graphopt.models_zoo` importable from a source checkout.

In an installed wheel these packages live inside `graphopt/`. In the repository
they are top-level folders mapped in by `[tool.setuptools.package-dir]`, which
only an install applies. When `graphopt` is imported straight from a checkout
(pytest from the repository root puts it first on `sys.path`), this finder
serves the three mapped names from their folders, so the same import works in
all three set-ups: wheel, editable install and bare checkout.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from pathlib import Path

MAPPED_SUBPACKAGES = ("passes", "backends", "models_zoo")


class _SourceLayoutFinder(importlib.abc.MetaPathFinder):
    def __init__(self, root: Path) -> None:
        self._dirs = {f"graphopt.{name}": root / name for name in MAPPED_SUBPACKAGES}

    def find_spec(self, fullname, path=None, target=None):  # noqa: D401 - importlib protocol
        top = fullname.split(".")[:2]
        folder = self._dirs.get(".".join(top))
        if folder is None:
            return None
        rel = fullname.split(".")[2:]
        base = folder.joinpath(*rel)
        if (base / "__init__.py").is_file():
            return importlib.util.spec_from_file_location(
                fullname, base / "__init__.py", submodule_search_locations=[str(base)]
            )
        module_file = base.with_suffix(".py")
        if rel and module_file.is_file():
            return importlib.util.spec_from_file_location(fullname, module_file)
        return None


def install_if_source_checkout(package_dir: Path) -> None:
    """Register the finder when `graphopt/` sits in a checkout beside the mapped folders."""
    root = package_dir.parent
    if (package_dir / "passes").exists() or not (root / "pyproject.toml").is_file():
        return  # an installed package already contains the subpackages
    if not all((root / name / "__init__.py").is_file() for name in MAPPED_SUBPACKAGES):
        return
    if any(isinstance(f, _SourceLayoutFinder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _SourceLayoutFinder(root))
