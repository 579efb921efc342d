"""Benchmark of the real operator on the embedded default.

Three processes, so CPU and memory figures belong to the right one: the embedded API server
(bench/_apiserver_proc.py), a real nats-server, and the operator (`branch-operator run`). This process
plays Funnel (publishes events) and watches Branches.

Measures:
- throughput: N branches through started -> completed -> auto-merged, events/s until all are ACTIVE;
- latency: completed published -> READY and -> ACTIVE, p50/p95/p99, at a fixed rate and at saturation;
- the ceiling: a bare client doing the same writes against the same server, same run;
- API writes per auto-merged event, by kind, counted at the server;
- scale: with 10,000 Branches present, operator start to ready, RSS, idle CPU.

Usage: python bench/bench_operator.py [--quick]   (writes bench/results/operator.json and prints a table)
       python bench/bench_operator.py --only scale [--scale-branches N]   (writes operator-scale-N.json)
       python bench/bench_operator.py --only throughput   (throughput and ceiling: operator-throughput.json)
       python bench/bench_operator.py --only latency --present 3000   (50 ev/s with 3,000 other Branches)
       add --replicas 2 to run the operator as the chart runs it with replicaCount 2: leader election on, a
       second replica started once the first is in charge (a warm standby); results get a -replicas-2 suffix
       add --profile to sample the operator with py-spy (pip install py-spy) during the largest throughput
       run and the 50 events/s run: bench/results/operator-profile{,-latency}.md say where its CPU goes.
Every latency run also records, per second, the stalls of each process, slow JetStream acknowledgements,
CPU per process and hypervisor steal (stalls_ms_by_second and the fields beside it in the JSON).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import nats
from _pauses import PauseRecorder

from branch_operator.contracts.funnel_encode import encode_structured, make_event
from branch_operator.embedded.natsserver import NatsServer, free_port

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
GROUP_PATH = "/apis/oms.dev/v1alpha1"


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def proc_stat(pid: int) -> tuple[int, float]:
    """(RSS KiB, CPU seconds) of a process."""
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return rss, (int(fields[11]) + int(fields[12])) / ticks


def steal_seconds() -> float:
    """CPU time the hypervisor gave to other guests, all CPUs together (/proc/stat): the machine's noise."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()
    return int(fields[8]) / os.sysconf("SC_CLK_TCK") if len(fields) > 8 else 0.0


