"""Garbage-collector settings for the long-running operator: full collections on a timer, not on counts.

Why: kopf builds a few dozen objects in reference cycles (its Body and Patch views) for every watch event,
and asyncio timeouts leave exception/traceback cycles. With CPython's default thresholds enough of them
survive into the oldest generation that a full collection -- a scan of every tracked object, 100-200 ms
with ~1,500 Branches known -- ran every 1-3 s under load. Those pauses were the tail of the
completed -> ACTIVE latency (``python bench/bench_operator.py``: ``worst_to_active_ms_by_second``).

So: what exists once start-up is done (modules, classes, clients -- most of the heap) is frozen out of
every future scan; young generations keep CPython's thresholds, so short-lived cycles are still
collected young and cheaply; and the oldest generation is collected every
:data:`FULL_COLLECTION_INTERVAL_SECONDS` instead of whenever it grew by a quarter, then frozen too, so
that the next timed collection scans only what survived since (a per-Branch heap of thousands of
Branches made every full scan a visible pause). Every :data:`DEEP_COLLECTION_EVERY` timed collections
(ten minutes), everything is unfrozen and scanned once, so that frozen objects which became garbage in
cycles since are reclaimed: memory stays bounded, at the price of one long pause per ten minutes.
Only ``branch-operator run`` does this: it changes process-wide state, which a test process sharing
the interpreter with the operator should not get.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time

log = logging.getLogger(__name__)

# Measured (bench/bench_operator.py, warnings of this module): at 60 s a timed collection under full load
# found ~280,000 unreachable objects and paused for ~700 ms; what a collection finds, and so its pause,
# grows with the interval.
FULL_COLLECTION_INTERVAL_SECONDS = 5.0
DEEP_COLLECTION_EVERY = 120  # 10 minutes
SLOW_PAUSE_MS = 100.0
# gen2's threshold counts gen1 collections; this many never comes between two timed collections.
_NEVER = 1_000_000_000


def tune() -> None:
    gc.collect()
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, _NEVER)
    log.info("garbage collector: %d start-up objects frozen; full collections every %.0f s",
             gc.get_freeze_count(), FULL_COLLECTION_INTERVAL_SECONDS)


async def collect_periodically(interval: float = FULL_COLLECTION_INTERVAL_SECONDS,
                               deep_every: int = DEEP_COLLECTION_EVERY) -> None:
    done = 0
    while True:
        await asyncio.sleep(interval)  # the timer is the point: one full collection per interval
        done += 1
        deep = done % deep_every == 0
        if deep:
            gc.unfreeze()
        started = time.perf_counter()
        found = gc.collect(2)
        gc.freeze()
        pause_ms = 1000 * (time.perf_counter() - started)
        # The pause stops everything in this process: worth knowing when it approaches event latencies.
        log.log(logging.WARNING if pause_ms > SLOW_PAUSE_MS else logging.DEBUG,
                "%s garbage collection: %.0f ms, %d unreachable objects, %d frozen",
                "deep" if deep else "timed", pause_ms, found, gc.get_freeze_count())
