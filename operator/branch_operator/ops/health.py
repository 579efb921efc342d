"""Liveness and readiness over HTTP for the kubelet (``/healthz``, ``/readyz``), and Prometheus ``/metrics``.

Port 0 binds any free port (the embedded environment, where several operators may share a machine);
:attr:`HealthServer.url` then tells where it ended up.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from branch_operator.ops.metrics import CONTENT_TYPE


class HealthServer:
    # All interfaces: probes come from the kubelet, scrapes from Prometheus.
    def __init__(self, runtime: Any, port: int, host: str = "0.0.0.0") -> None:
        self.runtime = runtime
        self.port = port
        self.host = host
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        if self.port == 0:
            server = getattr(site, "_server", None)
            sockets = getattr(server, "sockets", None) or []
            if sockets:
                self.port = int(sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _healthz(self, _request: web.Request) -> web.Response:
        # Alive = the operator's background tasks have not died; a dead task means restart the pod.
        dead = [t.get_name() for t in self.runtime.live_tasks if t.done()]
        if dead:
            return web.json_response({"ok": False, "dead_tasks": dead}, status=500)
        return web.json_response({"ok": True})

    async def _readyz(self, _request: web.Request) -> web.Response:
        checks = dict(self.runtime.readiness())
        ok = all(checks.values())
        body = {"ready": ok, "checks": checks, "in_charge": self.runtime.in_charge, "leader": self.runtime.leader}
        return web.Response(
            text=json.dumps(body), status=200 if ok else 503,
            content_type="application/json",
        )

    async def _metrics(self, _request: web.Request) -> web.Response:
        metrics = getattr(self.runtime, "metrics", None)
        if metrics is None:
            return web.Response(status=404, text="metrics are disabled\n")
        body = await metrics.exposition()
        # prometheus_client's content type carries parameters aiohttp won't take in content_type=.
        return web.Response(body=body, status=200, headers={"Content-Type": CONTENT_TYPE})
