"""Which lock releases an applied event's commit reports (processor._reported_releases): exactly one
``lock.released`` per lock, whoever deleted it — a losing copy on another replica or a killed attempt."""

from __future__ import annotations

from branch_operator.api.models import BranchStatus, LockType
from branch_operator.controllers.indexing import _reported_releases
from branch_operator.domain.locks import lock_name

R4 = lock_name("b", LockType.INDEXING, "run4")
R5 = lock_name("b", LockType.INDEXING, "run5")
WRITE = lock_name("b", LockType.WRITE, "editor")


def locked_on(run: str) -> BranchStatus:
    return BranchStatus.model_validate({"phase": "LOCKED_FOR_WRITE", "indexing": {"indexingId": run}})


def test_lock_of_the_ended_run_is_reported_even_if_someone_else_deleted_it() -> None:
    # This attempt found it gone (a killed attempt or another replica's losing copy deleted it).
    assert _reported_releases("b", locked_on("run4"), {}, new_lock=R5) == [R4]
    assert _reported_releases("b", locked_on("run4"), {R4: "INDEXING"}, new_lock=R5) == [R4]


def test_indexing_lock_of_another_run_is_left_to_the_commit_that_ends_it() -> None:
    # An earlier attempt deleted run4's lock, then lost its commit to the event that ended run4 (and reported
    # it); this commit ends run5.
    assert _reported_releases("b", locked_on("run5"), {R4: "INDEXING", R5: "INDEXING"}, new_lock=None) == [R5]


def test_other_locks_are_reported_when_deleted() -> None:
    assert _reported_releases("b", locked_on("run4"), {WRITE: "WRITE"}, new_lock=None) == sorted([R4, WRITE])


def test_nothing_to_end_outside_locked_for_write() -> None:
    ready = BranchStatus.model_validate({"phase": "READY", "indexing": {"indexingId": "run4"}})
    assert _reported_releases("b", ready, {}, new_lock=R5) == []
    # An orphan INDEXING lock (its acquisition was never reported) is removed quietly.
    assert _reported_releases("b", ready, {R4: "INDEXING"}, new_lock=R5) == []
    assert _reported_releases("b", BranchStatus(), {}, new_lock=R5) == []
