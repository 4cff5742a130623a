"""Examples run: every ```python block in the README executes as written."""

from __future__ import annotations

import pytest

from docblocks import python_blocks


@pytest.mark.parametrize("index", range(len(python_blocks("README.md"))))
def test_readme_python_blocks_run(index: int):
    code = python_blocks("README.md")[index]  # each block on its own: the README's examples stand alone
    exec(compile(code, f"README.md[block {index}]", "exec"), {"__name__": "readme_example"})  # noqa: S102


def test_readme_has_examples():
    assert python_blocks("README.md")


def test_cli_demo_runs(capsys):
    from graphopt.cli import main

    assert main(["demo", "--model", "vit"]) == 0
    out = capsys.readouterr().out
    assert "max |graphopt - torch|" in out and "sdpa" in out


def test_cli_reports_bad_model_name(capsys):
    from graphopt.cli import main

    assert main(["demo", "--model", "no-such-model"]) == 2
    assert "no-such-model" in capsys.readouterr().err
