"""The coverage table in docs/ir.md: current, complete (a torch kernel and ONNX lowering per op), barriers listed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("onnx")

from graphopt import coverage  # noqa: E402
from graphopt.analysis import BARRIER, register_channel_rule  # noqa: E402
from graphopt.ir import op_table  # noqa: E402
from graphopt.ir.ops import OPS, OpDef, register_op  # noqa: E402

DOC = Path(__file__).resolve().parents[1] / "docs" / "ir.md"


@pytest.fixture
def restore_tables():
    """Ops and columns a test adds are gone after it (conftest restores them too; this keeps the test honest
    on its own)."""
    tables = [OPS, *(op_table.column(key) for key in coverage.column_keys())]
    saved = [table.snapshot() for table in tables]
    yield
    for table, snapshot in zip(tables, saved):
        table.restore(snapshot)


def _same_shape_op(name: str) -> None:
    register_op(OpDef(name, lambda node: [(node.inputs[0].shape, node.inputs[0].dtype)], "x", category="custom"))


def test_coverage_section_of_ir_md_is_current():
    """Regenerate the section with `python -m graphopt.coverage` (it follows the op reference in docs/ir.md)."""
    assert coverage.markdown() in DOC.read_text()


@pytest.mark.parametrize("column", coverage.REQUIRED)
def test_every_canonical_op_has_a_torch_kernel_and_an_onnx_lowering(column):
    assert not coverage.missing(column), f"canonical ops without a {column}: {coverage.missing(column)}"


def test_an_op_missing_a_required_column_is_reported(restore_tables):
    _same_shape_op("half_done")
    op_table.register_op_attr("half_done", "torch_kernel", lambda x: x)
    assert coverage.missing("onnx_lowering") == ["half_done"] and coverage.missing("torch_kernel") == []
    row = next(r for r in coverage.coverage() if r.op == "half_done")
    assert row.columns == {"torch_kernel": True, "channel_rule": False, "mac_rule": False, "onnx_lowering": False}
    assert "| `half_done` | custom | yes | **barrier** (no rule) | - | **missing** |" in coverage.markdown()


def test_ops_without_a_channel_rule_are_listed_as_barriers(restore_tables):
    builtin = {r.op: r.channel for r in coverage.barriers()}  # BARRIER on purpose: topk, lstm, ...
    assert set(builtin.values()) <= {"barrier"}, "a built-in op has no channel rule and no BARRIER"
    _same_shape_op("no_rule_op")
    _same_shape_op("barrier_op")
    register_channel_rule("barrier_op")(BARRIER)
    assert {r.op: r.channel for r in coverage.barriers()} == {**builtin, "no_rule_op": "none", "barrier_op": "barrier"}
    text = coverage.markdown()
    assert "| `barrier_op` | custom | **missing** | barrier | - | **missing** |" in text
    listed = sorted([f"`{op}` (BARRIER)" for op in builtin] + ["`barrier_op` (BARRIER)", "`no_rule_op` (no rule)"])
    assert f"Barriers ({len(builtin) + 2} of {len(OPS)} ops): {', '.join(listed)}." in text
    assert all(r.channel == "rule" for r in coverage.coverage() if r.op in ("conv", "relu", "add"))


def test_a_column_declared_later_gets_its_own_heading(restore_tables):
    op_table.column("int8_kernel", "a quantized kernel")
    op_table.register_op_attr("relu", "int8_kernel", torch.relu)
    assert coverage.column_keys()[-1] == "int8_kernel"
    assert "| `relu` | elementwise | yes | yes | - | yes | yes |" in coverage.markdown()


ATEN_DOC = Path(__file__).resolve().parents[1] / "docs" / "aten_coverage.md"


def test_core_aten_coverage_doc_is_current():
    """Regenerate with `python -m graphopt.coverage --aten > docs/aten_coverage.md`."""
    assert ATEN_DOC.read_text() == coverage.aten_markdown()


def test_core_aten_coverage_reads_the_converters_and_torchs_core_tag():
    from graphopt.frontends import torch as torch_frontend

    rows = {r.op: r for r in coverage.aten_coverage()}
    assert len(rows) > 100 and {"aten.convolution", "aten.add", "aten.sym_size"} <= set(rows)
    assert rows["aten.convolution"].status == "mapped" and rows["aten.sym_size"].status == "shape arithmetic"
    assert rows["aten.convolution_backward"].status == "out of scope"
    unmapped = [op for op, r in rows.items() if r.status == "not mapped"]
    assert unmapped and all(torch_frontend.find_converter(op) is None for op in unmapped)
    op = unmapped[0]
    snapshot = torch_frontend.CONVERTERS.snapshot()
    try:
        torch_frontend.register_torch_op(op)(lambda ctx, fx: None)
        assert {r.op: r.status for r in coverage.aten_coverage()}[op] == "mapped"
    finally:
        torch_frontend.CONVERTERS.restore(snapshot)
