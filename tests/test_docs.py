"""Examples run: every ```python block in the README executes as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


@pytest.mark.parametrize("index", range(len(python_blocks(REPO / "README.md"))))
def test_readme_python_blocks_run(index: int):
    code = python_blocks(REPO / "README.md")[index]
    exec(compile(code, f"README.md[block {index}]", "exec"), {"__name__": "readme_example"})


def test_readme_has_examples():
    assert python_blocks(REPO / "README.md")


def test_cli_demo_runs(capsys):
    from graphopt.cli import main

    assert main(["demo", "--model", "vit"]) == 0
    out = capsys.readouterr().out
    assert "max |graphopt - torch|" in out and "sdpa" in out


def test_cli_reports_bad_model_name(capsys):
    from graphopt.cli import main

    assert main(["demo", "--model", "no-such-model"]) == 2
    assert "no-such-model" in capsys.readouterr().err
