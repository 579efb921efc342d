"""Re-running an attempt that lost a race: read, decide, write with a precondition, and on a conflict
start over from the read.

Generic over the exception that means "lost the race" (the callers pass the Kubernetes client's
``Conflict``): kit knows nothing of the clients.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

ExceptionTypes = type[BaseException] | tuple[type[BaseException], ...]


class Again(Exception):
    """Raised by an attempt that wants to start over for a reason of its own (it counts as an attempt)."""


async def retry(
    attempt: Callable[[], Awaitable[T]], *, on: ExceptionTypes, attempts: int,
    give_up: Callable[[], BaseException],
    after_failure: Callable[[BaseException], Awaitable[None]] | None = None,
) -> T:
    """``attempt()``'s result, calling it again (up to ``attempts`` times in all) while it raises ``on`` or Again.

    ``after_failure`` is awaited after each failure with one of ``on`` (the last one too), e.g. to log it or
    to re-read the object the next attempt decides on; whatever it raises ends the retrying. After the
    last failed attempt ``give_up()`` is raised.
    """
    if attempts < 1:
        raise ValueError("attempts must be at least 1")
    retried = on if isinstance(on, tuple) else (on,)
    for _attempt in range(attempts):
        try:
            return await attempt()
        except Again:
            continue
        except retried as exc:
            if after_failure is not None:
                await after_failure(exc)
    raise give_up()
