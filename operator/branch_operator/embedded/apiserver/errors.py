"""Kubernetes ``Status`` failures for the embedded API server.

Clients (kopf, ``kubernetes_asyncio``, kubectl) branch on ``reason`` and ``code``, so every failure leaves
the server as a real ``Status`` object rather than a bare HTTP error.
"""

from __future__ import annotations

from typing import Any

# The reasons the real API server uses for the codes we emit.
_REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    406: "NotAcceptable",
    409: "Conflict",
    410: "Expired",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


def reason_for(code: int) -> str:
    return _REASONS.get(code, "Unknown")


class ApiError(Exception):
    """A failure that becomes a ``Status`` response with ``code`` as the HTTP status."""

    def __init__(
        self,
        code: int,
        message: str,
        *,
        reason: str | None = None,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason or reason_for(code)
        self.details = details
        self.headers = headers

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details is not None:
            body["details"] = self.details
        return body


def qualified(plural: str, group: str) -> str:
    """``branches.oms.dev`` / ``configmaps``: how the real server names a resource in messages."""
    return f"{plural}.{group}" if group else plural


def _details(name: str, group: str, kind: str) -> dict[str, Any]:
    details: dict[str, Any] = {"name": name, "kind": kind}
    if group:
        details["group"] = group
    return details


def not_found(plural: str, group: str, name: str) -> ApiError:
    return ApiError(404, f'{qualified(plural, group)} "{name}" not found', details=_details(name, group, plural))


def already_exists(plural: str, group: str, name: str) -> ApiError:
    return ApiError(
        409,
        f'{qualified(plural, group)} "{name}" already exists',
        reason="AlreadyExists",
        details=_details(name, group, plural),
    )


def conflict(plural: str, group: str, name: str, why: str | None = None) -> ApiError:
    why = why or "the object has been modified; please apply your changes to the latest version and try again"
    return ApiError(
        409,
        f'Operation cannot be fulfilled on {qualified(plural, group)} "{name}": {why}',
        reason="Conflict",
        details=_details(name, group, plural),
    )


def cause(reason: str, field: str, message: str) -> dict[str, str]:
    """A ``StatusCause``. ``message`` is the error's body without the field (``Required value``), as the real
    server sends it: kubectl prints ``field: message`` itself, so a field in the message would show twice."""
    return {"reason": reason, "message": message, "field": field}


def invalid(kind: str, group: str, name: str, causes: list[dict[str, str]]) -> ApiError:
    """422 Invalid as ``apierrors.NewInvalid`` builds it: the Status message joins ``field: message`` lines,
    without repeating identical ones."""
    what = f"{kind}.{group}" if group else kind
    lines = list(dict.fromkeys(f"{c['field']}: {c['message']}" if c["field"] else c["message"] for c in causes))
    summary = lines[0] if len(lines) == 1 else "[" + ", ".join(lines) + "]"
    details = _details(name, group, kind)
    details["causes"] = causes
    return ApiError(422, f'{what} "{name}" is invalid: {summary}', reason="Invalid", details=details)


def bad_request(message: str) -> ApiError:
    return ApiError(400, message)


def gone(message: str) -> ApiError:
    return ApiError(410, message, reason="Expired")
