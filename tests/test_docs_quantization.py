"""docs/quantization.md runs: every python block, in order, in one namespace."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "quantization.md"


def test_docs_quantization_md_code_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) >= 3
    namespace: dict = {"__name__": "docs_quantization_md"}
    for i, code in enumerate(blocks):
        exec(compile(code, f"docs/quantization.md[block {i}]", "exec"), namespace)
    assert "quantize (int8)" in capsys.readouterr().out