class Bench:
    def __init__(self, quick: bool, only: str | None = None, scale_branches: int | None = None,
                 profile: bool = False, present: int = 0, replicas: int = 1) -> None:
        self.replicas = replicas
        self.standbys: list[subprocess.Popen[bytes]] = []
        self.profile = profile
        self.present = present
        self.quick = quick
        self.only = only
        self.scale_branches = scale_branches or (1000 if quick else 10_000)
        self.work = Path(tempfile.mkdtemp(prefix="oms-bench-"))
        self.api_proc: subprocess.Popen[str] | None = None
        self.op_proc: subprocess.Popen[bytes] | None = None
        self.nats = NatsServer(store_dir=self.work / "nats")
        self.api = self.kubeconfig = self.control = ""
        self.health_port = 0
        self.http: aiohttp.ClientSession | None = None
        self.nc: Any = None
        self.keep_raw = bool(os.environ.get("BENCH_KEEP_RAW_PROFILE"))
        self.pauses = PauseRecorder()  # of this process, which timestamps what it publishes and sees

    # ------------------------------------------------------------------------------ processes

    def start_api(self) -> None:
        self.api_proc = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "_apiserver_proc.py")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.api_proc.stdout is not None
        info: dict[str, str] = {}
        while len(info) < 3:
            line = self.api_proc.stdout.readline()
            if not line:
                raise RuntimeError("API server process died")
            key, _, value = line.strip().partition("=")
            info[key] = value
        self.api, self.kubeconfig, self.control = info["api"], info["kubeconfig"], info["control"]

    def _operator(self, identity: str, health_port: int, log_name: str) -> subprocess.Popen[bytes]:
        env = {**os.environ, "NATS_URL": self.nats.url, "OMS_HEALTH_PORT": str(health_port),
               "OMS_DEFAULT_NAMESPACE": "default", "OMS_LOG_LEVEL": "WARNING",
               # Every stall of 20 ms or more goes to its log, so that a bad second can be attributed.
               "OMS_STALL_WARNING_MS": "20"}
        if self.replicas > 1:  # as the chart renders replicaCount > 1 (the Lease in the default namespace)
            env.update({"OMS_LEADER_ELECTION": "true", "POD_NAMESPACE": "default", "POD_NAME": identity})
        log = open(self.work / log_name, "ab")  # lives as long as the process
        return subprocess.Popen(
            [str(Path(sys.executable).parent / "branch-operator"), "--log-level", "WARNING", "run",
             "--kubeconfig", self.kubeconfig], env=env, stdout=log, stderr=log)

    def start_operator(self) -> float:
        self.health_port = free_port()
        started = time.monotonic()
        self.op_proc = self._operator("replica-0", self.health_port, "operator.log")
        return started

    async def start_standbys(self) -> None:
        """The other replicas, once the first is in charge, so that the measured process is the one in charge."""
        assert self.http is not None
        for i in range(1, self.replicas):
            port = free_port()
            self.standbys.append(self._operator(f"replica-{i}", port, f"operator-{i}.log"))
            deadline = time.monotonic() + 120
            while True:
                try:
                    async with self.http.get(f"http://127.0.0.1:{port}/readyz") as r:
                        body = await r.json(content_type=None)
                        if r.status == 200 and body.get("in_charge") is False:
                            break
                except aiohttp.ClientError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"standby {i} never became ready")
                await asyncio.sleep(0.05)  # polling readiness with a deadline

    async def wait_ready(self, timeout: float = 120) -> None:
        assert self.http is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                async with self.http.get(f"http://127.0.0.1:{self.health_port}/readyz") as r:
                    # In charge too: with leader election a replica is ready (as a standby) before it is.
                    if r.status == 200 and (await r.json(content_type=None)).get("in_charge"):
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)  # polling readiness with a deadline
        raise TimeoutError("operator never became ready; see " + str(self.work / "operator.log"))

    def stop_operator(self) -> None:
        for proc in self.standbys:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.standbys = []
        if self.op_proc is not None:
            self.op_proc.terminate()
            try:
                self.op_proc.wait(20)
            except subprocess.TimeoutExpired:
                self.op_proc.kill()
            self.op_proc = None

    def close(self) -> None:
        self.stop_operator()
        self.nats.close()
        if self.api_proc is not None:
            assert self.api_proc.stdin is not None
            self.api_proc.stdin.close()
            try:
                self.api_proc.wait(10)
            except subprocess.TimeoutExpired:
                self.api_proc.kill()

    # ---------------------------------------------------------------------------- stalls

    def operator_stalls(self, t0: float, t1: float) -> list[list[Any]]:
        """(wall time, ms, detail) of each stall the operator logged between t0 and t1 (wall clock)."""
        found: list[list[Any]] = []
        for line in (self.work / "operator.log").read_text(errors="replace").splitlines():
            if "event loop ran " not in line:
                continue
            try:
                at = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
                ms = float(line.split("event loop ran ", 1)[1].split(" ms", 1)[0])
            except (ValueError, IndexError):
                continue
            if t0 <= at <= t1:
                found.append([at, ms, line.split(" ms late", 1)[1].lstrip(", ")])
        return found

    async def sample_cpu(self, out: dict[str, list[float]], stop: asyncio.Event, every: float = 0.5) -> None:
        """Percent of a core each process used in each ``every`` s: a queue building up behind a busy
        process shows no stall, only a process at 100%."""
        assert self.op_proc is not None and self.api_proc is not None and self.nats.proc is not None
        pids = {"operator": self.op_proc.pid, **{f"standby_{i + 1}": p.pid for i, p in enumerate(self.standbys)},
                "api_server": self.api_proc.pid, "nats_server": self.nats.proc.pid,
                "bench": os.getpid()}
        before = {who: proc_stat(pid)[1] for who, pid in pids.items()}
        stolen = steal_seconds()
        while not stop.is_set():
            t = time.monotonic()
            await asyncio.sleep(every)  # the sampling period
            spent = time.monotonic() - t
            for who, pid in pids.items():
                cpu = proc_stat(pid)[1]
                out.setdefault(who, []).append(round(100 * (cpu - before[who]) / spent))
                before[who] = cpu
            now_stolen = steal_seconds()
            out.setdefault("stolen_by_hypervisor", []).append(round(100 * (now_stolen - stolen) / spent))
            stolen = now_stolen

    async def stalls(self, t0: float, t1: float) -> dict[str, Any]:
        """Stalls of each process on the measured path between t0 and t1 (wall clock): the operator's of 20 ms
        or more (from its log), the API server's and this process's of 10 ms or more."""
        assert self.http is not None
        async with self.http.get(f"{self.control}/stalls", params={"from": str(t0), "to": str(t1)}) as r:
            api = await r.json()
        return {"operator": self.operator_stalls(t0, t1), "api_server": api, "bench": self.pauses.since(t0, t1)}

    # ---------------------------------------------------------------------------- API helpers

    async def counts(self) -> dict[str, int]:
        assert self.http is not None
        async with self.http.get(f"{self.control}/counts") as r:
            return dict(await r.json())

    async def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        assert self.http is not None
        async with self.http.post(self.api + path, json=body) as r:
            if r.status >= 300:
                raise RuntimeError(f"POST {path}: {r.status} {await r.text()}")
            return dict(await r.json())

    async def namespace(self, ns: str) -> None:
        await self.post("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        await self.post(f"{GROUP_PATH}/namespaces/{ns}/automergepolicies", {
            "apiVersion": "oms.dev/v1alpha1", "kind": "AutoMergePolicy", "metadata": {"name": "all"},
            "spec": {"enabled": True, "requireValidation": True, "timeoutHours": 24}})

    async def create_branches(self, ns: str, n: int, concurrency: int = 64) -> list[str]:
        names = [f"b{i:05d}" for i in range(n)]
        sem = asyncio.Semaphore(concurrency)

        async def one(name: str) -> None:
            async with sem:
                await self.post(f"{GROUP_PATH}/namespaces/{ns}/branches", {
                    "apiVersion": "oms.dev/v1alpha1", "kind": "Branch", "metadata": {"name": name},
                    "spec": {"branchName": f"feature/{name}"}})
        await asyncio.gather(*(one(x) for x in names))
        return names

    async def watch_phases(self, ns: str, seen: dict[str, dict[str, float]], stop: asyncio.Event) -> None:
        """Record the first time each branch is seen in each phase (monotonic clock)."""
        assert self.http is not None
        url = f"{self.api}{GROUP_PATH}/namespaces/{ns}/branches?watch=true&timeoutSeconds=600"
        async with self.http.get(url, timeout=aiohttp.ClientTimeout(total=None)) as resp:
            async for line in resp.content:
                now = time.monotonic()
                if stop.is_set():
                    return
                try:
                    obj = json.loads(line)["object"]
                except (ValueError, KeyError):
                    continue
                phase = (obj.get("status") or {}).get("phase")
                if not phase:
                    continue
                phases = seen.setdefault(obj["metadata"]["name"], {})
                if phase == "ACTIVE" and "READY" in phases:
                    phases.setdefault("MERGED", now)  # ACTIVE again after READY: the merge
                phases.setdefault(phase, now)

    async def publish(self, ns: str, kind: str, name: str, idx: str) -> None:
        event = make_event(kind, f"feature/{name}", idx, status="success" if kind == "completed" else None,
                           records_indexed=100, namespace=ns)
        payload, headers = encode_structured(event)
        await self.nc.jetstream().publish(f"funnel.indexing.{kind}", payload, headers=headers)

    @staticmethod
    async def until(pred: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not pred():
            if time.monotonic() > deadline:
                raise TimeoutError(what)
            await asyncio.sleep(0.01)  # polling a condition with a deadline

    def sizes(self) -> list[int]:
        return [100] if self.quick else [100, 1000]

    # ------------------------------------------------------------------------------ profiling

    def start_profiler(self) -> subprocess.Popen[bytes] | None:
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not Path(spy).exists():
            print("--profile: py-spy not found (pip install py-spy); not profiling", file=sys.stderr)
            return None
        assert self.op_proc is not None
        return subprocess.Popen([spy, "record", "--pid", str(self.op_proc.pid), "--format", "raw", "--rate", "200",
                                 "--nonblocking", "--output", str(self.work / "profile.txt")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop_profiler(self, profiler: subprocess.Popen[bytes], n: int, elapsed: float,
                      scenario: str = "throughput") -> None:
        profiler.send_signal(signal.SIGINT)  # py-spy writes its output when interrupted
        try:
            profiler.wait(60)
        except subprocess.TimeoutExpired:
            profiler.kill()
            return
        raw = self.work / "profile.txt"
        if raw.exists():
            RESULTS.mkdir(parents=True, exist_ok=True)
            name = "operator-profile.md" if scenario == "throughput" else f"operator-profile-{scenario}.md"
            if self.keep_raw:  # for digging further than the report goes
                shutil.copy(raw, RESULTS / name.replace(".md", ".raw.txt"))
            (RESULTS / name).write_text(profile_report(raw.read_text(), n, elapsed, 200, scenario))

    # ----------------------------------------------------------------------------- scenarios

    async def throughput(self, n: int) -> dict[str, Any]:
        ns = f"tp{n}"
        await self.namespace(ns)
        seen: dict[str, dict[str, float]] = {}
        stop = asyncio.Event()
        watcher = asyncio.create_task(self.watch_phases(ns, seen, stop))
        names = await self.create_branches(ns, n)
        await self.until(lambda: all("ACTIVE" in seen.get(x, {}) for x in names), 120, "branches initialised")
        # Per-Branch-lifetime writes (kopf's finalizer and bookkeeping annotation) are not per-event writes.
        await self.quiesce()
        profiler = self.start_profiler() if self.profile and n == self.sizes()[-1] else None
        before = await self.counts()
        t0 = time.monotonic()
        for name in names:
            await self.publish(ns, "started", name, f"idx-{name}")
        for name in names:
            await self.publish(ns, "completed", name, f"idx-{name}")

        await self.until(lambda: all("MERGED" in seen.get(x, {}) for x in names), 600, f"{n} branches merged")
        elapsed = time.monotonic() - t0
        after = await self.counts()
        if profiler is not None:
            self.stop_profiler(profiler, n, elapsed)
        stop.set()
        watcher.cancel()
        writes = {k: after.get(k, 0) - before.get(k, 0) for k in after
                  if k not in ("read", "watch", "GET") and after.get(k, 0) - before.get(k, 0)}
        return {"branches": n, "events": 2 * n, "seconds": elapsed, "events_per_s": 2 * n / elapsed,
                "writes_by_kind": writes, "writes_per_branch": sum(writes.values()) / n,
                "writes_per_merged_event": (sum(writes.values()) - writes.get("lock_create", 0)
                                            - n  # the started event's status patch
                                            - n) / n}  # the started event's Event post

    async def latency(self, n: int, rate: float | None) -> dict[str, Any]:
        ns = f"lat{'sat' if rate is None else int(rate)}"
        await self.namespace(ns)
        seen: dict[str, dict[str, float]] = {}
        stop = asyncio.Event()
        watcher = asyncio.create_task(self.watch_phases(ns, seen, stop))
        names = await self.create_branches(ns, n)
        for name in names:
            await self.publish(ns, "started", name, f"idx-{name}")
        await self.until(lambda: all("LOCKED_FOR_WRITE" in seen.get(x, {}) for x in names), 300, "locked")
        await self.quiesce()
        # Steady state: kopf still works through the watch events of the burst of started events (no API
        # writes, so quiesce() does not see it) for a few seconds; measuring from then on would measure that.
        await self.settle()
        sent: dict[str, float] = {}
        t0 = time.monotonic()
        wall0 = time.time()
        cpu: dict[str, list[float]] = {}
        slow_publishes: list[list[float]] = []
        cpu_stop = asyncio.Event()
        sampler = asyncio.create_task(self.sample_cpu(cpu, cpu_stop))
        profiler = self.start_profiler() if self.profile and rate else None
        for i, name in enumerate(names):
            if rate is not None:
                delay = t0 + i / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)  # pacing the publisher at the target rate
            sent[name] = time.monotonic()
            await self.publish(ns, "completed", name, f"idx-{name}")
            # JetStream acknowledges a publish once stored: a slow store shows up here, in no process's stall.
            acked = time.monotonic()
            if acked - sent[name] >= 0.010:
                slow_publishes.append([time.time() - (acked - sent[name]), round(1000 * (acked - sent[name]))])
        await self.until(lambda: all("MERGED" in seen.get(x, {}) for x in names), 300, "latency run merged")
        wall1 = time.time()
        if profiler is not None:
            self.stop_profiler(profiler, n, time.monotonic() - t0, "latency")
        cpu_stop.set()
        await sampler
        stop.set()
        watcher.cancel()
        stalls = await self.stalls(wall0, wall1)
        ready = [(seen[x]["READY"] - sent[x]) * 1000 for x in names]
        active = [(seen[x]["MERGED"] - sent[x]) * 1000 for x in names]
        # The slowest event of each second of the run: stalls show up as a few bad seconds.
        worst: dict[int, float] = {}
        for x, ms in zip(names, active, strict=True):
            second = int(sent[x] - t0)
            worst[second] = max(worst.get(second, 0.0), ms)
        # Stalls of each process by the second of the run they fell in (an event sent in second s is
        # in flight until s + its latency, so a stall early in the next second counts too).
        stalls_by_second: dict[int, dict[str, float]] = {}
        for who, records in (("operator", stalls["operator"]), ("api_server_lag", stalls["api_server"]["lag"]),
                             ("api_server_gc", stalls["api_server"]["gc"]), ("bench_lag", stalls["bench"]["lag"]),
                             ("bench_gc", stalls["bench"]["gc"]), ("nats_publish_ack", slow_publishes)):
            for rec in records:
                second = int(rec[0] - wall0)
                slot = stalls_by_second.setdefault(second, {})
                slot[who] = max(slot.get(who, 0.0), round(float(rec[1])))
        return {"events": n, "rate": rate or "saturation", "worst_to_active_ms_by_second": worst,
                "stalls_ms_by_second": dict(sorted(stalls_by_second.items())), "stalls": stalls,
                "cpu_percent_by_half_second": cpu, "slow_publishes_ms": slow_publishes,
                "events_over_250ms": sum(1 for ms in active if ms > 250.0),
                "to_ready_ms": {"p50": pct(ready, 50), "p95": pct(ready, 95), "p99": pct(ready, 99)},
                "to_active_ms": {"p50": pct(active, 50), "p95": pct(active, 95), "p99": pct(active, 99),
                                 "mean": statistics.fmean(active)}}

    async def ceiling(self, n: int, writes_by_kind: dict[str, int], concurrency: int = 32) -> dict[str, Any]:
        """A bare client doing per branch what the operator did per branch, with the same concurrency."""
        assert self.http is not None
        ns = f"ceil{n}"
        await self.namespace(ns)
        names = await self.create_branches(ns, n)
        per = {k: v / n for k, v in writes_by_kind.items()}
        sem = asyncio.Semaphore(concurrency)
        http = self.http

        async def patch_status(name: str, i: int) -> None:
            async with http.patch(f"{self.api}{GROUP_PATH}/namespaces/{ns}/branches/{name}/status",
                                  json={"status": {"phase": ["LOCKED_FOR_WRITE", "READY", "ACTIVE"][i % 3]}},
                                  headers={"Content-Type": "application/merge-patch+json"}) as r:
                await r.read()

        async def one(name: str) -> None:
            async with sem:
                lock = f"{name}-indexing"
                for _ in range(round(per.get("lock_create", 0))):
                    await self.post(f"{GROUP_PATH}/namespaces/{ns}/branchlocks", {
                        "apiVersion": "oms.dev/v1alpha1", "kind": "BranchLock", "metadata": {"name": lock},
                        "spec": {"branch": name, "lockType": "INDEXING", "holder": "bench"}})
                for i in range(round(per.get("status_patch", 0))):
                    await patch_status(name, i)
                for _ in range(round(per.get("event_post", 0))):
                    await self.post(f"/api/v1/namespaces/{ns}/events", {
                        "apiVersion": "v1", "kind": "Event", "metadata": {"generateName": f"{name}."},
                        "involvedObject": {"kind": "Branch", "name": name, "namespace": ns},
                        "reason": "Bench", "message": "bench", "type": "Normal"})
                for _ in range(round(per.get("lock_delete", 0))):
                    async with http.delete(f"{self.api}{GROUP_PATH}/namespaces/{ns}/branchlocks/{lock}") as r:
                        await r.read()
        t0 = time.monotonic()
        await asyncio.gather(*(one(x) for x in names))
        elapsed = time.monotonic() - t0
        return {"branches": n, "seconds": elapsed, "events_per_s": 2 * n / elapsed,
                "writes_per_s": sum(writes_by_kind.values()) / elapsed}

    async def io_ceiling(self, n: int, concurrency: int = 32) -> dict[str, Any]:
        """A bare client doing all of the operator's I/O per branch, with none of its logic: what the same
        stack (asyncio, aiohttp, nats-py) costs for the reads, writes, watch events and JetStream traffic.

        Per branch, as the operator does them (see bench/results/operator-profile.md): started - fetch and ack
        the event, GET the Branch, create the lock, PATCH status, post an Event, publish 3 audit records;
        completed - fetch and ack, GET, list the locks, delete the lock, PATCH, Event, publish 4 records;
        merge - list the locks, PATCH, Event, publish 3 messages. Two watches (Branches, BranchLocks) are read
        and decoded meanwhile, as kopf does.
        """
        from nats.js.api import ConsumerConfig

        assert self.http is not None
        http = self.http
        ns = f"io{n}"
        await self.namespace(ns)
        names = await self.create_branches(ns, n)
        js = self.nc.jetstream()
        await js.add_stream(name="BENCH_IO", subjects=["bench.io.>"], duplicate_window=120)
        for i, name in enumerate(names):
            for kind in ("started", "completed"):
                await js.publish(f"bench.io.in.{kind}", json.dumps({"branch": name, "i": i}).encode())
        sub = await js.pull_subscribe("bench.io.in.>", durable="bench-io", stream="BENCH_IO",
                                      config=ConsumerConfig(max_ack_pending=4 * concurrency))
        # One fetcher, as the operator has per consumer (a pull subscription takes one fetch at a time).
        inbox: asyncio.Queue[Any] = asyncio.Queue()

        async def fetcher() -> None:
            got = 0
            while got < 2 * n:
                try:
                    batch = await sub.fetch(min(64, 2 * n - got), timeout=1.0)
                except (nats.errors.TimeoutError, TimeoutError):
                    continue
                got += len(batch)
                for m in batch:
                    inbox.put_nowait(m)
        base = f"{self.api}{GROUP_PATH}/namespaces/{ns}"
        merge = {"Content-Type": "application/merge-patch+json"}
        sem = asyncio.Semaphore(concurrency)
        decoded = 0

        async def watch(plural: str, stop: asyncio.Event) -> None:
            nonlocal decoded
            async with http.get(f"{base}/{plural}?watch=true&timeoutSeconds=600",
                                timeout=aiohttp.ClientTimeout(total=None)) as resp:
                async for line in resp.content:
                    if stop.is_set():
                        return
                    json.loads(line)
                    decoded += 1

        async def call(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None) -> Any:
            async with http.request(method, url, json=body, headers=headers) as r:
                return await r.json()

        async def publish(name: str, step: str, count: int) -> None:
            await asyncio.gather(*(js.publish(f"bench.io.out.{step}", b'{"audit":"record"}',
                                              headers={"Nats-Msg-Id": f"{name}-{step}-{k}"}) for k in range(count)))

        async def event(name: str) -> None:
            await call("POST", f"{self.api}/api/v1/namespaces/{ns}/events", {
                "apiVersion": "v1", "kind": "Event", "metadata": {"generateName": f"{name}."},
                "involvedObject": {"kind": "Branch", "name": name, "namespace": ns},
                "reason": "Bench", "message": "bench", "type": "Normal"})

        async def status(name: str, phase: str) -> None:
            await call("PATCH", f"{base}/branches/{name}/status", {"status": {"phase": phase}}, merge)

        async def one(name: str) -> None:
            async with sem:
                lock = f"{name}-indexing"
                msg = await inbox.get()  # started
                await call("GET", f"{base}/branches/{name}")
                await call("POST", f"{base}/branchlocks", {
                    "apiVersion": "oms.dev/v1alpha1", "kind": "BranchLock",
                    "metadata": {"name": lock, "labels": {"oms.dev/branch": name}},
                    "spec": {"branch": name, "lockType": "INDEXING", "holder": "bench"}})
                await status(name, "LOCKED_FOR_WRITE")
                await asyncio.gather(event(name), publish(name, "started", 3))
                await msg.ack()
                msg = await inbox.get()  # completed
                await call("GET", f"{base}/branches/{name}")
                await call("GET", f"{base}/branchlocks?labelSelector=oms.dev%2Fbranch%3D{name}")
                await call("DELETE", f"{base}/branchlocks/{lock}")
                await status(name, "READY")
                await asyncio.gather(event(name), publish(name, "completed", 4))
                await msg.ack()
                await call("GET", f"{base}/branchlocks?labelSelector=oms.dev%2Fbranch%3D{name}")  # merge
                await status(name, "ACTIVE")
                await asyncio.gather(event(name), publish(name, "merged", 3))

        stop = asyncio.Event()
        watchers = [asyncio.create_task(watch(p, stop)) for p in ("branches", "branchlocks")]
        t0 = time.monotonic()
        fetching = asyncio.create_task(fetcher())
        await asyncio.gather(*(one(x) for x in names))
        elapsed = time.monotonic() - t0
        await fetching
        stop.set()
        for w in watchers:
            w.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
        await js.delete_stream("BENCH_IO")
        return {"branches": n, "seconds": elapsed, "events_per_s": 2 * n / elapsed, "watch_events_decoded": decoded}

    async def scale(self, n: int, idle_seconds: float) -> dict[str, Any]:
        ns = "scale"
        await self.namespace(ns)
        await self.create_branches(ns, n)
        # Let the running operator initialise them, then measure a cold start with all of them present.
        await self.until_initialised(ns, n)
        # ... and finish with them (kopf's finalizer and annotation writes lag the phases): otherwise the
        # restarted operator inherits that backlog and the cold start measures the previous run's work.
        await self.quiesce(quiet=3.0, timeout=600)
        self.stop_operator()
        started = self.start_operator()
        await self.wait_ready(timeout=300)
        ready_s = time.monotonic() - started
        # Ready to *act*: an event for the last-created branch is applied.
        last = f"b{n - 1:05d}"
        seen: dict[str, dict[str, float]] = {}
        stop = asyncio.Event()
        watcher = asyncio.create_task(self.watch_phases(ns, seen, stop))
        await self.publish(ns, "started", last, "idx-scale")
        await self.until(lambda: "LOCKED_FOR_WRITE" in seen.get(last, {}), 300, "event on a 10k-branch operator")
        acting_s = time.monotonic() - started
        stop.set()
        watcher.cancel()
        assert self.op_proc is not None
        # Idle means after start-up work is done: the API server sees no requests for 3 s in a row.
        settle_deadline = time.monotonic() + 120
        last_counts, quiet_since = await self.counts(), time.monotonic()
        while time.monotonic() - quiet_since < 3 and time.monotonic() < settle_deadline:
            await asyncio.sleep(0.5)  # sampling the server's counters
            now_counts = await self.counts()
            if ({k: v for k, v in now_counts.items() if k != "watch"}
                    != {k: v for k, v in last_counts.items() if k != "watch"}):
                last_counts, quiet_since = now_counts, time.monotonic()
        # Start-up work can outlast the quiet window without API calls (kopf's first pass over every
        # object): measure in windows until one is near idle, and report how long that took.
        settle_started = time.monotonic()
        for _ in range(30):
            _rss0, cpu0 = proc_stat(self.op_proc.pid)
            t0 = time.monotonic()
            await asyncio.sleep(idle_seconds)  # measuring idle CPU over a fixed window is the point
            rss1, cpu1 = proc_stat(self.op_proc.pid)
            if (cpu1 - cpu0) / (time.monotonic() - t0) < 0.05:
                break
        settled_s = time.monotonic() - settle_started
        return {"branches": n, "start_to_ready_s": ready_s, "start_to_first_event_applied_s": acting_s,
                "rss_mib": rss1 / 1024, "idle_cpu_percent": 100 * (cpu1 - cpu0) / (time.monotonic() - t0),
                "seconds_until_idle": settled_s,
                # Includes the quiet API window and the last (idle) measuring window.
                "start_to_idle_measured_s": time.monotonic() - started}

    async def settle(self, busy: float = 0.10, window: float = 1.0, timeout: float = 120) -> None:
        """Until the operator and the API server each used less than ``busy`` of a core over ``window`` s."""
        assert self.op_proc is not None and self.api_proc is not None
        pids = [self.op_proc.pid, self.api_proc.pid]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            before = [proc_stat(pid)[1] for pid in pids]
            t0 = time.monotonic()
            await asyncio.sleep(window)  # sampling CPU time over a window
            spent = [proc_stat(pid)[1] - cpu for pid, cpu in zip(pids, before, strict=True)]
            if max(spent) / (time.monotonic() - t0) < busy:
                return

    async def quiesce(self, quiet: float = 1.0, timeout: float = 120) -> None:
        """Until the API server has seen no write for ``quiet`` seconds."""
        deadline = time.monotonic() + timeout

        def writes(c: dict[str, int]) -> dict[str, int]:
            return {k: v for k, v in c.items() if k not in ("read", "watch", "GET")}
        last, since = writes(await self.counts()), time.monotonic()
        while time.monotonic() - since < quiet and time.monotonic() < deadline:
            await asyncio.sleep(0.2)  # sampling the server's counters
            now = writes(await self.counts())
            if now != last:
                last, since = now, time.monotonic()

    async def until_initialised(self, ns: str, n: int) -> None:
        assert self.http is not None
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            async with self.http.get(f"{self.api}{GROUP_PATH}/namespaces/{ns}/branches") as r:
                items = (await r.json())["items"]
            if sum(1 for i in items if (i.get("status") or {}).get("phase")) >= n:
                return
            await asyncio.sleep(0.5)  # polling with a deadline
        raise TimeoutError("scale branches never initialised")

    async def run(self) -> dict[str, Any]:
        self.pauses.start()
        self.start_api()
        await self.nats.astart()
        self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200))
        self.nc = await nats.connect(self.nats.url)
        started = self.start_operator()
        await self.wait_ready()
        results: dict[str, Any] = {
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                        "platform": platform.platform()},
            "first_ready_s": time.monotonic() - started,
            "replicas": self.replicas,
        }
        await self.start_standbys()
        if self.only == "scale":
            results["scale"] = await self.scale(self.scale_branches, 5.0 if self.quick else 10.0)
            return results
        if self.only == "latency":  # with ``present`` other Branches in the cluster, and nothing else run before
            if self.present:
                await self.namespace("present")
                await self.create_branches("present", self.present)
                await self.until_initialised("present", self.present)
            results["present_branches"] = self.present
            results["latency"] = [await self.latency(100 if self.quick else 500, 50.0)]
            return results
        results["throughput"] = [await self.throughput(n) for n in self.sizes()]
        big = results["throughput"][-1]
        results["ceiling"] = await self.ceiling(big["branches"], big["writes_by_kind"])
        results["fraction_of_ceiling"] = big["events_per_s"] / results["ceiling"]["events_per_s"]
        results["io_ceiling"] = await self.io_ceiling(big["branches"])
        results["fraction_of_io_ceiling"] = big["events_per_s"] / results["io_ceiling"]["events_per_s"]
        if self.only == "throughput":
            return results
        results["latency"] = [await self.latency(100 if self.quick else 500, 50.0),
                              await self.latency(100 if self.quick else 500, None)]
        results["scale"] = await self.scale(self.scale_branches, 5.0 if self.quick else 10.0)
        return results


