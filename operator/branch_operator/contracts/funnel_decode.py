"""Reading one NATS message as a CloudEvent: the wire half of the Funnel contract.

Both content modes of the CloudEvents NATS protocol binding (1.0.3 draft) are understood:

* **structured** -- the payload is a JSON-format CloudEvent. Chosen when the ``Content-Type`` header
  is ``application/cloudevents[+json]``, or when there are no ``ce-`` headers at all (Funnel's
  existing producer sends bare JSON with no headers and no ``specversion``).
* **binary** -- attributes in ``ce-*`` headers (percent-encoded values), the payload is the data.

The seam with :mod:`.funnel`: this module turns bytes and headers into checked envelope attributes
(:func:`read_envelope`) and a JSON data value (:func:`read_data`); it knows nothing of the indexing
data's schema. :mod:`.funnel` checks the subject and the data and builds the
:class:`~.funnel.IndexingEvent`. The rejection vocabulary is defined here because every step here
raises it; :mod:`.funnel` re-exports it as part of the contract.

Everything here is pure: no I/O, no clock reads.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal

from pydantic import AfterValidator, AwareDatetime, BeforeValidator, TypeAdapter, ValidationError
from pydantic_core import PydanticCustomError

from branch_operator.contracts.cloudevents import (
    CE_HEADER_PREFIX,
    CORE_ATTRIBUTES,
    DATA_MEMBERS,
    SPECVERSION,
    STRUCTURED_CONTENT_TYPE,
)
from branch_operator.domain.text import has_control

__all__ = [
    "MAX_EVENT_ID",
    "MAX_JSON_DEPTH",
    "MAX_OPTIONAL_ATTRIBUTE",
    "MAX_SOURCE",
    "Context",
    "Envelope",
    "EventRejected",
    "Mode",
    "RejectReason",
    "UtcDatetime",
    "Wire",
    "has_control",
    "read_data",
    "read_envelope",
    "reject",
    "sane_string",
    "show",
]

Mode = Literal["structured", "binary"]

# Event ids end up in Branch.status (recentEventIds, maxLength 253) and in audit correlation ids.
MAX_EVENT_ID: Final = 253
MAX_SOURCE: Final = 1024
MAX_OPTIONAL_ATTRIBUTE: Final = 2048
# Real events are four levels deep; a low cap keeps every later recursive step (pydantic, json.dumps
# of error entries, logging) far from Python's recursion limit.
MAX_JSON_DEPTH: Final = 32



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


def reject(reason: RejectReason, message: str) -> EventRejected:
    return EventRejected(reason.value, message)


def show(value: Any, limit: int = 80) -> str:
    """A bounded repr: messages end up in logs, audit records and Kubernetes Events."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _clip(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ------------------------------------------------------------------------------------- timestamps


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


# ----------------------------------------------------------------------------------------------- JSON


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Duplicate keys let two parsers disagree about one message; refuse them outright.
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(f"duplicate key {show(key)}")
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
                raise reject(RejectReason.INVALID_JSON, f"{what} is nested deeper than {MAX_JSON_DEPTH} levels")
            strings = node.keys()
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            if depth > MAX_JSON_DEPTH:
                raise reject(RejectReason.INVALID_JSON, f"{what} is nested deeper than {MAX_JSON_DEPTH} levels")
            strings = ()
            stack.extend((v, depth + 1) for v in node)
        else:
            continue
        for text in strings:
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                # A "\ud800" escape decodes to a lone surrogate, which crashes any later UTF-8 write.
                raise reject(
                    RejectReason.INVALID_JSON, f"{what} contains an unpaired UTF-16 surrogate escape"
                ) from None


