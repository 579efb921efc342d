"""The process's log stream: ``text`` (one human line per record) or ``json`` (one JSON object per line).

In ``json`` mode one formatter serves every logger, kopf's included, on the root handler: ``timestamp``
(RFC 3339, UTC), ``level``, ``logger``, ``message``, and what the record knows of its subject:
``namespace`` and ``branch`` (the object name) from kopf's per-object logger or our ``extra=``, plus
``event_id`` and ``audit_id`` when the caller passes them. An exception's traceback is the ``exc_info``
field of the same object, and Python warnings are routed through logging, so no line of the stream is
anything but JSON.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Literal

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# kopf's per-object logger attaches these; k8s_ref is turned into namespace/branch, the rest is internal.
_KOPF_ATTRS = ("k8s_skip", "k8s_ref", "settings")
_FIRST = ("timestamp", "level", "logger", "message")


class JsonLogFormatter(JsonFormatter):
    def __init__(self) -> None:
        super().__init__(
            "%(levelname)s %(name)s %(message)s",
            rename_fields={"levelname": "level", "name": "logger"},
            reserved_attrs=[*RESERVED_ATTRS, *_KOPF_ATTRS],
            json_ensure_ascii=False,
        )

    def add_fields(self, log_record: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]) -> None:
        super().add_fields(log_record, record, message_dict)
        when = datetime.fromtimestamp(record.created, UTC)
        log_record["timestamp"] = when.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        ref = getattr(record, "k8s_ref", None)
        if isinstance(ref, dict):
            if ref.get("namespace"):
                log_record.setdefault("namespace", ref["namespace"])
            if ref.get("kind") == "Branch":
                log_record.setdefault("branch", ref.get("name"))
            elif ref.get("name"):
                log_record.setdefault("object", f"{ref.get('kind')}/{ref['name']}")
        # First the four fields every line has, then the rest as the record gave them.
        rest = {k: v for k, v in log_record.items() if k not in _FIRST}
        first = {k: log_record.get(k) for k in _FIRST}
        log_record.clear()
        log_record.update(first, **rest)


def _log_uncaught(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
    logging.getLogger("branch_operator").critical("uncaught exception", exc_info=(kind, value, tb))


def setup_logging(level: str, log_format: LogFormat = "text") -> None:
    """Configure the root logger before anything logs (kopf's loggers propagate to it), unless it already is."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, got {log_format!r}")
    root = logging.getLogger()
    if root.handlers:  # configured already (a test harness, an embedding program): as logging.basicConfig
        return
    handler = logging.StreamHandler()
    handler.setFormatter(JsonLogFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    if log_format == "json":
        logging.captureWarnings(True)
        sys.excepthook = _log_uncaught