# Where the operator's CPU goes, by the first of these parts a sample's stack belongs to. A marker ending in
# "." or "_" matches every frame starting with it. Tasks started with gather() have stacks of their own.
PROFILE_PARTS: list[tuple[str, tuple[str, ...]]] = [
    ("indexing events: parse, apply, commit, publish (IndexingConsumer.handle_msg)", ("IndexingConsumer.handle_msg",)),
    ("merge decisions handed over by the processor (Runtime._merge)", ("Runtime._merge",)),
    ("kopf: watch events of Branches and BranchLocks, our handlers included (queueing.worker)", ("worker",)),
    ("kopf: reading the watch streams (queueing.watcher)", ("watcher",)),
    ("Events and JetStream publishes run beside those (gather tasks)",
     ("MergeReconciler._event_once", "Emitter.", "KubeClient.post_event", "KubeClient.create_event")),
    ("Kubernetes API client continuations (kubernetes_asyncio, aiohttp request tasks)",
     ("KubeClient.", "ApiClient.", "RESTClientObject.", "ClientSession.", "ClientRequest.", "ClientResponse.",
      "BaseConnector.")),
    ("socket reads: HTTP responses, watch streams, NATS (transport callbacks)", ("_SelectorSocketTransport.",)),
    ("NATS client loops (nats-py)", ("Client._",)),
]


