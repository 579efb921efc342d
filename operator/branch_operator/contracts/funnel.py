"""The Funnel indexing-event contract: CloudEvents 1.0 carried on NATS JetStream.

Funnel announces indexing outcomes on ``funnel.indexing.{started,completed,failed}`` with CloudEvent
types ``com.oms.indexing.{started,completed,failed}``. :func:`parse_message` turns one NATS message
into a checked :class:`IndexingEvent` or raises :class:`EventRejected` with a stable ``reason_code``
(the consumer dead-letters and audits on that code, so the codes are part of the contract).

Both content modes of the CloudEvents NATS protocol binding (1.0.3 draft) are understood:

* **structured** -- the payload is a JSON-format CloudEvent. Chosen when the ``Content-Type`` header
  is ``application/cloudevents[+json]``, or when there are no ``ce-`` headers at all (Funnel's
  existing producer sends bare JSON with no headers and no ``specversion``).
* **binary** -- attributes in ``ce-*`` headers (percent-encoded values), the payload is the data.

Everything here is pure: no I/O, no clock reads except where a default "now" is documented.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import math
import re
import unicodedata
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal, Self

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    TypeAdapter,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError

from branch_operator.api.models import BRANCH_NAME_PATTERN, MAX_BRANCH_NAME, MAX_ERROR_LENGTH, MAX_ERRORS
from branch_operator.config import Settings

__all__ = [
    "CE_HEADER_PREFIX",
    "DEFAULT_MAX_EVENT_BYTES",
    "DEFAULT_SOURCE",
    "EVENT_TYPES",
    "KINDS",
    "SPECVERSION",
    "STRUCTURED_CONTENT_TYPE",
    "TYPE_BRANCH_MERGED",
    "EventRejected",
    "FunnelIndexingData",
    "IndexingEvent",
    "Kind",
    "RejectReason",
    "ValidationResults",
    "default_subjects",
    "encode_binary",
    "encode_structured",
    "format_time",
    "make_cloudevent",
    "make_event",
    "parse_message",
    "subjects_from_settings",
]

Kind = Literal["started", "completed", "failed"]
Mode = Literal["structured", "binary"]

KINDS: Final[tuple[Kind, ...]] = ("started", "completed", "failed")
EVENT_TYPES: Final[Mapping[Kind, str]] = {
    "started": "com.oms.indexing.started",
    "completed": "com.oms.indexing.completed",
    "failed": "com.oms.indexing.failed",
}
_KIND_BY_TYPE: Final[Mapping[str, Kind]] = {t: k for k, t in EVENT_TYPES.items()}
_TYPE_BY_KIND: Final[Mapping[str, str]] = {str(k): t for k, t in EVENT_TYPES.items()}

# Emitted by the operator itself (see make_cloudevent).
TYPE_BRANCH_MERGED: Final = "com.oms.branch.merged"

SPECVERSION: Final = "1.0"
STRUCTURED_CONTENT_TYPE: Final = "application/cloudevents+json"
CE_HEADER_PREFIX: Final = "ce-"
DEFAULT_SOURCE: Final = "funnel-service"
DEFAULT_MAX_EVENT_BYTES: Final[int] = int(Settings.model_fields["max_event_bytes"].default)

# Event ids end up in Branch.status (recentEventIds, maxLength 253) and in audit correlation ids.
MAX_EVENT_ID: Final = 253
MAX_INDEXING_ID: Final = 253
MAX_SOURCE: Final = 1024
MAX_OPTIONAL_ATTRIBUTE: Final = 2048
# Real events are four levels deep; a low cap keeps every later recursive step (pydantic, json.dumps
# of error entries, logging) far from Python's recursion limit.
MAX_JSON_DEPTH: Final = 32
MAX_RECORDS: Final = 2**63 - 1  # int64 in the CRD

DNS1123_LABEL_PATTERN: Final = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"

_CORE_ATTRIBUTES: Final = frozenset(
    {"specversion", "id", "source", "type", "time", "subject", "datacontenttype", "dataschema"}
)
_DATA_MEMBERS: Final = frozenset({"data", "data_base64"})
_ATTRIBUTE_NAME = re.compile(r"[a-z0-9]+")


# ------------------------------------------------------------------------------------------ rejection


class RejectReason(enum.StrEnum):
    TOO_LARGE = "TooLarge"
    INVALID_JSON = "InvalidJSON"
    INVALID_CLOUD_EVENT = "InvalidCloudEvent"
    UNSUPPORTED_SPEC_VERSION = "UnsupportedSpecVersion"
    UNKNOWN_TYPE = "UnknownType"
    SUBJECT_TYPE_MISMATCH = "SubjectTypeMismatch"
    INVALID_DATA = "InvalidData"
    TIME_ORDER = "TimeOrder"


class EventRejected(Exception):
    """A message that is not an acceptable indexing event; redelivery cannot fix it.

    ``reason_code`` is one of :class:`RejectReason` (as a plain str). The best-effort context
    attributes are filled only with values that passed their own syntax checks, so the consumer can
    put them into audit records and DLQ headers without re-checking.
    """

    def __init__(
        self,
        reason_code: str,
        message: str,
        *,
        event_id: str | None = None,
        event_type: str | None = None,
        branch_name: str | None = None,
        indexing_id: str | None = None,
        namespace: str | None = None,
    ) -> None:
        super().__init__(reason_code, message)
        self.reason_code = str(reason_code)
        self.message = message
        self.event_id = event_id
        self.event_type = event_type
        self.branch_name = branch_name
        self.indexing_id = indexing_id
        self.namespace = namespace

    def __str__(self) -> str:
        return f"{self.reason_code}: {self.message}"


def _reject(reason: RejectReason, message: str) -> EventRejected:
    return EventRejected(reason.value, message)


def _show(value: Any, limit: int = 80) -> str:
    """A bounded repr: messages end up in logs, audit records and Kubernetes Events."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _clip(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _has_control(text: str) -> bool:
    # Line/paragraph separators and bidi overrides too: in an id they can only forge or hide text.
    return any(unicodedata.category(c) in ("Cc", "Cs", "Zl", "Zp") or c in _BIDI_CONTROLS for c in text)


