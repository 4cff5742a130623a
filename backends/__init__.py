"""Lowering targets for graphopt graphs (installed as graphopt.backends)."""