def profile_report(raw: str, n: int, elapsed: float, rate: int, scenario: str = "throughput") -> str:
    """A py-spy raw profile (``frame;frame;... count`` per line) as a short Markdown report."""
    parts: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples = int(count)
        total += samples
        frames = [f.split(" (")[0] for f in stack.split(";")]
        for label, markers in PROFILE_PARTS:
            if any(f == m or (m[-1] in "._" and f.startswith(m)) for f in frames for m in markers):
                parts[label] += samples
                break
        else:
            parts["the event loop itself and everything else"] += samples
        for frame in set(frames):
            inclusive[frame] += samples
    if not total:
        return "no samples\n"
    busy = total / (rate * elapsed)
    if scenario == "throughput":
        title = f"throughput run, {n} branches ({2 * n} events)"
        per = "per branch, i.e. per started + completed + merge"
    else:
        title = f"fixed-rate latency run, {n} completed events at 50 events/s"
        per = "per completed event and its merge"
    lines = [f"# Operator CPU profile: {title}, py-spy at {rate} Hz", "",
             f"{total} samples in {elapsed:.1f} s: the operator was on the CPU {100 * busy:.0f}% of the run "
             f"({1000 * total / rate / n:.1f} ms of CPU {per}).", "",
             "| part | share of samples |", "|---|---|"]
    lines += [f"| {label} | {100 * c / total:.1f}% |" for label, c in parts.most_common()]
    lines += ["", "Functions by inclusive share (top 40):", "", "| function | share |", "|---|---|"]
    skip = ("<module>", "main", "run", "Runner.run", "BaseEventLoop.run_until_complete", "BaseEventLoop.run_forever",
            "BaseEventLoop._run_once", "Handle._run", "_cmd_run")
    lines += [f"| `{f}` | {100 * c / total:.1f}% |" for f, c in inclusive.most_common(60) if f not in skip][:40]
    return "\n".join(lines) + "\n"


