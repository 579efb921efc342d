"""The Funnel indexing-event contract (branch_operator.contracts.funnel, funnel_decode, funnel_encode)."""

from __future__ import annotations

import base64
import copy
import enum
import json
import re
import string
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from branch_operator.api.models import (
    BRANCH_NAME_PATTERN,
    MAX_BRANCH_NAME,
    MAX_ERROR_LENGTH,
    MAX_ERRORS,
    IndexingStatus,
    ValidationStatus,
)
from branch_operator.config import Settings
from branch_operator.contracts.funnel import (
    DEFAULT_MAX_EVENT_BYTES,
    EVENT_TYPES,
    STRUCTURED_CONTENT_TYPE,
    EventRejected,
    IndexingEvent,
    RejectReason,
    default_subjects,
    parse_message,
    subjects_from_settings,
)
from branch_operator.contracts.funnel_encode import encode_binary, encode_structured, make_event
from branch_operator.contracts.outbound import make_cloudevent

STARTED = "funnel.indexing.started"
COMPLETED = "funnel.indexing.completed"
FAILED = "funnel.indexing.failed"
SUBJECTS = {"started": STARTED, "completed": COMPLETED, "failed": FAILED}

# The original design's example, verbatim (no specversion).
EXAMPLE: dict[str, Any] = {
    "id": "indexing-uuid",
    "source": "funnel-service",
    "type": "com.oms.indexing.completed",
    "data": {
        "branch_name": "feature/user-schema",
        "indexing_id": "idx-123",
        "started_at": "2025-06-26T10:00:00Z",
        "completed_at": "2025-06-26T10:30:00Z",
        "status": "success",
        "records_indexed": 1250,
        "validation_results": {"passed": True, "errors": []},
    },
}
T0 = datetime(2025, 6, 26, 10, 0, tzinfo=UTC)
T1 = datetime(2025, 6, 26, 10, 30, tzinfo=UTC)


def example(**data_changes: Any) -> dict[str, Any]:
    event = copy.deepcopy(EXAMPLE)
    for key, value in data_changes.items():
        if value is _DROP:
            event["data"].pop(key, None)
        else:
            event["data"][key] = value
    return event


_DROP = object()


def raw(event: Any) -> bytes:
    return json.dumps(event).encode()


def reject(subject: str, payload: bytes, headers: dict[str, str] | None = None, **kw: Any) -> EventRejected:
    with pytest.raises(EventRejected) as info:
        parse_message(subject, payload, headers, **kw)
    return info.value


def assert_rejected(
    reason: str, mentions: str, subject: str, payload: bytes, headers: dict[str, str] | None = None, **kw: Any
) -> EventRejected:
    exc = reject(subject, payload, headers, **kw)
    assert exc.reason_code == reason, exc.message
    assert mentions in exc.message, exc.message
    return exc


# --------------------------------------------------------------------------------------- happy paths


def test_original_example_structured() -> None:
    ev = parse_message(COMPLETED, raw(EXAMPLE), None)
    assert ev.mode == "structured"
    assert ev.specversion == "1.0"  # missing specversion read as 1.0
    assert (ev.id, ev.source, ev.type, ev.subject, ev.kind) == (
        "indexing-uuid",
        "funnel-service",
        "com.oms.indexing.completed",
        COMPLETED,
        "completed",
    )
    assert ev.data.branch_name == "feature/user-schema"
    assert ev.data.indexing_id == "idx-123"
    assert ev.data.started_at == T0
    assert ev.data.completed_at == T1
    assert ev.data.records_indexed == 1250
    assert ev.data.validation_results is not None
    assert ev.data.validation_results.passed is True
    assert ev.data.validation_results.errors == []
    assert ev.duration_seconds == 1800.0
    assert ev.succeeded and not ev.failed
    assert ev.occurred_at == T1
    assert ev.namespace is None
    assert ev.time is None
    assert ev.extensions == {}


def test_original_example_binary() -> None:
    body, headers = encode_binary(EXAMPLE)
    assert headers["ce-id"] == "indexing-uuid"
    assert headers["ce-type"] == "com.oms.indexing.completed"
    assert headers["ce-specversion"] == "1.0"
    assert json.loads(body) == EXAMPLE["data"]
    ev = parse_message(COMPLETED, body, headers)
    assert ev.mode == "binary"
    structured = parse_message(COMPLETED, raw(EXAMPLE), None)
    assert ev.data == structured.data
    assert (ev.id, ev.source, ev.type, ev.kind) == (structured.id, structured.source, structured.type, "completed")
    assert ev.duration_seconds == 1800.0


def test_binary_handwritten_headers_case_insensitive() -> None:
    headers = {
        "CE-SpecVersion": "1.0",
        "Ce-Id": "evt-1",
        "ce-SOURCE": "funnel-service",
        "CE-TYPE": "com.oms.indexing.completed",
        "Ce-Time": "2025-06-26T10:30:01Z",
        "CE-TraceParent": "00-abc-def-01",
        "Content-Type": "application/json",
    }
    ev = parse_message(COMPLETED, raw(EXAMPLE["data"]), headers)
    assert ev.mode == "binary"
    assert ev.id == "evt-1"
    assert ev.time == datetime(2025, 6, 26, 10, 30, 1, tzinfo=UTC)
    assert ev.extensions == {"traceparent": "00-abc-def-01"}
    assert ev.datacontenttype == "application/json"


