"""docs/backends.md (ONNX section) runs: every python block, in order, in one namespace."""

from __future__ import annotations

import pytest

from docblocks import run_blocks

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx_graphsurgeon")


def test_docs_backends_onnx_code_runs(capsys):
    run_blocks("docs/backends.md", section="ONNX", minimum=5)
    printed = capsys.readouterr().out
    assert "OrtModule" in printed
    assert "unsupported operator 'Softsign' (node 'head/softsign')" in printed
    assert "register_onnx_op('Softsign')" in printed
