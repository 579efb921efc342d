"""Audit ids, branch slugs and audit records (branch_operator.domain.audit)."""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from branch_operator.api.models import Phase
from branch_operator.domain.audit import (
    AuditAction,
    AuditRecord,
    branch_slug,
    make_audit_id,
    parse_audit_id,
)

AUDIT_ID_RE = re.compile(r"^audit-oms:branch:[a-z0-9.-]+:[a-z_.]+:\d{8}T\d{6}Z:[0-9a-f-]{36}$")
SLUG_RE = re.compile(r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$")
WHEN = datetime(2025, 6, 26, 10, 30, tzinfo=UTC)


# ---------------------------------------------------------------------------------------------- ids


def test_example_audit_id() -> None:
    audit_id = make_audit_id("feature/user-schema", AuditAction.INDEXING_COMPLETED, WHEN)
    assert AUDIT_ID_RE.match(audit_id)
    prefix = "audit-oms:branch:feature-user-schema:indexing.completed:20250626T103000Z:"
    assert audit_id.startswith(prefix)
    ident = uuid.UUID(audit_id[len(prefix) :])
    assert ident.version == 4
    assert ident.variant == uuid.RFC_4122
    assert str(ident) == audit_id[len(prefix) :]


def test_unseeded_ids_are_unique() -> None:
    ids = {make_audit_id("main", "lock.acquired", WHEN) for _ in range(50)}
    assert len(ids) == 50


def test_seeded_ids_are_deterministic_version_4() -> None:
    seed = "indexing-uuid|indexing.completed|feature/user-schema"
    first = make_audit_id("feature/user-schema", AuditAction.INDEXING_COMPLETED, WHEN, seed=seed)
    again = make_audit_id("feature/user-schema", "indexing.completed", WHEN, seed=seed)
    assert first == again
    ident = parse_audit_id(first).uuid
    assert ident.version == 4 and ident.variant == uuid.RFC_4122
    assert make_audit_id("feature/user-schema", AuditAction.INDEXING_COMPLETED, WHEN, seed=seed + "x") != first


def test_one_seed_gives_distinct_uuids_per_action_and_branch() -> None:
    a = parse_audit_id(make_audit_id("main", AuditAction.INDEXING_COMPLETED, WHEN, seed="evt-1")).uuid
    b = parse_audit_id(make_audit_id("main", AuditAction.BRANCH_STATE_CHANGED, WHEN, seed="evt-1")).uuid
    c = parse_audit_id(make_audit_id("dev", AuditAction.INDEXING_COMPLETED, WHEN, seed="evt-1")).uuid
    assert len({a, b, c}) == 3


def test_time_converted_to_utc() -> None:
    when = datetime(2025, 6, 26, 12, 30, 59, 999999, tzinfo=timezone(timedelta(hours=2)))
    assert ":20250626T103059Z:" in make_audit_id("main", AuditAction.LOCK_EXPIRED, when)


def test_early_years_zero_padded() -> None:
    audit_id = make_audit_id("main", AuditAction.LOCK_EXPIRED, datetime(5, 1, 2, 3, 4, 5, tzinfo=UTC))
    assert ":00050102T030405Z:" in audit_id
    assert parse_audit_id(audit_id).timestamp == datetime(5, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_naive_time_rejected() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        make_audit_id("main", AuditAction.LOCK_EXPIRED, datetime(2025, 6, 26))


def test_unknown_branch() -> None:
    audit_id = make_audit_id(None, AuditAction.EVENT_REJECTED, WHEN)
    assert audit_id.startswith("audit-oms:branch:unknown:event.rejected:20250626T103000Z:")


def test_action_strings() -> None:
    assert ":future.action_x:" in make_audit_id("main", "future.action_x", WHEN)
    for bad in ("Indexing.Completed", "a:b", "", "lock-acquired", "x1"):
        with pytest.raises(ValueError, match="action"):
            make_audit_id("main", bad, WHEN)


def test_every_action_fits_the_format() -> None:
    for action in AuditAction:
        assert AUDIT_ID_RE.match(make_audit_id("feature/a", action, WHEN))
    assert {a.value for a in AuditAction} == {
        "indexing.started", "indexing.completed", "indexing.failed", "branch.state_changed", "branch.merged",
        "branch.merge_blocked", "branch.merge_deferred", "branch.merge_failed", "branch.merge_requested",
        "lock.acquired", "lock.released", "lock.expired", "event.rejected", "event.stale",
        "event.unexpected", "event.pending", "event.discarded", "event.duplicate", "event.deferred",
        "admin.force_unlock", "admin.set_state",
    }  # fmt: skip


def test_parse_round_trip() -> None:
    audit_id = make_audit_id("feature/user-schema", AuditAction.BRANCH_MERGED, WHEN, seed="s")
    parts = parse_audit_id(audit_id)
    assert parts.slug == "feature-user-schema"
    assert parts.action == "branch.merged"
    assert parts.known_action is AuditAction.BRANCH_MERGED
    assert parts.timestamp == WHEN
    assert parts.uuid.version == 4
    assert parse_audit_id(make_audit_id("x", "custom.thing", WHEN)).known_action is None


GOOD_UUID = "2d711642-b726-4044-8162-7ca9fbac32f5"


@pytest.mark.parametrize(
    ("audit_id", "mentions"),
    [
        ("audit-oms:lock:main:lock.acquired:20250626T103000Z:" + GOOD_UUID, "start"),
        ("audit-oms:branch:main:lock.acquired:20250626T103000Z", "4 parts"),
        ("audit-oms:branch:a:b:lock.acquired:20250626T103000Z:" + GOOD_UUID, "4 parts"),
        ("audit-oms:branch:-main:lock.acquired:20250626T103000Z:" + GOOD_UUID, "slug"),
        ("audit-oms:branch:Main:lock.acquired:20250626T103000Z:" + GOOD_UUID, "slug"),
        ("audit-oms:branch::lock.acquired:20250626T103000Z:" + GOOD_UUID, "slug"),
        ("audit-oms:branch:" + "a" * 64 + ":lock.acquired:20250626T103000Z:" + GOOD_UUID, "slug"),
        ("audit-oms:branch:main:Lock:20250626T103000Z:" + GOOD_UUID, "action"),
        ("audit-oms:branch:main:lock.acquired:2025-06-26T10:30:00Z:" + GOOD_UUID, "parts"),
        ("audit-oms:branch:main:lock.acquired:20250626T103000:" + GOOD_UUID, "timestamp"),
        ("audit-oms:branch:main:lock.acquired:20251326T103000Z:" + GOOD_UUID, "timestamp"),
        ("audit-oms:branch:main:lock.acquired:20250626T103000Z:" + GOOD_UUID.upper(), "uuid"),
        ("audit-oms:branch:main:lock.acquired:20250626T103000Z:" + str(uuid.uuid1()), "uuid"),
        ("audit-oms:branch:main:lock.acquired:20250626T103000Z:" + GOOD_UUID.replace("-", ""), "uuid"),
    ],
)
def test_parse_rejects(audit_id: str, mentions: str) -> None:
    with pytest.raises(ValueError, match=mentions):
        parse_audit_id(audit_id)


# -------------------------------------------------------------------------------------------- slugs


@pytest.mark.parametrize(
    ("name", "slug"),
    [
        ("feature/user-schema", "feature-user-schema"),
        ("Feature/User_Schema", "feature-user-schema"),
        ("release/v1.2.3", "release-v1.2.3"),
        ("../../etc", "etc"),
        ("../../etc/passwd", "etc-passwd"),
        ("a:b", "a-b"),
        ("a::::b", "a-b"),
        ("Fëature/Ünïcode", "feature-unicode"),
        ("日本語", "unnamed"),
        ("---", "unnamed"),
        ("...", "unnamed"),
        ("", "unnamed"),
        ("-.a.-", "a"),
        ("a\nb\x00c", "a-b-c"),
    ],
)
def test_slug_examples(name: str, slug: str) -> None:
    assert branch_slug(name) == slug


def test_slug_of_long_names() -> None:
    long = "x" * 500
    slug = branch_slug(long)
    assert len(slug) == 63
    assert SLUG_RE.match(slug)
    assert slug.startswith("x" * 54 + "-")
    # Names that only differ after the cut, or only in length, stay distinct.
    assert branch_slug("x" * 501) != slug
    assert branch_slug("x" * 100 + "a") != branch_slug("x" * 100 + "b")
    # Names whose slugs collide before hashing (case) stay distinct once long enough to be hashed.
    assert branch_slug("A" * 100) != branch_slug("a" * 100)
    assert branch_slug("a" * 63) == "a" * 63


def test_slug_truncation_does_not_leave_separator_runs() -> None:
    slug = branch_slug("a" * 53 + "/" + "b" * 40)
    assert "--" not in slug
    assert len(slug) <= 63 and SLUG_RE.match(slug)


@settings(max_examples=500, deadline=None)
@given(name=st.text(max_size=300))
def test_property_slug_shape(name: str) -> None:
    slug = branch_slug(name)
    assert SLUG_RE.match(slug)
    assert len(slug) <= 63
    assert ":" not in slug
    assert branch_slug(slug) == slug  # already a slug: unchanged


@settings(max_examples=300, deadline=None)
@given(
    name=st.one_of(st.none(), st.text(max_size=250)),
    action=st.sampled_from(list(AuditAction)),
    when=st.datetimes(
        min_value=datetime(1, 1, 2),
        max_value=datetime(9999, 12, 30),
        timezones=st.sampled_from([UTC, timezone(timedelta(hours=-7)), timezone(timedelta(hours=9))]),
    ),
    seed=st.one_of(st.none(), st.text(max_size=50)),
)
def test_property_audit_id(name: str | None, action: AuditAction, when: datetime, seed: str | None) -> None:
    audit_id = make_audit_id(name, action, when, seed=seed)
    assert AUDIT_ID_RE.match(audit_id)
    parts = parse_audit_id(audit_id)
    assert parts.known_action is action
    assert parts.timestamp == when.astimezone(UTC).replace(microsecond=0)
    assert parts.uuid.version == 4
    if seed is not None:
        assert make_audit_id(name, action, when, seed=seed) == audit_id


# ------------------------------------------------------------------------------------------ records


def test_build_and_to_json() -> None:
    record = AuditRecord.build(
        AuditAction.BRANCH_STATE_CHANGED,
        branch_name="feature/user-schema",
        when=datetime(2025, 6, 26, 12, 30, tzinfo=timezone(timedelta(hours=2))),
        seed="evt-1",
        namespace="team-a",
        branch="feature-user-schema",
        from_state=Phase.LOCKED_FOR_WRITE,
        to_state=Phase.READY,
        reason="IndexingSucceeded",
        correlation_id="indexing-uuid",
        indexing_id="idx-123",
        details={"records_indexed": 1250, "b": [1, 2], "a": {"z": 1, "y": WHEN}},
    )
    assert record.timestamp == WHEN and record.timestamp.tzinfo is UTC
    assert record.action == "branch.state_changed"
    assert record.from_state == "LOCKED_FOR_WRITE"
    line = record.to_json()
    assert "\n" not in line and ", " not in line and ": " not in line
    parsed = json.loads(line)
    assert list(parsed) == [
        "audit_id", "action", "timestamp", "actor", "namespace", "branch", "branch_name", "from_state",
        "to_state", "reason", "correlation_id", "indexing_id", "details",
    ]  # fmt: skip
    assert parsed["audit_id"].startswith("audit-oms:branch:feature-user-schema:branch.state_changed:20250626T103000Z:")
    assert parsed["timestamp"] == "2025-06-26T10:30:00Z"
    assert parsed["actor"] == "oms-branch-operator"
    assert parsed["to_state"] == "READY"
    assert list(parsed["details"]) == ["a", "b", "records_indexed"]
    assert parsed["details"]["a"] == {"y": "2025-06-26T10:30:00Z", "z": 1}
    # Same inputs, same line: redelivered events produce byte-identical audit records.
    again = AuditRecord.build(
        AuditAction.BRANCH_STATE_CHANGED,
        branch_name="feature/user-schema",
        when=WHEN,
        seed="evt-1",
        namespace="team-a",
        branch="feature-user-schema",
        from_state="LOCKED_FOR_WRITE",
        to_state="READY",
        reason="IndexingSucceeded",
        correlation_id="indexing-uuid",
        indexing_id="idx-123",
        details={"a": {"y": WHEN, "z": 1}, "b": (1, 2), "records_indexed": 1250},
    )
    assert again.to_json() == line


def test_to_json_round_trips() -> None:
    record = AuditRecord.build(
        AuditAction.EVENT_REJECTED, branch_name=None, when=WHEN, reason="InvalidJSON", details={"n": 1}
    )
    assert AuditRecord.model_validate_json(record.to_json()) == record
    assert json.loads(record.to_json())["branch_name"] is None


def test_to_json_never_fails_on_odd_details() -> None:
    class Thing:
        def __str__(self) -> str:
            return "thing"

    record = AuditRecord.build(
        "lock.expired",
        branch_name="main",
        when=WHEN,
        details={
            "nan": float("nan"),
            "inf": float("inf"),
            "obj": Thing(),
            "naive": datetime(2025, 1, 1),
            "set": {1},
            "phase": Phase.ERROR,
            "surrogate": "\ud800",
        },
    )
    parsed = json.loads(record.to_json())
    assert parsed["details"]["obj"] == "thing"
    assert parsed["details"]["naive"] == "2025-01-01T00:00:00Z"
    assert parsed["details"]["phase"] == "ERROR"
    assert parsed["details"]["nan"] == "nan"
    assert record.to_json().isascii()


def test_record_validation() -> None:
    good = make_audit_id("main", "lock.acquired", WHEN)
    with pytest.raises(ValidationError):
        AuditRecord(audit_id="not-an-id", action="lock.acquired", timestamp=WHEN)
    with pytest.raises(ValidationError):
        AuditRecord(audit_id=good, action="lock.acquired", timestamp=datetime(2025, 6, 26))
    with pytest.raises(ValidationError):
        AuditRecord(audit_id=good, action="Lock Acquired", timestamp=WHEN)
    with pytest.raises(ValidationError):
        AuditRecord.build("lock.acquired", branch_name="main", when=WHEN, unknown_field=1)
    record = AuditRecord(audit_id=good, action=AuditAction.LOCK_ACQUIRED, timestamp=WHEN)
    assert record.action == "lock.acquired"
    assert record.details == {}