@pytest.mark.parametrize(
    "content_type",
    [
        "application/cloudevents+json",
        "Application/CloudEvents+JSON; charset=utf-8",
        "application/cloudevents",
    ],
)
def test_structured_content_type_header(content_type: str) -> None:
    event = {"specversion": "1.0", **EXAMPLE}
    # ce- headers next to a cloudevents content type are ignored: the content type decides the mode.
    ev = parse_message(COMPLETED, raw(event), {"content-type": content_type, "ce-id": "ignored"})
    assert ev.mode == "structured"
    assert ev.id == "indexing-uuid"


def test_structured_without_ce_headers_but_other_headers() -> None:
    ev = parse_message(COMPLETED, raw(EXAMPLE), {"Nats-Msg-Id": "x", "Content-Type": "application/json"})
    assert ev.mode == "structured"


def test_started_event() -> None:
    event = {
        "specversion": "1.0",
        "id": "e-start",
        "source": "funnel-service",
        "type": "com.oms.indexing.started",
        "time": "2025-06-26T10:00:00.5Z",
        "data": {"branch_name": "feature/user-schema", "indexing_id": "idx-123", "started_at": "2025-06-26T10:00:00Z"},
    }
    ev = parse_message(STARTED, raw(event), None)
    assert ev.kind == "started"
    assert not ev.succeeded and not ev.failed
    assert ev.duration_seconds is None
    assert ev.occurred_at == T0
    assert ev.data.records_indexed == 0
    assert ev.data.status is None
    assert ev.data.validation_results is None


def test_failed_event_without_started_at() -> None:
    event = {
        "specversion": "1.0",
        "id": "e-fail",
        "source": "funnel-service",
        "type": "com.oms.indexing.failed",
        "data": {
            "branch_name": "feature/user-schema",
            "indexing_id": "idx-123",
            "completed_at": "2025-06-26T10:30:00Z",
            "status": "failed",
            "validation_results": {"passed": False, "errors": ["schema: field x missing"]},
        },
    }
    ev = parse_message(FAILED, raw(event), None)
    assert ev.kind == "failed"
    assert ev.failed and not ev.succeeded
    assert ev.duration_seconds is None
    assert ev.occurred_at == T1
    assert ev.data.validation_results is not None
    assert ev.data.validation_results.errors == ["schema: field x missing"]


def test_failed_event_status_may_be_absent() -> None:
    event = make_event("failed", "feature/x", "idx-1", completed_at=T1)
    del event["data"]["status"]
    assert parse_message(FAILED, raw(event), None).failed


def test_completed_with_status_failed_counts_as_failed() -> None:
    ev = parse_message(COMPLETED, raw(example(status="failed")), None)
    assert ev.kind == "completed"
    assert ev.failed
    assert not ev.succeeded


def test_timestamps_normalised_to_utc() -> None:
    ev = parse_message(
        COMPLETED,
        raw(example(started_at="2025-06-26T12:00:00+02:00", completed_at="2025-06-26T05:30:00.250-05:00")),
        None,
    )
    assert ev.data.started_at == T0
    assert ev.data.started_at is not None and ev.data.started_at.tzinfo is UTC
    assert ev.data.completed_at == datetime(2025, 6, 26, 10, 30, 0, 250000, tzinfo=UTC)
    assert ev.duration_seconds == 1800.25


def test_unknown_data_keys_ignored_and_extensions_kept() -> None:
    event = example(shard_count=7, future={"nested": [1, 2]})
    event["traceparent"] = "00-trace"
    event["priority"] = 3
    ev = parse_message(COMPLETED, raw(event), None)
    assert ev.extensions == {"traceparent": "00-trace", "priority": 3}
    assert not hasattr(ev.data, "shard_count")


def test_null_records_indexed_is_zero() -> None:
    assert parse_message(COMPLETED, raw(example(records_indexed=None)), None).data.records_indexed == 0


def test_data_base64_structured() -> None:
    event = {k: v for k, v in EXAMPLE.items() if k != "data"}
    event["data_base64"] = base64.b64encode(raw(EXAMPLE["data"])).decode()
    ev = parse_message(COMPLETED, raw(event), None)
    assert ev.data.indexing_id == "idx-123"


def test_received_at_and_occurred_at_fallback() -> None:
    now = datetime(2030, 1, 1, tzinfo=timezone(timedelta(hours=1)))
    ev = parse_message(COMPLETED, raw(EXAMPLE), None, now=now)
    assert ev.received_at == now and ev.received_at.tzinfo is UTC
    # Constructed directly (not via the parser), with nothing better: CloudEvent time, then received_at.
    bare = ev.model_copy(update={"data": ev.data.model_copy(update={"completed_at": None})})
    assert bare.occurred_at == ev.received_at
    timed = bare.model_copy(update={"time": T0})
    assert timed.occurred_at == T0
    with pytest.raises(ValueError, match="timezone-aware"):
        parse_message(COMPLETED, raw(EXAMPLE), None, now=datetime(2030, 1, 1))


# ----------------------------------------------------------------------------------------- namespace


