"""The Funnel indexing-event contract: CloudEvents 1.0 carried on NATS JetStream.

Funnel announces indexing outcomes on ``funnel.indexing.{started,completed,failed}`` with CloudEvent
types ``com.oms.indexing.{started,completed,failed}``. :func:`parse_message` turns one NATS message
into a checked :class:`IndexingEvent` or raises :class:`EventRejected` with a stable ``reason_code``
(the consumer dead-letters and audits on that code, so the codes are part of the contract).

This module holds the models, the subjects and the checks on the data; reading the wire (content
modes, headers, JSON, the envelope) is :mod:`.funnel_decode`, and building Funnel-format events for
tests and ``publish`` is :mod:`.funnel_encode`.

Everything here is pure: no I/O, no clock reads except where a default "now" is documented.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError

from branch_operator.api.models import BRANCH_NAME_PATTERN, MAX_BRANCH_NAME, MAX_ERROR_LENGTH, MAX_ERRORS
from branch_operator.config import Settings
from branch_operator.contracts.cloudevents import (
    CE_HEADER_PREFIX,
    SPECVERSION,
    STRUCTURED_CONTENT_TYPE,
    format_time,
)
from branch_operator.contracts.funnel_decode import (
    MAX_EVENT_ID,
    MAX_SOURCE,
    Context,
    EventRejected,
    Mode,
    RejectReason,
    UtcDatetime,
    has_control,
    read_data,
    read_envelope,
    reject,
    sane_string,
    show,
)
from branch_operator.domain.text import escape_controls

__all__ = [
    "CE_HEADER_PREFIX",
    "DEFAULT_MAX_EVENT_BYTES",
    "EVENT_TYPES",
    "KINDS",
    "SPECVERSION",
    "STRUCTURED_CONTENT_TYPE",
    "EventRejected",
    "FunnelIndexingData",
    "IndexingEvent",
    "Kind",
    "RejectReason",
    "ValidationResults",
    "default_subjects",
    "escape_controls",
    "parse_message",
    "subjects_from_settings",
]

Kind = Literal["started", "completed", "failed"]

KINDS: Final[tuple[Kind, ...]] = ("started", "completed", "failed")
EVENT_TYPES: Final[Mapping[Kind, str]] = {
    "started": "com.oms.indexing.started",
    "completed": "com.oms.indexing.completed",
    "failed": "com.oms.indexing.failed",
}
_KIND_BY_TYPE: Final[Mapping[str, Kind]] = {t: k for k, t in EVENT_TYPES.items()}
_KNOWN_TYPES: Final = tuple(EVENT_TYPES.values())

DEFAULT_MAX_EVENT_BYTES: Final[int] = int(Settings.model_fields["max_event_bytes"].default)

MAX_INDEXING_ID: Final = 253
MAX_RECORDS: Final = 2**63 - 1  # int64 in the CRD

DNS1123_LABEL_PATTERN: Final = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


# ----------------------------------------------------------------------------------------- data types


def _no_control(value: str) -> str:
    if has_control(value):
        raise PydanticCustomError("control_characters", "must not contain control characters")
    return value


BranchName = Annotated[str, Field(min_length=1, max_length=MAX_BRANCH_NAME, pattern=BRANCH_NAME_PATTERN)]
Namespace = Annotated[str, Field(min_length=1, max_length=63, pattern=DNS1123_LABEL_PATTERN)]
IndexingId = Annotated[str, Field(min_length=1, max_length=MAX_INDEXING_ID), AfterValidator(_no_control)]


def _null_is_zero(value: Any) -> Any:
    return 0 if value is None else value


def _bound_error(entry: Any) -> str:
    if isinstance(entry, str):
        text = entry
    else:
        # Funnel may grow structured errors ({"path": ..., "message": ...}); keep them readable
        # rather than rejecting an otherwise valid outcome over an informational field.
        try:
            text = json.dumps(entry, ensure_ascii=False, sort_keys=True, separators=(",", ":"), default=str)
        except (TypeError, ValueError, RecursionError):
            text = show(entry, MAX_ERROR_LENGTH)
    # Error texts reach Events, conditions and `kubectl describe`: escaped, not rejected, since a
    # multi-line message is a normal thing for an indexer to report.
    text = escape_controls(text)
    if len(text) > MAX_ERROR_LENGTH:
        text = text[: MAX_ERROR_LENGTH - 1] + "\u2026"
    return text


class ValidationResults(BaseModel):
    """Funnel's validation verdict, bounded to what Branch.status can hold."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    passed: StrictBool
    errors: Annotated[list[Annotated[str, Field(max_length=MAX_ERROR_LENGTH)]], Field(max_length=MAX_ERRORS)] = []
    errors_dropped: Annotated[int, Field(ge=0, description="Entries cut off beyond MAX_ERRORS")] = 0

    @model_validator(mode="before")
    @classmethod
    def _bound(cls, value: Any) -> Any:
        if not isinstance(value, Mapping):
            return value
        errors = value.get("errors")
        if errors is None:
            errors = []
        if not isinstance(errors, list | tuple):
            return value  # let field validation name the problem
        prior = value.get("errors_dropped", 0)
        # Added to, not replaced, so a dumped-and-revalidated model keeps its count.
        if not isinstance(prior, int) or isinstance(prior, bool) or prior < 0:
            prior = 0
        return {
            **value,
            "errors": [_bound_error(e) for e in errors[:MAX_ERRORS]],
            "errors_dropped": prior + max(0, len(errors) - MAX_ERRORS),
        }


