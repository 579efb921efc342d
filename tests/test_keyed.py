"""KeyedLocks: one holder per key at a time, keys independent, no entry left behind."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from branch_operator.kit.keyed import KeyedLocks


async def turns(n: int = 20) -> None:
    """Let every ready task run up to its next wait (no timing involved)."""
    for _ in range(n):
        await asyncio.sleep(0)


async def hold(locks: KeyedLocks[str], key: str, log: list[str], name: str, release: asyncio.Event) -> None:
    async with locks(key):
        log.append(f"{name} in")
        await release.wait()
        log.append(f"{name} out")


async def test_one_holder_per_key_the_next_enters_when_the_first_leaves() -> None:
    locks: KeyedLocks[str] = KeyedLocks()
    log: list[str] = []
    release_a, release_b = asyncio.Event(), asyncio.Event()
    a = asyncio.create_task(hold(locks, "k", log, "a", release_a))
    await turns()
    b = asyncio.create_task(hold(locks, "k", log, "b", release_b))
    await turns()
    assert log == ["a in"] and len(locks) == 1  # b waits on a's lock, sharing its entry
    release_a.set()
    release_b.set()
    await asyncio.wait_for(asyncio.gather(a, b), 5)
    assert log == ["a in", "a out", "b in", "b out"]


async def test_different_keys_do_not_wait_on_each_other() -> None:
    locks: KeyedLocks[str] = KeyedLocks()
    log: list[str] = []
    release_a, release_b = asyncio.Event(), asyncio.Event()
    a = asyncio.create_task(hold(locks, "k1", log, "a", release_a))
    await turns()
    release_b.set()
    await asyncio.wait_for(hold(locks, "k2", log, "b", release_b), 5)  # while a still holds k1
    assert log == ["a in", "b in", "b out"] and len(locks) == 1
    release_a.set()
    await asyncio.wait_for(a, 5)


async def test_entries_go_when_nobody_holds_or_waits_even_after_errors_and_cancellations() -> None:
    locks: KeyedLocks[str] = KeyedLocks()
    log: list[str] = []
    release = asyncio.Event()
    with pytest.raises(RuntimeError):
        async with locks("failed"):
            raise RuntimeError("boom")
    assert len(locks) == 0

    holder = asyncio.create_task(hold(locks, "k", log, "a", release))
    await turns()
    waiter = asyncio.create_task(hold(locks, "k", log, "b", asyncio.Event()))
    await turns()
    waiter.cancel()  # gave up waiting: its share of the entry must go too
    with contextlib.suppress(asyncio.CancelledError):
        await waiter
    assert len(locks) == 1
    release.set()
    await asyncio.wait_for(holder, 5)
    assert len(locks) == 0 and log == ["a in", "a out"]

    for i in range(100):
        async with locks(f"b{i}"):
            pass
    assert len(locks) == 0