def test_namespace_from_data() -> None:
    event = example(namespace="team-a")
    event["namespace"] = "team-b"  # the data wins over the extension
    assert parse_message(COMPLETED, raw(event), None).namespace == "team-a"


def test_namespace_from_extension_structured() -> None:
    event = copy.deepcopy(EXAMPLE)
    event["namespace"] = "team-b"
    ev = parse_message(COMPLETED, raw(event), None)
    assert ev.namespace == "team-b"
    assert ev.data.namespace is None


def test_namespace_from_extension_binary() -> None:
    body, headers = encode_binary({**EXAMPLE, "namespace": "team-c"})
    assert headers["ce-namespace"] == "team-c"
    assert parse_message(COMPLETED, body, headers).namespace == "team-c"


def test_bad_namespace_in_data_is_invalid_data() -> None:
    assert_rejected("InvalidData", "data.namespace", COMPLETED, raw(example(namespace="Team_A")))


def test_bad_namespace_extension_is_invalid_cloud_event() -> None:
    event = copy.deepcopy(EXAMPLE)
    event["namespace"] = "Not A Label"
    assert_rejected("InvalidCloudEvent", "namespace", COMPLETED, raw(event))


# ------------------------------------------------------------------------------ validation_results


def test_errors_truncated_and_counted() -> None:
    errors = [f"error {i}" for i in range(MAX_ERRORS + 17)]
    errors[0] = "x" * (MAX_ERROR_LENGTH * 3)
    ev = parse_message(COMPLETED, raw(example(validation_results={"passed": False, "errors": errors})), None)
    vr = ev.data.validation_results
    assert vr is not None
    assert len(vr.errors) == MAX_ERRORS
    assert vr.errors_dropped == 17
    assert len(vr.errors[0]) == MAX_ERROR_LENGTH
    assert vr.errors[0].endswith("\u2026")
    assert vr.errors[1:] == errors[1:MAX_ERRORS]
    # What reaches Branch.status fits the CRD bounds.
    ValidationStatus(passed=vr.passed, errors=vr.errors)


def test_errors_dropped_survives_revalidation() -> None:
    errors = [str(i) for i in range(MAX_ERRORS + 3)]
    ev = parse_message(COMPLETED, raw(example(validation_results={"passed": False, "errors": errors})), None)
    again = IndexingEvent.model_validate(ev.model_dump())
    assert again.data.validation_results == ev.data.validation_results


def test_structured_error_entries_rendered_as_text() -> None:
    vr_in = {"passed": False, "errors": [{"path": "a.b", "message": "bad"}, 42, None]}
    vr = parse_message(COMPLETED, raw(example(validation_results=vr_in)), None).data.validation_results
    assert vr is not None
    assert vr.errors == ['{"message":"bad","path":"a.b"}', "42", "null"]


def test_errors_null_is_empty() -> None:
    vr = parse_message(
        COMPLETED, raw(example(validation_results={"passed": True, "errors": None})), None
    ).data.validation_results
    assert vr is not None and vr.errors == []


# ------------------------------------------------------------------------------------------ rejections


def test_too_large_before_parsing() -> None:
    # Not even JSON: the size check must come first.
    assert_rejected("TooLarge", "bytes", COMPLETED, b"\xff" * 101, max_bytes=100)
    exc = reject(COMPLETED, b" " * (DEFAULT_MAX_EVENT_BYTES + 1))
    assert exc.reason_code == RejectReason.TOO_LARGE.value == "TooLarge"


def test_exactly_max_bytes_is_not_too_large() -> None:
    payload = raw(EXAMPLE)
    assert parse_message(COMPLETED, payload, None, max_bytes=len(payload)).id == "indexing-uuid"


@pytest.mark.parametrize(
    ("payload", "mentions"),
    [
        (b"\xff\xfe{}", "UTF-8"),
        (b"\xef\xbb\xbf" + raw(EXAMPLE), "JSON"),  # a BOM
        (b"{not json", "JSON"),
        (b"", "JSON"),
        (b'{"id": "a", "id": "b"}', "duplicate key"),
        (b'{"type": "com.oms.indexing.completed", "x": NaN}', "NaN"),
        (b'{"x": Infinity}', "Infinity"),
        (b"[" * 5000 + b"]" * 5000, "nested"),
        (b'{"a":' * 40 + b"1" + b"}" * 40, "nested"),
        (b'{"type": "\\ud800"}', "surrogate"),
        (b'{"n": ' + b"1" * 5000 + b"}", "JSON"),
    ],
)
def test_invalid_json(payload: bytes, mentions: str) -> None:
    assert_rejected("InvalidJSON", mentions, COMPLETED, payload)


def test_invalid_json_binary_body() -> None:
    _, headers = encode_binary(EXAMPLE)
    assert_rejected("InvalidJSON", "payload", COMPLETED, b"\xc3\x28", headers)


