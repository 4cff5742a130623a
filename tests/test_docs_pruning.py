"""docs/pruning.md runs: every python block, in order, in one namespace."""

from __future__ import annotations

from docblocks import run_blocks


def test_docs_pruning_md_code_runs(capsys):
    run_blocks("docs/pruning.md", minimum=5)
    assert "reconstruct:" in capsys.readouterr().out
