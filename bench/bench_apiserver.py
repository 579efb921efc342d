"""Benchmark of the embedded Kubernetes API server.

The server runs in its own process (as it would under kopf in ``dev``/tests, it gets one core); this
process drives it with a lean keep-alive HTTP/1.1 client on raw asyncio streams, so the client costs
little CPU and the numbers are the server's. Phases:

* status PATCH (merge patch on ``/status`` of a schema-validated custom resource with a status
  subresource), 100,000 requests by default, rate and server RSS measured per window;
* GET of single objects, the same way;
* watch fan-out: 100 watchers on the resource while a writer patches, first at a fixed rate, then as
  fast as it can; every watcher must get every event; reports deliveries/s and lag (write → receipt).

Usage: ``python bench/bench_apiserver.py [--requests N] [--quick]``. Prints a table and writes
``bench/results/apiserver.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import pathlib
import re
import statistics
import sys
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

RESULTS = pathlib.Path(__file__).parent / "results" / "apiserver.json"
GROUP, VERSION, PLURAL = "bench.oms.dev", "v1", "widgets"
NAMESPACE = "default"
OBJECTS = 100
CONNECTIONS = 8

CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": f"{PLURAL}.{GROUP}"},
    "spec": {
        "group": GROUP,
        "scope": "Namespaced",
        "names": {"plural": PLURAL, "singular": "widget", "kind": "Widget", "shortNames": ["wd"]},
        "versions": [
            {
                "name": VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "required": ["branchName"],
                                "properties": {
                                    "branchName": {"type": "string", "maxLength": 200, "pattern": "^[a-z0-9/-]+$"},
                                    "autoMerge": {"type": "boolean", "default": True},
                                },
                            },
                            "status": {
                                "type": "object",
                                "properties": {
                                    "phase": {
                                        "type": "string",
                                        "enum": ["ACTIVE", "LOCKED_FOR_WRITE", "READY", "ERROR"],
                                    },
                                    "observedGeneration": {"type": "integer", "minimum": 0},
                                    "counter": {"type": "integer", "minimum": 0},
                                    "sentAt": {"type": "number"},
                                    "updatedAt": {"type": "string", "format": "date-time"},
                                    "conditions": {
                                        "type": "array",
                                        "maxItems": 16,
                                        "items": {
                                            "type": "object",
                                            "required": ["type", "status", "lastTransitionTime", "reason"],
                                            "properties": {
                                                "type": {"type": "string", "maxLength": 316},
                                                "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
                                                "lastTransitionTime": {"type": "string", "format": "date-time"},
                                                "reason": {
                                                    "type": "string",
                                                    "pattern": "^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
                                                },
                                                "message": {"type": "string", "maxLength": 32768},
                                            },
                                        },
                                    },
                                },
                            },
                        },
                    }
                },
            }
        ],
    },
}


def object_path(i: int, status: bool = False) -> str:
    return f"/apis/{GROUP}/{VERSION}/namespaces/{NAMESPACE}/{PLURAL}/w{i}" + ("/status" if status else "")


def status_patch(counter: int) -> bytes:
    return json.dumps(
        {
            "status": {
                "phase": "READY" if counter % 2 else "ACTIVE",
                "observedGeneration": 1,
                "counter": counter,
                "sentAt": time.time(),
                "updatedAt": "2025-01-01T00:00:00Z",
                "conditions": [
                    {"type": "Indexed", "status": "True", "lastTransitionTime": "2025-01-01T00:00:00Z",
                     "reason": "IndexingSucceeded", "message": f"indexed {counter} records"},
                    {"type": "Validated", "status": "True", "lastTransitionTime": "2025-01-01T00:00:00Z",
                     "reason": "ValidationPassed", "message": ""},
                ],
            }
        }
    ).encode()  # fmt: skip


# ------------------------------------------------------------------------------------------- server


def _serve(conn: Connection, request_log_size: int, history_size: int) -> None:
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "operator"))
    from branch_operator.embedded.apiserver.server import EmbeddedApiServer

    async def main() -> None:
        server = EmbeddedApiServer(request_log_size=request_log_size, history_size=history_size)
        url = await server.start()
        conn.send(url)
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)  # Until told to stop.
        await server.stop()

    asyncio.run(main())


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


# ------------------------------------------------------------------------------------------- client


class Http:
    """A minimal keep-alive HTTP/1.1 client: one request at a time on one connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, host: str, port: int) -> Http:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    async def request(
        self, method: str, path: str, body: bytes = b"", content_type: str = "application/json"
    ) -> tuple[int, bytes]:
        head = f"{method} {path} HTTP/1.1\r\nHost: bench\r\n"
        if body:
            head += f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        self.writer.write(head.encode() + b"\r\n" + body)
        headers = await self.reader.readuntil(b"\r\n\r\n")
        status = int(headers[9:12])
        i = headers.lower().find(b"content-length:")
        length = int(headers[i + 15 : headers.find(b"\r\n", i)])
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()


@dataclass
class Checkpoint:
    done: int
    at: float
    rss_kib: int