@pytest.mark.parametrize(
    ("mutate", "mentions"),
    [
        (lambda e: e.pop("id"), "id"),
        (lambda e: e.update(id=""), "id"),
        (lambda e: e.update(id=123), "id"),
        (lambda e: e.update(id="a\nb"), "id"),
        (lambda e: e.update(id="x" * 254), "id"),
        (lambda e: e.pop("source"), "source"),
        (lambda e: e.update(source=["funnel"]), "source"),
        (lambda e: e.pop("type"), "type"),
        (lambda e: e.update(type=7), "type"),
        (lambda e: e.update(type=""), "type"),
        (lambda e: e.update(time="yesterday"), "time"),
        (lambda e: e.update(time="2025-06-26T10:00:00"), "time"),
        (lambda e: e.update(time=1750932000), "time"),
        (lambda e: e.update(specversion=1.0), "specversion"),
        (lambda e: e.update(datacontenttype="text/plain"), "datacontenttype"),
        (lambda e: e.update(subject=["x"]), "subject"),
        (lambda e: e.update(data_base64="e30="), "data_base64"),
    ],
)
def test_invalid_cloud_event_attribute(mutate: Any, mentions: str) -> None:
    event = copy.deepcopy(EXAMPLE)
    mutate(event)
    assert_rejected("InvalidCloudEvent", mentions, COMPLETED, raw(event))


def test_structured_event_must_be_object() -> None:
    assert_rejected("InvalidCloudEvent", "JSON object", COMPLETED, b'["a"]')


def test_bad_data_base64() -> None:
    event = {k: v for k, v in EXAMPLE.items() if k != "data"}
    event["data_base64"] = "!!!"
    assert_rejected("InvalidCloudEvent", "data_base64", COMPLETED, raw(event))


def test_batch_content_type_not_supported() -> None:
    assert_rejected(
        "InvalidCloudEvent",
        "content-type",
        COMPLETED,
        raw([EXAMPLE]),
        {"Content-Type": "application/cloudevents-batch+json"},
    )


def test_conflicting_header_case_duplicates() -> None:
    body, headers = encode_binary(EXAMPLE)
    headers["CE-ID"] = "other"
    assert_rejected("InvalidCloudEvent", "ce-id", COMPLETED, body, headers)


def test_binary_missing_required_header() -> None:
    body, headers = encode_binary(EXAMPLE)
    del headers["ce-source"]
    assert_rejected("InvalidCloudEvent", "source", COMPLETED, body, headers)


@pytest.mark.parametrize("value", ["abc%", "abc%zz", "%C0%A0", "%FF"])
def test_binary_bad_percent_encoding(value: str) -> None:
    body, headers = encode_binary(EXAMPLE)
    headers["ce-source"] = value
    assert_rejected("InvalidCloudEvent", "ce-source", COMPLETED, body, headers)


def test_binary_header_values_are_percent_decoded_and_unquoted() -> None:
    body, headers = encode_binary({**EXAMPLE, "source": "funnel service/€"})
    assert headers["ce-source"] == "funnel%20service/%E2%82%AC"
    assert parse_message(COMPLETED, body, headers).source == "funnel service/€"
    headers["ce-source"] = '"funnel \\"quoted\\""'
    assert parse_message(COMPLETED, body, headers).source == 'funnel "quoted"'


def test_binary_ce_data_header_rejected() -> None:
    body, headers = encode_binary(EXAMPLE)
    headers["ce-data"] = "{}"
    assert_rejected("InvalidCloudEvent", "ce-data", COMPLETED, body, headers)


@pytest.mark.parametrize("version", ["0.3", "1.1", "2.0", ""])
def test_unsupported_spec_version(version: str) -> None:
    assert_rejected("UnsupportedSpecVersion", "specversion", COMPLETED, raw({**EXAMPLE, "specversion": version}))
    body, headers = encode_binary(EXAMPLE)
    headers["ce-specversion"] = version
    assert_rejected("UnsupportedSpecVersion", "specversion", COMPLETED, body, headers)


@pytest.mark.parametrize("type_", ["com.oms.indexing.progress", "com.oms.indexing.Completed", "completed", " "])
def test_unknown_type(type_: str) -> None:
    exc = assert_rejected("UnknownType", "type", COMPLETED, raw({**EXAMPLE, "type": type_}))
    assert exc.event_id == "indexing-uuid"


@pytest.mark.parametrize(
    ("subject", "type_"),
    [
        (STARTED, "com.oms.indexing.completed"),
        (COMPLETED, "com.oms.indexing.started"),
        (COMPLETED, "com.oms.indexing.failed"),
        (FAILED, "com.oms.indexing.completed"),
        ("funnel.indexing.progress", "com.oms.indexing.completed"),
        ("x.funnel.indexing.completed", "com.oms.indexing.completed"),
        ("funnel.indexing.completed.extra", "com.oms.indexing.completed"),
        ("", "com.oms.indexing.completed"),
    ],
)
def test_subject_type_mismatch(subject: str, type_: str) -> None:
    assert_rejected("SubjectTypeMismatch", "subject", subject, raw({**EXAMPLE, "type": type_}))


def test_completed_status_failed_on_failed_subject_is_mismatch() -> None:
    assert_rejected("SubjectTypeMismatch", "subject", FAILED, raw(example(status="failed")))


