"""Waiting on conditions with deadlines: the one way tests synchronise with the operator."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any


async def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll an (async or sync) predicate until it returns something truthy, or fail at the deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: Any = None
    while loop.time() < deadline:
        last = predicate()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")


async def poll(check: Callable[[], Any], what: str, timeout: float = 15.0) -> Any:
    """``wait_for`` with the argument order the security tests use."""
    return await wait_for(check, timeout, what)