@dataclass
class LoadResult:
    name: str
    total: int
    elapsed: float
    checkpoints: list[Checkpoint] = field(default_factory=list)
    errors: int = 0

    def windows(self) -> list[dict[str, Any]]:
        out = []
        for a, b in zip(self.checkpoints, self.checkpoints[1:], strict=False):
            out.append({"from": a.done, "to": b.done, "rate": (b.done - a.done) / (b.at - a.at), "rss_kib": b.rss_kib})
        return out


async def load(name: str, host: str, port: int, pid: int, total: int, make: Any, checkpoints: list[int]) -> LoadResult:
    conns = [await Http.connect(host, port) for _ in range(CONNECTIONS)]
    result = LoadResult(name, total, 0.0)
    counter = 0
    marks = sorted(set(checkpoints))
    result.checkpoints.append(Checkpoint(0, time.perf_counter(), rss_kib(pid)))

    async def worker(conn: Http) -> None:
        nonlocal counter
        while counter < total:
            counter += 1
            n = counter
            method, path, body, ctype, expected = make(n)
            status, _ = await conn.request(method, path, body, ctype)
            if status != expected:
                result.errors += 1
            if marks and n == marks[0]:
                marks.pop(0)
                result.checkpoints.append(Checkpoint(n, time.perf_counter(), rss_kib(pid)))

    start = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in conns))
    result.elapsed = time.perf_counter() - start
    for c in conns:
        c.close()
    return result


_SENT_AT = re.compile(rb'"sentAt":([0-9.e+-]+)')


async def watch_phase(
    host: str, port: int, watchers: int, paced_rate: int, paced_seconds: float, burst: int
) -> dict[str, Any]:
    setup = await Http.connect(host, port)
    _, raw = await setup.request("GET", f"/apis/{GROUP}/{VERSION}/namespaces/{NAMESPACE}/{PLURAL}")
    since = json.loads(raw)["metadata"]["resourceVersion"]

    received = [0] * watchers
    lags: list[float] = []
    max_lag = 0.0
    streams = []
    for _ in range(watchers):
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(
            f"GET /apis/{GROUP}/{VERSION}/namespaces/{NAMESPACE}/{PLURAL}?watch=true&allowWatchBookmarks=true"
            f"&resourceVersion={since} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
        )
        await reader.readuntil(b"\r\n\r\n")
        streams.append((reader, writer))

    async def consume(idx: int, reader: asyncio.StreamReader) -> None:
        nonlocal max_lag
        while True:
            size_line = await reader.readline()  # chunked encoding: size, data, CRLF
            if not size_line:
                return
            size = int(size_line.strip() or b"0", 16)
            if size == 0:
                return
            chunk = await reader.readexactly(size + 2)
            now = time.time()
            for m in _SENT_AT.finditer(chunk):
                lag = now - float(m.group(1))
                received[idx] += 1
                if lag > max_lag:
                    max_lag = lag
                if idx == 0:
                    lags.append(lag)

    consumers = [asyncio.create_task(consume(i, r)) for i, (r, _) in enumerate(streams)]
    writer_conns = [await Http.connect(host, port) for _ in range(4)]

    async def wait_delivered(expected: int, within: float) -> bool:
        deadline = time.perf_counter() + within
        while time.perf_counter() < deadline:
            if min(received) >= expected:
                return True
            await asyncio.sleep(0.01)
        return False

    sent = 0
    # Paced: a steady write rate, as an operator's reconciliation would produce.
    paced_total = int(paced_rate * paced_seconds)
    start = time.perf_counter()
    for i in range(paced_total):
        target = start + i / paced_rate
        delay = target - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        sent += 1
        await writer_conns[0].request(
            "PATCH", object_path(sent % OBJECTS, True), status_patch(sent), "application/merge-patch+json"
        )
    all_paced = await wait_delivered(sent, 30)
    paced_elapsed = time.perf_counter() - start
    paced_max_lag = max_lag
    paced_p99 = statistics.quantiles(lags, n=100)[98] if len(lags) > 100 else max(lags, default=0.0)

    # Burst: writers as fast as they can go; the fan-out must keep up with every watcher.
    lags.clear()
    max_lag = 0.0
    burst_base = sent
    start = time.perf_counter()

    async def burst_writer(conn: Http) -> None:
        nonlocal sent
        while sent < burst_base + burst:
            sent += 1
            await conn.request(
                "PATCH", object_path(sent % OBJECTS, True), status_patch(sent), "application/merge-patch+json"
            )

    await asyncio.gather(*(burst_writer(c) for c in writer_conns))
    all_burst = await wait_delivered(sent, 60)
    burst_elapsed = time.perf_counter() - start
    burst_p99 = statistics.quantiles(lags, n=100)[98] if len(lags) > 100 else max(lags, default=0.0)

    for task in consumers:
        task.cancel()
    for _, w in streams:
        w.close()
    for conn in writer_conns:
        conn.close()
    setup.close()
    return {
        "watchers": watchers,
        "paced": {
            "writes": paced_total,
            "write_rate": paced_rate,
            "deliveries": paced_total * watchers,
            "deliveries_per_s": paced_total * watchers / paced_elapsed,
            "all_delivered": all_paced,
            "max_lag_ms": paced_max_lag * 1000,
            "p99_lag_ms": paced_p99 * 1000,
        },
        "burst": {
            "writes": burst,
            "write_rate": burst / burst_elapsed,
            "deliveries": burst * watchers,
            "deliveries_per_s": burst * watchers / burst_elapsed,
            "all_delivered": all_burst,
            "max_lag_ms": max_lag * 1000,
            "p99_lag_ms": burst_p99 * 1000,
        },
    }


