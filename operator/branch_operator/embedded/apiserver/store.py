"""Object storage and watch fan-out for one resource (all versions of one ``group/plural``).

Objects are immutable once stored and are serialised once, at write time: the same bytes serve GETs,
lists, the write's own response and every watcher's event line. History and watcher queues are bounded.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import Iterator
from typing import Any

from branch_operator.embedded.apiserver.selectors import Predicate

_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, check_circular=False)


def dumps(obj: Any) -> bytes:
    return _encoder.encode(obj).encode()


Key = tuple[str, str]  # (namespace or "", name)


class Stored:
    """A stored object with its serialised form and resource version."""

    __slots__ = ("obj", "raw", "rv")

    def __init__(self, obj: dict[str, Any], rv: int) -> None:
        self.obj = obj
        self.rv = rv
        self.raw = dumps(obj)


class WatchEvent:
    """One change. ``old`` is kept so selector watchers can tell objects entering/leaving their selection."""

    __slots__ = ("_lines", "new", "old", "raw", "rv", "type")

    def __init__(self, type_: str, new: dict[str, Any], old: dict[str, Any] | None, raw: bytes, rv: int) -> None:
        self.type = type_
        self.new = new
        self.old = old
        self.raw = raw
        self.rv = rv
        self._lines: dict[str, bytes] = {}

    def line(self, type_: str | None = None) -> bytes:
        type_ = type_ or self.type
        line = self._lines.get(type_)
        if line is None:
            line = b'{"type":"' + type_.encode() + b'","object":' + self.raw + b"}\n"
            self._lines[type_] = line
        return line


class Watcher:
    """One open watch stream. Its queue is bounded: a watcher that falls too far behind is cut off
    (``overflowed``), like the real server does; the client resumes from its last resourceVersion."""

    __slots__ = ("closed", "filter", "namespace", "overflowed", "queue")

    def __init__(self, namespace: str | None, filter_: Predicate | None, queue_size: int) -> None:
        self.namespace = namespace
        self.filter = filter_
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=queue_size)
        self.overflowed = False
        self.closed = False

    def line_for(self, event: WatchEvent, namespace: str) -> bytes | None:
        """The line this watcher should get for ``event``, or None if the event is not for it."""
        if self.namespace is not None and namespace != self.namespace:
            return None
        if self.filter is None:
            return event.line()
        now = self.filter(event.new)
        if event.type != "MODIFIED":
            return event.line() if now else None
        before = event.old is not None and self.filter(event.old)
        if now and before:
            return event.line()
        if now:
            return event.line("ADDED")
        if before:
            return event.line("DELETED")
        return None

    def offer(self, line: bytes) -> None:
        if self.closed:
            return
        try:
            self.queue.put_nowait(line)
        except asyncio.QueueFull:
            self.overflowed = True
            self.close()

    def close(self) -> None:
        """End the stream after the lines already queued.

        A full queue gets no sentinel (dropping a queued line would leave a silent gap in the stream):
        the stream checks ``closed`` whenever it has drained the queue.
        """
        if self.closed:
            return
        self.closed = True
        if not self.queue.full():
            self.queue.put_nowait(None)


class ObjectStore:
    def __init__(self, history_size: int, max_objects: int | None = None) -> None:
        self.objects: dict[Key, Stored] = {}
        self.history: deque[tuple[str, WatchEvent]] = deque(maxlen=history_size)
        # Events at or below this resourceVersion may have been dropped from the history.
        self.compacted_rv = 0
        self.watchers: set[Watcher] = set()
        self.max_objects = max_objects

    def get(self, key: Key) -> Stored | None:
        return self.objects.get(key)

    def keys_sorted(self, namespace: str | None) -> list[Key]:
        keys = self.objects.keys() if namespace is None else (k for k in self.objects if k[0] == namespace)
        return sorted(keys)

    def oldest_key(self) -> Key | None:
        return next(iter(self.objects), None)

    def commit(self, type_: str, key: Key, stored: Stored, old: dict[str, Any] | None) -> None:
        """Store (or, for DELETED, drop) an object and notify the watchers. Never awaits, never blocks."""
        if type_ == "DELETED":
            self.objects.pop(key, None)
        else:
            self.objects[key] = stored
        event = WatchEvent(type_, stored.obj, old, stored.raw, stored.rv)
        history = self.history
        if history.maxlen is not None and len(history) == history.maxlen:
            self.compacted_rv = history[0][1].rv
        history.append((key[0], event))
        for watcher in self.watchers:
            line = watcher.line_for(event, key[0])
            if line is not None:
                watcher.offer(line)

    def history_after(self, rv: int) -> Iterator[tuple[str, WatchEvent]]:
        """Events newer than ``rv``, oldest first (walks back only as far as needed)."""
        newer: list[tuple[str, WatchEvent]] = []
        for item in reversed(self.history):
            if item[1].rv <= rv:
                break
            newer.append(item)
        return reversed(newer)

    def close_watchers(self) -> None:
        for watcher in list(self.watchers):
            watcher.close()
        self.watchers.clear()
