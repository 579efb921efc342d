"""kit.retry: start an attempt over while it loses races, within a bound."""

from __future__ import annotations

import pytest

from branch_operator.kit.retry import Again, retry


class Lost(Exception):
    pass


class GaveUp(Exception):
    pass


class Attempts:
    """An attempt that fails with the given exceptions in turn, then returns how many calls it took."""

    def __init__(self, *failures: BaseException) -> None:
        self.failures = list(failures)
        self.calls = 0

    async def __call__(self) -> int:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return self.calls


async def test_an_attempt_that_loses_races_is_run_again_until_it_wins() -> None:
    attempt = Attempts(Lost(), Lost())
    seen: list[BaseException] = []

    async def after(exc: BaseException) -> None:
        seen.append(exc)

    assert await retry(attempt, on=Lost, attempts=3, give_up=GaveUp, after_failure=after) == 3
    assert len(seen) == 2 and all(isinstance(e, Lost) for e in seen)


async def test_the_bound_counts_every_attempt_and_the_last_failure_is_seen_too() -> None:
    attempt = Attempts(*(Lost() for _ in range(5)))
    seen: list[BaseException] = []

    async def after(exc: BaseException) -> None:
        seen.append(exc)

    with pytest.raises(GaveUp):
        await retry(attempt, on=(KeyError, Lost), attempts=5, give_up=GaveUp, after_failure=after)
    assert attempt.calls == 5 and len(seen) == 5


async def test_other_errors_are_not_retried() -> None:
    attempt = Attempts(ValueError("bad"), Lost())
    with pytest.raises(ValueError, match="bad"):
        await retry(attempt, on=Lost, attempts=5, give_up=GaveUp)
    assert attempt.calls == 1


async def test_again_starts_over_without_after_failure_and_counts_as_an_attempt() -> None:
    seen: list[BaseException] = []

    async def after(exc: BaseException) -> None:
        seen.append(exc)

    assert await retry(Attempts(Again(), Lost()), on=Lost, attempts=3, give_up=GaveUp, after_failure=after) == 3
    assert len(seen) == 1
    attempt = Attempts(Again(), Again())
    with pytest.raises(GaveUp):
        await retry(attempt, on=Lost, attempts=2, give_up=GaveUp)
    assert attempt.calls == 2


async def test_an_error_in_after_failure_ends_the_retrying() -> None:
    attempt = Attempts(Lost(), Lost())

    async def reread(exc: BaseException) -> None:
        raise LookupError("gone")

    with pytest.raises(LookupError):
        await retry(attempt, on=Lost, attempts=5, give_up=GaveUp, after_failure=reread)
    assert attempt.calls == 1


async def test_at_least_one_attempt() -> None:
    with pytest.raises(ValueError):
        await retry(Attempts(), on=Lost, attempts=0, give_up=GaveUp)