class FunnelIndexingData(BaseModel):
    """The ``data`` of a Funnel indexing event. Unknown keys are ignored (forward compatibility)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    branch_name: BranchName
    indexing_id: IndexingId
    started_at: UtcDatetime | None = None
    completed_at: UtcDatetime | None = None
    status: Literal["success", "failed"] | None = None
    records_indexed: Annotated[int, BeforeValidator(_null_is_zero), Field(ge=0, le=MAX_RECORDS, strict=True)] = 0
    validation_results: ValidationResults | None = None
    namespace: Namespace | None = None

    @model_validator(mode="after")
    def _time_order(self) -> Self:
        if self.started_at is not None and self.completed_at is not None and self.started_at > self.completed_at:
            raise PydanticCustomError(
                "time_order",
                "data.started_at ({started_at}) is after data.completed_at ({completed_at})",
                {"started_at": format_time(self.started_at), "completed_at": format_time(self.completed_at)},
            )
        return self


def _kind_rule(message: str) -> PydanticCustomError:
    return PydanticCustomError("kind_rule", message)


class IndexingEvent(BaseModel):
    """A parsed and checked Funnel indexing event.

    ``subject`` is the NATS subject it arrived on; the CloudEvent ``subject`` attribute, if any, is
    ``ce_subject``. ``received_at`` is the parse-time clock, the last resort for :attr:`occurred_at`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    specversion: Literal["1.0"] = "1.0"
    id: Annotated[str, Field(min_length=1, max_length=MAX_EVENT_ID), AfterValidator(_no_control)]
    source: Annotated[str, Field(min_length=1, max_length=MAX_SOURCE), AfterValidator(_no_control)]
    type: str
    subject: str
    kind: Kind
    time: UtcDatetime | None = None
    data: FunnelIndexingData
    namespace: Namespace | None = None
    extensions: dict[str, Any] = {}
    mode: Mode = "structured"
    datacontenttype: str | None = None
    dataschema: str | None = None
    ce_subject: str | None = None
    received_at: UtcDatetime = Field(default_factory=lambda: datetime.now(UTC))

    @model_validator(mode="after")
    def _rules_for_kind(self) -> Self:
        if self.type != EVENT_TYPES[self.kind]:
            raise _kind_rule(f"type {self.type!r} is not the type of a {self.kind} event")
        d = self.data
        if self.kind == "started":
            if d.started_at is None:
                raise _kind_rule("data.started_at is required for started events")
            if d.status is not None:
                raise _kind_rule(f"data.status must be absent for started events, got {d.status!r}")
        elif self.kind == "completed":
            for name, value in (
                ("started_at", d.started_at),
                ("completed_at", d.completed_at),
                ("status", d.status),
            ):
                if value is None:
                    raise _kind_rule(f"data.{name} is required for completed events")
        else:
            if d.completed_at is None:
                raise _kind_rule("data.completed_at is required for failed events")
            if d.status not in (None, "failed"):
                raise _kind_rule(f"data.status must be 'failed' (or absent) for failed events, got {d.status!r}")
        return self

    @property
    def succeeded(self) -> bool:
        return self.kind == "completed" and self.data.status == "success"

    @property
    def failed(self) -> bool:
        return self.kind == "failed" or (self.kind == "completed" and self.data.status == "failed")

    @property
    def duration_seconds(self) -> float | None:
        if self.data.started_at is None or self.data.completed_at is None:
            return None
        return (self.data.completed_at - self.data.started_at).total_seconds()

    @property
    def occurred_at(self) -> datetime:
        """When the indexing step happened, as opposed to when the event was sent or received."""
        if self.kind == "started":
            when = self.data.started_at
        else:
            when = self.data.completed_at
        return when or self.time or self.received_at