@pytest.mark.parametrize(
    ("changes", "mentions"),
    [
        ({"branch_name": _DROP}, "data.branch_name"),
        ({"branch_name": ""}, "data.branch_name"),
        ({"branch_name": "../etc/passwd"}, "data.branch_name"),
        ({"branch_name": "feature user"}, "data.branch_name"),
        ({"branch_name": "feature:user"}, "data.branch_name"),
        ({"branch_name": "feature\n"}, "data.branch_name"),
        ({"branch_name": "a" * (MAX_BRANCH_NAME + 1)}, "data.branch_name"),
        ({"branch_name": 17}, "data.branch_name"),
        ({"indexing_id": _DROP}, "data.indexing_id"),
        ({"indexing_id": ""}, "data.indexing_id"),
        ({"indexing_id": "idx\x00"}, "data.indexing_id"),
        ({"indexing_id": "x" * 254}, "data.indexing_id"),
        ({"records_indexed": -1}, "data.records_indexed"),
        ({"records_indexed": "1250"}, "data.records_indexed"),
        ({"records_indexed": True}, "data.records_indexed"),
        ({"records_indexed": 2**64}, "data.records_indexed"),
        ({"status": "ok"}, "data.status"),
        ({"status": _DROP}, "data.status"),
        ({"started_at": _DROP}, "data.started_at"),
        ({"completed_at": _DROP}, "data.completed_at"),
        ({"started_at": "2025-06-26T10:00:00"}, "data.started_at"),  # naive
        ({"completed_at": "2025-06-26 10:30:00"}, "data.completed_at"),  # naive
        ({"started_at": "2025-06-26"}, "data.started_at"),
        ({"started_at": 1750932000}, "data.started_at"),
        ({"started_at": "1750932000"}, "data.started_at"),
        ({"completed_at": "9999-12-31T23:59:59-01:00"}, "data.completed_at"),
        ({"validation_results": {"errors": []}}, "data.validation_results.passed"),
        ({"validation_results": {"passed": "yes", "errors": []}}, "data.validation_results.passed"),
        ({"validation_results": {"passed": True, "errors": "boom"}}, "data.validation_results.errors"),
        ({"validation_results": "passed"}, "data.validation_results"),
    ],
)
def test_invalid_data(changes: dict[str, Any], mentions: str) -> None:
    exc = assert_rejected("InvalidData", mentions, COMPLETED, raw(example(**changes)))
    assert exc.event_id == "indexing-uuid"


def test_naive_timestamp_message_says_why() -> None:
    exc = assert_rejected("InvalidData", "data.started_at", COMPLETED, raw(example(started_at="2025-06-26T10:00:00")))
    assert "UTC offset" in exc.message


def test_started_requires_started_at_and_no_status() -> None:
    event = make_event("started", "feature/x", "idx-1", started_at=T0)
    del event["data"]["started_at"]
    assert_rejected("InvalidData", "data.started_at", STARTED, raw(event))
    event = make_event("started", "feature/x", "idx-1", started_at=T0, status="success")
    assert_rejected("InvalidData", "data.status", STARTED, raw(event))


def test_failed_requires_completed_at_and_not_success() -> None:
    event = make_event("failed", "feature/x", "idx-1", completed_at=T1)
    del event["data"]["completed_at"]
    assert_rejected("InvalidData", "data.completed_at", FAILED, raw(event))
    event = make_event("failed", "feature/x", "idx-1", completed_at=T1, status="success")
    assert_rejected("InvalidData", "data.status", FAILED, raw(event))


@pytest.mark.parametrize("data", [None, [], "x", 1])
def test_data_missing_or_not_object(data: Any) -> None:
    assert_rejected("InvalidData", "data", COMPLETED, raw({**EXAMPLE, "data": data}))


def test_binary_empty_body() -> None:
    _, headers = encode_binary(EXAMPLE)
    assert_rejected("InvalidData", "data", COMPLETED, b"", headers)


def test_time_order() -> None:
    exc = assert_rejected(
        "TimeOrder",
        "data.started_at",
        COMPLETED,
        raw(example(started_at="2025-06-26T10:30:00.000001Z", completed_at="2025-06-26T10:30:00Z")),
    )
    assert "data.completed_at" in exc.message
    assert exc.branch_name == "feature/user-schema"


def test_time_order_across_offsets() -> None:
    # 11:00+02:00 is 09:00Z: before 10:30Z, so fine; 12:00-01:00 is 13:00Z: after, so not.
    assert parse_message(COMPLETED, raw(example(started_at="2025-06-26T11:00:00+02:00")), None)
    assert_rejected("TimeOrder", "started_at", COMPLETED, raw(example(started_at="2025-06-26T12:00:00-01:00")))


def test_equal_times_allowed() -> None:
    ev = parse_message(COMPLETED, raw(example(started_at="2025-06-26T10:30:00Z")), None)
    assert ev.duration_seconds == 0.0


def test_rejection_context_salvaged() -> None:
    event = example(records_indexed=-5, namespace="team-a")
    exc = reject(COMPLETED, raw(event))
    assert (exc.event_id, exc.event_type, exc.branch_name, exc.indexing_id, exc.namespace) == (
        "indexing-uuid",
        "com.oms.indexing.completed",
        "feature/user-schema",
        "idx-123",
        "team-a",
    )
    # Values that would be unsafe to reuse are not salvaged.
    event = example(branch_name="../../etc", indexing_id="a\nb")
    event["id"] = "x\ny"
    exc = reject(COMPLETED, raw(event))
    assert (exc.event_id, exc.branch_name, exc.indexing_id) == (None, None, None)
    assert str(exc).startswith("InvalidCloudEvent: ")


