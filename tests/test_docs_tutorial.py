"""docs/tutorial.md runs as written: every Python block, in order, in a scratch directory."""

from __future__ import annotations

import pytest
from docblocks import run_blocks


def test_the_tutorial_runs(tmp_path, monkeypatch):
    pytest.importorskip("tvm")
    monkeypatch.chdir(tmp_path)
    namespace = run_blocks("docs/tutorial.md", minimum=6)
    assert (tmp_path / "net-int8" / "manifest.json").is_file()
    assert (tmp_path / "net-tvm" / "model.so").is_file()
    assert namespace["from_file"].report.params_after < namespace["from_file"].report.params_before
