"""The embedded API server in a process of its own, for benchmarks that must not share a CPU budget or
an RSS figure with the operator. Prints `api=<url>`, `kubeconfig=<path>`, `control=<url>` and serves
until its stdin closes. The control URL answers `GET /counts` with the requests served so far, by
method and kind, so a benchmark can count the operator's API writes at the server.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys
import tempfile
from collections import Counter
from pathlib import Path

from _pauses import PauseRecorder
from aiohttp import web

from branch_operator.embedded.apiserver.server import EmbeddedApiServer
from branch_operator.embedded.env import install_crds
from branch_operator.ops import gc_tuning

KINDS = [
    ("status_patch", "PATCH", re.compile(r"/branches/[^/]+/status$")),
    ("lock_create", "POST", re.compile(r"/branchlocks$")),
    ("lock_delete", "DELETE", re.compile(r"/branchlocks/[^/]+$")),
    ("event_post", "POST", re.compile(r"/events$")),
    ("branch_patch", "PATCH", re.compile(r"/branches/[^/]+$")),
    ("lock_patch", "PATCH", re.compile(r"/branchlocks/[^/]+(/status)?$")),
    ("policy_status_patch", "PATCH", re.compile(r"/automergepolicies/[^/]+/status$")),
]


class Counting(EmbeddedApiServer):
    """Counts every request by kind as it is served (the bounded request log would forget them)."""

    def __init__(self) -> None:
        super().__init__(request_log_size=10, history_size=20_000, event_retention=None)
        self.counts: Counter[str] = Counter()

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:  # type: ignore[override]
        kind = request.method
        for name, method, pattern in KINDS:
            if request.method == method and pattern.search(request.path):
                kind = name
                break
        else:
            if request.method == "GET":
                kind = "watch" if request.query.get("watch") in ("true", "1") else "read"
        self.counts[kind] += 1
        return await super()._handle(request)


async def main() -> None:
    api = Counting()
    url = await api.start()
    workdir = Path(tempfile.mkdtemp(prefix="oms-bench-api-"))
    kubeconfig = api.write_kubeconfig(workdir / "kubeconfig")
    await install_crds(url)

    async def counts(_request: web.Request) -> web.Response:
        return web.json_response(dict(api.counts))

    # This process stands in for kube-apiserver, whose (Go) collector runs beside the program: CPython's
    # default full collections over this server's heap (every object stored, 20,000 watch events of
    # history) stopped it for ~270 ms in the middle of latency runs, which a benchmark of the operator
    # must not measure. So the same tuning as the operator's: start-up frozen, full collections on a 5 s
    # timer over what is new since the last one. Its pauses are still recorded (/stalls) and reported.
    gc_tuning.tune()
    logging.getLogger(gc_tuning.__name__).setLevel(logging.ERROR)  # recorded below, not printed
    collector = asyncio.create_task(gc_tuning.collect_periodically())
    pauses = PauseRecorder()
    pauses.start()

    async def stalls(request: web.Request) -> web.Response:
        return web.json_response(pauses.since(float(request.query["from"]), float(request.query["to"])))

    app = web.Application()
    app.router.add_get("/counts", counts)
    app.router.add_get("/stalls", stalls)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    print(f"api={url}", flush=True)
    print(f"kubeconfig={kubeconfig}", flush=True)
    print(f"control=http://127.0.0.1:{port}", flush=True)
    # Serve until the parent closes our stdin (it also kills us if it must).
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    collector.cancel()
    await runner.cleanup()
    await api.stop()


if __name__ == "__main__":
    asyncio.run(main())
