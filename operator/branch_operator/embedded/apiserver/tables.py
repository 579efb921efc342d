"""Server-side printing: ``meta.k8s.io`` Table responses, as kube-apiserver sends them to ``kubectl get``.

kubectl asks for ``application/json;as=Table;v=v1;g=meta.k8s.io`` (then v1beta1, then plain JSON) and prints
the cells it gets; it only filters ``priority`` > 0 columns (unless ``-o wide``) and adds ``--show-labels``
/ ``-L`` columns from each row's object. So the columns a user sees are decided here: a CRD version's
``additionalPrinterColumns`` (apiextensions' tableconvertor) and kube's printers for the built-in types.
Only requests asking for a Table pay for any of this.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

# kube-apiserver and kubectl print ages by the same rule (apimachinery HumanDuration): one implementation.
from branch_operator.domain.timefmt import human_duration
from branch_operator.embedded.apiserver.errors import ApiError
from branch_operator.embedded.apiserver.jsonpath import JsonPath, JsonPathError, go_text
from branch_operator.embedded.apiserver.store import dumps

__all__ = ["CrdPrinter", "Printer", "TableWatch", "human_duration", "negotiate", "printer_for", "table"]

_GROUP = "meta.k8s.io"
_VERSIONS = frozenset({"v1", "v1beta1"})
_JSON_RANGES = frozenset({"application/json", "application/*", "*/*"})
INCLUDE_OBJECT = frozenset({"Object", "Metadata", "None"})
NAME_DESCRIPTION = (
    "Name must be unique within a namespace. Is required when creating resources, although some resources "
    "may allow a client to request the generation of an appropriate name automatically. Name is primarily "
    "intended for creation idempotence and configuration definition. Cannot be updated. More info: "
    "https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names"
)
CREATED_DESCRIPTION = (
    "CreationTimestamp is a timestamp representing the server time when this object was created. It is not "
    "guaranteed to be set in happens-before order across separate operations. Clients may not set this "
    "value. It is represented in RFC3339 form and is in UTC.\n\nPopulated by the system. Read-only. Null for "
    "lists. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata"
)
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")


def negotiate(accept: str) -> str | None:
    """The Table version the Accept header asks for first, None for plain JSON; 406 if only Tables of
    versions this server does not have would do."""
    wanted_table = False
    for clause in accept.split(","):
        media, *params = (p.strip() for p in clause.split(";"))
        options = dict(p.split("=", 1) for p in params if "=" in p)
        as_kind = options.get("as")
        if as_kind == "Table":
            wanted_table = True
            if media in _JSON_RANGES and options.get("g") == _GROUP and options.get("v") in _VERSIONS:
                return options["v"]
        elif as_kind is None and media in _JSON_RANGES:
            return None
    if wanted_table:
        raise ApiError(406, f"only the following media types are accepted: application/json;as=Table;g={_GROUP}")
    return None


# ------------------------------------------------------------------------------------------- times


def _parse_time(value: str) -> datetime | None:
    if not _RFC3339.match(value):
        return None
    try:
        return datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
    except ValueError:
        return None


def since(value: Any, now: float) -> str:
    """translateTimestampSince: ``<unknown>`` for an unset time, else its age."""
    if not value or not isinstance(value, str):
        return "<unknown>"
    when = _parse_time(value)
    return "<invalid>" if when is None else human_duration(now - when.timestamp())


# ----------------------------------------------------------------------------------------- printers


def _column(name: str, type_: str, description: str, *, format_: str = "", priority: int = 0) -> dict[str, Any]:
    return {"name": name, "type": type_, "format": format_, "description": description, "priority": priority}


_NAME = _column("Name", "string", NAME_DESCRIPTION, format_="name")


class Printer:
    """Column definitions and the cells of one object's row."""

    def __init__(self, columns: list[dict[str, Any]], cells: Callable[[dict[str, Any], float], list[Any]]) -> None:
        self.columns = columns
        self._cells = cells

    def cells(self, obj: dict[str, Any], now: float) -> list[Any]:
        return self._cells(obj, now)


class CrdPrinter(Printer):
    """apiextensions-apiserver's tableconvertor for one CRD version's ``additionalPrinterColumns``."""

    def __init__(self, definitions: list[dict[str, Any]]) -> None:
        if not definitions:  # serveDefaultColumnsIfEmpty
            definitions = [
                {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp",
                 "description": CREATED_DESCRIPTION}
            ]  # fmt: skip
        columns = [_NAME]
        self._paths: list[tuple[JsonPath, str]] = []
        for d in definitions:
            path = str(d.get("jsonPath", ""))
            self._paths.append((JsonPath(f"{{{path}}}", allow_missing_keys=True), str(d.get("type", ""))))
            description = d.get("description") or f"Custom resource definition column (in JSONPath format): {path}"
            columns.append(
                _column(str(d.get("name", "")), str(d.get("type", "")), str(description),
                        format_=str(d.get("format") or ""), priority=int(d.get("priority") or 0))
            )  # fmt: skip
        super().__init__(columns, self._crd_cells)

    def _crd_cells(self, obj: dict[str, Any], now: float) -> list[Any]:
        cells: list[Any] = [_name(obj)]
        for path, type_ in self._paths:
            try:
                results = path.find_results(obj)
            except JsonPathError:
                cells.append(None)
                continue
            if not results or not results[0]:
                cells.append(None)
                continue
            value = results[0][0]  # a column shows the first value its path reaches
            cells.append(go_text(value) if type_ == "string" else _typed_cell(type_, value, now))
        return cells


