"""`import graphopt` stays light: heavy dependencies load only when the names that need them are used."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

HEAVY = ("torch", "onnx", "onnxruntime", "tvm", "tvm_ffi", "sympy", "networkx", "scipy")


def run_fresh(script: str) -> str:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_import_graphopt_imports_no_heavy_dependency():
    out = run_fresh(f"""
        import sys
        import graphopt
        print(sorted(m for m in {HEAVY!r} if m in sys.modules))
        print(graphopt.GraphoptError.__module__, graphopt.__version__)
    """)
    assert out.splitlines() == ["[]", f"graphopt.errors {__import__('graphopt').__version__}"]


def test_public_names_load_on_first_use():
    out = run_fresh("""
        import sys
        import graphopt
        trace = graphopt.trace
        print("torch" in sys.modules, trace.__module__, graphopt.PassManager.__name__)
        print(all(name in dir(graphopt) for name in graphopt.__all__))
        try:
            graphopt.no_such_name
        except AttributeError as exc:
            print("AttributeError:", exc)
    """)
    assert out.splitlines() == [
        "True graphopt.frontends.torch PassManager", "True",
        "AttributeError: module 'graphopt' has no attribute 'no_such_name'",
    ]


@pytest.mark.parametrize("name", ["trace", "optimize", "PassManager", "Graph", "register_pass"])
def test_lazy_names_are_the_real_objects(name):
    import importlib

    import graphopt

    assert getattr(graphopt, name) is getattr(importlib.import_module(graphopt._LAZY[name]), name)
