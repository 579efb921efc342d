"""Audit records for branch lifecycle changes, published one JSON line per record.

Audit ids look like ``audit-oms:branch:<slug>:<action>:<YYYYMMDDTHHMMSSZ>:<uuid4>``. The id doubles as
JetStream's ``Nats-Msg-Id``: built with a ``seed`` derived from the source event, a redelivered event
yields the same id and the stream's duplicate window drops the copy.
"""

from __future__ import annotations

import enum
import hashlib
import json
import math
import re
import unicodedata
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Final

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_serializer, field_validator

__all__ = [
    "AUDIT_ID_PREFIX",
    "DEFAULT_ACTOR",
    "UNKNOWN_BRANCH_SLUG",
    "AuditAction",
    "AuditIdParts",
    "AuditRecord",
    "branch_slug",
    "make_audit_id",
    "parse_audit_id",
]

AUDIT_ID_PREFIX: Final = "audit-oms:branch:"
DEFAULT_ACTOR: Final = "oms-branch-operator"
UNKNOWN_BRANCH_SLUG: Final = "unknown"  # no usable branch name (e.g. a rejected event)
EMPTY_SLUG: Final = "unnamed"  # a name with nothing slug-worthy in it

MAX_SLUG: Final = 63  # a DNS-1123 label, so slugs also work as label values and name parts
_SLUG_HEAD: Final = 54  # + "-" + 8 hex chars of hash = 63
_SLUG_HASH: Final = 8

