"""Converters from ONNX operators to graphopt's canonical ops, one per ONNX operator, by op family.

A converter reads an ONNX node (attributes by their ONNX names and defaults,
old-opset spellings included: axes as attributes before opset 13/18, Clip
bounds as attributes before 11, ...) and emits canonical nodes. Nodes whose
inputs are all known (shape arithmetic, small constants) never get here: the
importer folds them (`folding`). Importing this package registers every
converter and folder (`graphopt.frontends.onnx.load` does so).
"""

from graphopt.frontends.onnx_ops import (  # noqa: F401 - each module registers its family
    creation, dense, elementwise, folding, layout, norm, pooling, recurrent, reduce, selection,
)