# Characters that let free text from an event forge or garble what people read: line breaks (a fake log
# line, a fake Event), ANSI/C1 escape sequences (terminal control via kubectl describe) and bidi overrides.
_BIDI_CONTROLS: Final = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def escape_controls(text: str) -> str:
    """``text`` with control, line-separator and bidi-override characters written as visible escapes
    (``\\n``, ``\\x1b``, ``\\u202e``); other text is unchanged, and escaping twice changes nothing."""
    if text.isprintable():
        return text
    out: list[str] = []
    for char in text:
        if unicodedata.category(char) in ("Cc", "Cs", "Zl", "Zp") or char in _BIDI_CONTROLS:
            out.append(char.encode("unicode_escape", "backslashreplace").decode("ascii"))
        else:
            out.append(char)
    return "".join(out)


# ----------------------------------------------------------------------------------------- data types

_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,9})?"
    r"(?P<offset>[Zz]|[+-][0-9]{2}:[0-9]{2})?"
)


def _timestamp_text(value: Any) -> Any:
    # pydantic alone would also take unix numbers and date-only strings; the contract is RFC 3339.
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str):
        raise PydanticCustomError("timestamp_type", "must be an RFC 3339 timestamp string")
    match = _RFC3339.fullmatch(value)
    if match is None:
        raise PydanticCustomError(
            "timestamp_format", "is not an RFC 3339 timestamp (expected e.g. 2025-06-26T10:30:00Z)"
        )
    if match.group("offset") is None:
        raise PydanticCustomError(
            "timestamp_naive", "has no UTC offset; a timezone-aware timestamp (e.g. ending in Z) is required"
        )
    return value


