"""Kept results (status.pendingResult) against older and newer runs, over a real nats-server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from .conftest import Oms, wait_for

pytestmark = pytest.mark.asyncio(loop_scope="session")

T = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)


def _kept(obj: dict[str, Any]) -> str | None:
    return ((obj.get("status") or {}).get("pendingResult") or {}).get("indexingId")


async def _processed(oms: Oms, event: dict[str, Any]) -> None:
    await wait_for(lambda: [a for a in oms.audits if a.correlation_id == event["id"]],
                   what=f"audit record of {event['type']} {event['id']}")


async def test_an_older_runs_started_does_not_throw_away_a_kept_newer_result(oms: Oms) -> None:
    """completed idx-2 (started 10:05) kept; then started idx-1 (10:00), started idx-2, completed idx-1."""
    await oms.create_policy()
    await oms.create_branch("kept-newer", "feature/kept-newer")
    b = "feature/kept-newer"
    done2 = oms.event("completed", b, "idx-2", records=2, started_at=T + timedelta(minutes=5),
                      completed_at=T + timedelta(minutes=30))
    await oms.publish("completed", done2)
    await oms.wait_branch("kept-newer", lambda o: _kept(o) == "idx-2", what="idx-2's result kept")

    start1 = oms.event("started", b, "idx-1", started_at=T)
    await oms.publish("started", start1)
    await _processed(oms, start1)
    assert _kept(await oms.branch("kept-newer")) == "idx-2"
    assert oms.audits_for(b, "event.stale")[0].correlation_id == start1["id"]

    start2 = oms.event("started", b, "idx-2", started_at=T + timedelta(minutes=5))
    await oms.publish("started", start2)
    await _processed(oms, start2)
    done1 = oms.event("completed", b, "idx-1", records=1, started_at=T, completed_at=T + timedelta(minutes=20))
    await oms.publish("completed", done1)

    merged = await oms.wait_branch(
        "kept-newer", lambda o: (o.get("status") or {}).get("merge", {}).get("decision") == "Merged",
        what="idx-2 applied after its started, and merged")
    assert merged["status"]["indexing"]["indexingId"] == "idx-2"
    assert merged["status"]["indexing"]["recordsIndexed"] == 2
    assert merged["status"].get("pendingResult") is None
    await _processed(oms, done1)
    assert [a.correlation_id for a in oms.audits_for(b, "event.stale")] == [start1["id"], done1["id"]]
    assert await oms.kube.list_locks(oms.namespace, "kept-newer") == []
    assert (await oms.branch("kept-newer"))["status"]["phase"] == "ACTIVE"


async def test_a_kept_result_dropped_by_a_newer_run_is_audited(oms: Oms) -> None:
    await oms.create_branch("kept-older", "feature/kept-older", autoMerge=False)
    b = "feature/kept-older"
    done1 = oms.event("completed", b, "idx-1", started_at=T, completed_at=T + timedelta(minutes=20))
    await oms.publish("completed", done1)
    await oms.wait_branch("kept-older", lambda o: _kept(o) == "idx-1", what="idx-1's result kept")

    start2 = oms.event("started", b, "idx-2", started_at=T + timedelta(minutes=5))
    await oms.publish("started", start2)
    await oms.wait_phase("kept-older", "LOCKED_FOR_WRITE")
    dropped = await wait_for(lambda: oms.audits_for(b, "event.discarded"), what="event.discarded record")
    assert (dropped[0].correlation_id, dropped[0].indexing_id) == (done1["id"], "idx-1")
    assert "idx-2" in (dropped[0].reason or "")
    assert _kept(await oms.branch("kept-older")) is None