def _typed_cell(type_: str, value: Any, now: float) -> Any:
    """cellForJSONValue: a cell of the column's type, or nil when the value has another JSON type."""
    if value is None or (isinstance(value, bool) and type_ != "boolean"):
        return None
    if type_ == "integer" and isinstance(value, int | float):
        return int(value)
    if type_ == "number" and isinstance(value, int | float):
        return float(value)
    if type_ == "boolean" and isinstance(value, bool):
        return value
    if type_ == "date" and isinstance(value, str):
        if value in ("", "null"):
            return "<unknown>"
        when = _parse_time(value)
        return "<invalid>" if when is None else human_duration(now - when.timestamp())
    return None


def _name(obj: dict[str, Any]) -> str:
    return str(obj.get("metadata", {}).get("name", ""))


def _meta(obj: dict[str, Any]) -> dict[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, dict) else {}


def _age(obj: dict[str, Any], now: float) -> str:
    return since(_meta(obj).get("creationTimestamp"), now)


_AGE = _column("Age", "string", CREATED_DESCRIPTION)

_EVENT_COLUMNS = [
    _column("Last Seen", "string", "The time at which the most recent occurrence of this event was recorded."),
    _column("Type", "string", "Type of this event (Normal, Warning), new types could be added in the future"),
    _column("Reason", "string", "This should be a short, machine understandable string that gives the reason "
            "for the transition into the object's current status."),
    _column("Object", "string", "The object that this event is about."),
    _column("Subobject", "string", "If referring to a piece of an object instead of an entire object, this "
            "string should contain a valid JSON/Go field access statement.", priority=1),
    _column("Source", "string", "The component reporting this event. Should be a short machine understandable "
            "string.", priority=1),
    _column("Message", "string", "A human-readable description of the status of this operation."),
    _column("First Seen", "string", "The time at which the event was first recorded. (Time of server receipt "
            "is in TypeMeta.)", priority=1),
    _column("Count", "string", "The number of times this event has occurred.", priority=1),
    _column("Name", "string", NAME_DESCRIPTION, format_="name", priority=1),
]  # fmt: skip


def _core_event(obj: dict[str, Any]) -> dict[str, Any]:
    """An events.k8s.io/v1 Event in core/v1 terms: kube serves both from the same storage and printer."""
    return {
        "metadata": _meta(obj),
        "involvedObject": obj.get("regarding") or {},
        "message": obj.get("note") or "",
        "reason": obj.get("reason") or "",
        "type": obj.get("type") or "",
        "firstTimestamp": obj.get("deprecatedFirstTimestamp"),
        "lastTimestamp": obj.get("deprecatedLastTimestamp"),
        "count": obj.get("deprecatedCount") or 0,
        "source": obj.get("deprecatedSource") or {},
        "eventTime": obj.get("eventTime"),
        "series": obj.get("series"),
        "reportingComponent": obj.get("reportingController") or "",
        "reportingInstance": obj.get("reportingInstance") or "",
    }


def _event_cells(obj: dict[str, Any], now: float) -> list[Any]:
    """printEvent, always wide (the server sends every column; kubectl drops priority ones)."""
    first = since(obj.get("firstTimestamp"), now) if obj.get("firstTimestamp") else since(obj.get("eventTime"), now)
    last = since(obj.get("lastTimestamp"), now) if obj.get("lastTimestamp") else first
    count = obj.get("count") or 0
    series = obj.get("series")
    if isinstance(series, dict):
        last = since(series.get("lastObservedTime"), now)
        count = series.get("count") or 0
    elif not count:
        count = 1  # Singleton events don't have a count set in the new API.
    involved = obj.get("involvedObject") or {}
    kind = str(involved.get("kind") or "").lower()
    target = f"{kind}/{involved['name']}" if involved.get("name") else kind
    source = obj.get("source") or {}
    component = source.get("component") or obj.get("reportingComponent") or ""
    instance = source.get("host") or obj.get("reportingInstance") or ""
    return [
        last,
        obj.get("type") or "",
        obj.get("reason") or "",
        target,
        involved.get("fieldPath") or "",
        f"{component}, {instance}" if instance else component,
        str(obj.get("message") or "").strip(),
        first,
        int(count),
        _name(obj),
    ]