def _to_utc(value: datetime) -> datetime:
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise PydanticCustomError("timestamp_range", "is out of range once converted to UTC") from None


UtcDatetime = Annotated[AwareDatetime, BeforeValidator(_timestamp_text), AfterValidator(_to_utc)]
_UTC_DATETIME: TypeAdapter[datetime] = TypeAdapter(UtcDatetime)


def _no_control(value: str) -> str:
    if _has_control(value):
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
            text = _show(entry, MAX_ERROR_LENGTH)
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


# ----------------------------------------------------------------------------------------------- JSON


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Duplicate keys let two parsers disagree about one message; refuse them outright.
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(f"duplicate key {_show(key)}")
        result[key] = value
    return result


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _check_tree(value: Any, what: str) -> None:
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, str):
            strings: Iterable[str] = (node,)
        elif isinstance(node, dict):
            if depth > MAX_JSON_DEPTH:
                raise _reject(RejectReason.INVALID_JSON, f"{what} is nested deeper than {MAX_JSON_DEPTH} levels")
            strings = node.keys()
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            if depth > MAX_JSON_DEPTH:
                raise _reject(RejectReason.INVALID_JSON, f"{what} is nested deeper than {MAX_JSON_DEPTH} levels")
            strings = ()
            stack.extend((v, depth + 1) for v in node)
        else:
            continue
        for text in strings:
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                # A "\ud800" escape decodes to a lone surrogate, which crashes any later UTF-8 write.
                raise _reject(
                    RejectReason.INVALID_JSON, f"{what} contains an unpaired UTF-16 surrogate escape"
                ) from None


