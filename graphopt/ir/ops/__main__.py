"""`python -m graphopt.ir.ops` prints the op reference of docs/ir.md."""

import sys

from graphopt.ir.ops import markdown

sys.stdout.write(markdown())
