"""Mutual exclusion per key: one ``asyncio.Lock`` per key, kept only while someone holds or waits for it.

Controllers serialise their work per object (a Branch's events, a Branch's merge evaluation) so that
one process never acts on an object twice at once; the set of keys is unbounded (every Branch that
ever had an event), so a lock lives only as long as it has users.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class _Entry:
    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0  # holders and waiters


class KeyedLocks(Generic[K]):
    """``async with locks(key):`` runs one holder per key at a time; different keys do not wait on each other."""

    def __init__(self) -> None:
        self._entries: dict[K, _Entry] = {}

    @contextlib.asynccontextmanager
    async def __call__(self, key: K) -> AsyncIterator[None]:
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry()
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if entry.users == 0:  # keep the map bounded by the keys in use
                del self._entries[key]

    def __len__(self) -> int:
        """Keys held or waited for now."""
        return len(self._entries)
