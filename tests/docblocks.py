"""Run a document's ```python blocks: the one doc-example runner the doc tests share.

Blocks run in order in one namespace, so a later block uses what an earlier one defined, as a reader
would; a failing block is reported as `docs/x.md[block i]` in the traceback.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def python_blocks(doc: str, section: str | None = None) -> list[str]:
    """The ```python blocks of `doc` (relative to the repository), or of its `## section` only."""
    text = (REPO / doc).read_text()
    if section is not None:
        text = text.split(f"\n## {section}", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def run_blocks(doc: str, *, section: str | None = None, minimum: int = 1, namespace: dict | None = None) -> dict:
    """Execute every python block of `doc` (or its section) in order in one namespace, and return it."""
    blocks = python_blocks(doc, section)
    assert len(blocks) >= minimum, f"{doc} has {len(blocks)} python blocks, expected at least {minimum}"
    namespace = namespace if namespace is not None else {"__name__": "docs_example"}
    label = doc if section is None else f"{doc} ({section})"
    for index, code in enumerate(blocks):
        exec(compile(code, f"{label}[block {index}]", "exec"), namespace)  # noqa: S102 - our own documentation
    return namespace
