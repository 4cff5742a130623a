"""Structured-pruning, layer-dropping and quantization passes (installed as graphopt.passes).

Importing this package registers graphopt's own passes by name (the pass
registry imports it on the first lookup).
"""

from . import canonicalize  # noqa: F401  (registers the canonicalisation passes and the `canonicalize` pipeline)
from . import prune  # noqa: F401  (registers the `prune` pass)
