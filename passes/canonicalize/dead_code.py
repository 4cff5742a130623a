"""`eliminate-dead-code`: remove nodes no graph output depends on, and weights nobody reads."""

from __future__ import annotations

from typing import ClassVar, Sequence

from graphopt.passmanager import register_pass
from graphopt.passmanager.rewrite import RewritePass, Rule


@register_pass("eliminate-dead-code")
class EliminateDeadCode(RewritePass):
    """Erase nodes whose outputs reach no graph output, then weights no node reads.

    The rewrite driver's own dead-code sweep, with no rules. Graph inputs stay
    even when unused: they are the lowered module's signature.
    """

    erase_dead: ClassVar[bool] = True

    def rules(self) -> Sequence[Rule]:
        return ()
