"""An embedded Kubernetes API server: the development and test double the operator runs against.

It speaks the real wire protocol over HTTP (discovery, CRUD, patches, watches, ``Status`` errors), so kopf,
``kubernetes_asyncio`` and kubectl work against it unchanged. It is built on aiohttp's low-level server
with a direct request path (split the URL, two dict lookups, act on immutable stored objects whose JSON
is cached), and every buffer that could grow with traffic is bounded.

The modules beside this one each have one job: ``apiserver_ops`` (write semantics), ``apiserver_store``
(objects, history, watch fan-out), ``apiserver_registry`` (resources and discovery), ``apiserver_schema``
(CRD schemas), ``cel`` (their ``x-kubernetes-validations`` rules), ``admission`` and ``webhooks`` (validating
admission webhooks: which writes they see, and the HTTPS calls), ``leases`` (what a Lease write must look
like), ``apiserver_patch``, ``apiserver_selectors`` and ``apiserver_errors``; ``tables`` (with
``jsonpath``) serves kubectl's Table output.

Every create, update, patch and delete the HTTP API receives passes through ``_admitted``, the one admission
point; the in-process helpers (``create_object`` ...) bypass webhooks.

Not emulated: authentication/authorisation (webhooks see ``system:admin``), mutating admission webhooks,
webhooks reached through ``clientConfig.service`` (there are no Services; such a call fails, and
``failurePolicy`` decides), conversion between versions, field ownership of server-side apply (it acts as
a merge patch), strategic-merge list semantics (lists are replaced), DELETE of collections, protobuf bodies
of other types than Namespace, Secret and ConfigMap (``kubectl create deployment`` gets 415; ``kubectl
apply/create -f`` send JSON and work), the CEL libraries Kubernetes adds beyond strings and sets (lists,
regex, quantity, IP, URL), and CEL type checking when a CRD is created.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import pathlib
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import yaml
from aiohttp import web
from multidict import MultiMapping

from branch_operator.embedded.apiserver import webhooks
from branch_operator.embedded.apiserver.errors import ApiError, bad_request
from branch_operator.embedded.apiserver.openapi import OpenApiDocuments
from branch_operator.embedded.apiserver.ops import APPLY_PATCH, JSON_PATCH, MERGE_PATCH, PATCH_TYPES, Cluster
from branch_operator.embedded.apiserver.patch import check_patch_request
from branch_operator.embedded.apiserver.protobuf import PROTOBUF
from branch_operator.embedded.apiserver.protobuf import decode as decode_protobuf
from branch_operator.embedded.apiserver.registry import ResourceType
from branch_operator.embedded.apiserver.schema import unknown_fields
from branch_operator.embedded.apiserver.selectors import combine, parse_field_selector, parse_label_selector
from branch_operator.embedded.apiserver.store import Stored, Watcher, dumps
from branch_operator.embedded.apiserver.tables import TableWatch, include_object, list_table, negotiate, object_table

__all__ = ["EmbeddedApiServer", "RequestRecord"]

logger = logging.getLogger(__name__)

_JSON = "application/json"
_WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_TRUE = frozenset({"true", "1", "True"})
_YAML_TYPES = frozenset({APPLY_PATCH, "application/yaml"})
# An absent Content-Type shows up as application/octet-stream; clients that omit it send JSON.
_BODY_TYPES = frozenset({_JSON, "application/octet-stream", *_YAML_TYPES, *PATCH_TYPES})
VERSION_INFO = {
    "major": "1",
    "minor": "33",
    "gitVersion": "v1.33.0+oms-embedded",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2025-01-01T00:00:00Z",
    "goVersion": "go1.24",
    "compiler": "gc",
    "platform": "linux/amd64",
}


@dataclass(slots=True)
class RequestRecord:
    """One served request. ``raw_body`` is kept for writes; ``body`` decodes it on demand."""

    method: str
    path: str
    query: dict[str, str]
    content_type: str
    status: int
    time: float
    raw_body: bytes | None = None
    # Tells the operator's own client (``oms-branch-operator/<version>``) from kopf's (``kopf/<version>``)
    # and from test harnesses or kubectl.
    user_agent: str = ""

    @property
    def body(self) -> Any:
        if not self.raw_body:
            return None
        try:
            return json.loads(self.raw_body)
        except ValueError:
            return yaml.safe_load(self.raw_body)


@dataclass(slots=True)
class _Fault:
    method: str | None
    regex: re.Pattern[str]
    status: int | None
    delay: float
    remaining: int  # negative: forever
    retry_after: str | None


class EmbeddedApiServer:
    """See the module docstring. All methods must be called from the event loop the server runs on."""

    def __init__(
        self,
        *,
        request_log_size: int = 1000,
        history_size: int = 1000,
        watch_queue_size: int = 10_000,
        event_retention: int | None = 1000,
        bookmark_interval: float = 30.0,
    ) -> None:
        """``history_size``: watch events kept per resource for resuming watches (older → 410 Gone).
        ``watch_queue_size``: events a watcher may lag behind before it is cut off (it then resumes).
        ``event_retention``: Events kept per events resource, the oldest are deleted (the real server's TTL).
        ``bookmark_interval``: seconds between bookmarks on idle watch streams that allow them.
        """
        self.cluster = Cluster(
            history_size=history_size, event_retention=event_retention, watch_queue_size=watch_queue_size
        )
        self.openapi = OpenApiDocuments(self.cluster.registry)
        self.requests: deque[RequestRecord] = deque(maxlen=request_log_size)
        self.url = ""
        self.bookmark_interval = bookmark_interval
        self._faults: list[_Fault] = []
        self._runner: web.ServerRunner | None = None

    # ------------------------------------------------------------------------------------ lifecycle

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        server = web.Server(self._handle, handler_cancellation=True, access_log=None)
        runner = web.ServerRunner(server, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        self._runner = runner
        sockets = server_sockets(site)
        bound_host, bound_port = sockets[0].getsockname()[:2]
        self.url = f"http://{host if host not in ('0.0.0.0', '') else '127.0.0.1'}:{bound_port}"
        logger.debug("Embedded API server listening on %s:%s", bound_host, bound_port)
        return self.url

    async def stop(self) -> None:
        # Watch streams end first so the shutdown does not wait on them.
        self.cluster.close_all_watches()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> EmbeddedApiServer:
        if not self.url:
            await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def write_kubeconfig(self, path: pathlib.Path, namespace: str = "default") -> pathlib.Path:
        """A kubeconfig for this server (plain HTTP, a dummy token: the server does no authentication)."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "embedded", "cluster": {"server": self.url}}],
            "users": [{"name": "embedded", "user": {"token": "embedded-dummy-token"}}],
            "contexts": [
                {
                    "name": "embedded",
                    "context": {"cluster": "embedded", "user": "embedded", "namespace": namespace},
                }
            ],
            "current-context": "embedded",
            "preferences": {},
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    # ------------------------------------------------------------------------------ request log, faults

    def count_requests(self, method: str | None = None, path_contains: str | None = None) -> int:
        method = method.upper() if method else None
        return sum(
            1
            for r in self.requests
            if (method is None or r.method == method) and (path_contains is None or path_contains in r.path)
        )

    def inject_fault(
        self,
        *,
        method: str | None,
        path_regex: str,
        status: int | None = None,
        delay: float = 0.0,
        times: int = 1,
        retry_after: str | None = None,
    ) -> None:
        """Make the next ``times`` requests matching ``method`` (None: any) and ``path_regex`` (searched in the
        URL path, without the query) wait ``delay`` seconds and then fail with ``status`` — or, with no
        status, proceed normally after the delay. ``times`` < 0 means until :meth:`clear_faults`.
        The first matching fault applies; each fault counts its own matches. A failure carries
        ``Retry-After: <retry_after>`` if given; a 429 without one says ``1``, as kube-apiserver's
        priority and fairness does."""
        if times == 0:
            raise ValueError("times must be positive, or negative for a permanent fault")
        self._faults.append(_Fault(method.upper() if method else None, re.compile(path_regex), status, delay, times,
                                  retry_after))

    def clear_faults(self) -> None:
        self._faults.clear()

    async def _apply_fault(self, method: str, path: str) -> None:
        for fault in self._faults:
            if (fault.method is not None and fault.method != method) or not fault.regex.search(path):
                continue
            if fault.remaining > 0:
                fault.remaining -= 1
                if fault.remaining == 0:
                    self._faults.remove(fault)
            if fault.delay:
                await asyncio.sleep(fault.delay)
            if fault.status is not None:
                after = fault.retry_after or ("1" if fault.status == 429 else None)
                headers = {"Retry-After": after} if after is not None else None
                raise ApiError(fault.status, f"injected fault: HTTP {fault.status}", headers=headers)
            return

    # ------------------------------------------------------------------------------- direct accessors

    def _rt(self, group: str, version: str, plural: str) -> ResourceType | None:
        return self.cluster.registry.lookup(group, version, plural)

    def get_object(
        self, group: str, version: str, plural: str, namespace: str | None, name: str
    ) -> dict[str, Any] | None:
        """A copy of the stored object, or None."""
        rt = self._rt(group, version, plural)
        stored = rt.store.objects.get(Cluster.key(rt, namespace, name)) if rt is not None else None
        return _copy(self.cluster.raw(rt, stored)) if rt is not None and stored is not None else None

    def list_objects(
        self,
        group: str,
        version: str,
        plural: str,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> list[dict[str, Any]]:
        """Copies of the stored objects (all namespaces when ``namespace`` is None), in key order."""
        rt = self._rt(group, version, plural)
        if rt is None:
            return []
        predicate = combine(
            parse_label_selector(label_selector), parse_field_selector(field_selector, rt.field_labels)
        )
        return [_copy(self.cluster.raw(rt, s)) for s in self.cluster.select(rt, namespace, predicate)]

    def create_object(
        self, group: str, version: str, plural: str, body: dict[str, Any], namespace: str | None = None
    ) -> dict[str, Any]:
        """Create as a client would (same validation, watchers notified); raises ApiError."""
        rt = self.cluster.resource(group, version, plural)
        return _copy(self.cluster.create(rt, namespace, json.loads(dumps(body))).raw)

    def patch_object(
        self,
        group: str,
        version: str,
        plural: str,
        namespace: str | None,
        name: str,
        patch: Any,
        *,
        subresource: str | None = None,
        patch_type: str = MERGE_PATCH,
        field_manager: str | None = None,
    ) -> dict[str, Any]:
        rt = self.cluster.resource(group, version, plural)
        patch = json.loads(dumps(patch))
        stored = self.cluster.patch(
            rt, namespace, name, patch_type, patch, subresource=subresource, field_manager=field_manager
        )
        return _copy(stored.raw)

    def delete_object(self, group: str, version: str, plural: str, namespace: str | None, name: str) -> dict[str, Any]:
        rt = self.cluster.resource(group, version, plural)
        return _copy(self.cluster.delete(rt, namespace, name).raw)

    @property
    def resource_version(self) -> int:
        """The current global resourceVersion."""
        return self.cluster.rv

    def watcher_count(self, group: str, version: str, plural: str) -> int:
        """Open watch streams on a resource: lets tests wait until a client is watching."""
        rt = self._rt(group, version, plural)
        return len(rt.store.watchers) if rt is not None else 0

    # ------------------------------------------------------------------------------------------- HTTP

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        method = request.method
        path = request.path
        raw_body: bytes | None = None
        response: web.StreamResponse
        try:
            if self._faults:
                await self._apply_fault(method, path)
            if method in _WRITES:
                raw_body = await request.read()
            response = await self._route(request, method, path, raw_body)
        except ApiError as e:
            response = web.Response(body=dumps(e.status()), status=e.code, content_type=_JSON, headers=e.headers)
        except Exception as e:  # A bug here must reach the client as a 500, not as a dropped connection.
            logger.exception("Embedded API server failed on %s %s", method, path)
            error = ApiError(500, f"internal error: {e!r}")
            response = web.Response(body=dumps(error.status()), status=500, content_type=_JSON)
        if type(response) is web.Response:  # Watch streams record themselves when they start.
            self._record(request, response.status, raw_body)
        return response

    def _record(self, request: web.BaseRequest, status: int, raw_body: bytes | None) -> None:
        self.requests.append(
            RequestRecord(
                request.method,
                request.path,
                dict(request.query) if request.query_string else {},
                request.content_type,
                status,
                time.time(),
                raw_body or None,
                request.headers.get("User-Agent", ""),
            )
        )

    async def _route(
        self, request: web.BaseRequest, method: str, path: str, raw_body: bytes | None
    ) -> web.StreamResponse:
        parts = path.rstrip("/").split("/")
        root = parts[1] if len(parts) > 1 else ""
        registry = self.cluster.registry
        if root == "api":
            if len(parts) == 2:
                return self._doc(
                    {
                        "kind": "APIVersions",
                        "versions": registry.core_versions(),
                        "serverAddressByClientCIDRs": [
                            {"clientCIDR": "0.0.0.0/0", "serverAddress": self.url.removeprefix("http://")}
                        ],
                    }
                )
            group, version, rest = "", parts[2], parts[3:]
        elif root == "apis":
            if len(parts) == 2:
                return self._doc(registry.api_group_list())
            if len(parts) == 3:
                return self._doc(registry.api_group(parts[2]))
            group, version, rest = parts[2], parts[3], parts[4:]
        elif path == "/version":
            return self._doc(VERSION_INFO)
        elif root == "openapi":
            return self._openapi(path, request.headers)
        elif path in ("/healthz", "/livez", "/readyz"):
            return web.Response(text="ok")
        else:
            raise ApiError(404, "the server could not find the requested resource")

        if not rest:
            return self._doc(registry.resource_list(group, version))
        resources = registry.by_gv.get((group, version))
        if resources is None:
            raise ApiError(404, "the server could not find the requested resource")
        namespace: str | None = None
        if len(rest) >= 3 and rest[0] == "namespaces":
            scoped = resources.get(rest[2])
            if scoped is not None and scoped.namespaced:
                namespace, rest = rest[1], rest[2:]
        rt = resources.get(rest[0])
        if rt is None or len(rest) > 3:
            raise ApiError(404, "the server could not find the requested resource")
        name = rest[1] if len(rest) > 1 else None
        subresource = rest[2] if len(rest) > 2 else None
        if subresource is not None and (subresource != "status" or not rt.status_subresource):
            raise ApiError(404, "the server could not find the requested resource")
        if rt.namespaced and name is not None and namespace is None:
            raise ApiError(404, "the server could not find the requested resource")
        query = request.query
        dry_run = query.get("dryRun") == "All"
        cluster = self.cluster

        if method == "GET":
            # Only kubectl's human-readable output asks for Tables: plain JSON pays one substring test.
            accept = request.headers.get("Accept")
            as_table = negotiate(accept) if accept and "as=Table" in accept else None
            if name is not None:
                raw = cluster.raw(rt, cluster.get(rt, namespace, name))
                if as_table is not None:
                    raw = object_table(rt.printer, raw, version=as_table, include=query.get("includeObject"))
                return self._ok(raw)
            if query.get("watch") in _TRUE:
                return await self._watch(request, rt, namespace, query, as_table)
            predicate = combine(
                parse_label_selector(query.get("labelSelector")),
                parse_field_selector(query.get("fieldSelector"), rt.field_labels),
            )
            limit = _int_param(query, "limit")
            raw = cluster.list_raw(rt, namespace, predicate, limit=limit, continue_token=query.get("continue"))
            if as_table is not None:
                raw = list_table(rt.printer, raw, version=as_table, include=query.get("includeObject"))
            return self._ok(raw)
        if method == "POST":
            if name is not None or (rt.namespaced and namespace is None):
                raise ApiError(405, f"POST is not supported on {path}")
            body = _parse(raw_body, request.content_type)
            warned = _field_validation(rt, query, body)
            return await self._admitted(
                query, lambda: cluster.create(rt, namespace, body, dry_run=dry_run), 201, warnings=warned
            )
        if name is None:
            raise ApiError(405, f"{method} is not supported on collections")
        if method == "PATCH":
            content_type = request.content_type
            field_manager, force = query.get("fieldManager"), query.get("force") in _TRUE
            # Before the body is read, as the real handler does: a wrong media type is 415 whatever the body.
            check_patch_request(rt.custom, content_type, field_manager, force)
            patch = _parse(raw_body, content_type)
            warned = _field_validation(rt, query, patch) if content_type != JSON_PATCH else []
            sub = subresource
            return await self._admitted(
                query, lambda: cluster.patch(
                    rt, namespace, name, content_type, patch,
                    subresource=sub, dry_run=dry_run, field_manager=field_manager, force=force,
                ), warnings=warned,
            )  # fmt: skip
        if method == "PUT":
            body = _parse(raw_body, request.content_type)
            warned = _field_validation(rt, query, body)
            return await self._admitted(
                query, lambda: cluster.replace(rt, namespace, name, body, subresource=subresource, dry_run=dry_run),
                warnings=warned,
            )
        if method == "DELETE":
            if subresource is not None:
                raise ApiError(405, "DELETE is not supported on subresources")
            # DeleteOptions are optional: a body in an undecodable format is ignored rather than refused.
            decodable = raw_body and request.content_type in _BODY_TYPES
            options = _parse(raw_body, request.content_type) if decodable else None
            return await self._admitted(
                query, lambda: cluster.delete(rt, namespace, name, options, dry_run=dry_run), options=options
            )
        raise ApiError(405, f"the method {method} is not supported")

    async def _admitted(
        self, query: MultiMapping[str], write: Callable[[], Stored], status: int = 200, options: Any = None,
        warnings: list[str] | None = None,
    ) -> web.Response:
        """The one admission point of the write path: the write, behind the validating webhooks it matches."""
        request_options = dict(options) if isinstance(options, dict) else {}
        request_options.pop("kind", None), request_options.pop("apiVersion", None)
        if "fieldManager" in query:
            request_options["fieldManager"] = query["fieldManager"]
        stored, admission_warnings = await webhooks.admit(self.cluster.gate, write, request_options)
        response = self._ok(stored.raw, status)
        for header, value in webhooks.warning_headers([*(warnings or ()), *admission_warnings]):
            response.headers.add(header, value)
        return response

    @staticmethod
    def _ok(raw: bytes, status: int = 200) -> web.Response:
        return web.Response(body=raw, status=status, content_type=_JSON)

    def _openapi(self, path: str, headers: Mapping[str, str]) -> web.Response:
        docs = self.openapi
        if path == "/openapi/v3":
            return self._ok(docs.v3_index())
        if path.startswith("/openapi/v3/"):
            body = docs.v3(path.removeprefix("/openapi/v3/"))
            if body is None:
                raise ApiError(404, "the server could not find the requested resource")
            return self._ok(body)
        if path == "/openapi/v2":
            # kube-apiserver also speaks gnostic protobuf here; this server only JSON, so a client that takes
            # nothing else (kubectl, validating a kind the server does not serve) is told so.
            accept = headers.get("Accept") or "*/*"
            if not any(t in accept for t in ("application/json", "*/*", "application/*")):
                raise ApiError(406, f"the server was unable to respond with a content type that the client "
                                    f"supports (requested {accept}, served application/json)")
            return self._ok(docs.v2())
        raise ApiError(404, "the server could not find the requested resource")

    def _doc(self, doc: dict[str, Any] | None) -> web.Response:
        if doc is None:
            raise ApiError(404, "the server could not find the requested resource")
        return self._ok(dumps(doc))

    # ----------------------------------------------------------------------------------------- watches

    async def _watch(
        self,
        request: web.BaseRequest,
        rt: ResourceType,
        namespace: str | None,
        query: MultiMapping[str],
        as_table: str | None = None,
    ) -> web.StreamResponse:
        tables = None
        if as_table is not None:
            tables = TableWatch(rt.printer, version=as_table, include=include_object(query.get("includeObject")))
        predicate = combine(
            parse_label_selector(query.get("labelSelector")),
            parse_field_selector(query.get("fieldSelector"), rt.field_labels),
        )
        timeout = _int_param(query, "timeoutSeconds")
        bookmarks = query.get("allowWatchBookmarks") in _TRUE
        lines, watcher = self.cluster.open_watch(
            rt,
            namespace,
            predicate,
            query.get("resourceVersion"),
            send_initial_events=query.get("sendInitialEvents") in _TRUE,
            bookmarks=bookmarks,
        )
        self._record(request, 200, None)
        response = web.StreamResponse(headers={"Content-Type": _JSON, "Cache-Control": "no-cache"})
        response.enable_chunked_encoding()
        write = response.write if tables is None else _encoding_writer(response, tables.encode)
        try:
            await response.prepare(request)
            if lines:
                await write(b"".join(lines))
            if watcher is None:
                return response  # The 410 Gone error event was the whole answer.
            deadline = asyncio.get_running_loop().time() + timeout if timeout else None
            try:
                async with asyncio.timeout_at(deadline):
                    await self._pump(write, watcher, rt if bookmarks else None)
            except TimeoutError:
                # Like the real server: a last bookmark so the client resumes from the newest version.
                if bookmarks:
                    await write(self.cluster.bookmark_line(rt))
            with contextlib.suppress(ConnectionError):
                await response.write_eof()
        except ConnectionError:
            pass  # The client went away.
        finally:
            if watcher is not None:
                self.cluster.close_watch(rt, watcher)
        return response

    async def _pump(
        self, write: Callable[[bytes], Awaitable[None]], watcher: Watcher, bookmarks_for: ResourceType | None
    ) -> None:
        queue = watcher.queue
        interval = self.bookmark_interval if bookmarks_for is not None else 0.0
        while True:
            if interval and queue.empty():
                # Idle streams get periodic bookmarks, as from the real server: kopf reconnects a stream
                # that has been silent for 70 seconds.
                try:
                    async with asyncio.timeout(interval):
                        line = await queue.get()
                except TimeoutError:
                    assert bookmarks_for is not None
                    await write(self.cluster.bookmark_line(bookmarks_for))
                    continue
            else:
                line = await queue.get()
            if line is None:
                return
            if queue.empty():
                await write(line)
            else:
                # Catch up in one write: a burst of events costs one syscall, not one per event.
                batch = [line]
                ended = False
                while not queue.empty():
                    item = queue.get_nowait()
                    if item is None:
                        ended = True
                        break
                    batch.append(item)
                await write(b"".join(batch))
                if ended:
                    return
            if watcher.closed and queue.empty():
                return  # Cut off for lagging: the client resumes from the last version it got.


def _encoding_writer(
    response: web.StreamResponse, encode: Callable[[bytes], bytes]
) -> Callable[[bytes], Awaitable[None]]:
    async def write(data: bytes) -> None:
        await response.write(encode(data))

    return write


def server_sockets(site: web.TCPSite) -> list[Any]:
    server = site._server  # aiohttp exposes the listening sockets only here.
    assert server is not None and hasattr(server, "sockets")
    return list(server.sockets)


def _copy(raw: bytes) -> dict[str, Any]:
    """A private copy of a stored object: callers may mutate it without touching the store."""
    obj: dict[str, Any] = json.loads(raw)
    return obj


def _int_param(query: MultiMapping[str], name: str) -> int:
    value = query.get(name)
    if not value:
        return 0
    try:
        return int(value)
    except ValueError as e:
        raise bad_request(f"invalid {name}: {value!r}") from e


def _parse(raw: bytes | None, content_type: str) -> Any:
    if not raw:
        raise bad_request("the request needs a body")
    if content_type == PROTOBUF:
        return decode_protobuf(raw)  # kubectl's typed commands (create namespace/secret/configmap)
    if content_type not in _BODY_TYPES:
        # CBOR, and protobuf of the types protobuf.py has no field table for, need the Go type schemas.
        raise ApiError(
            415,
            f"the body of the request was in an unknown format ({content_type}) - "
            "accepted media types include: application/json, application/yaml",
        )
    try:
        if content_type in _YAML_TYPES:
            return yaml.safe_load(raw)
        return json.loads(raw)
    except (ValueError, yaml.YAMLError) as e:
        raise bad_request(f"the body of the request could not be decoded: {e}") from e


_FIELD_VALIDATION = ("Ignore", "Warn", "Strict")


def _field_validation(rt: ResourceType, query: MultiMapping[str], body: Any) -> list[str]:
    """kube-apiserver's ``fieldValidation`` for a custom resource's write: Strict refuses unknown fields
    (400, its "strict decoding error"), Warn answers them as warnings; the Warning lines to send.

    Only when the client names a directive (kubectl does, ``Strict`` by default): kube-apiserver's own
    default, Warn, would cost every write a walk of the object for warnings no client here reads.
    """
    directive = query.get("fieldValidation")
    if directive is None or directive == "Ignore" or rt.schema is None:
        if directive is not None and directive not in _FIELD_VALIDATION:
            raise bad_request(f'fieldValidation parameter unsupported: "{directive}"')
        return []
    if directive not in _FIELD_VALIDATION:
        raise bad_request(f'fieldValidation parameter unsupported: "{directive}"')
    unknown = unknown_fields(rt.schema, body)
    if not unknown:
        return []
    if directive == "Strict":
        listed = ", ".join(f'unknown field "{path}"' for path in unknown)
        raise bad_request(f'{rt.kind} in version "{rt.version}" cannot be handled as a {rt.kind}: '
                          f"strict decoding error: {listed}")
    return [f'unknown field "{path}"' for path in unknown]
