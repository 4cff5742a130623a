"""Examples run: every ```python block in the TVM section of docs/backends.md executes, in order."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest.importorskip("tvm")
pytest.importorskip("onnx")

REPO = Path(__file__).resolve().parents[1]


def tvm_blocks() -> list[str]:
    text = (REPO / "docs" / "backends.md").read_text()
    section = text.split("\n## TVM", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_tvm_section_has_examples():
    assert tvm_blocks()


def test_tvm_docs_examples_run(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHOPT_TVM_CACHE", str(tmp_path))
    namespace = {"__name__": "tvm_docs_example"}
    for index, code in enumerate(tvm_blocks()):
        exec(compile(code, f"docs/backends.md[TVM block {index}]", "exec"), namespace)
