"""Liveness and readiness over HTTP for the kubelet (``/healthz``, ``/readyz``)."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web


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
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _healthz(self, _request: web.Request) -> web.Response:
        # Alive = the operator's background tasks have not died; a dead task means restart the pod.
        dead = [t.get_name() for t in self.runtime.tasks if t.done()]
        if dead:
            return web.json_response({"ok": False, "dead_tasks": dead}, status=500)
        return web.json_response({"ok": True})

    async def _readyz(self, _request: web.Request) -> web.Response:
        checks = dict(self.runtime.readiness())
        ok = all(checks.values())
        return web.Response(
            text=json.dumps({"ready": ok, "checks": checks}), status=200 if ok else 503,
            content_type="application/json",
        )
