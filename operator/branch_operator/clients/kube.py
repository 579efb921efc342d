"""The operator's own Kubernetes API calls, all in one place.

kopf watches and serves handlers; everything the operator writes outside a kopf handler (the NATS
consumer above all) goes through :class:`KubeClient`. It uses ``kubernetes_asyncio`` so no call ever
blocks the event loop, and it works unchanged in-cluster, with a kubeconfig, or against the embedded
API server. Errors are mapped to a small hierarchy so callers decide retry vs. give-up by type.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import hashlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from kubernetes_asyncio import client as k8s
from kubernetes_asyncio import config as k8s_config
from kubernetes_asyncio import watch as k8s_watch
from kubernetes_asyncio.client.exceptions import ApiException

from branch_operator import __version__
from branch_operator.api.models import (
    GROUP,
    LABEL_BRANCH,
    LABEL_MANAGED_BY,
    MANAGED_BY,
    VERSION,
    AutoMergePolicy,
    Branch,
    BranchLock,
)
from branch_operator.kit.backoff import Backoff, call_with_backoff, parse_retry_after

log = logging.getLogger(__name__)

USER_AGENT = f"oms-branch-operator/{__version__}"

Obj = dict[str, Any]
MERGE_PATCH = "application/merge-patch+json"
# The generated client picks JSON Patch for dict bodies unless told otherwise.
_MERGE: dict[str, Any] = {"_content_type": MERGE_PATCH}


class KubeError(Exception):
    """Base for API errors; ``status`` is the HTTP status (0 for transport errors)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}" if status else message)
        self.status = status


class NotFound(KubeError):
    pass


class Conflict(KubeError):
    """409: stale resourceVersion (re-read and re-decide) or AlreadyExists."""


class Invalid(KubeError):
    """422 or another 4xx that retrying won't fix."""


class Transient(KubeError):
    """5xx, 429, timeouts, connection errors: retry with backoff (``retry_after``: what the server asked for)."""

    def __init__(self, status: int, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(status, message)
        self.retry_after = retry_after


def _shed_load(exc: BaseException) -> bool:
    # As client-go's REST client (checkWait): a 429 or 5xx is asked again only when the server said when.
    return (isinstance(exc, Transient) and exc.retry_after is not None
            and (exc.status == 429 or exc.status >= 500))


# Short and few: the callers have retries of their own (a nak, the scheduler) for longer outages.
API_BACKOFF = Backoff(base=0.2, cap=5.0, attempts=5, retry_after_cap=10.0)


def _map(exc: BaseException) -> KubeError:
    if isinstance(exc, ApiException):
        status = int(exc.status or 0)
        text = exc.reason or ""
        if exc.body:
            text = f"{text}: {str(exc.body)[:500]}"
        if status == 404:
            return NotFound(status, text)
        if status == 409:
            return Conflict(status, text)
        if status in (408, 429) or status >= 500 or status == 0:
            headers: Mapping[str, str] = exc.headers or {}
            return Transient(status, text, retry_after=parse_retry_after(headers.get("Retry-After")))
        return Invalid(status, text)
    return Transient(0, f"{type(exc).__name__}: {exc}")


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def event_name(object_name: str, key: str) -> str:
    """The name of the one Event about ``object_name`` for ``key`` (at most 253 characters)."""
    suffix = "." + hashlib.sha256(key.encode()).hexdigest()[:16]
    return f"{object_name[: 253 - len(suffix)]}{suffix}"


def object_ref(obj: Mapping[str, Any]) -> Obj:
    """The ObjectReference of ``obj`` (an Event's ``involvedObject`` or ``related``)."""
    meta = obj.get("metadata", {})
    ref: Obj = {"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"), "name": meta.get("name"),
                "namespace": meta.get("namespace") or "default"}
    for field in ("uid", "resourceVersion"):
        if meta.get(field):
            ref[field] = meta[field]
    return ref


