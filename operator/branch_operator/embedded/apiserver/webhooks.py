"""Calling validating admission webhooks: the ``AdmissionReview`` v1 exchange over HTTPS, as kube-apiserver does.

Every matching webhook is called at once (the real server calls validating webhooks in parallel) and the
first failure in configuration order decides the answer:

* a denial: ``admission webhook "<name>" denied the request: <message>``, with the code of the response's
  status (400 if it has none or a lower one) and its reason;
* a call that fails (unreachable, timeout, bad certificate, a bad answer): with ``failurePolicy: Fail``
  ``500 Internal error occurred: failed calling webhook "<name>": <error>``, with ``Ignore`` nothing;
* dry-run requests are reviewed too (``dryRun: true``): v1 configurations only admit webhooks with
  ``sideEffects`` ``None`` or ``NoneOnDryRun``, so none of them can refuse dry runs.

Warnings of every webhook become ``Warning`` headers of the response.

``clientConfig.url`` is called, verified with ``clientConfig.caBundle`` (the system roots without one).
``clientConfig.service`` names a Service of a cluster the embedded server does not have (no Pods, no
Endpoints): such a webhook is a call that fails (``failurePolicy`` decides), with an error saying so.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import ssl
from collections.abc import Callable
from typing import Any

import aiohttp

from branch_operator.embedded.apiserver.admission import USER_INFO, Attempt, Gate, Pending
from branch_operator.embedded.apiserver.errors import ApiError
from branch_operator.embedded.apiserver.store import Stored

_OPTIONS_KIND = {"CREATE": "CreateOptions", "UPDATE": "UpdateOptions", "DELETE": "DeleteOptions"}
_ATTEMPTS = 5  # a write that keeps changing under its webhooks gives up with a conflict


class _Denied(ApiError):
    """A webhook's own ``Status``: its reason is kept as given, even when empty (kube-apiserver does not fill it)."""

    def status(self) -> dict[str, Any]:
        body = super().status()
        if not self.reason:
            del body["reason"]
        return body


class _CallFailed(Exception):
    pass


async def admit(gate: Gate, write: Callable[[], Stored], options: dict[str, Any]) -> tuple[Stored, list[str]]:
    """Run ``write`` behind the webhooks that match it; returns what it stored and the webhooks' warnings."""
    if not gate.configured():
        return write(), []
    approved: Attempt | None = None
    warnings: list[str] = []
    for _ in range(_ATTEMPTS):
        gate.arm(options, approved)
        try:
            return write(), warnings
        except Pending as pending:
            approved = pending.attempt
        finally:
            gate.disarm()
        warnings = await review(approved)
    raise ApiError(409, "the object kept changing while admission webhooks reviewed it; try again")


def review_request(attempt: Attempt) -> dict[str, Any]:
    rt = attempt.rt
    kind = {"group": rt.group, "version": rt.version, "kind": rt.kind}
    resource = {"group": rt.group, "version": rt.version, "resource": rt.plural}
    request: dict[str, Any] = {
        "uid": attempt.uid,
        "kind": kind,
        "resource": resource,
        "requestKind": kind,
        "requestResource": resource,
        "name": attempt.name,
        "operation": attempt.operation,
        "userInfo": USER_INFO,
        "object": attempt.obj,
        "oldObject": attempt.old,
        "dryRun": attempt.dry_run,
        "options": {"kind": _OPTIONS_KIND[attempt.operation], "apiVersion": "meta.k8s.io/v1", **attempt.options},
    }
    if attempt.subresource:
        request["subResource"] = request["requestSubResource"] = attempt.subresource
    if rt.namespaced:
        request["namespace"] = attempt.namespace
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}


async def review(attempt: Attempt) -> list[str]:
    """Call every webhook of the attempt; raise the first refusal, return all warnings."""
    body = json.dumps(review_request(attempt)).encode()
    results = await asyncio.gather(*(_call(hook, body, attempt.uid) for hook in attempt.hooks))
    warnings: list[str] = []
    for hook, (outcome, hook_warnings) in zip(attempt.hooks, results, strict=True):
        name = hook.get("name", "")
        if isinstance(outcome, _CallFailed):
            if hook.get("failurePolicy", "Fail") == "Ignore":
                continue
            message = f'failed calling webhook "{name}": {outcome}'
            raise ApiError(500, f"Internal error occurred: {message}", details={"causes": [{"message": message}]})
        warnings.extend(hook_warnings)
        if outcome is not None:
            raise _denied(name, outcome)
    return warnings


