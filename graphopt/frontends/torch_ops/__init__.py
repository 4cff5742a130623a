"""Converters from functionalised ATen ops (what torch.export produces) to graphopt's canonical ops, by op family.

Each converter reads the fx node's arguments by their ATen schema and emits
canonical nodes. Aliases (view/reshape/flatten/squeeze -> reshape,
transpose -> permute, chunk -> split, ...) collapse here, so passes see one
spelling of each thing. Shapes that torch computed (`ctx.out_shape()`) are
used for reshape targets, so `-1` never reaches the graph and every axis
factorisation is explicit. Importing this package registers every converter
(`graphopt.trace` does so).
"""

from graphopt.frontends.torch_ops import (  # noqa: F401 - each module registers its family
    creation, dense, elementwise, inplace, layout, norm, pooling, reduce,
)
from graphopt.frontends.torch_ops import fft, patches, recurrent, selection, sequence  # noqa: F401,E402