def event_body(
    obj: Mapping[str, Any], *, type_: str, reason: str, message: str, action: str, component: str,
    instance: str, timestamp: str, name: str | None = None, related: Mapping[str, Any] | None = None,
) -> Obj:
    """The core/v1 Event about ``obj``; every Event the operator posts is built here.

    Without ``name`` the API server generates one (``<object>.<random>``). ``related``: the
    ObjectReference of the object behind it (the policy of a merge decision, the lock of a lock event).
    """
    meta = obj.get("metadata", {})
    namespace = meta.get("namespace") or "default"
    metadata: Obj = ({"name": name} if name is not None
                     else {"generateName": f"{meta.get('name', 'oms')}."})
    involved = object_ref(obj)
    involved.setdefault("uid", meta.get("uid"))
    involved.setdefault("resourceVersion", meta.get("resourceVersion"))
    body: Obj = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {**metadata, "namespace": namespace},
        "involvedObject": involved,
        "type": type_,
        "reason": reason,
        "message": message[:1024],
        "action": action,
        "source": {"component": component},
        "reportingComponent": component,
        "reportingInstance": instance[:128],
        "firstTimestamp": timestamp,
        "lastTimestamp": timestamp,
        "count": 1,
    }
    if related is not None:
        body["related"] = dict(related)
    return body


def event_key(body: Mapping[str, Any]) -> tuple[Any, ...]:
    """What makes two Events the same Event, as client-go's recorder decides (its ``getEventKey``): the source,
    the object, the type, reason and message — and here the related object and action too."""
    involved, related = body.get("involvedObject") or {}, body.get("related") or {}
    return (body.get("reportingComponent"), body.get("reportingInstance"),
            *(involved.get(f) for f in ("apiVersion", "kind", "namespace", "name", "uid")),
            body.get("type"), body.get("reason"), body.get("action"), body.get("message"),
            *(related.get(f) for f in ("apiVersion", "kind", "namespace", "name")))


@dataclass
class _Seen:
    name: str
    count: int
    last: float  # monotonic


