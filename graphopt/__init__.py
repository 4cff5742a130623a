"""graphopt: a compiler-style graph transformation framework for neural networks."""

from pathlib import Path as _Path

from graphopt._source_layout import install_if_source_checkout as _install_source_layout

_install_source_layout(_Path(__file__).resolve().parent)

__version__ = "0.1.0"
