"""gc_tuning changes process-wide state, so each test runs it in a Python process of its own."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def run_python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_tune_freezes_start_up_objects_and_leaves_full_collections_to_the_timer() -> None:
    out = run_python("""
        import collections, gc
        from branch_operator.ops import gc_tuning
        young, middle, _ = gc.get_threshold()
        gc_tuning.tune()
        full = []
        gc.callbacks.append(lambda phase, info: full.append(1) if phase == "stop" and info["generation"] == 2 else None)
        # Cycles that live a while (as watch events in flight do): with the default thresholds, they cause
        # a few full collections here.
        keep = collections.deque(maxlen=20_000)
        for _ in range(300_000):
            a = []; a.append(a); keep.append(a)
        print(gc.get_freeze_count() > 10_000, gc.get_threshold()[:2] == (young, middle), len(full))
    """)
    assert out == "True True 0"


def test_timed_collections_freeze_survivors_and_every_nth_scans_everything() -> None:
    out = run_python("""
        import asyncio, gc, time
        from branch_operator.ops import gc_tuning

        async def until(count, collected):
            deadline = time.monotonic() + 20
            while len(collected) < count and time.monotonic() < deadline:
                await asyncio.sleep(0.01)  # polling the callback's list, with a deadline

        async def main():
            gc_tuning.tune()
            base = gc.get_freeze_count()
            collected = []
            gc.callbacks.append(lambda phase, info: collected.append(info["collected"])
                                if phase == "stop" and info["generation"] == 2 else None)
            cycles = []
            for _ in range(20_000):
                c = []
                c.append(c)
                cycles.append(c)
            task = asyncio.create_task(gc_tuning.collect_periodically(0.05, deep_every=3))
            await until(1, collected)
            frozen = gc.get_freeze_count() - base
            del cycles  # frozen, then garbage: only a collection that unfreezes can find them
            await until(3, collected)
            task.cancel()
            print(frozen >= 20_000, collected[1] < 1_000, collected[2] >= 19_000)  # (c keeps one alive)
        asyncio.run(main())
    """)
    assert out == "True True True"


def test_full_collections_run_on_the_timer() -> None:
    out = run_python("""
        import asyncio, gc, time
        from branch_operator.ops import gc_tuning

        async def main():
            gc_tuning.tune()
            full = []
            gc.callbacks.append(lambda phase, info: full.append(1)
                                if phase == "stop" and info["generation"] == 2 else None)
            task = asyncio.create_task(gc_tuning.collect_periodically(0.05))
            deadline = time.monotonic() + 20
            while len(full) < 3 and time.monotonic() < deadline:
                await asyncio.sleep(0.01)  # polling the callback's count, with a deadline
            task.cancel()
            print(len(full) >= 3)
        asyncio.run(main())
    """)
    assert out == "True"
