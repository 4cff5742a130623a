"""One registry type, one duplicate policy, for the tables graphopt keeps by name.

Ops and their columns, front-end converters and ONNX folders are each a
`Registry` (passes and pruning criteria still keep dicts of their own), so registering a name twice raises the same `GraphoptError`
everywhere (unless `replace=True`), and a lookup miss suggests the closest names.
Registering the very same function again (its module reloaded, say) is not a
clash: it replaces the old entry quietly.
"""

from __future__ import annotations

import difflib
import threading
from typing import Any, Callable, Generic, Iterator, TypeVar

from graphopt.errors import GraphoptError

T = TypeVar("T")


def _same_definition(a: Any, b: Any) -> bool:
    """True when `b` is `a` again, e.g. the module that defines it was re-imported.

    Only module-level definitions count: two lambdas or closures made by the same code share
    a qualified name but are different definitions, so registering the second one clashes.
    """
    if a is b:
        return True
    module, qualname = getattr(a, "__module__", None), getattr(a, "__qualname__", None)
    if qualname is None or "<lambda>" in qualname or "<locals>" in qualname:
        return False
    return module is not None and (module, qualname) == (
        getattr(b, "__module__", None), getattr(b, "__qualname__", None))


def close_matches(word: Any, candidates: Any, n: int = 3) -> list[str]:
    """Names in `candidates` that look like a misspelling of `word` (difflib ratio >= 0.6): the one
    spelling-suggestion rule of every graphopt message."""
    return difflib.get_close_matches(str(word), sorted({str(c) for c in candidates}), n=n, cutoff=0.6)


def close_names(name: str, known: Any) -> str:
    """' (did you mean ...?)' for the closest of `known`, or ''."""
    matches = close_matches(name, known)
    return f" (did you mean {', '.join(repr(m) for m in matches)}?)" if matches else ""


class Registry(Generic[T]):
    """A named table from keys to definitions; `what` names an entry in messages ("channel rule")."""

    def __init__(self, what: str, *, hint: str = "") -> None:
        self.what = what
        self.hint = hint  # how to register one, appended to a lookup miss
        self._items: dict[Any, T] = {}
        self._lock = threading.Lock()  # check-and-set of `register` is one step under threads

    def register(self, key: Any, value: T, *, replace: bool = False) -> T:
        with self._lock:
            existing = self._items.get(key)
            if key in self._items and not replace and not _same_definition(existing, value):
                raise GraphoptError(f"a {self.what} for '{key}' is already registered ({existing!r}); "
                                    f"pass replace=True to override it")
            self._items[key] = value
        return value

    def decorator(self, *keys: Any, replace: bool = False) -> Callable[[T], T]:
        """`@registry.decorator("a", "b")` registers the decorated object under each key."""

        def wrap(value: T) -> T:
            for key in keys:
                self.register(key, value, replace=replace)
            return value

        return wrap

    def unregister(self, key: Any) -> T | None:
        return self._items.pop(key, None)

    def get(self, key: Any, default: Any = None) -> T | Any:
        return self._items.get(key, default)

    def lookup(self, key: Any) -> T:
        """The entry for `key`, or a `GraphoptError` naming the closest known keys."""
        try:
            return self._items[key]
        except KeyError:
            hint = f"\n{self.hint}" if self.hint else ""
            raise GraphoptError(f"no {self.what} for '{key}'{close_names(key, self._items)}{hint}") from None

    def __getitem__(self, key: Any) -> T:
        """The entry for `key` (KeyError when absent); a registry is read-only by item: register to change it."""
        return self._items[key]

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __iter__(self) -> Iterator[Any]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def keys(self):
        return self._items.keys()

    def items(self):
        return self._items.items()

    def values(self):
        return self._items.values()

    def snapshot(self) -> dict[Any, T]:
        """A copy of the table, for tests that register entries and restore the table afterwards."""
        return dict(self._items)

    def restore(self, snapshot: dict[Any, T]) -> None:
        self._items = dict(snapshot)

    def __repr__(self) -> str:
        return f"Registry({self.what!r}, {len(self)} entries)"
