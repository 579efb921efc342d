"""Benchmark of failover between operator replicas, with the chart's configuration and default timings.

Two replicas (``tests/e2e/ha.py``: real ``branch-operator run`` processes with the rendered Deployment's
arguments and environment, lease 10 s, renew deadline 7 s, retry period 0.5 s) against the embedded API
server (in this process) and a real nats-server. Each trial stops the replica in charge and, from the same
moment on, publishes indexing ``started`` events for Branches made for the trial; it then measures, from
the signal:

- ``lease_taken``: the standby's "became leader" log line (its own timestamp);
- ``in_charge``: the standby's /readyz says in charge and ready (its consumers bound), as polled;
- ``event_applied``: the first event published after the signal has been applied (its Branch's phase
  changed to LOCKED_FOR_WRITE, as polled); on a SIGTERM the old replica may still apply it while it drains;
- ``longest_event_latency``: events keep coming (one ``started`` for a Branch of its own every 0.25 s,
  from 1 s before a SIGKILL to 13 s after it; every 0.1 s from 1 s before a SIGTERM to 3 s after it);
  the longest time from publishing one of them after the signal to its being applied, i.e. the longest
  an event waited because of the hand-over;
- ``longest_event_latency_before``: the same for the events published in the second before the signal.
  The signal follows the publishing of one of them by a few milliseconds, so the stopped replica usually
  holds that one: after a SIGKILL it is redelivered only when the consumer's ack wait (the chart's 30 s)
  has passed, where a SIGTERM finishes or hands back what the replica holds.

Modes: ``sigkill`` (a crash: the standby waits for the Lease to expire) and ``sigterm`` (a graceful stop:
the Lease is released). After each trial a new replica (a new pod name, as a Deployment replaces a pod)
is started and awaited Ready as the standby of the next trial. Polling is every 20 ms.

Budgets (docs): within 15 s of a SIGKILL, within 2 s of a SIGTERM.

Usage: python bench/bench_failover.py [--quick] [--trials N] [--only sigkill|sigterm]
       (writes bench/results/failover.json and failover.md and prints the table)
       python bench/bench_failover.py --ack-wait 10 --only sigkill   (another ack wait than the chart's:
       writes failover-ackwait-10.json and .md)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"

from tests.e2e.ha import (  # noqa: E402
    RELEASE_NAMESPACE,
    PodTemplate,
    Publisher,
    Replica,
    create_branch,
    create_namespace,
    lease_holder,
    phases,
)

from branch_operator.clients.kube import KubeClient  # noqa: E402
from branch_operator.embedded.env import EmbeddedEnv  # noqa: E402

POLL = 0.02
METRICS = ("lease_taken", "in_charge", "event_applied", "longest_event_latency", "longest_event_latency_before")
# (seconds of events, one event every so many seconds), from BEFORE seconds before the signal on
FLOW = {"sigkill": (14.0, 0.25), "sigterm": (4.0, 0.1)}
BEFORE = 1.0
BUDGET_S = {"sigkill": 15.0, "sigterm": 2.0}


def render_pod() -> PodTemplate:
    return PodTemplate.rendered({"replicaCount": 2}, Path(tempfile.mkdtemp(prefix="oms-chart-")))


def log_time(replica: Replica, needle: str, after: float) -> float | None:
    """Wall-clock time of the first log line of ``replica`` containing ``needle`` written after ``after``."""
    for line in replica.log.read_text(errors="replace").splitlines():
        if needle not in line:
            continue
        try:
            stamp = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        except ValueError:
            continue
        if stamp >= after:
            return stamp
    return None


async def until(check: Any, timeout: float, what: str) -> float:
    """Poll ``check`` (sync or async) until true; returns the wall-clock time it first was."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = check()
        if asyncio.iscoroutine(done):
            done = await done
        if done:
            return time.time()
        await asyncio.sleep(POLL)  # the measurement's sampling interval
    raise TimeoutError(f"{what} not within {timeout}s")


