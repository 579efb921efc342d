"""What `list` and `locks` print, and their `-w`/`--watch` as `kubectl get -w` prints it.

The table (or the objects) first, unless ``--watch-only``; then one row per change (ADDED, MODIFIED,
DELETED: the object as it is or was last), padded to the widths printed so far, with no header again;
in a structured format each changed object on its own (not a List), as kubectl does. Ctrl-C ends it
(``main`` turns the interrupt into a quiet exit).
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol, TextIO

from branch_operator.kubectl_branch import output


class Printer(Protocol):
    args: argparse.Namespace
    fmt: output.Output
    out: TextIO
    err: TextIO

    def print(self, text: str = "") -> None: ...

    def emit(self, text: str) -> None: ...


class Listing:
    """A listing printed as ``kubectl get`` prints it: a table or the objects, then, with ``-w``, one row
    (or object) per change until interrupted."""

    def __init__(self, ctx: Printer, header: list[str], items: list[dict[str, Any]], rows: list[list[str]]) -> None:
        self.ctx, self.header, self.items, self.rows = ctx, header, items, rows
        self.widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(header)]
        self.printed_header = False

    @property
    def watching(self) -> bool:
        return bool(self.ctx.args.watch or self.ctx.args.watch_only)

    def show(self, empty: str) -> bool:
        """Print the listing; False when there is nothing more to do."""
        ctx, fmt = self.ctx, self.ctx.fmt
        if ctx.args.watch_only:
            return True
        if not self.items and not self.watching:
            if not fmt.structured:
                print(empty, file=ctx.err)
            elif fmt.kind in ("json", "yaml"):
                ctx.emit(output.render_structured(fmt, output.as_list([])))
            return False
        if fmt.structured:
            if self.watching:  # kubectl get -w prints each object, not a List
                for item in self.items:
                    ctx.emit(output.render_structured(fmt, item))
            else:
                ctx.emit(output.render_structured(fmt, output.as_list(self.items)))
        elif self.rows or not self.watching:
            self._row(self.rows)
        return self.watching

    def _row(self, rows: list[list[str]]) -> None:
        self.widths = [max([w, *(len(r[i]) for r in rows)]) for i, w in enumerate(self.widths)]
        lines = [] if self.printed_header else [self.header]
        self.printed_header = True
        for line in [*lines, *rows]:
            self.ctx.print("   ".join(c.ljust(w) for c, w in zip(line, self.widths, strict=True)).rstrip())
        self.ctx.out.flush()

    async def follow(self, events: AsyncIterator[tuple[str, dict[str, Any]]], kind: str,
                     row: Callable[[dict[str, Any]], Awaitable[list[str]]]) -> None:
        async for _, obj in events:
            if self.ctx.fmt.structured:
                self.ctx.emit(output.render_structured(self.ctx.fmt, output.with_kind(obj, kind)))
                self.ctx.out.flush()
            else:
                self._row([await row(obj)])
