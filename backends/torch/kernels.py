"""The torch back-end's view of the kernels: each canonical op's torch implementation, read from the op table.

The kernels themselves live next to their ops' definitions in `graphopt.ir.ops`
(op-table column "torch_kernel"), so the core's interpreter and `to_module`
call the same functions. Each kernel takes the node's inputs positionally and
its attributes as keywords; ops with the "training_aware" trait (batch_norm,
dropout) also receive `training`, so a module returned by `to_module` can be
fine-tuned with `module.train()`, and ops with the "creation" trait receive
`device`, the inputs' device.
"""

from __future__ import annotations

from typing import Any, Callable

from graphopt.ir import op_table
from graphopt.ir.ops import TORCH_KERNEL
from graphopt.registry import Registry

__all__ = ["KERNELS", "register_kernel"]


def register_kernel(name: str, fn: Callable[..., Any], *, replace: bool = False) -> Callable[..., Any]:
    """Give op `name` (a user-registered op, say) a torch implementation; a second one raises unless `replace=True`."""
    return op_table.register_op_attr(name, TORCH_KERNEL, fn, replace=replace)


# `{op: kernel}`, read-only (a Registry has no item assignment): the op table's column itself
KERNELS: Registry[Callable[..., Any]] = op_table.column(TORCH_KERNEL)