def test_message_is_bounded() -> None:
    exc = reject(COMPLETED, raw({**EXAMPLE, "type": "t" * 100_000}))
    assert exc.reason_code == "InvalidCloudEvent"
    exc = reject(COMPLETED, raw({**EXAMPLE, "type": "t" * 1000}))
    assert exc.reason_code == "UnknownType"
    assert len(exc.message) < 400


# ------------------------------------------------------------------------------------------- subjects


def test_default_subjects_follow_settings() -> None:
    assert default_subjects() == SUBJECTS
    s = Settings(subject_started="a.s", subject_completed="a.c", subject_failed="a.f")
    assert subjects_from_settings(s) == {"started": "a.s", "completed": "a.c", "failed": "a.f"}


def test_custom_subjects() -> None:
    custom = {"completed": "oms.funnel.done"}
    ev = parse_message("oms.funnel.done", raw(EXAMPLE), None, subjects=custom)
    assert ev.subject == "oms.funnel.done"
    assert_rejected("SubjectTypeMismatch", "subject", COMPLETED, raw(EXAMPLE), subjects=custom)


@pytest.mark.parametrize(
    "subjects",
    [{"merged": "x"}, {"completed": ""}, {"completed": STARTED}],
)
def test_bad_subject_mapping_is_a_programming_error(subjects: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="subjects"):
        parse_message(COMPLETED, raw(EXAMPLE), None, subjects=subjects)


# ------------------------------------------------------------------------------------------- builders


@pytest.mark.parametrize("kind", ["started", "completed", "failed"])
@pytest.mark.parametrize("binary", [False, True])
def test_builders_round_trip(kind: str, binary: bool) -> None:
    event = make_event(
        kind,
        "feature/user-schema",
        "idx-9",
        records_indexed=12,
        passed=kind != "failed",
        errors=("e1", "ünïcode error") if kind == "failed" else (),
        started_at=T0,
        completed_at=T1,
        namespace="team-a",
        event_id="evt-9",
        extensions={"traceparent": "00-abc", "origin": "demo ✓"},
    )
    assert event["specversion"] == "1.0"
    assert event["type"] == EVENT_TYPES[kind]  # type: ignore[index]
    payload, headers = encode_binary(event) if binary else encode_structured(event)
    if not binary:
        assert headers == {"Content-Type": STRUCTURED_CONTENT_TYPE}
    else:
        assert all(h.isascii() and " " not in h for h in headers.values())
    ev = parse_message(SUBJECTS[kind], payload, headers)
    assert ev.mode == ("binary" if binary else "structured")
    assert (ev.kind, ev.id, ev.source, ev.namespace) == (kind, "evt-9", "funnel-service", "team-a")
    assert ev.extensions == {"traceparent": "00-abc", "origin": "demo ✓"}
    assert ev.data.branch_name == "feature/user-schema"
    assert ev.data.indexing_id == "idx-9"
    assert ev.time is not None
    if kind == "started":
        assert ev.data.started_at == T0
    else:
        assert ev.data.completed_at == T1
        assert ev.data.records_indexed == 12
        assert ev.failed is (kind == "failed")
        assert ev.succeeded is (kind == "completed")
        assert ev.data.validation_results is not None
        assert ev.data.validation_results.passed is (kind != "failed")
    if kind == "completed":
        assert ev.duration_seconds == 1800.0


def test_make_event_defaults_parse() -> None:
    for kind, subject in SUBJECTS.items():
        event = make_event(kind, "main", "idx")
        ev = parse_message(subject, raw(event), None)
        assert ev.kind == kind
        assert 36 == len(ev.id)
    completed = parse_message(COMPLETED, raw(make_event("completed", "main", "idx")), None)
    assert completed.succeeded and completed.duration_seconds == 0.0


def test_make_event_rejects_unknown_kind_and_naive_times() -> None:
    with pytest.raises(ValueError, match="kind"):
        make_event("merged", "main", "idx")
    with pytest.raises(ValueError, match="naive"):
        make_event("started", "main", "idx", started_at=datetime(2025, 1, 1))
    with pytest.raises(ValueError, match="collides"):
        make_event("started", "main", "idx", extensions={"type": "x"})


def test_encode_binary_rejects_unencodable_attributes() -> None:
    with pytest.raises(ValueError, match="attribute"):
        encode_binary({**EXAMPLE, "Bad_Name": "x"})
    with pytest.raises(ValueError, match="string form"):
        encode_binary({**EXAMPLE, "nested": {"a": 1}})


def test_encode_binary_extension_types() -> None:
    body, headers = encode_binary({**EXAMPLE, "flag": True, "count": 3})
    ev = parse_message(COMPLETED, body, headers)
    assert ev.extensions == {"flag": "true", "count": "3"}