class Bench:
    def __init__(self, trials: int, modes: tuple[str, ...], ack_wait: str | None = None) -> None:
        self.trials = trials
        self.modes = modes
        self.pod = render_pod()
        self.ack_wait = ack_wait
        if ack_wait is not None:
            self.pod = self.pod.with_value("OMS_ACK_WAIT_SECONDS", ack_wait)
        self.env = EmbeddedEnv()
        self.kube: KubeClient | None = None
        self.replicas: list[Replica] = []
        self.started = 0

    async def new_replica(self) -> Replica:
        self.started += 1
        replica = Replica(self.env, self.pod, f"oms-branch-operator-bench-{self.started:02d}")
        self.replicas.append(replica)
        await replica.start()
        await until(replica.ready, 90, f"{replica.name} Ready")
        return replica

    async def in_charge(self) -> tuple[Replica, Replica]:
        assert self.kube is not None
        settings = self.pod.settings(self.env.nats_url)

        async def settled() -> bool:
            running = [r for r in self.replicas if r.running]
            charged = [r for r in running if await r.in_charge()]
            return len(running) == 2 and len(charged) == 1 and all([await r.ready() for r in running]) \
                and await lease_holder(self.kube, settings) == charged[0].name  # type: ignore[arg-type]
        await until(settled, 60, "one replica in charge, one standby")
        running = [r for r in self.replicas if r.running]
        charged = [await r.in_charge() for r in running]
        leader = running[charged.index(True)]
        return leader, next(r for r in running if r is not leader)

    async def trial(self, mode: str, n: int) -> dict[str, Any]:
        assert self.kube is not None
        kube = self.kube
        settings = self.pod.settings(self.env.nats_url)
        leader, standby = await self.in_charge()
        ns = f"{mode}-{n}"
        await create_namespace(kube, ns)
        window, interval = FLOW[mode]
        names = [f"e{i:03d}" for i in range(round(window / interval))]
        for name in names:
            await create_branch(kube, ns, name)

        async def initialised() -> bool:
            return all(p == "ACTIVE" for p in (await phases(kube, ns)).values())
        await until(initialised, 60, f"{ns}: every Branch initialised")

        published: dict[str, float] = {}
        applied: dict[str, float] = {}

        async def flow(pub: Publisher, start: float) -> None:
            for i, name in enumerate(names):
                await asyncio.sleep(max(0.0, start + i * interval - time.time()))  # the flow's schedule
                await pub.event("started", name)
                published[name] = time.time()

        async def watch() -> bool:
            now = time.time()
            for name, phase in (await phases(kube, ns)).items():
                if phase == "LOCKED_FOR_WRITE":
                    applied.setdefault(name, now)
            return len(applied) == len(names)

        async with Publisher(self.env.nats_url, settings, ns) as pub:
            before = round(BEFORE / interval)  # events published before the signal: some are in hand then
            flowing = asyncio.create_task(flow(pub, time.time()))
            await until(lambda: len(published) >= before, 10, "the flow under way")
            t0 = time.time()
            if mode == "sigkill":
                await leader.kill()
            else:
                leader.terminate()
            in_charge, *_ = await asyncio.gather(
                until(standby.in_charge, 60, "standby in charge"), flowing,
                until(watch, 90, "every event applied"))
        if mode == "sigterm":
            await leader.exited()
        lease_taken = log_time(standby, "became leader of lease", t0)
        latencies = {name: applied[name] - published[name] for name in names}
        after = [name for name in names if published[name] >= t0]
        result = {
            "mode": mode, "trial": n, "stopped": leader.name, "took_over": standby.name,
            "lease_taken": round(lease_taken - t0, 3) if lease_taken else None,
            "in_charge": round(in_charge - t0, 3), "event_applied": round(applied[after[0]] - t0, 3),
            "longest_event_latency": round(max(latencies[name] for name in after), 3),
            "longest_event_latency_before": round(max(latencies[name] for name in names if name not in after), 3),
            "events": len(names), "event_interval_s": interval,
        }
        if mode == "sigterm":
            released = log_time(leader, "released lease", t0)
            result["released"] = round(released - t0, 3) if released else None
        print(f"  {mode} #{n}: " + ", ".join(f"{k} {v}s" for k, v in result.items()
                                             if k in (*METRICS, "released")), flush=True)
        await self.new_replica()  # the Deployment's replacement pod: the next trial's standby
        return result

    async def run(self) -> dict[str, Any]:
        await self.env.start()
        self.kube = await KubeClient.connect(str(self.env.kubeconfig))
        try:
            await create_namespace(self.kube, RELEASE_NAMESPACE)
            await self.new_replica()
            await self.new_replica()
            trials = []
            for mode in self.modes:
                for n in range(1, self.trials + 1):
                    trials.append(await self.trial(mode, n))
            return {"trials": trials, "summary": summarise(trials), "settings": self.timings(),
                    "ack_wait_override": self.ack_wait,
                    "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                                "load_average_at_end": os.getloadavg()}}
        finally:
            await asyncio.gather(*(r.stop() for r in self.replicas))
            await self.kube.close()
            await self.env.stop()

    def timings(self) -> dict[str, str]:
        keys = ("OMS_LEADER_ELECTION_LEASE_DURATION_SECONDS", "OMS_LEADER_ELECTION_RENEW_DEADLINE_SECONDS",
                "OMS_LEADER_ELECTION_RETRY_PERIOD_SECONDS", "OMS_ACK_WAIT_SECONDS", "OMS_FETCH_BATCH")
        return {k: self.pod.value(k) for k in keys}


def summarise(trials: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    out: dict[str, dict[str, dict[str, float]]] = {}
    for mode in sorted({t["mode"] for t in trials}, reverse=True):
        out[mode] = {}
        for metric in (*METRICS, "released"):
            values = [t[metric] for t in trials if t["mode"] == mode and t.get(metric) is not None]
            if values:
                out[mode][metric] = {"min": min(values), "median": round(statistics.median(values), 3),
                                     "max": max(values), "n": len(values)}
    return out


def table(results: dict[str, Any]) -> str:
    names = {"lease_taken": "standby took the Lease", "in_charge": "standby in charge and ready (/readyz)",
             "event_applied": "first event published after the stop applied",
             "longest_event_latency": "longest publish -> applied, events published after the signal",
             "longest_event_latency_before": "longest publish -> applied, events published in the 1 s before it",
             "released": "old replica released the Lease"}
    lines = ["| stop | measure (seconds from the signal) | min | median | max | budget |", "|---|---|---|---|---|---|"]
    for mode, metrics in results["summary"].items():
        for metric, s in metrics.items():
            budget = f"{BUDGET_S[mode]:g} s" if metric.startswith(("event_applied", "longest_event")) else ""
            lines.append(f"| {mode} | {names[metric]} | {s['min']:.2f} | {s['median']:.2f} | {s['max']:.2f} "
                         f"| {budget} |")
    timings = ", ".join(f"{k.removeprefix('OMS_').lower()}={v}" for k, v in results["settings"].items())
    origin = "chart defaults" if results.get("ack_wait_override") is None else \
        f"chart defaults but ack_wait_seconds={results['ack_wait_override']}"
    lines.append("")
    machine = results["machine"]
    lines.append(f"{len(results['trials'])} trials; {origin}: {timings}; "
                 f"{machine['cpus']} CPUs, load average at the end {machine['load_average_at_end']}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 trials of each, for a smoke run")
    parser.add_argument("--trials", type=int, default=5, help="trials of each kind of stop (default 5)")
    parser.add_argument("--only", choices=["sigkill", "sigterm"], help="one kind of stop only")
    parser.add_argument("--ack-wait", metavar="SECONDS",
                        help="instead of the chart's nats.delivery.ackWaitSeconds (writes failover-ackwait-N.*)")
    args = parser.parse_args()
    modes = (args.only,) if args.only else ("sigkill", "sigterm")
    results = asyncio.run(Bench(2 if args.quick else args.trials, modes, args.ack_wait).run())
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / ("failover.json" if args.ack_wait is None else f"failover-ackwait-{args.ack_wait}.json")
    out.write_text(json.dumps(results, indent=2) + "\n")
    text = table(results)
    out.with_suffix(".md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