def _load_json(raw: bytes, what: str) -> Any:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise reject(RejectReason.INVALID_JSON, f"{what} is not valid UTF-8 (at byte {exc.start})") from None
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except RecursionError:
        raise reject(RejectReason.INVALID_JSON, f"{what} is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, duplicates, NaN, over-long integers
        raise reject(RejectReason.INVALID_JSON, f"{what} is not valid JSON: {_clip(str(exc))}") from None
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
                raise reject(RejectReason.INVALID_CLOUD_EVENT, f"header {name}: malformed percent-encoding")
            out.append(int(match.group(1), 16))
            i += 3
            continue
        try:
            out += char.encode("utf-8")
        except UnicodeEncodeError:
            raise reject(RejectReason.INVALID_CLOUD_EVENT, f"header {name}: not valid UTF-8") from None
        i += 1
    try:
        return out.decode("utf-8")
    except UnicodeDecodeError:
        raise reject(
            RejectReason.INVALID_CLOUD_EVENT, f"header {name}: percent-encoded bytes are not valid UTF-8"
        ) from None


def _normalise_headers(headers: Mapping[str, str] | None) -> dict[str, str]:
    result: dict[str, str] = {}
    for name, value in (headers or {}).items():
        if not isinstance(name, str) or not isinstance(value, str):
            continue  # nats-py only gives str; anything else is not a header we can interpret
        key = name.strip().lower()
        if key in result and result[key] != value:
            raise reject(
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
                raise reject(
                    RejectReason.INVALID_CLOUD_EVENT,
                    f"content-type {show(media)} is not supported; use {STRUCTURED_CONTENT_TYPE} or binary mode",
                )
            return "structured"
    if any(key.startswith(CE_HEADER_PREFIX) for key in headers):
        return "binary"
    return "structured"


# ------------------------------------------------------------------------------------------ envelope


@dataclass
class Context:
    """What is known so far about a message, for the context of a rejection."""

    event_id: str | None = None
    event_type: str | None = None
    data: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Envelope:
    specversion: Literal["1.0"]
    id: str
    source: str
    type: str  # one of the known types read_envelope was given
    time: datetime | None
    datacontenttype: str | None
    dataschema: str | None
    ce_subject: str | None
    extensions: dict[str, Any]


def sane_string(value: Any, limit: int) -> str | None:
    if isinstance(value, str) and 0 < len(value) <= limit and not has_control(value):
        return value
    return None


def _required_string(attrs: Mapping[str, Any], name: str, limit: int) -> str:
    value = attrs.get(name)
    if value is None:
        raise reject(RejectReason.INVALID_CLOUD_EVENT, f"required attribute {name} is missing")
    if not isinstance(value, str):
        raise reject(
            RejectReason.INVALID_CLOUD_EVENT, f"attribute {name} must be a string, got {type(value).__name__}"
        )
    if not value:
        raise reject(RejectReason.INVALID_CLOUD_EVENT, f"attribute {name} must not be empty")
    if len(value) > limit:
        raise reject(RejectReason.INVALID_CLOUD_EVENT, f"attribute {name} is longer than {limit} characters")
    if has_control(value):
        raise reject(RejectReason.INVALID_CLOUD_EVENT, f"attribute {name} contains control characters")
    return value


def _optional_string(attrs: Mapping[str, Any], name: str) -> str | None:
    value = attrs.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise reject(
            RejectReason.INVALID_CLOUD_EVENT, f"attribute {name} must be a string, got {type(value).__name__}"
        )
    if len(value) > MAX_OPTIONAL_ATTRIBUTE:
        raise reject(
            RejectReason.INVALID_CLOUD_EVENT,
            f"attribute {name} is longer than {MAX_OPTIONAL_ATTRIBUTE} characters",
        )
    return value


def _envelope(attrs: Mapping[str, Any], ctx: Context, known_types: Collection[str], mode: Mode) -> Envelope:
    ctx.event_id = sane_string(attrs.get("id"), MAX_EVENT_ID)
    ctx.event_type = sane_string(attrs.get("type"), MAX_OPTIONAL_ATTRIBUTE)

    specversion = attrs.get("specversion")
    if specversion is None and mode == "binary":
        # REQUIRED by CloudEvents; the leniency below is for one producer, which sends bare structured JSON.
        raise reject(
            RejectReason.INVALID_CLOUD_EVENT,
            f"header {CE_HEADER_PREFIX}specversion is missing; a binary-mode CloudEvent must carry it "
            f"({SPECVERSION})",
        )
    if specversion is not None:
        if not isinstance(specversion, str):
            raise reject(
                RejectReason.INVALID_CLOUD_EVENT,
                f"attribute specversion must be a string, got {type(specversion).__name__}",
            )
        if specversion != SPECVERSION:
            raise reject(
                RejectReason.UNSUPPORTED_SPEC_VERSION,
                f"attribute specversion is {show(specversion)}; only {SPECVERSION} is supported",
            )
    # A missing specversion in structured mode is read as 1.0: Funnel's existing producer omits it.

    type_ = _required_string(attrs, "type", MAX_OPTIONAL_ATTRIBUTE)
    if type_ not in known_types:
        raise reject(
            RejectReason.UNKNOWN_TYPE,
            f"attribute type {show(type_)} is not one of {', '.join(known_types)}",
        )
    event_id = _required_string(attrs, "id", MAX_EVENT_ID)
    source = _required_string(attrs, "source", MAX_SOURCE)

    time: datetime | None = None
    raw_time = attrs.get("time")
    if raw_time is not None:
        try:
            time = _UTC_DATETIME.validate_python(raw_time)
        except ValidationError as exc:
            raise reject(
                RejectReason.INVALID_CLOUD_EVENT, f"attribute time {exc.errors(include_url=False)[0]['msg']}"
            ) from None

    datacontenttype = _optional_string(attrs, "datacontenttype")
    if datacontenttype is not None and not _is_json_media_type(datacontenttype):
        raise reject(
            RejectReason.INVALID_CLOUD_EVENT,
            f"attribute datacontenttype {show(datacontenttype)} is not a JSON media type",
        )
    return Envelope(
        specversion=SPECVERSION,
        id=event_id,
        source=source,
        type=type_,
        time=time,
        datacontenttype=datacontenttype,
        dataschema=_optional_string(attrs, "dataschema"),
        ce_subject=_optional_string(attrs, "subject"),
        extensions={
            k: v for k, v in attrs.items() if k not in CORE_ATTRIBUTES and k not in DATA_MEMBERS and v is not None
        },
    )


def _structured_data(doc: Mapping[str, Any]) -> Any:
    data = doc.get("data")
    data_base64 = doc.get("data_base64")
    if data is not None and data_base64 is not None:
        raise reject(RejectReason.INVALID_CLOUD_EVENT, "data and data_base64 are both present")
    if data_base64 is None:
        return data
    if not isinstance(data_base64, str):
        raise reject(RejectReason.INVALID_CLOUD_EVENT, "data_base64 must be a string")
    try:
        raw = base64.b64decode(data_base64, validate=True)
    except (binascii.Error, ValueError):
        raise reject(RejectReason.INVALID_CLOUD_EVENT, "data_base64 is not valid base64") from None
    return _load_json(raw, "data_base64")


# ------------------------------------------------------------------------------------------- message


@dataclass(frozen=True)
class Wire:
    """A message whose envelope passed: its content mode, its attributes, and (structured) the document."""

    mode: Mode
    envelope: Envelope
    doc: Mapping[str, Any] | None  # the structured-mode document; None in binary mode


def read_envelope(
    payload: bytes,
    headers: Mapping[str, str] | None,
    *,
    max_bytes: int,
    known_types: Collection[str],
    ctx: Context,
) -> Wire:
    """Size, content mode and envelope of one message; raise :class:`EventRejected` on the first fault.

    ``known_types`` are the acceptable ``type`` values, in the order a rejection lists them. What is
    learned along the way (id, type, a structured event's data) is left in ``ctx``.
    """
    if len(payload) > max_bytes:
        raise reject(RejectReason.TOO_LARGE, f"payload is {len(payload)} bytes, over the {max_bytes}-byte limit")
    hdrs = _normalise_headers(headers)
    mode = _content_mode(hdrs)

    doc: Mapping[str, Any] | None = None
    if mode == "structured":
        parsed = _load_json(payload, "payload")
        if not isinstance(parsed, dict):
            raise reject(
                RejectReason.INVALID_CLOUD_EVENT,
                f"a structured event must be a JSON object, got {type(parsed).__name__}",
            )
        doc = parsed
        if isinstance(doc.get("data"), dict):
            ctx.data = doc["data"]
        attrs: Mapping[str, Any] = {k: v for k, v in doc.items() if k not in DATA_MEMBERS}
    else:
        binary_attrs: dict[str, Any] = {}
        for key, raw in hdrs.items():
            if not key.startswith(CE_HEADER_PREFIX):
                continue
            name = key[len(CE_HEADER_PREFIX) :]
            if name in DATA_MEMBERS or not name:
                raise reject(RejectReason.INVALID_CLOUD_EVENT, f"header {key} is not a CloudEvents attribute")
            binary_attrs[name] = _decode_header_value(key, raw)
        if "datacontenttype" not in binary_attrs and "content-type" in hdrs:
            binary_attrs["datacontenttype"] = hdrs["content-type"]
        attrs = binary_attrs

    return Wire(mode=mode, envelope=_envelope(attrs, ctx, known_types, mode), doc=doc)


def read_data(wire: Wire, payload: bytes) -> Any:
    """The event's data as a JSON value (None when there is none): the document's ``data`` or
    ``data_base64`` in structured mode, the payload in binary mode."""
    if wire.doc is not None:
        return _structured_data(wire.doc)
    if payload.strip():
        return _load_json(payload, "payload")
    return None
