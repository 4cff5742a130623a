"""graphopt's own passes (installed as graphopt.passes): canonicalisation and structured pruning.

Importing this package registers them by name (the pass registry imports it
on the first lookup).
"""

from . import canonicalize  # noqa: F401  (registers the canonicalisation passes and the `canonicalize` pipeline)
from . import prune  # noqa: F401  (registers the `prune` pass)
from .drop_layers import DropLayers  # noqa: F401  (registers the `drop-layers` pass)
from .quantize import Quantize  # noqa: F401  (registers the `quantize` pass)
