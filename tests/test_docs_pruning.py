"""docs/pruning.md runs: every python block, in order, in one namespace."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "pruning.md"


def test_docs_pruning_md_code_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) >= 5
    namespace: dict = {"__name__": "docs_pruning_md"}
    for i, code in enumerate(blocks):
        exec(compile(code, f"docs/pruning.md[block {i}]", "exec"), namespace)
    assert "reconstruct:" in capsys.readouterr().out
