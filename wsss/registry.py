"""One registry type for wsss's name -> object tables (backbones, segmentation heads, CAM methods,
dataset readers, recipe stages).

A :class:`Registry` is a ``dict`` (``name in REG``, ``REG[name]``, iteration in registration order
all work), whose :meth:`~Registry.register` refuses a name registered twice and whose
:meth:`~Registry.lookup` fails on an unknown name with the closest known one and the whole list::

    HEADS = Registry("head")

    @HEADS.register("pcaa")
    class PCAAHead(nn.Module): ...

    HEADS.lookup("pcca")  # ValueError: unknown head 'pcca'. Did you mean 'pcaa'? Known heads: ...
"""
from __future__ import annotations

import difflib
from typing import Callable, Iterable, TypeVar

T = TypeVar("T")


class Registry(dict):
    """Name -> object table of one kind of thing.

    kind: what the entries are, in messages ("backbone", "dataset kind"). plural: its plural
    (default: ``kind + "s"``). error: the exception type an unknown name raises (a stage's own
    user-error type, so the CLI shows it without a traceback). sort_known: list the known names
    sorted in the message (default) or in registration order.
    """

    def __init__(self, kind: str, *, plural: str | None = None, error: type[Exception] = ValueError,
                 sort_known: bool = True, items: Iterable[tuple[str, object]] = ()):
        super().__init__()
        self.kind, self.plural, self.error, self.sort_known = kind, plural or kind + "s", error, sort_known
        for name, obj in items:
            self.add(name, obj)

    def add(self, name: str, obj: T) -> T:
        """Register ``obj`` under ``name``; a name already taken is refused (``ValueError``)."""
        if name in self:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self[name] = obj
        return obj

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of :meth:`add`."""
        return lambda obj: self.add(name, obj)

    def known(self) -> list[str]:
        return sorted(self) if self.sort_known else list(self)

    def unknown_message(self, name: str) -> str:
        """"unknown <kind> 'name'. Did you mean 'x'? Known <kinds>: ..." (the suggestion where one is close)."""
        close = difflib.get_close_matches(str(name), list(self), n=1)
        suggestion = f" Did you mean {close[0]!r}?" if close else ""
        return f"unknown {self.kind} {name!r}.{suggestion} Known {self.plural}: {', '.join(self.known())}"

    def lookup(self, name: str):
        """The entry registered as ``name``, or :attr:`error` with :meth:`unknown_message`."""
        if name not in self:
            raise self.error(self.unknown_message(name))
        return self[name]