def table(r: dict[str, Any]) -> str:
    lines = ["| measure | value |", "|---|---|"]
    for t in r.get("throughput", []):
        lines.append(f"| throughput, {t['branches']} branches | {t['events_per_s']:.0f} events/s "
                     f"({t['seconds']:.1f} s) |")
        lines.append(f"| API writes per auto-merged event ({t['branches']}) | {t['writes_per_merged_event']:.2f} "
                     f"(all kinds per branch: {t['writes_by_kind']}) |")
    if "ceiling" in r:
        lines.append(f"| same-run ceiling (bare client, same writes) | {r['ceiling']['events_per_s']:.0f} events/s |")
        lines.append(f"| operator / ceiling | {100 * r['fraction_of_ceiling']:.0f}% |")
    if "io_ceiling" in r:
        lines.append(f"| same-run I/O ceiling (bare client, all of the operator's I/O, no logic) | "
                     f"{r['io_ceiling']['events_per_s']:.0f} events/s |")
        lines.append(f"| operator / I/O ceiling | {100 * r['fraction_of_io_ceiling']:.0f}% |")
    for lat in r.get("latency", []):
        a, b = lat["to_ready_ms"], lat["to_active_ms"]
        lines.append(f"| completed -> READY at {lat['rate']} ev/s, p50/p95/p99 | "
                     f"{a['p50']:.0f} / {a['p95']:.0f} / {a['p99']:.0f} ms |")
        lines.append(f"| completed -> ACTIVE at {lat['rate']} ev/s, p50/p95/p99 | "
                     f"{b['p50']:.0f} / {b['p95']:.0f} / {b['p99']:.0f} ms |")
        worst_stall: dict[str, float] = {}
        for slot in lat.get("stalls_ms_by_second", {}).values():
            for who, ms in slot.items():
                worst_stall[who] = max(worst_stall.get(who, 0.0), ms)
        if "stalls_ms_by_second" in lat:
            stalls = ", ".join(f"{who} {ms:.0f} ms" for who, ms in sorted(worst_stall.items())) or "none"
            lines.append(f"| at {lat['rate']} ev/s: longest stall recorded, by process (≥ 10 ms; operator ≥ 20 ms) "
                         f"| {stalls} |")
        cpu = lat.get("cpu_percent_by_half_second", {}).get("operator")
        if cpu:
            lines.append(f"| at {lat['rate']} ev/s: operator CPU, % of a core (median / max of 0.5 s samples) | "
                         f"{statistics.median(cpu):.0f} / {max(cpu):.0f} |")
    if "scale" not in r:
        return "\n".join(lines)
    s = r["scale"]
    lines.append(f"| {s['branches']} branches: start -> ready / -> first event applied | "
                 f"{s['start_to_ready_s']:.1f} s / {s['start_to_first_event_applied_s']:.1f} s |")
    settled = (f"idle {s['seconds_until_idle']:.0f} s after its API calls stopped" if s["idle_cpu_percent"] < 5
               else f"still busy {s['seconds_until_idle']:.0f} s after its API calls stopped")
    lines.append(f"| {s['branches']} branches: RSS, CPU | {s['rss_mib']:.0f} MiB, "
                 f"{s['idle_cpu_percent']:.1f}% ({settled}) |")
    if "start_to_idle_measured_s" in s:
        lines.append(f"| {s['branches']} branches: start -> end of the idle measurement | "
                     f"{s['start_to_idle_measured_s']:.0f} s |")
    return "\n".join(lines)


