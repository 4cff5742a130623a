"""docs/passes.md runs: every python block, in order, in one namespace (the custom-pass example included)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from graphopt.passmanager import unregister

DOC = Path(__file__).resolve().parent.parent / "docs" / "passes.md"
DOC_PASSES = ("hardtanh-to-clamp", "round-weights", "report-cost", "count-ops", "always-fails")


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


@pytest.fixture
def clean_registry():
    yield
    for name in DOC_PASSES:
        unregister(name)


def test_docs_passes_md_code_runs(clean_registry, capsys):
    blocks = python_blocks(DOC.read_text())
    assert len(blocks) >= 6
    namespace: dict = {"__name__": "docs_passes_md"}
    for i, block in enumerate(blocks):
        # dont_inherit: the blocks run as a user's script would, without this module's __future__ imports
        code = compile(block, f"{DOC}:block{i}", "exec", dont_inherit=True)
        exec(code, namespace)  # noqa: S102 - our own documentation
    # the custom pass did its job on the traced block
    assert namespace["converted"].find_nodes("clamp")
    assert not namespace["converted"].find_nodes("hardtanh")
    printed = capsys.readouterr().out
    assert "canonicalize/fold-batchnorm" in printed  # the report table of the first example
    assert "pass 'always-fails' failed: RuntimeError: boom" in printed


def test_docs_mention_every_builtin_pass():
    text = DOC.read_text()
    for name in ("remove-identity", "merge-reshapes", "fold-constants", "fold-batchnorm", "eliminate-dead-code"):
        assert f"`{name}`" in text
