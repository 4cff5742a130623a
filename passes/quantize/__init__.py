"""`quantize`: int8 static / dynamic and int8 / int4 weight-only quantization (see docs/quantization.md)."""

from .observers import OBSERVERS, qparams
from .quantize_pass import OutputScaledTolerance, Quantize, QuantizeReport

__all__ = ["Quantize", "QuantizeReport", "OutputScaledTolerance", "OBSERVERS", "qparams"]
