"""docs/quantization.md runs: every python block, in order, in one namespace."""

from __future__ import annotations

from docblocks import run_blocks


def test_docs_quantization_md_code_runs(capsys):
    run_blocks("docs/quantization.md", minimum=3)
    assert "quantize (int8)" in capsys.readouterr().out
