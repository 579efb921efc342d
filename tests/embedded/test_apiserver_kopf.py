"""A tiny real kopf operator runs against the server over HTTP."""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
from typing import Any

import kopf

from branch_operator.embedded.apiserver.server import EmbeddedApiServer

from .conftest import BRANCHES, GROUP, VERSION, Api, branch, crd, wait_for

_SCHEMA = {
    "type": "object",
    "properties": {
        "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
        "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
    },
}


def _phase(server: EmbeddedApiServer, name: str) -> Any:
    obj = server.get_object(GROUP, VERSION, "branches", "default", name)
    return obj and obj.get("status", {}).get("phase")


async def test_kopf_handles_each_object_once_patches_status_and_posts_events(
    server: EmbeddedApiServer, api: Api
) -> None:
    # Resources must exist before kopf's initial scan: scanning (CRD/namespace watching) is disabled.
    server.create_object("apiextensions.k8s.io", "v1", "customresourcedefinitions", crd(schema=_SCHEMA))
    server.create_object(GROUP, VERSION, "branches", branch("before"), namespace="default")

    registry = kopf.OperatorRegistry()
    creations: collections.Counter[str] = collections.Counter()
    events: dict[str, list[Any]] = collections.defaultdict(list)

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=server.url, insecure=True)

    @kopf.on.create(GROUP, VERSION, "branches", registry=registry)
    def created(name: str, patch: kopf.Patch, body: kopf.Body, **_: Any) -> None:
        creations[name] += 1
        patch.status["phase"] = "READY"
        kopf.info(body, reason="BranchCreated", message=f"handled {name}")

    @kopf.on.event(GROUP, VERSION, "branches", registry=registry)
    def seen(name: str, type: str | None, **_: Any) -> None:
        events[name].append(type)

    settings = kopf.OperatorSettings()
    settings.scanning.disabled = True
    settings.watching.server_timeout = 1  # Reconnect every second: resumption must not replay anything.
    settings.posting.level = logging.INFO
    settings.networking.request_timeout = 10

    # kopf runs on its own thread and loop, as kopf.testing.KopfRunner does: on exit, kopf waits for every
    # task its loop gained meanwhile, which would include this server's keep-alive connection handlers.
    stop_flag = threading.Event()
    ready_flag = threading.Event()
    operator = threading.Thread(
        target=asyncio.run,
        args=(
            kopf.operator(
                registry=registry, settings=settings, namespaces=["default"], standalone=True,
                stop_flag=stop_flag, ready_flag=ready_flag,
            ),
        ),
        daemon=True,
    )  # fmt: skip
    operator.start()
    try:
        await wait_for(ready_flag.is_set, 10, "kopf to start")
        await wait_for(lambda: _phase(server, "before") == "READY", 10, "status of the pre-existing branch")
        await api.ok("POST", BRANCHES, branch("after"))
        await wait_for(lambda: _phase(server, "after") == "READY", 10, "status of the new branch")

        # Let kopf's watch time out and resume a few times with nothing happening.
        watches = server.count_requests("GET", "/branches")
        await wait_for(lambda: server.count_requests("GET", "/branches") >= watches + 3, 10, "watch reconnects")
        resumed = [r for r in server.requests if r.path.endswith("/branches") and r.query.get("watch") == "true"]
        assert all(r.query.get("resourceVersion") for r in resumed), "kopf resumes from its last resourceVersion"

        assert creations == {"before": 1, "after": 1}
        # No replay: the pre-existing object was only listed (type None), the new one added once.
        assert "ADDED" not in events["before"] and events["before"][0] is None
        assert events["after"].count("ADDED") == 1

        posted = server.list_objects("", "v1", "events", "default", field_selector="reason=BranchCreated")
        assert sorted(e["involvedObject"]["name"] for e in posted) == ["after", "before"]
        assert all(
            e["metadata"]["name"].startswith("kopf-event-") and e["message"].startswith("handled ") for e in posted
        )
        status_patches = [r for r in server.requests if r.method == "PATCH" and r.path.endswith("/status")]
        assert status_patches and all(r.status == 200 for r in status_patches)
    finally:
        stop_flag.set()
        await asyncio.to_thread(operator.join, 10)
        assert not operator.is_alive()