# -------------------------------------------------------------------------------------------- subjects


def default_subjects() -> dict[Kind, str]:
    """Subjects from the :class:`Settings` defaults, without reading the environment."""
    fields = Settings.model_fields
    return {kind: str(fields[f"subject_{kind}"].default) for kind in KINDS}


def subjects_from_settings(settings: Settings) -> dict[Kind, str]:
    return {
        "started": settings.subject_started,
        "completed": settings.subject_completed,
        "failed": settings.subject_failed,
    }


def _kinds_by_subject(subjects: Mapping[str, str] | None) -> dict[str, Kind]:
    given = dict(subjects or {})
    unknown = sorted(set(given) - set(KINDS))
    if unknown:
        raise ValueError(f"subjects: unknown kind(s) {unknown}; expected {', '.join(KINDS)}")
    resolved = default_subjects()
    for kind in KINDS:
        if kind in given:
            if not given[kind]:
                raise ValueError(f"subjects: empty subject for {kind}")
            resolved[kind] = given[kind]
    by_subject = {subject: kind for kind, subject in resolved.items()}
    if len(by_subject) != len(resolved):
        raise ValueError(f"subjects: each kind needs its own subject, got {resolved}")
    return by_subject


# ----------------------------------------------------------------------------------------------- parse


def _messages(exc: ValidationError, prefix: str) -> str:
    parts: list[str] = []
    errors = exc.errors(include_url=False, include_input=False)
    for error in errors[:5]:
        loc = ".".join(str(p) for p in error["loc"])
        field = f"{prefix}.{loc}" if prefix and loc else (loc or prefix)
        # Rules raised by model validators already name their fields.
        if error["type"] in ("time_order", "kind_rule") or not field:
            parts.append(error["msg"])
        else:
            parts.append(f"{field}: {error['msg']}")
    if len(errors) > 5:
        parts.append(f"(+{len(errors) - 5} more)")
    return "; ".join(parts)


