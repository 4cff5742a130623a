"""Analyses over the graphopt IR."""