def test_make_cloudevent() -> None:
    class Colour(enum.StrEnum):
        RED = "red"

    event = make_cloudevent(
        "com.oms.branch.merged",
        "oms-branch-operator",
        "feature/user-schema",
        {"merged_at": datetime(2025, 6, 26, 12, 30, tzinfo=timezone(timedelta(hours=2))), "c": Colour.RED},
        event_id="m-1",
        time=T1,
    )
    assert event == {
        "specversion": "1.0",
        "id": "m-1",
        "source": "oms-branch-operator",
        "type": "com.oms.branch.merged",
        "subject": "feature/user-schema",
        "time": "2025-06-26T10:30:00Z",
        "datacontenttype": "application/json",
        "data": {"merged_at": "2025-06-26T10:30:00Z", "c": "red"},
    }
    json.dumps(event)  # plain JSON
    generated = make_cloudevent("com.oms.branch.merged", "op", None, {})
    assert "subject" not in generated
    assert re.fullmatch(r"[0-9a-f-]{36}", generated["id"])


# -------------------------------------------------------------------------------- property-based tests


def check_invariants(ev: IndexingEvent, subject: str) -> None:
    """What every accepted event guarantees to the rest of the operator."""
    assert SUBJECTS[ev.kind] == subject == ev.subject
    assert ev.type == EVENT_TYPES[ev.kind]
    d = ev.data
    assert re.fullmatch(BRANCH_NAME_PATTERN, d.branch_name)
    assert len(d.branch_name) <= MAX_BRANCH_NAME
    for ts in (d.started_at, d.completed_at, ev.time, ev.received_at):
        assert ts is None or ts.utcoffset() == timedelta(0)
    if d.started_at is not None and d.completed_at is not None:
        assert d.started_at <= d.completed_at
        assert ev.duration_seconds is not None and ev.duration_seconds >= 0
    if ev.kind == "started":
        assert d.started_at is not None and d.status is None
    elif ev.kind == "completed":
        assert d.started_at is not None and d.completed_at is not None and d.status is not None
    else:
        assert d.completed_at is not None and d.status in (None, "failed")
        assert ev.failed
    assert not (ev.succeeded and ev.failed)
    assert 0 <= d.records_indexed < 2**63
    if d.validation_results is not None:
        ValidationStatus(passed=d.validation_results.passed, errors=d.validation_results.errors)
    if ev.namespace is not None:
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", ev.namespace) and len(ev.namespace) <= 63
    IndexingStatus(event_id=ev.id, indexing_id=d.indexing_id, records_indexed=d.records_indexed)
    # Everything accepted can be written out again as UTF-8 JSON (status patches, audit lines, logs).
    json.dumps(ev.model_dump(mode="json"), ensure_ascii=False).encode("utf-8")


def parse_checked(subject: str, payload: bytes, headers: dict[str, str] | None) -> IndexingEvent | None:
    try:
        ev = parse_message(subject, payload, headers)
    except EventRejected as exc:
        assert exc.reason_code in {r.value for r in RejectReason}
        assert exc.message
        return None
    check_invariants(ev, subject)
    return ev


subjects_st = st.one_of(st.sampled_from([STARTED, COMPLETED, FAILED]), st.text(max_size=40))
header_names = st.sampled_from(
    [
        "ce-id",
        "CE-ID",
        "ce-source",
        "ce-type",
        "Ce-Type",
        "ce-specversion",
        "ce-time",
        "ce-namespace",
        "ce-x",
        "content-type",
        "Content-Type",
        "ce-",
        "ce-data",
        "nats-msg-id",
    ]
)
header_values = st.one_of(
    st.sampled_from(
        [
            "1.0",
            "0.3",
            "application/json",
            STRUCTURED_CONTENT_TYPE,
            "application/cloudevents-batch+json",
            *EVENT_TYPES.values(),
            "2025-06-26T10:00:00Z",
            "%",
            "%E2%82%AC",
            '"q\\"x"',
            "team-a",
        ]
    ),
    st.text(max_size=30),
)
headers_st = st.one_of(st.none(), st.dictionaries(header_names, header_values, max_size=8))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(subject=subjects_st, payload=st.binary(max_size=512), headers=headers_st)
def test_property_arbitrary_bytes(subject: str, payload: bytes, headers: dict[str, str] | None) -> None:
    parse_checked(subject, payload, headers)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(subject=subjects_st, value=json_values, headers=headers_st)
def test_property_arbitrary_json(subject: str, value: Any, headers: dict[str, str] | None) -> None:
    parse_checked(subject, json.dumps(value).encode(), headers)


offsets = st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))])
aware_times = st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=offsets)
valid_branch_names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,30}", fullmatch=True)


@st.composite
def plausible_events(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """A valid event for a kind, as make_event builds it, plus optional extra data keys."""
    kind = draw(st.sampled_from(["started", "completed", "failed"]))
    start = draw(aware_times)
    try:
        end = start + draw(st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=2)))
    except OverflowError:
        end = start
    if draw(st.integers(0, 9)) == 9:
        start, end = end, start  # now and then out of order
    event = make_event(
        kind,
        draw(valid_branch_names),
        draw(st.text(min_size=1, max_size=20).filter(lambda t: t.isprintable())),
        status=draw(st.sampled_from([None, "failed"])) if kind == "completed" else None,
        records_indexed=draw(st.integers(min_value=0, max_value=2**63 - 1)),
        passed=draw(st.booleans()),
        errors=draw(st.lists(st.text(max_size=1200), max_size=60)),
        started_at=start.isoformat(),
        completed_at=end.isoformat(),
        namespace=draw(st.none() | st.from_regex(r"[a-z0-9]([-a-z0-9]{0,10}[a-z0-9])?", fullmatch=True)),
        extensions=draw(
            st.dictionaries(
                st.from_regex(r"[a-z]{1,8}", fullmatch=True).filter(
                    lambda k: k not in {"id", "source", "type", "time", "subject", "data", "dataschema"}
                ),
                st.text(max_size=10),
                max_size=2,
            )
        ),
    )
    if draw(st.booleans()):
        del event["specversion"]  # Funnel's legacy producer
    event["data"].update(draw(st.dictionaries(st.sampled_from(["extra", "shard", "x"]), json_values, max_size=2)))
    return kind, event


