"""graphopt front-ends: model formats that import into the IR."""
