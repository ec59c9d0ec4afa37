"""One registry mechanism for every extension point (tasks, models, controllers,
granularities, criteria, device backends).

Built-in entries register with a decorator. Other packages add theirs through entry points
in the registry's group (``autoprune.controllers``, ``autoprune.tasks``, ...), declared in
their ``pyproject.toml``::

    [project.entry-points."autoprune.controllers"]
    my-search = "my_package.search:MySearch"      # the object, registered under the entry point's name
    [project.entry-points."autoprune.granularities"]
    my-package = "my_package.granularities"       # or a module that registers its own entries on import

A config then names them like built-in ones. Entry points are read the first time a name is
not found among those registered, or the names are listed.
"""
from __future__ import annotations

import logging
from importlib.metadata import entry_points
from types import ModuleType
from typing import Callable, Generic, Iterator, Optional, TypeVar

from autoprune.core.errors import UnknownNameError

T = TypeVar("T")
log = logging.getLogger(__name__)


class Registry(Generic[T]):
    """A name -> object map filled with a decorator and plug-in entry points; unknown names list what exists."""

    def __init__(self, kind: str, group: Optional[str] = None) -> None:
        self.kind = kind
        self.group = group
        self._items: dict[str, T] = {}
        self._plugins_loaded = group is None

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = obj
            return obj

        return decorator

    def load_plugins(self) -> None:
        """Register the entry points of :attr:`group` (once). A plug-in that fails to import is
        logged and left out; one whose name is taken does not replace the registered entry."""
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        for point in entry_points(group=self.group):
            if point.name in self._items:
                log.warning("%s plug-in %r (%s) ignored: the name is already registered", self.kind, point.name, point.value)
                continue
            try:
                obj = point.load()
            except Exception as err:  # noqa: BLE001  (a broken plug-in must not break the others)
                log.warning("%s plug-in %r (%s) could not be loaded: %s: %s", self.kind, point.name, point.value, type(err).__name__, err)
                continue
            if not isinstance(obj, ModuleType):
                self._items.setdefault(point.name, obj)

    def get(self, name: str) -> T:
        if name not in self._items:
            self.load_plugins()
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(self.names()) or "none"
            raise UnknownNameError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def __contains__(self, name: object) -> bool:
        if name not in self._items:
            self.load_plugins()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def names(self) -> list[str]:
        self.load_plugins()
        return sorted(self._items)
