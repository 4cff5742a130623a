"""The wheel ships graphopt.passes/backends/models_zoo inside graphopt, and they import from an install."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "-q", "-w", str(out)],
        check=True, capture_output=True, text=True,
    )
    (path,) = out.glob("graphopt-*.whl")
    return path


def test_wheel_layout(wheel: Path):
    names = zipfile.ZipFile(wheel).namelist()
    assert "graphopt/passes/__init__.py" in names
    assert "graphopt/backends/torch/__init__.py" in names
    assert "graphopt/models_zoo/__init__.py" in names
    top_level = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top_level == {"graphopt"}, f"the wheel must not install top-level packages besides graphopt: {top_level}"


def test_installed_package_imports_mapped_subpackages(wheel: Path, tmp_path: Path):
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True, capture_output=True, text=True,
    )
    code = (
        "import graphopt, graphopt.passes, graphopt.backends.torch, graphopt.models_zoo as zoo;"
        "print(graphopt.__file__); print(graphopt.passes.__file__); print(len(zoo.list_models()))"
    )
    env = dict(os.environ, PYTHONPATH=str(target))
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, check=True, capture_output=True, text=True)
    lines = result.stdout.split()
    assert lines[0].startswith(str(target)) and lines[1].startswith(str(target / "graphopt" / "passes"))
    assert int(lines[2]) >= 13


def test_every_package_in_the_tree_is_in_the_wheel(wheel: Path):
    """A subpackage missing from pyproject's explicit package list would silently vanish from installs."""
    names = set(zipfile.ZipFile(wheel).namelist())
    mapping = {"graphopt": "graphopt", "passes": "graphopt/passes", "backends": "graphopt/backends",
               "models_zoo": "graphopt/models_zoo"}
    for folder, installed in mapping.items():
        for init in (REPO / folder).rglob("__init__.py"):
            rel = init.relative_to(REPO / folder).as_posix()
            assert f"{installed}/{rel}" in names, f"{folder}/{rel} is not packaged: list it in pyproject.toml"


def test_tvm_runner_source_ships(wheel: Path):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "graphopt/backends/tvm/runner/graphopt_tvm_run.cc" in names