_NOT_SLUG = re.compile(r"[^a-z0-9.-]+")
_DASHES = re.compile(r"-{2,}")
_SLUG_RE = re.compile(r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?")
_ACTION_RE = re.compile(r"[a-z_.]+")
_STAMP_RE = re.compile(r"[0-9]{8}T[0-9]{6}Z")
_UUID4_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


class AuditAction(enum.StrEnum):
    INDEXING_STARTED = "indexing.started"
    INDEXING_COMPLETED = "indexing.completed"
    INDEXING_FAILED = "indexing.failed"
    BRANCH_STATE_CHANGED = "branch.state_changed"
    BRANCH_MERGED = "branch.merged"
    BRANCH_MERGE_BLOCKED = "branch.merge_blocked"
    BRANCH_MERGE_DEFERRED = "branch.merge_deferred"
    BRANCH_MERGE_FAILED = "branch.merge_failed"
    BRANCH_MERGE_REQUESTED = "branch.merge_requested"
    LOCK_ACQUIRED = "lock.acquired"
    LOCK_RELEASED = "lock.released"
    LOCK_EXPIRED = "lock.expired"
    EVENT_REJECTED = "event.rejected"
    EVENT_STALE = "event.stale"
    EVENT_UNEXPECTED = "event.unexpected"
    EVENT_PENDING = "event.pending"  # a result kept until its run's started event arrives
    EVENT_DISCARDED = "event.discarded"  # a kept result dropped unapplied: a newer run superseded it
    EVENT_DUPLICATE = "event.duplicate"
    # Names a plan that hands the event back for redelivery; nothing is published under it.
    EVENT_DEFERRED = "event.deferred"
    ADMIN_FORCE_UNLOCK = "admin.force_unlock"
    ADMIN_SET_STATE = "admin.set_state"


def _encode(text: str) -> bytes:
    # surrogatepass: a str from a lenient decoder must still hash, never crash.
    return text.encode("utf-8", "surrogatepass")


def branch_slug(branch_name: str) -> str:
    """A DNS-1123-label-shaped, colon-free rendering of an OMS branch name.

    ``feature/user-schema`` -> ``feature-user-schema``. Over-long names keep 54 characters plus a
    hash of the original, so names that only differ past the cut stay distinct.
    """
    # Accents folded first so "Fëature" reads "feature", not "f-ature".
    folded = "".join(c for c in unicodedata.normalize("NFKD", branch_name) if not unicodedata.combining(c))
    slug = _DASHES.sub("-", _NOT_SLUG.sub("-", folded.lower())).strip("-.")
    if len(slug) > MAX_SLUG:
        digest = hashlib.sha256(_encode(branch_name)).hexdigest()[:_SLUG_HASH]
        slug = f"{slug[:_SLUG_HEAD].rstrip('-.')}-{digest}"
    return slug or EMPTY_SLUG


def _action_value(action: AuditAction | str) -> str:
    value = action.value if isinstance(action, AuditAction) else str(action)
    if _ACTION_RE.fullmatch(value) is None:
        raise ValueError(f"audit action {value!r} must match [a-z_.]+")
    return value


def _utc(when: datetime, what: str) -> datetime:
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware, got naive {when.isoformat()}")
    return when.astimezone(UTC)


def _stamp(when: datetime) -> str:
    # Not strftime: %Y is not zero-padded for years < 1000 on every libc.
    return f"{when.year:04d}{when.month:02d}{when.day:02d}T{when.hour:02d}{when.minute:02d}{when.second:02d}Z"


def _seeded_uuid4(seed: str, slug: str, action: str) -> uuid.UUID:
    # Slug and action are mixed in so one seed (say, a bare event id) gives distinct ids per record.
    digest = hashlib.sha256(b"\x00".join((_encode(seed), _encode(slug), _encode(action)))).digest()
    return uuid.UUID(bytes=digest[:16], version=4)


def make_audit_id(
    branch_name: str | None,
    action: AuditAction | str,
    when: datetime,
    *,
    seed: str | None = None,
) -> str:
    """``audit-oms:branch:<slug>:<action>:<YYYYMMDDTHHMMSSZ>:<uuid4>``.

    ``branch_name`` None means no usable name (slug ``unknown``). With ``seed`` the uuid is derived
    from it (still a valid version-4 UUID); for redeliveries to map to one id, ``when`` must also be
    taken from the event (e.g. ``IndexingEvent.occurred_at``), not from the clock.
    """
    slug = UNKNOWN_BRANCH_SLUG if branch_name is None else branch_slug(branch_name)
    value = _action_value(action)
    stamp = _stamp(_utc(when, "when"))
    ident = uuid.uuid4() if seed is None else _seeded_uuid4(seed, slug, value)
    return f"{AUDIT_ID_PREFIX}{slug}:{value}:{stamp}:{ident}"


@dataclass(frozen=True)
class AuditIdParts:
    slug: str
    action: str
    timestamp: datetime
    uuid: uuid.UUID

    @property
    def known_action(self) -> AuditAction | None:
        try:
            return AuditAction(self.action)
        except ValueError:
            return None


def parse_audit_id(audit_id: str) -> AuditIdParts:
    """The inverse of :func:`make_audit_id`; ValueError says which part is wrong."""
    if not isinstance(audit_id, str):
        raise ValueError(f"audit id must be a string, got {type(audit_id).__name__}")
    if not audit_id.startswith(AUDIT_ID_PREFIX):
        raise ValueError(f"audit id must start with {AUDIT_ID_PREFIX!r}")
    parts = audit_id[len(AUDIT_ID_PREFIX) :].split(":")
    if len(parts) != 4:
        raise ValueError(f"audit id must have 4 parts after the prefix (slug:action:time:uuid), got {len(parts)}")
    slug, action, stamp, ident = parts
    if len(slug) > MAX_SLUG or _SLUG_RE.fullmatch(slug) is None:
        raise ValueError(f"audit id slug {slug[:80]!r} is not a valid branch slug")
    if _ACTION_RE.fullmatch(action) is None:
        raise ValueError(f"audit id action {action[:80]!r} must match [a-z_.]+")
    if _STAMP_RE.fullmatch(stamp) is None:
        raise ValueError(f"audit id timestamp {stamp[:80]!r} must look like 20250626T103000Z")
    try:
        timestamp = datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        raise ValueError(f"audit id timestamp {stamp!r} is not a real date and time") from None
    if _UUID4_RE.fullmatch(ident) is None:
        raise ValueError(f"audit id uuid {ident[:80]!r} is not a lowercase RFC 4122 version-4 UUID")
    return AuditIdParts(slug=slug, action=action, timestamp=timestamp, uuid=uuid.UUID(ident))


def _format_time(when: datetime) -> str:
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _jsonable(value: Any) -> Any:
    """Plain JSON for ``details``; whatever a caller put there must never make to_json raise."""
    if isinstance(value, BaseModel):
        return _jsonable(value.model_dump(mode="json", by_alias=True, exclude_none=True))
    if isinstance(value, datetime):
        # Naive datetimes in details are taken as UTC, the operator's only clock.
        return _format_time(value if value.tzinfo is not None else value.replace(tzinfo=UTC))
    if isinstance(value, enum.Enum):
        return _jsonable(value.value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def _enum_value(value: Any) -> Any:
    return value.value if isinstance(value, enum.Enum) else value


OptionalText = Annotated[str | None, BeforeValidator(_enum_value)]


class AuditRecord(BaseModel):
    """One audit entry. ``branch`` is the Kubernetes object name, ``branch_name`` the OMS name."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    audit_id: str
    action: Annotated[str, BeforeValidator(_enum_value), Field(pattern=r"^[a-z_.]+$")]
    timestamp: datetime
    actor: str = DEFAULT_ACTOR
    namespace: str | None = None
    branch: str | None = None
    branch_name: str | None = None
    from_state: OptionalText = None
    to_state: OptionalText = None
    reason: OptionalText = None
    correlation_id: str | None = None
    indexing_id: str | None = None
    details: dict[str, Any] = {}

    @field_validator("audit_id")
    @classmethod
    def _well_formed_id(cls, value: str) -> str:
        parse_audit_id(value)
        return value

    @field_validator("timestamp")
    @classmethod
    def _timestamp_utc(cls, value: datetime) -> datetime:
        return _utc(value, "timestamp")

    @field_serializer("timestamp")
    def _timestamp_rfc3339(self, value: datetime) -> str:
        return _format_time(value)

    @classmethod
    def build(
        cls,
        action: AuditAction | str,
        *,
        branch_name: str | None,
        when: datetime,
        seed: str | None = None,
        **fields: Any,
    ) -> AuditRecord:
        """A record whose id is made from ``branch_name``, ``action``, ``when`` and ``seed``."""
        return cls(
            audit_id=make_audit_id(branch_name, action, when, seed=seed),
            action=_action_value(action),
            timestamp=when,
            branch_name=branch_name,
            **fields,
        )

    def to_json(self) -> str:
        """One compact line: fields in declaration order, ``details`` keys sorted, ASCII only."""
        record = self.model_dump(mode="json", exclude={"details"})
        record["details"] = json.loads(json.dumps(_jsonable(self.details), sort_keys=True))
        return json.dumps(record, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