def _created_at(obj: dict[str, Any]) -> str:
    """The default table convertor's cell: the timestamp itself, in UTC (Go's zero time when unset)."""
    when = _parse_time(str(_meta(obj).get("creationTimestamp") or ""))
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if when else "0001-01-01T00:00:00Z"


_DEFAULT = Printer(
    [_NAME, _column("Created At", "date", CREATED_DESCRIPTION)], lambda o, _now: [_name(o), _created_at(o)]
)
_BUILTIN: dict[tuple[str, str], Printer] = {
    ("", "namespaces"): Printer(
        [_NAME, _column("Status", "string", "The status of the namespace"), _AGE],
        lambda o, now: [_name(o), str((o.get("status") or {}).get("phase") or ""), _age(o, now)],
    ),
    ("", "events"): Printer(_EVENT_COLUMNS, _event_cells),
    ("events.k8s.io", "events"): Printer(_EVENT_COLUMNS, lambda o, now: _event_cells(_core_event(o), now)),
    ("", "configmaps"): Printer(
        [_NAME, _column("Data", "string", "Data contains the configuration data."), _AGE],
        lambda o, now: [_name(o), len(o.get("data") or {}) + len(o.get("binaryData") or {}), _age(o, now)],
    ),
    ("", "secrets"): Printer(
        [_NAME, _column("Type", "string", "The type of the secret"), _column("Data", "string", "Entries"), _AGE],
        lambda o, now: [_name(o), str(o.get("type") or ""), len(o.get("data") or {}), _age(o, now)],
    ),
    ("coordination.k8s.io", "leases"): Printer(
        [_NAME, _column("Holder", "string", "The holder of the lease"), _AGE],
        lambda o, now: [_name(o), str((o.get("spec") or {}).get("holderIdentity") or ""), _age(o, now)],
    ),
}


def printer_for(group: str, plural: str, crd_printer: Printer | None) -> Printer:
    if crd_printer is not None:
        return crd_printer
    return _BUILTIN.get((group, plural), _DEFAULT)


# ------------------------------------------------------------------------------------------- tables


def _row_object(obj: dict[str, Any], include: str, version: str) -> Any:
    if include == "Object":
        return obj
    if include == "None":
        return None
    return {"kind": "PartialObjectMetadata", "apiVersion": f"{_GROUP}/{version}", "metadata": _meta(obj)}


def include_object(value: str | None) -> str:
    if value is None or value == "":
        return "Metadata"
    if value not in INCLUDE_OBJECT:
        raise ApiError(400, f'unrecognized includeObject value: "{value}"')
    return value


def table(
    printer: Printer,
    objs: list[dict[str, Any]],
    metadata: dict[str, Any],
    *,
    version: str,
    include: str,
    headers: bool = True,
    now: float | None = None,
) -> dict[str, Any]:
    now = time.time() if now is None else now
    doc: dict[str, Any] = {"kind": "Table", "apiVersion": f"{_GROUP}/{version}", "metadata": metadata}
    if headers:
        doc["columnDefinitions"] = printer.columns
    doc["rows"] = [{"cells": printer.cells(o, now), "object": _row_object(o, include, version)} for o in objs]
    return doc


class TableWatch:
    """Turns a watch stream's lines into events whose object is a one-row Table; like kube-apiserver,
    only the first carries the column definitions (kubectl reuses the last ones it saw)."""

    def __init__(self, printer: Printer, *, version: str, include: str) -> None:
        self.printer = printer
        self.version = version
        self.include = include
        self._headers = True

    def encode(self, chunk: bytes) -> bytes:
        out: list[bytes] = []
        for line in chunk.split(b"\n"):
            if not line:
                continue
            event = json.loads(line)
            obj = event.get("object")
            if event.get("type") in ("ADDED", "MODIFIED", "DELETED") and isinstance(obj, dict):
                rv = _meta(obj).get("resourceVersion", "")
                event["object"] = table(
                    self.printer, [obj], {"resourceVersion": rv},
                    version=self.version, include=self.include, headers=self._headers,
                )  # fmt: skip
                self._headers = False
            out.append(dumps(event) + b"\n")
        return b"".join(out)


def object_table(printer: Printer, raw: bytes, *, version: str, include: str | None) -> bytes:
    """A GET of one object, as a one-row Table."""
    obj = json.loads(raw)
    meta = {"resourceVersion": _meta(obj).get("resourceVersion", "")}
    return dumps(table(printer, [obj], meta, version=version, include=include_object(include)))


def list_table(printer: Printer, raw: bytes, *, version: str, include: str | None) -> bytes:
    """A list response as a Table: one row per item, the list's resourceVersion and continue token."""
    listing = json.loads(raw)
    meta = {k: v for k, v in (listing.get("metadata") or {}).items() if k in _LIST_META}
    return dumps(table(printer, listing.get("items") or [], meta, version=version, include=include_object(include)))


_LIST_META = ("resourceVersion", "continue", "remainingItemCount")