def _denied(name: str, status: Any) -> ApiError:
    status = status if isinstance(status, dict) else {}
    denied_by = f'admission webhook "{name}" denied the request'
    code = status.get("code") if isinstance(status.get("code"), int) else 0
    if code < 400:
        code = 400
    message, reason = str(status.get("message") or ""), str(status.get("reason") or "")
    explanation = message or reason
    text = f"{denied_by}: {explanation}" if explanation else f"{denied_by} without explanation"
    details = status.get("details") if isinstance(status.get("details"), dict) else None
    error = _Denied(code, text, details=details)
    error.reason = reason
    return error


def _ssl_context(config: dict[str, Any]) -> ssl.SSLContext:
    bundle = config.get("caBundle")
    if not bundle:
        return ssl.create_default_context()
    try:
        pem = base64.b64decode(str(bundle), validate=True).decode()
        return ssl.create_default_context(cadata=pem)
    except (binascii.Error, UnicodeDecodeError, ssl.SSLError, ValueError) as e:
        raise _CallFailed(f"failed to call webhook: unable to load root certificates: {e}") from e


async def _call(hook: dict[str, Any], body: bytes, uid: str) -> tuple[_CallFailed | dict[str, Any] | None, list[str]]:
    """(None when allowed | the denial's status | the failure, warnings)."""
    config = hook.get("clientConfig") or {}
    url = config.get("url")
    if not url:
        service = config.get("service") or {}
        where = f"{service.get('namespace')}/{service.get('name')}"
        return _CallFailed(f'failed to call webhook: service "{where}" cannot be reached: the embedded API '
                           "server runs no Services; use clientConfig.url"), []  # fmt: skip
    timeout = int(hook.get("timeoutSeconds") or 10)
    if "v1" not in (hook.get("admissionReviewVersions") or ()):
        return _CallFailed("webhook does not accept v1 AdmissionReview (the embedded API server sends only v1)"), []
    target = f"{url}{'&' if '?' in url else '?'}timeout={timeout}s"
    try:
        context = _ssl_context(config)
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session,
            session.post(target, data=body, headers={"Content-Type": "application/json"}, ssl=context) as response,
        ):
            raw = await response.read()
            if response.status != 200:
                return _CallFailed(f"failed to call webhook: the server responded with the status code "
                                   f"{response.status}: {raw[:200].decode(errors='replace')}"), []  # fmt: skip
    except _CallFailed as e:
        return e, []
    except TimeoutError:
        return _CallFailed(f'failed to call webhook: Post "{target}": context deadline exceeded'), []
    except aiohttp.ClientConnectorCertificateError as e:
        return _CallFailed(f'failed to call webhook: Post "{target}": tls: failed to verify certificate: '
                           f"x509: {getattr(e.certificate_error, 'verify_message', e)}"), []  # fmt: skip
    except aiohttp.ClientError as e:
        return _CallFailed(f'failed to call webhook: Post "{target}": {e}'), []
    try:
        answer = json.loads(raw)
        response_doc = answer["response"]
        assert isinstance(response_doc, dict)
    except (ValueError, KeyError, TypeError, AssertionError):
        return _CallFailed("received invalid webhook response: expected an AdmissionReview with a response"), []
    if response_doc.get("uid") != uid:
        return _CallFailed(f'expected response.uid="{uid}", got "{response_doc.get("uid")}"'), []
    warnings = [str(w) for w in response_doc.get("warnings") or ()]
    if response_doc.get("allowed") is True:
        return None, warnings
    return response_doc.get("status") or {}, warnings


def warning_headers(warnings: list[str]) -> list[tuple[str, str]]:
    """``Warning`` headers in the RFC 7234 form kube-apiserver sends (code 299, agent ``-``)."""
    return [("Warning", '299 - "' + w.replace("\\", "\\\\").replace('"', '\\"') + '"') for w in warnings]
