"""Shared test helpers: zoo models traced once per session, and inputs resized along dynamic axes."""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

import graphopt
from graphopt import models_zoo


def resize_inputs(inputs: tuple, dynamic_axes: dict, sizes: dict[str, int]) -> tuple:
    """Inputs with each dynamic axis resized to `sizes[axis name]`, values repeated cyclically.

    Repeating the example values (rather than drawing new ones) keeps token ids in the
    vocabulary and attention masks well formed.
    """
    out = []
    for i, x in enumerate(inputs):
        for axis, name in dynamic_axes.get(i, {}).items():
            if name in sizes:
                index = torch.arange(sizes[name]) % x.shape[axis]
                x = x.index_select(axis, index)
        out.append(x)
    return tuple(out)


@functools.lru_cache(maxsize=None)
def traced_zoo_model(name: str):
    """(model, example_inputs, graph) for a tiny zoo model, traced with its dynamic axes."""
    model, inputs = models_zoo.get(name, "tiny")
    graph = graphopt.trace(model, inputs, dynamic=models_zoo.spec(name).dynamic_axes)
    return model, inputs, graph


def _snapshot(table):
    return table.snapshot() if hasattr(table, "snapshot") else dict(table)


def _restore(table, snapshot) -> None:
    if hasattr(table, "restore"):
        table.restore(snapshot)
    else:
        table.clear()
        table.update(snapshot)


@pytest.fixture(autouse=True)
def _restore_registries():
    """Ops, op-table columns (kernels, rules, lowerings), converters and criteria a test registers do not
    leak into the tests after it (several tests check that every registered op is covered by a back-end)."""
    from graphopt.analysis import channel_rules
    from graphopt.frontends import torch as torch_frontend
    from graphopt.frontends import torch_ops  # noqa: F401 - registers the built-in converters first
    try:  # the ONNX lowerings are an op-table column declared on import: declare it before the snapshot,
        import graphopt.backends.onnx  # noqa: F401 - or the first test importing it would drop it after
    except ImportError:  # the optional [onnx] extra is not installed
        pass
    from graphopt.ir import op_table, ops
    from graphopt.passes.prune import CRITERIA

    registries = [ops.OPS, torch_frontend._CONVERTERS, CRITERIA, *op_table._COLUMNS.values()]
    if hasattr(channel_rules, "_RULES"):  # until the channel rules live in the op table
        registries.append(channel_rules._RULES)
    saved = [_snapshot(r) for r in registries]
    columns, column_docs = dict(op_table._COLUMNS), dict(op_table._COLUMN_DOCS)
    yield
    for registry, snapshot in zip(registries, saved):
        _restore(registry, snapshot)
    op_table._COLUMNS.clear()  # columns a test declared go too
    op_table._COLUMNS.update(columns)
    op_table._COLUMN_DOCS.clear()
    op_table._COLUMN_DOCS.update(column_docs)


@pytest.fixture(params=models_zoo.list_models())
def zoo_name(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a test module (`pytestmark = pytest.mark.usefixtures("one_thread")`), restored
    after: the count is global, and other modules' golden digests depend on the default."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@contextlib.contextmanager
def bench_module(name: str, *also: str):
    """bench/NAME.py imported as a module for a test, then forgotten with the bench modules it imports
    (`also`) and the bench folder it put on sys.path, so another test's copy starts afresh."""
    path = Path(__file__).resolve().parents[1] / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file executes
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        for loaded in (name, *also):
            sys.modules.pop(loaded, None)
        if str(path.parent) in sys.path:
            sys.path.remove(str(path.parent))
