"""Examples run: every ```python block in the TVM section of docs/backends.md executes, in order."""

from __future__ import annotations

import pytest

from docblocks import python_blocks, run_blocks

pytest.importorskip("tvm")
pytest.importorskip("onnx")


def test_tvm_section_has_examples():
    assert python_blocks("docs/backends.md", section="TVM")


def test_tvm_docs_examples_run(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHOPT_TVM_CACHE", str(tmp_path))
    run_blocks("docs/backends.md", section="TVM")