hostile_values = st.one_of(
    json_values,
    st.sampled_from(
        [
            None,
            "",
            "a\nb",
            "x" * 300,
            "../etc",
            "a:b",
            "Bad NS",
            -1,
            True,
            2**64,
            1.5,
            "0.3",
            "2.0",
            "text/plain",
            "com.oms.indexing.progress",
            *EVENT_TYPES.values(),
            "success",
            "failed",
            "ok",
            "2025-06-26T10:00:00",
            "2025-06-26",
            "1750932000",
            "0001-01-01T00:00:00+01:00",
            "9999-12-31T23:59:59-01:00",
            "2025-06-26T10:00:00Z",
            "2099-01-01T00:00:00Z",
            "\ud800",
        ]
    ),
    st.builds(lambda d: d.isoformat(), aware_times),
)
top_keys = ["specversion", "id", "source", "type", "time", "datacontenttype", "namespace", "subject", "data"]
data_keys = [
    "branch_name",
    "indexing_id",
    "started_at",
    "completed_at",
    "status",
    "records_indexed",
    "validation_results",
    "namespace",
]
mutations = st.lists(
    st.tuples(
        st.one_of(st.sampled_from(top_keys).map(lambda k: (k,)), st.sampled_from(data_keys).map(lambda k: ("data", k))),
        st.one_of(st.just(_DROP), hostile_values),
    ),
    max_size=2,
)


def mutate(event: dict[str, Any], changes: list[tuple[tuple[str, ...], Any]]) -> dict[str, Any]:
    event = copy.deepcopy(event)
    for path, value in changes:
        target = event
        if len(path) == 2:
            if not isinstance(event.get("data"), dict):
                continue
            target = event["data"]
        if value is _DROP:
            target.pop(path[-1], None)
        else:
            target[path[-1]] = value
    return event


# Mostly the subject that goes with the kind, so that most cases get past the subject check.
events_st = st.tuples(plausible_events(), mutations, st.integers(0, 99)).map(
    lambda t: (SUBJECTS[t[0][0]] if t[2] < 95 else STARTED, mutate(t[0][1], t[1]))
)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=events_st)
def test_property_event_shaped_structured(case: tuple[str, dict[str, Any]]) -> None:
    subject, event = case
    parse_checked(subject, json.dumps(event).encode(), None)
    parse_checked(subject, json.dumps(event).encode(), {"Content-Type": STRUCTURED_CONTENT_TYPE})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=events_st)
def test_property_event_shaped_binary(case: tuple[str, dict[str, Any]]) -> None:
    subject, event = case
    # Headers carry strings; non-string attribute values are stringified the way a sloppy producer
    # might, without the encoder's checks.
    headers = {f"ce-{k}": v if isinstance(v, str) else json.dumps(v) for k, v in event.items() if k != "data"}
    parse_checked(subject, json.dumps(event.get("data")).encode(), headers)


@settings(max_examples=200, deadline=None)
@given(
    kind=st.sampled_from(["started", "completed", "failed"]),
    branch=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,60}", fullmatch=True),
    indexing_id=st.text(alphabet=string.ascii_letters + string.digits + "-_.:/ ", min_size=1, max_size=40),
    records=st.integers(min_value=0, max_value=2**63 - 1),
    errors=st.lists(st.text(max_size=50), max_size=5),
    start=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)),
    length=st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=3)),
    binary=st.booleans(),
)
def test_property_builders_always_accepted(
    kind: str,
    branch: str,
    indexing_id: str,
    records: int,
    errors: list[str],
    start: datetime,
    length: timedelta,
    binary: bool,
) -> None:
    event = make_event(
        kind, branch, indexing_id, records_indexed=records, errors=errors, started_at=start, completed_at=start + length
    )
    payload, headers = encode_binary(event) if binary else encode_structured(event)
    ev = parse_message(SUBJECTS[kind], payload, headers)
    check_invariants(ev, SUBJECTS[kind])
    assert ev.data.branch_name == branch
    assert ev.data.indexing_id == indexing_id
    if kind == "completed":
        assert ev.duration_seconds == length.total_seconds()


def test_binary_without_specversion_is_rejected() -> None:
    # CloudEvents makes specversion REQUIRED and binary mode carries it as ce-specversion. Only Funnel's
    # existing producer may omit it, and it sends bare structured JSON, never ce-* headers.
    body, headers = encode_binary(EXAMPLE)
    del headers["ce-specversion"]
    rejected = assert_rejected("InvalidCloudEvent", "ce-specversion", COMPLETED, body, headers)
    assert rejected.event_id == EXAMPLE["id"]  # still attributed
