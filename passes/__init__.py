"""Structured-pruning, layer-dropping and quantization passes (installed as graphopt.passes)."""