def _parse(
    subject: str,
    payload: bytes,
    headers: Mapping[str, str] | None,
    max_bytes: int,
    kinds_by_subject: Mapping[str, Kind],
    received_at: datetime,
    ctx: Context,
) -> IndexingEvent:
    wire = read_envelope(payload, headers, max_bytes=max_bytes, known_types=_KNOWN_TYPES, ctx=ctx)
    env = wire.envelope
    kind = _KIND_BY_TYPE[env.type]

    subject_kind = kinds_by_subject.get(subject)
    if subject_kind is None:
        raise reject(
            RejectReason.SUBJECT_TYPE_MISMATCH,
            f"subject {show(subject)} is not an indexing subject ({', '.join(sorted(kinds_by_subject))})",
        )
    if subject_kind != kind:
        raise reject(
            RejectReason.SUBJECT_TYPE_MISMATCH,
            f"attribute type {env.type} does not belong on subject {subject} (expected {EVENT_TYPES[subject_kind]})",
        )

    data = read_data(wire, payload)
    if data is None:
        raise reject(RejectReason.INVALID_DATA, "data is missing")
    if not isinstance(data, dict):
        raise reject(RejectReason.INVALID_DATA, f"data must be a JSON object, got {type(data).__name__}")
    ctx.data = data

    try:
        body = FunnelIndexingData.model_validate(data)
    except ValidationError as exc:
        time_order = any(e["type"] == "time_order" for e in exc.errors())
        reason = RejectReason.TIME_ORDER if time_order else RejectReason.INVALID_DATA
        raise reject(reason, _messages(exc, "data")) from None

    namespace = body.namespace
    if namespace is None and "namespace" in env.extensions:
        candidate = env.extensions["namespace"]
        if (
            not isinstance(candidate, str)
            or len(candidate) > 63
            or re.fullmatch(DNS1123_LABEL_PATTERN, candidate) is None
        ):
            raise reject(
                RejectReason.INVALID_CLOUD_EVENT,
                f"extension attribute namespace {show(candidate)} is not a DNS-1123 label",
            )
        namespace = candidate

    try:
        return IndexingEvent(
            specversion=env.specversion,
            id=env.id,
            source=env.source,
            type=env.type,
            subject=subject,
            kind=kind,
            time=env.time,
            data=body,
            namespace=namespace,
            extensions=env.extensions,
            mode=wire.mode,
            datacontenttype=env.datacontenttype,
            dataschema=env.dataschema,
            ce_subject=env.ce_subject,
            received_at=received_at,
        )
    except ValidationError as exc:
        kind_rule = any(e["type"] == "kind_rule" for e in exc.errors())
        reason = RejectReason.INVALID_DATA if kind_rule else RejectReason.INVALID_CLOUD_EVENT
        raise reject(reason, _messages(exc, "")) from None


def parse_message(
    subject: str,
    payload: bytes,
    headers: Mapping[str, str] | None,
    *,
    max_bytes: int = DEFAULT_MAX_EVENT_BYTES,
    subjects: Mapping[str, str] | None = None,
    now: datetime | None = None,
) -> IndexingEvent:
    """Parse and check one NATS message; raise :class:`EventRejected` if it is not acceptable.

    ``subjects`` maps kind -> subject and overrides the :class:`Settings` defaults (a bad mapping is
    a programming error: ValueError). ``now`` (aware) becomes ``received_at``.
    """
    kinds_by_subject = _kinds_by_subject(subjects)
    if now is None:
        received_at = datetime.now(UTC)
    elif now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    else:
        received_at = now.astimezone(UTC)
    ctx = Context()
    try:
        return _parse(subject, payload, headers, max_bytes, kinds_by_subject, received_at, ctx)
    except EventRejected as exc:
        exc.event_id = exc.event_id or ctx.event_id
        exc.event_type = exc.event_type or ctx.event_type
        if ctx.data is not None:
            branch_name = ctx.data.get("branch_name")
            if (
                isinstance(branch_name, str)
                and len(branch_name) <= MAX_BRANCH_NAME
                and re.fullmatch(BRANCH_NAME_PATTERN, branch_name)
            ):
                exc.branch_name = exc.branch_name or branch_name
            exc.indexing_id = exc.indexing_id or sane_string(ctx.data.get("indexing_id"), MAX_INDEXING_ID)
            namespace = ctx.data.get("namespace")
            if isinstance(namespace, str) and len(namespace) <= 63 and re.fullmatch(DNS1123_LABEL_PATTERN, namespace):
                exc.namespace = exc.namespace or namespace
        raise
