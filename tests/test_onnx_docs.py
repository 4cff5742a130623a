"""docs/backends.md (ONNX section) runs: every python block, in order, in one namespace."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx_graphsurgeon")

DOC = Path(__file__).resolve().parent.parent / "docs" / "backends.md"


def onnx_section_blocks() -> list[str]:
    text = DOC.read_text()
    section = text.split("## ONNX", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^```python\n(.*?)^```", section, flags=re.S | re.M)


def test_docs_backends_onnx_code_runs(capsys):
    blocks = onnx_section_blocks()
    assert len(blocks) >= 5
    namespace: dict = {"__name__": "docs_backends_md"}
    for i, block in enumerate(blocks):
        exec(compile(block, f"{DOC}:onnx-block{i}", "exec"), namespace)  # noqa: S102 - our own documentation
    printed = capsys.readouterr().out
    assert "OrtModule" in printed
    assert "unsupported operator 'Softsign' (node 'head/softsign')" in printed
    assert "register_onnx_op('Softsign')" in printed