async def amain(args: argparse.Namespace) -> None:
    bench = Bench(quick=args.quick, only=args.only, scale_branches=args.scale_branches, profile=args.profile,
                  present=args.present, replicas=args.replicas)
    stolen = steal_seconds()
    try:
        results = await bench.run()
        # Over the whole run, for comparing runs: CPU time this VM's cores spent running other guests.
        results["machine"]["cpu_stolen_by_hypervisor_s"] = round(steal_seconds() - stolen, 1)
    finally:
        if bench.nc is not None:
            await bench.nc.close()
        if bench.http is not None:
            await bench.http.close()
        bench.close()
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.only == "scale":  # a partial run must not replace the recorded full results
        out = RESULTS / f"operator-scale-{bench.scale_branches}.json"
    elif args.only == "latency":
        out = RESULTS / f"operator-latency-{bench.present}.json"
    elif args.only == "throughput":
        out = RESULTS / ("operator-throughput-quick.json" if args.quick else "operator-throughput.json")
    else:
        out = RESULTS / ("operator-quick.json" if args.quick else "operator.json")
    if args.replicas > 1:
        out = out.with_name(f"{out.stem}-replicas-{args.replicas}{out.suffix}")
    out.write_text(json.dumps(results, indent=2) + "\n")
    text = table(results)
    (out.with_suffix(".md")).write_text(text + "\n")
    print(text)
    print(f"\nwritten to {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--only", choices=["scale", "throughput", "latency"], help="run only this scenario")
    parser.add_argument("--present", type=int, default=0, metavar="N",
                        help="with --only latency: Branches created in another namespace first")
    parser.add_argument("--profile", action="store_true",
                        help="sample the operator with py-spy during the largest throughput run (operator-profile.md) "
                             "and the 50 events/s latency run (operator-profile-latency.md); "
                             "BENCH_KEEP_RAW_PROFILE=1 keeps py-spy's raw samples beside them")
    parser.add_argument("--replicas", type=int, default=1, metavar="N",
                        help="run N replicas with leader election, as the chart does for replicaCount > 1")
    parser.add_argument("--scale-branches", type=int, metavar="N",
                        help="Branches in the scale scenario (default 10,000; 1,000 with --quick)")
    asyncio.run(amain(parser.parse_args()))


if __name__ == "__main__":
    main()
