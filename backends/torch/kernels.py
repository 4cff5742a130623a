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

from collections.abc import Mapping
from typing import Any, Callable, Iterator

from graphopt.ir import op_table
from graphopt.ir.ops import TORCH_KERNEL

__all__ = ["KERNELS", "register_kernel"]


def register_kernel(name: str, fn: Callable[..., Any], *, replace: bool = False) -> Callable[..., Any]:
    """Give op `name` (a user-registered op, say) a torch implementation; a second one raises unless `replace=True`."""
    return op_table.register_op_attr(name, TORCH_KERNEL, fn, replace=replace)


class _KernelView(Mapping):
    """Read-only `{op: kernel}` over the op table, for code written against the old KERNELS dict."""

    def __getitem__(self, op: str) -> Callable[..., Any]:
        kernels = op_table.column(TORCH_KERNEL)
        if op not in kernels:
            raise KeyError(op)
        return kernels.get(op)

    def __iter__(self) -> Iterator[str]:
        return iter(list(op_table.column(TORCH_KERNEL)))

    def __len__(self) -> int:
        return len(op_table.column(TORCH_KERNEL))

    def __repr__(self) -> str:
        return f"KERNELS({len(self)} ops; register with graphopt.backends.torch.register_kernel)"


KERNELS: Mapping[str, Callable[..., Any]] = _KernelView()