async def setup_objects(host: str, port: int) -> None:
    conn = await Http.connect(host, port)
    status, body = await conn.request(
        "POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", json.dumps(CRD).encode()
    )
    assert status == 201, body
    for i in range(OBJECTS):
        obj = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "Widget",
            "metadata": {"name": f"w{i}"},
            "spec": {"branchName": f"feature/w{i}"},
        }
        status, body = await conn.request(
            "POST", f"/apis/{GROUP}/{VERSION}/namespaces/{NAMESPACE}/{PLURAL}", json.dumps(obj).encode()
        )
        assert status == 201, body
    conn.close()


async def run(args: argparse.Namespace, host: str, port: int, pid: int) -> dict[str, Any]:
    await setup_objects(host, port)
    total = args.requests
    marks = sorted({m for m in (1_000, 10_000, 25_000, 50_000, 75_000, total) if m <= total})
    patch_result = await load(
        "status PATCH", host, port, pid, total,
        lambda n: ("PATCH", object_path(n % OBJECTS, True), status_patch(n), "application/merge-patch+json", 200),
        marks,
    )  # fmt: skip
    get_result = await load(
        "GET", host, port, pid, total, lambda n: ("GET", object_path(n % OBJECTS), b"", "", 200), marks
    )
    watch = await watch_phase(
        host,
        port,
        watchers=args.watchers,
        paced_rate=args.watch_rate,
        paced_seconds=args.watch_seconds,
        burst=args.burst,
    )
    return {"patch": patch_result, "get": get_result, "watch": watch, "rss_end_kib": rss_kib(pid)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=100_000, help="requests per load phase")
    parser.add_argument("--watchers", type=int, default=100)
    parser.add_argument("--watch-rate", type=int, default=200, help="paced writes/s in the watch phase")
    parser.add_argument("--watch-seconds", type=float, default=10.0)
    parser.add_argument("--burst", type=int, default=2_000, help="unpaced writes in the watch phase")
    parser.add_argument("--quick", action="store_true", help="small run (smoke test of the benchmark)")
    parser.add_argument("--output", type=pathlib.Path, default=RESULTS)
    args = parser.parse_args()
    if args.quick:
        args.requests, args.watch_seconds, args.burst = 5_000, 2.0, 500

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_serve, args=(child, 1000, 1000), daemon=True)
    proc.start()
    url = parent.recv()
    host, port = url.removeprefix("http://").split(":")
    assert proc.pid is not None
    rss_start = rss_kib(proc.pid)
    try:
        results = asyncio.run(run(args, host, int(port), proc.pid))
    finally:
        parent.send("stop")
        proc.join(10)
        if proc.is_alive():
            proc.kill()

    report: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "rss_start_kib": rss_start,
        "rss_end_kib": results["rss_end_kib"],
        "watch": results["watch"],
    }
    print(f"server RSS at start: {rss_start / 1024:.1f} MiB")
    for key in ("patch", "get"):
        r: LoadResult = results[key]
        windows = r.windows()
        report[key] = {
            "requests": r.total,
            "errors": r.errors,
            "overall_rate": r.total / r.elapsed,
            "windows": windows,
        }
        print(f"\n{r.name}: {r.total} requests in {r.elapsed:.1f}s = {r.total / r.elapsed:,.0f}/s, errors: {r.errors}")
        print(f"  {'requests':>17} | {'rate/s':>8} | {'server RSS MiB':>14}")
        for w in windows:
            print(f"  {w['from']:>7,}-{w['to']:>8,} | {w['rate']:>8,.0f} | {w['rss_kib'] / 1024:>14.1f}")
    watch = results["watch"]
    print(f"\nwatch fan-out to {watch['watchers']} watchers:")
    header = ("phase", 6), ("writes/s", 8), ("deliveries/s", 12), ("all delivered", 13), ("p99 lag ms", 10)
    print("  " + " | ".join(f"{name:>{width}}" for name, width in (*header, ("max lag ms", 10))))
    for phase in ("paced", "burst"):
        p = watch[phase]
        print(
            f"  {phase:>6} | {p['write_rate']:>8,.0f} | {p['deliveries_per_s']:>12,.0f} | {p['all_delivered']!s:>13} | "
            f"{p['p99_lag_ms']:>10.1f} | {p['max_lag_ms']:>10.1f}"
        )
    print(f"\nserver RSS at end: {results['rss_end_kib'] / 1024:.1f} MiB")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"results written to {args.output}")


if __name__ == "__main__":
    main()