class EventAggregator:
    """Repeats of the same Event within ``window`` seconds update one Event object (``count``,
    ``lastTimestamp`` and ``series``) instead of creating another, as client-go's recorder does
    (its EventCorrelator: a 10-minute window, an LRU of 4,096 keys). Per process: after a restart or a
    failover the first repeat starts a new Event."""

    def __init__(self, *, window: float = 600.0, size: int = 4096,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self.size = size
        self.clock = clock
        self._seen: collections.OrderedDict[tuple[Any, ...], _Seen] = collections.OrderedDict()

    def repeat_of(self, key: tuple[Any, ...]) -> _Seen | None:
        seen = self._seen.get(key)
        if seen is None or self.clock() - seen.last > self.window:
            return None
        return seen

    def record(self, key: tuple[Any, ...], name: str, count: int) -> None:
        self._seen[key] = _Seen(name, count, self.clock())
        self._seen.move_to_end(key)
        while len(self._seen) > self.size:
            self._seen.popitem(last=False)

    def forget(self, key: tuple[Any, ...]) -> None:
        self._seen.pop(key, None)


def _micro_time(rfc3339_seconds: str) -> str:
    """A MicroTime (six fractional digits) for ``series.lastObservedTime``."""
    return rfc3339_seconds.replace("Z", ".000000Z") if "." not in rfc3339_seconds else rfc3339_seconds


async def load_api_client(kubeconfig: str | None = None, context: str | None = None) -> k8s.ApiClient:
    """In-cluster config when running in a pod, else the kubeconfig (``$KUBECONFIG`` or ~/.kube/config)."""
    if kubeconfig is None and context is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        k8s_config.load_incluster_config()  # type: ignore[no-untyped-call]
        return k8s.ApiClient()
    configuration = k8s.Configuration()
    await k8s_config.load_kube_config(
        config_file=kubeconfig, context=context, client_configuration=configuration
    )
    return k8s.ApiClient(configuration=configuration)


class KubeClient:
    """Typed-ish wrapper over the calls listed in :mod:`branch_operator.rbac`."""

    def __init__(self, api: k8s.ApiClient, *, component: str = "oms-branch-operator", instance: str = "") -> None:
        self.api = api
        # Lets audit logs and tests tell the operator's own calls from kopf's and from people's.
        api.user_agent = USER_AGENT
        # kubernetes_asyncio's session trusts the environment, so aiohttp looks up proxy variables and
        # ~/.netrc in a worker thread on every request (a third of the operator's CPU in the benchmark).
        # API server proxies come from the kubeconfig (configuration.proxy), which still applies.
        session = getattr(api.rest_client, "pool_manager", None)
        if session is not None and hasattr(session, "_trust_env"):
            session._trust_env = False
        self.backoff = API_BACKOFF
        self.events = EventAggregator()
        self.sleep: Callable[[float], Awaitable[None]] = asyncio.sleep  # replaceable, to count the waits
        self.custom = k8s.CustomObjectsApi(api)
        self.core = k8s.CoreV1Api(api)
        self.admission = k8s.AdmissionregistrationV1Api(api)
        self.component = component
        self.instance = instance or os.environ.get("HOSTNAME", "local")

    @classmethod
    async def connect(cls, kubeconfig: str | None = None, context: str | None = None) -> KubeClient:
        return cls(await load_api_client(kubeconfig, context))

    async def close(self) -> None:
        await self.api.close()

    # ----------------------------------------------------------------------------------- generic

    async def _call(self, request: Callable[[], Awaitable[Any]]) -> Any:
        """``request()`` with the API errors mapped; a 429 or 5xx that carries ``Retry-After`` (the API server
        shedding load: API Priority and Fairness) is asked again after it, a few times, as client-go's REST
        client does. Without one, the caller's own retry (a nak, the scheduler) takes it."""

        async def attempt() -> Any:
            try:
                return await request()
            except ApiException as exc:
                raise _map(exc) from exc
            except (OSError, TimeoutError) as exc:
                raise _map(exc) from exc
            except Exception as exc:
                # aiohttp's client errors are not OSError subclasses in every version.
                if type(exc).__module__.startswith("aiohttp"):
                    raise _map(exc) from exc
                raise

        def logged(n: int, exc: BaseException, delay: float) -> None:
            log.info("Kubernetes API answered %s (attempt %d); asking again in %.2fs", exc, n, delay)

        return await call_with_backoff(attempt, policy=self.backoff, retry_on=_shed_load, sleep=self.sleep,
                                       before_sleep=logged)

    async def get(self, plural: str, namespace: str, name: str) -> Obj:
        return cast(Obj, await self._call(lambda: self.custom.get_namespaced_custom_object(
            GROUP, VERSION, namespace, plural, name)))

    async def list_objects(
        self, plural: str, namespace: str | None = None, label_selector: str | None = None
    ) -> list[Obj]:
        return (await self.list_with_version(plural, namespace, label_selector))[0]

    async def list_with_version(
        self, plural: str, namespace: str | None = None, label_selector: str | None = None
    ) -> tuple[list[Obj], str]:
        """The objects and the list's resourceVersion, where a watch of the same selection starts."""
        kwargs: dict[str, Any] = {"label_selector": label_selector} if label_selector else {}
        if namespace:
            result = await self._call(lambda: self.custom.list_namespaced_custom_object(
                GROUP, VERSION, namespace, plural, **kwargs))
        else:
            result = await self._call(lambda: self.custom.list_cluster_custom_object(
                GROUP, VERSION, plural, **kwargs))
        return cast(list[Obj], result.get("items", [])), str((result.get("metadata") or {}).get("resourceVersion", ""))

    async def watch_objects(
        self, plural: str, namespace: str | None, *, resource_version: str, label_selector: str | None = None
    ) -> AsyncIterator[tuple[str, Obj]]:
        """(ADDED|MODIFIED|DELETED, object) from ``resource_version`` on, reconnecting as the server closes
        the stream, until the caller stops iterating."""
        kwargs: dict[str, Any] = {"resource_version": resource_version, "allow_watch_bookmarks": False}
        if label_selector:
            kwargs["label_selector"] = label_selector
        func: Any = self.custom.list_namespaced_custom_object if namespace else self.custom.list_cluster_custom_object
        args = (GROUP, VERSION, namespace, plural) if namespace else (GROUP, VERSION, plural)
        async with k8s_watch.Watch().stream(func, *args, **kwargs) as stream:
            async for event in stream:
                if event.get("type") in ("ADDED", "MODIFIED", "DELETED"):
                    yield str(event["type"]), cast(Obj, event.get("raw_object") or event.get("object"))

    async def patch_status(
        self, plural: str, namespace: str, name: str, status: Mapping[str, Any], *, resource_version: str | None
    ) -> Obj:
        """JSON merge patch of ``status``; with a resourceVersion the write fails with Conflict if stale."""
        body: Obj = {"status": dict(status)}
        if resource_version is not None:
            body["metadata"] = {"resourceVersion": resource_version}
        return cast(Obj, await self._call(lambda: self.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, plural, name, body, **_MERGE)))

    async def patch(self, plural: str, namespace: str, name: str, body: Mapping[str, Any]) -> Obj:
        return cast(Obj, await self._call(lambda: self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, plural, name, dict(body), **_MERGE)))

    async def create(self, plural: str, namespace: str, body: Mapping[str, Any]) -> Obj:
        return cast(Obj, await self._call(lambda: self.custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, plural, dict(body))))

    async def delete(self, plural: str, namespace: str, name: str) -> bool:
        """True if deleted now, False if it was already gone."""
        try:
            await self._call(lambda: self.custom.delete_namespaced_custom_object(
                GROUP, VERSION, namespace, plural, name))
            return True
        except NotFound:
            return False

    async def delete_unchanged(self, plural: str, namespace: str, obj: Mapping[str, Any]) -> None:
        """Delete ``obj`` only if it is still the version read (preconditions on resourceVersion and uid):
        Conflict if it changed since, NotFound if it is gone."""
        meta = obj.get("metadata") or {}
        body = {"preconditions": {"resourceVersion": meta.get("resourceVersion"), "uid": meta.get("uid")}}
        await self._call(lambda: self.custom.delete_namespaced_custom_object(
            GROUP, VERSION, namespace, plural, str(meta.get("name")), body=cast(Any, body)))

    # ---------------------------------------------------------------------------------- specific

    async def get_branch(self, namespace: str, name: str) -> Obj:
        return await self.get(Branch.PLURAL, namespace, name)

    async def list_branches(self, namespace: str | None = None) -> list[Obj]:
        return await self.list_objects(Branch.PLURAL, namespace)

    async def patch_branch_status(
        self, namespace: str, name: str, status: Mapping[str, Any], *, resource_version: str | None
    ) -> Obj:
        return await self.patch_status(Branch.PLURAL, namespace, name, status, resource_version=resource_version)

    async def list_locks(self, namespace: str, branch: str) -> list[Obj]:
        return await self.list_objects(BranchLock.PLURAL, namespace, label_selector=f"{LABEL_BRANCH}={branch}")

    async def create_lock(self, namespace: str, body: Mapping[str, Any]) -> tuple[Obj, bool]:
        """Create a lock; if one of that name exists already, return it (idempotent). -> (lock, created)."""
        try:
            return await self.create(BranchLock.PLURAL, namespace, body), True
        except Conflict:
            name = body["metadata"]["name"]
            return await self.get(BranchLock.PLURAL, namespace, name), False

    async def delete_lock(self, namespace: str, name: str) -> bool:
        return await self.delete(BranchLock.PLURAL, namespace, name)

    async def list_policies(self, namespace: str | None) -> list[Obj]:
        return await self.list_objects(AutoMergePolicy.PLURAL, namespace)

    async def post_event(
        self, obj: Mapping[str, Any], *, type_: str, reason: str, message: str, action: str = "Reconcile",
        once_per: str | None = None, related: Mapping[str, Any] | None = None,
    ) -> None:
        """A core/v1 Event about ``obj``. Failures are logged, never raised: an Event is best-effort.

        ``once_per``: a key the Event is posted once for (its name is derived from it); posting it again
        is an AlreadyExists, taken as posted. Otherwise a repeat of the same Event within ten minutes
        counts up the one posted before (see :class:`EventAggregator`).
        """
        meta = obj.get("metadata", {})
        namespace = meta.get("namespace") or "default"
        timestamp = now_rfc3339()
        body = event_body(obj, type_=type_, reason=reason, message=message, action=action,
                          component=self.component, instance=self.instance, timestamp=timestamp,
                          name=None if once_per is None else event_name(str(meta.get("name", "oms")), once_per),
                          related=related)
        try:
            if once_per is not None:
                await self.create_event(namespace, body)
                return
            key = event_key(body)
            seen = self.events.repeat_of(key)
            if seen is not None:
                count = seen.count + 1
                try:
                    await self._raw(lambda: self.core.patch_namespaced_event(
                        seen.name, namespace, cast(Any, {
                            "count": count, "lastTimestamp": timestamp,
                            "series": {"count": count, "lastObservedTime": _micro_time(timestamp)}}),
                        _preload_content=False, **_MERGE))
                    self.events.record(key, seen.name, count)
                    return
                except NotFound:
                    self.events.forget(key)  # expired or deleted meanwhile: start a new one
            created = await self.create_event(namespace, body)
            self.events.record(key, str(created.get("metadata", {}).get("name") or ""), 1)
        except KubeError as exc:
            if once_per is not None and isinstance(exc, Conflict):
                return  # posted before
            log.warning("could not post Event %s on %s/%s: %s", reason, namespace, meta.get("name"), exc)

    # ------------------------------------------------------------------- the admission webhook's TLS

    async def get_secret_data(self, namespace: str, name: str) -> dict[str, bytes]:
        """A Secret's data, decoded; NotFound when there is none."""
        secret = await self._call(lambda: self.core.read_namespaced_secret(name, namespace))
        return {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}

    async def create_tls_secret(self, namespace: str, name: str, data: Mapping[str, bytes]) -> None:
        """A ``kubernetes.io/tls`` Secret; Conflict when one of that name exists."""
        body = {
            "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": name, "namespace": namespace, "labels": {LABEL_MANAGED_BY: MANAGED_BY}},
            "data": {k: base64.b64encode(v).decode("ascii") for k, v in data.items()},
        }
        await self._call(lambda: self.core.create_namespaced_secret(namespace, cast(Any, body)))

    async def get_webhook_configuration(self, name: str) -> Obj:
        obj = await self._call(lambda: self.admission.read_validating_webhook_configuration(name))
        return cast(Obj, self.api.sanitize_for_serialization(obj))

    async def patch_webhook_configuration(self, name: str, body: Mapping[str, Any]) -> None:
        """JSON merge patch (``webhooks`` is replaced whole: send every webhook, with a resourceVersion)."""
        await self._call(lambda: self.admission.patch_validating_webhook_configuration(name, dict(body), **_MERGE))

    async def create_event(self, namespace: str, body: Mapping[str, Any]) -> Obj:
        """Create a core/v1 Event; the created Event; raises KubeError (Conflict for a name that exists)."""
        return await self._raw(lambda: self.core.create_namespaced_event(
            namespace, cast(Any, body), _preload_content=False))

    async def _raw(self, request: Callable[[], Awaitable[Any]]) -> Obj:
        """An unparsed call's answer as plain JSON. Events are read this way, not as V1Event: parsing their
        timestamps with dateutil was a visible share of the operator's CPU per indexing event."""
        response = await self._call(request)
        try:
            data = await response.read()
        except Exception as exc:
            raise _map(exc) from exc
        finally:
            response.release()
        if not 200 <= response.status <= 299:
            raise _map(ApiException(status=response.status, reason=f"{response.reason}: {data[:500]!r}"))
        try:
            return cast(Obj, json.loads(data))
        except ValueError:
            return {}
