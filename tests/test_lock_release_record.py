"""The one ``lock.released`` audit record, as the indexing, admin and Branch-deletion paths build it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from branch_operator.domain.audit import AuditAction, AuditRecord, parse_audit_id
from branch_operator.domain.locks import release_record

WHEN = datetime(2024, 1, 1, 12, 0, 0, tzinfo=UTC)
WHERE: dict[str, Any] = {"namespace": "oms", "branch": "feature-a", "branch_name": "feature/a"}


def _lock(name: str, lock_type: str | None, holder: str | None) -> dict[str, Any]:
    spec = {k: v for k, v in (("lockType", lock_type), ("holder", holder)) if v is not None}
    return {"metadata": {"name": name, "uid": "u-1"}, "spec": spec}


def test_a_release_by_name_records_the_lock_and_its_context() -> None:
    record = release_record("feature-a-indexing-1", seed="ev-1|lock.released|feature-a-indexing-1", when=WHEN,
                            actor="op", reason="IndexingCompleted", correlation_id="ev-1", indexing_id="run-1",
                            **WHERE)
    assert record.action == AuditAction.LOCK_RELEASED
    assert parse_audit_id(record.audit_id).known_action is AuditAction.LOCK_RELEASED
    assert record.details == {"lock": "feature-a-indexing-1"}
    assert (record.actor, record.reason, record.correlation_id, record.indexing_id) == (
        "op", "IndexingCompleted", "ev-1", "run-1")
    assert (record.namespace, record.branch, record.branch_name, record.timestamp) == (
        "oms", "feature-a", "feature/a", WHEN)
    assert (record.from_state, record.to_state) == (None, None)


def test_a_release_of_a_read_lock_also_records_its_type_and_holder() -> None:
    record = release_record(_lock("feature-a-write-1", "WRITE", "schema-svc"), seed="s", when=WHEN, actor="op",
                            reason="BranchDeleted", **WHERE)
    assert record.details == {"lock": "feature-a-write-1", "lock_type": "WRITE", "holder": "schema-svc"}


def test_a_read_lock_without_type_or_holder_still_names_both() -> None:
    record = release_record(_lock("x", None, None), seed="s", when=WHEN, actor="op", reason="BranchDeleted", **WHERE)
    assert record.details == {"lock": "x", "lock_type": None, "holder": None}


def test_the_seed_alone_decides_the_id() -> None:
    def make(seed: str, actor: str) -> AuditRecord:
        return release_record("x", seed=seed, when=WHEN, actor=actor, reason="r", **WHERE)

    assert make("a", "alice").audit_id == make("a", "bob").audit_id  # a retry: the same id, dropped by JetStream
    assert make("a", "alice").audit_id != make("b", "alice").audit_id  # another release: another record


def test_the_record_is_the_one_each_releaser_built_before() -> None:
    # The audit ids and fields already published must not change: exactly-once dedup relies on them.
    by_admin = release_record("l1", seed="uid|req|t|l1|lock.released", when=WHEN, actor="alice",
                              reason="AdminSetState", from_state="ERROR", to_state="ACTIVE", correlation_id="req",
                              **WHERE)
    assert by_admin.to_json() == AuditRecord.build(
        AuditAction.LOCK_RELEASED, branch_name="feature/a", when=WHEN, seed="uid|req|t|l1|lock.released",
        actor="alice", namespace="oms", branch="feature-a", from_state="ERROR", to_state="ACTIVE",
        reason="AdminSetState", correlation_id="req", details={"lock": "l1"},
    ).to_json()