def _load_json(raw: bytes, what: str) -> Any:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _reject(RejectReason.INVALID_JSON, f"{what} is not valid UTF-8 (at byte {exc.start})") from None
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except RecursionError:
        raise _reject(RejectReason.INVALID_JSON, f"{what} is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, duplicates, NaN, over-long integers
        raise _reject(RejectReason.INVALID_JSON, f"{what} is not valid JSON: {_clip(str(exc))}") from None
    _check_tree(value, what)
    return value


def _is_json_media_type(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media in ("application/json", "text/json") or media.endswith("+json")


# -------------------------------------------------------------------------------------------- headers


_PERCENT = re.compile(r"%([0-9A-Fa-f]{2})")


def _decode_header_value(name: str, raw: str) -> str:
    """Per the NATS binding: undo RFC 7230 double-quoting, then one round of percent-decoding."""
    value = raw.strip(" \t")
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        value = re.sub(r"\\(.)", r"\1", value[1:-1], flags=re.DOTALL)
    out = bytearray()
    i = 0
    while i < len(value):
        char = value[i]
        if char == "%":
            match = _PERCENT.match(value, i)
            if match is None:
                raise _reject(RejectReason.INVALID_CLOUD_EVENT, f"header {name}: malformed percent-encoding")
            out.append(int(match.group(1), 16))
            i += 3
            continue
        try:
            out += char.encode("utf-8")
        except UnicodeEncodeError:
            raise _reject(RejectReason.INVALID_CLOUD_EVENT, f"header {name}: not valid UTF-8") from None
        i += 1
    try:
        return out.decode("utf-8")
    except UnicodeDecodeError:
        raise _reject(
            RejectReason.INVALID_CLOUD_EVENT, f"header {name}: percent-encoded bytes are not valid UTF-8"
        ) from None


def _percent_encode(value: str) -> str:
    parts: list[str] = []
    for char in value:
        if "\x21" <= char <= "\x7e" and char not in '"%':
            parts.append(char)
        else:
            parts.extend(f"%{b:02X}" for b in char.encode("utf-8"))
    return "".join(parts)


def _normalise_headers(headers: Mapping[str, str] | None) -> dict[str, str]:
    result: dict[str, str] = {}
    for name, value in (headers or {}).items():
        if not isinstance(name, str) or not isinstance(value, str):
            continue  # nats-py only gives str; anything else is not a header we can interpret
        key = name.strip().lower()
        if key in result and result[key] != value:
            raise _reject(
                RejectReason.INVALID_CLOUD_EVENT, f"header {key} appears more than once with different values"
            )
        result[key] = value
    return result


def _content_mode(headers: Mapping[str, str]) -> Mode:
    content_type = headers.get("content-type")
    if content_type is not None:
        media = content_type.split(";", 1)[0].strip().lower()
        if media.startswith("application/cloudevents"):
            if media not in ("application/cloudevents", STRUCTURED_CONTENT_TYPE):
                raise _reject(
                    RejectReason.INVALID_CLOUD_EVENT,
                    f"content-type {_show(media)} is not supported; use {STRUCTURED_CONTENT_TYPE} or binary mode",
                )
            return "structured"
    if any(key.startswith(CE_HEADER_PREFIX) for key in headers):
        return "binary"
    return "structured"


# ----------------------------------------------------------------------------------------------- parse


@dataclass
class _Context:
    """What is known so far about a message, for the context of a rejection."""

    event_id: str | None = None
    event_type: str | None = None
    data: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class _Envelope:
    specversion: Literal["1.0"]
    id: str
    source: str
    type: str
    kind: Kind
    time: datetime | None
    datacontenttype: str | None
    dataschema: str | None
    ce_subject: str | None
    extensions: dict[str, Any]


def _sane_string(value: Any, limit: int) -> str | None:
    if isinstance(value, str) and 0 < len(value) <= limit and not _has_control(value):
        return value
    return None


def _required_string(attrs: Mapping[str, Any], name: str, limit: int) -> str:
    value = attrs.get(name)
    if value is None:
        raise _reject(RejectReason.INVALID_CLOUD_EVENT, f"required attribute {name} is missing")
    if not isinstance(value, str):
        raise _reject(
            RejectReason.INVALID_CLOUD_EVENT, f"attribute {name} must be a string, got {type(value).__name__}"
        )
    if not value:
        raise _reject(RejectReason.INVALID_CLOUD_EVENT, f"attribute {name} must not be empty")
    if len(value) > limit:
        raise _reject(RejectReason.INVALID_CLOUD_EVENT, f"attribute {name} is longer than {limit} characters")
    if _has_control(value):
        raise _reject(RejectReason.INVALID_CLOUD_EVENT, f"attribute {name} contains control characters")
    return value


def _optional_string(attrs: Mapping[str, Any], name: str) -> str | None:
    value = attrs.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _reject(
            RejectReason.INVALID_CLOUD_EVENT, f"attribute {name} must be a string, got {type(value).__name__}"
        )
    if len(value) > MAX_OPTIONAL_ATTRIBUTE:
        raise _reject(
            RejectReason.INVALID_CLOUD_EVENT,
            f"attribute {name} is longer than {MAX_OPTIONAL_ATTRIBUTE} characters",
        )
    return value


def _envelope(attrs: Mapping[str, Any], ctx: _Context) -> _Envelope:
    ctx.event_id = _sane_string(attrs.get("id"), MAX_EVENT_ID)
    ctx.event_type = _sane_string(attrs.get("type"), MAX_OPTIONAL_ATTRIBUTE)

    specversion = attrs.get("specversion")
    if specversion is not None:
        if not isinstance(specversion, str):
            raise _reject(
                RejectReason.INVALID_CLOUD_EVENT,
                f"attribute specversion must be a string, got {type(specversion).__name__}",
            )
        if specversion != SPECVERSION:
            raise _reject(
                RejectReason.UNSUPPORTED_SPEC_VERSION,
                f"attribute specversion is {_show(specversion)}; only {SPECVERSION} is supported",
            )
    # A missing specversion is read as 1.0: Funnel's existing producer omits it.

    type_ = _required_string(attrs, "type", MAX_OPTIONAL_ATTRIBUTE)
    kind = _KIND_BY_TYPE.get(type_)
    if kind is None:
        raise _reject(
            RejectReason.UNKNOWN_TYPE,
            f"attribute type {_show(type_)} is not one of {', '.join(EVENT_TYPES.values())}",
        )
    event_id = _required_string(attrs, "id", MAX_EVENT_ID)
    source = _required_string(attrs, "source", MAX_SOURCE)

    time: datetime | None = None
    raw_time = attrs.get("time")
    if raw_time is not None:
        try:
            time = _UTC_DATETIME.validate_python(raw_time)
        except ValidationError as exc:
            raise _reject(
                RejectReason.INVALID_CLOUD_EVENT, f"attribute time {exc.errors(include_url=False)[0]['msg']}"
            ) from None

    datacontenttype = _optional_string(attrs, "datacontenttype")
    if datacontenttype is not None and not _is_json_media_type(datacontenttype):
        raise _reject(
            RejectReason.INVALID_CLOUD_EVENT,
            f"attribute datacontenttype {_show(datacontenttype)} is not a JSON media type",
        )
    return _Envelope(
        specversion=SPECVERSION,
        id=event_id,
        source=source,
        type=type_,
        kind=kind,
        time=time,
        datacontenttype=datacontenttype,
        dataschema=_optional_string(attrs, "dataschema"),
        ce_subject=_optional_string(attrs, "subject"),
        extensions={
            k: v for k, v in attrs.items() if k not in _CORE_ATTRIBUTES and k not in _DATA_MEMBERS and v is not None
        },
    )


def _structured_data(doc: Mapping[str, Any]) -> Any:
    data = doc.get("data")
    data_base64 = doc.get("data_base64")
    if data is not None and data_base64 is not None:
        raise _reject(RejectReason.INVALID_CLOUD_EVENT, "data and data_base64 are both present")
    if data_base64 is None:
        return data
    if not isinstance(data_base64, str):
        raise _reject(RejectReason.INVALID_CLOUD_EVENT, "data_base64 must be a string")
    try:
        raw = base64.b64decode(data_base64, validate=True)
    except (binascii.Error, ValueError):
        raise _reject(RejectReason.INVALID_CLOUD_EVENT, "data_base64 is not valid base64") from None
    return _load_json(raw, "data_base64")


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
    ctx: _Context,
) -> IndexingEvent:
    if len(payload) > max_bytes:
        raise _reject(RejectReason.TOO_LARGE, f"payload is {len(payload)} bytes, over the {max_bytes}-byte limit")
    hdrs = _normalise_headers(headers)
    mode = _content_mode(hdrs)

    doc: Mapping[str, Any] | None = None
    if mode == "structured":
        parsed = _load_json(payload, "payload")
        if not isinstance(parsed, dict):
            raise _reject(
                RejectReason.INVALID_CLOUD_EVENT,
                f"a structured event must be a JSON object, got {type(parsed).__name__}",
            )
        doc = parsed
        if isinstance(doc.get("data"), dict):
            ctx.data = doc["data"]
        attrs: Mapping[str, Any] = {k: v for k, v in doc.items() if k not in _DATA_MEMBERS}
    else:
        binary_attrs: dict[str, Any] = {}
        for key, raw in hdrs.items():
            if not key.startswith(CE_HEADER_PREFIX):
                continue
            name = key[len(CE_HEADER_PREFIX) :]
            if name in _DATA_MEMBERS or not name:
                raise _reject(RejectReason.INVALID_CLOUD_EVENT, f"header {key} is not a CloudEvents attribute")
            binary_attrs[name] = _decode_header_value(key, raw)
        if "datacontenttype" not in binary_attrs and "content-type" in hdrs:
            binary_attrs["datacontenttype"] = hdrs["content-type"]
        attrs = binary_attrs

    env = _envelope(attrs, ctx)

    subject_kind = kinds_by_subject.get(subject)
    if subject_kind is None:
        raise _reject(
            RejectReason.SUBJECT_TYPE_MISMATCH,
            f"subject {_show(subject)} is not an indexing subject ({', '.join(sorted(kinds_by_subject))})",
        )
    if subject_kind != env.kind:
        raise _reject(
            RejectReason.SUBJECT_TYPE_MISMATCH,
            f"attribute type {env.type} does not belong on subject {subject} (expected {EVENT_TYPES[subject_kind]})",
        )

    if doc is not None:
        data = _structured_data(doc)
    elif payload.strip():
        data = _load_json(payload, "payload")
    else:
        data = None
    if data is None:
        raise _reject(RejectReason.INVALID_DATA, "data is missing")
    if not isinstance(data, dict):
        raise _reject(RejectReason.INVALID_DATA, f"data must be a JSON object, got {type(data).__name__}")
    ctx.data = data

    try:
        body = FunnelIndexingData.model_validate(data)
    except ValidationError as exc:
        time_order = any(e["type"] == "time_order" for e in exc.errors())
        reason = RejectReason.TIME_ORDER if time_order else RejectReason.INVALID_DATA
        raise _reject(reason, _messages(exc, "data")) from None

    namespace = body.namespace
    if namespace is None and "namespace" in env.extensions:
        candidate = env.extensions["namespace"]
        if (
            not isinstance(candidate, str)
            or len(candidate) > 63
            or re.fullmatch(DNS1123_LABEL_PATTERN, candidate) is None
        ):
            raise _reject(
                RejectReason.INVALID_CLOUD_EVENT,
                f"extension attribute namespace {_show(candidate)} is not a DNS-1123 label",
            )
        namespace = candidate

    try:
        return IndexingEvent(
            specversion=env.specversion,
            id=env.id,
            source=env.source,
            type=env.type,
            subject=subject,
            kind=env.kind,
            time=env.time,
            data=body,
            namespace=namespace,
            extensions=env.extensions,
            mode=mode,
            datacontenttype=env.datacontenttype,
            dataschema=env.dataschema,
            ce_subject=env.ce_subject,
            received_at=received_at,
        )
    except ValidationError as exc:
        kind_rule = any(e["type"] == "kind_rule" for e in exc.errors())
        reason = RejectReason.INVALID_DATA if kind_rule else RejectReason.INVALID_CLOUD_EVENT
        raise _reject(reason, _messages(exc, "")) from None


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
    ctx = _Context()
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
            exc.indexing_id = exc.indexing_id or _sane_string(ctx.data.get("indexing_id"), MAX_INDEXING_ID)
            namespace = ctx.data.get("namespace")
            if isinstance(namespace, str) and len(namespace) <= 63 and re.fullmatch(DNS1123_LABEL_PATTERN, namespace):
                exc.namespace = exc.namespace or namespace
        raise


# -------------------------------------------------------------------------------------------- builders


def format_time(when: datetime) -> str:
    """RFC 3339 in UTC with a ``Z`` suffix."""
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError(f"naive datetime {when.isoformat()}; pass a timezone-aware datetime")
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _timestamp(value: datetime | str) -> str:
    # Strings pass through untouched so tests can build deliberately malformed events.
    return value if isinstance(value, str) else format_time(value)


def _jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return _jsonable(value.model_dump(mode="json", by_alias=True, exclude_none=True))
    if isinstance(value, datetime):
        return format_time(value)
    if isinstance(value, enum.Enum):
        return _jsonable(value.value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def make_event(
    kind: str,
    branch_name: str,
    indexing_id: str,
    *,
    status: str | None = None,
    records_indexed: int = 0,
    passed: bool = True,
    errors: Iterable[str] = (),
    started_at: datetime | str | None = None,
    completed_at: datetime | str | None = None,
    namespace: str | None = None,
    event_id: str | None = None,
    source: str = DEFAULT_SOURCE,
    time: datetime | None = None,
    extensions: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A structured-JSON Funnel indexing event (as a dict) that :func:`parse_message` accepts.

    Missing timestamps default to now; a completed event without ``started_at`` gets a zero
    duration. No checking beyond the kind: tests use this to build bad events too.
    """
    event_type = _TYPE_BY_KIND.get(kind)
    if event_type is None:
        raise ValueError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
    now = datetime.now(UTC)
    data: dict[str, Any] = {"branch_name": branch_name, "indexing_id": indexing_id}
    if kind == "started":
        data["started_at"] = _timestamp(started_at if started_at is not None else now)
        if completed_at is not None:
            data["completed_at"] = _timestamp(completed_at)
        if status is not None:
            data["status"] = status
    else:
        end = completed_at if completed_at is not None else now
        if started_at is None and kind == "completed":
            started_at = end
        if started_at is not None:
            data["started_at"] = _timestamp(started_at)
        data["completed_at"] = _timestamp(end)
        data["status"] = status or ("success" if kind == "completed" else "failed")
        data["records_indexed"] = records_indexed
        data["validation_results"] = {"passed": passed, "errors": list(errors)}
    if namespace is not None:
        data["namespace"] = namespace
    event: dict[str, Any] = {
        "specversion": SPECVERSION,
        "id": event_id or str(uuid.uuid4()),
        "source": source,
        "type": event_type,
        "time": format_time(time or now),
        "datacontenttype": "application/json",
    }
    for name, value in (extensions or {}).items():
        if name in _CORE_ATTRIBUTES or name in _DATA_MEMBERS:
            raise ValueError(f"extension {name!r} collides with a CloudEvents attribute")
        event[name] = value
    event["data"] = data
    return event


def make_cloudevent(
    type_: str,
    source: str,
    subject: str | None,
    data: Any,
    *,
    event_id: str | None = None,
    time: datetime | None = None,
) -> dict[str, Any]:
    """A structured-JSON CloudEvent for what the operator emits (e.g. ``com.oms.branch.merged``).

    ``data`` may hold datetimes, enums and pydantic models; they are rendered to JSON values here so
    the result is plain JSON (timestamps as RFC 3339 ``Z``).
    """
    event: dict[str, Any] = {
        "specversion": SPECVERSION,
        "id": event_id or str(uuid.uuid4()),
        "source": source,
        "type": type_,
    }
    if subject is not None:
        event["subject"] = subject
    event["time"] = format_time(time or datetime.now(UTC))
    event["datacontenttype"] = "application/json"
    event["data"] = _jsonable(data)
    return event


def _dumps(value: Any) -> bytes:
    return json.dumps(_jsonable(value), ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")


def encode_structured(event: Mapping[str, Any]) -> tuple[bytes, dict[str, str]]:
    """Payload and headers for publishing ``event`` in structured mode."""
    return _dumps(event), {"Content-Type": STRUCTURED_CONTENT_TYPE}


def _canonical_string(name: str, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return format_time(value)
    if isinstance(value, str | int):
        return str(value)
    raise ValueError(f"attribute {name!r}: a {type(value).__name__} has no CloudEvents string form")


def encode_binary(event: Mapping[str, Any]) -> tuple[bytes, dict[str, str]]:
    """Payload (the data) and ``ce-*`` headers for publishing ``event`` in binary mode."""
    # specversion is REQUIRED in binary mode; the structured-mode leniency is for a legacy producer only.
    headers: dict[str, str] = {CE_HEADER_PREFIX + "specversion": SPECVERSION}
    for name, value in event.items():
        if name in _DATA_MEMBERS or value is None:
            continue
        if _ATTRIBUTE_NAME.fullmatch(name) is None:
            raise ValueError(f"attribute name {name!r} is not valid in CloudEvents (lowercase a-z0-9 only)")
        headers[CE_HEADER_PREFIX + name] = _percent_encode(_canonical_string(name, value))
    if event.get("data_base64") is not None:
        body = base64.b64decode(event["data_base64"], validate=True)
    elif event.get("data") is not None:
        body = _dumps(event["data"])
        headers.setdefault(CE_HEADER_PREFIX + "datacontenttype", "application/json")
    else:
        body = b""
    return body, headers
