"""A CloudEvent is (source, id): two distinct events that share an id must not share any de-duplication id."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from .conftest import Oms, wait_for

pytestmark = pytest.mark.asyncio(loop_scope="session")

AUDIT_ID = re.compile(r"^audit-oms:branch:[a-z0-9.-]+:[a-z_.]+:\d{8}T\d{6}Z:"
                      r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
AT = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
TWINS = (("twin-eu", "feature/a-b", "funnel-eu"), ("twin-us", "feature-a/b", "funnel-us"))


def _from(oms: Oms, kind: str, branch_name: str, source: str, **kw: Any) -> dict[str, Any]:
    event_id = "evt-42" if kind == "started" else "evt-43"  # the same pair, for each kind
    event = oms.event(kind, branch_name, "idx-1", event_id=event_id, started_at=AT, **kw)
    event["source"] = source
    return event


async def test_same_id_from_two_sources_for_two_same_slug_branches_keeps_every_record(oms: Oms) -> None:
    for name, branch_name, _source in TWINS:
        await oms.create_branch(name, branch_name, autoMerge=False)
    for _name, branch_name, source in TWINS:
        await oms.publish("started", _from(oms, "started", branch_name, source))
    for name, _b, _s in TWINS:
        await oms.wait_phase(name, "LOCKED_FOR_WRITE")

    async def records() -> list[dict[str, Any]] | None:
        stored = [json.loads(body) for _h, body in await oms.stream_messages(oms.settings.audit_stream)]
        mine = [r for r in stored if r.get("namespace") == oms.namespace]
        return mine if len(mine) >= 6 else None
    # indexing.started, branch.state_changed and lock.acquired for each branch: none dropped as a duplicate.
    stored = await wait_for(records, what="6 audit records in the stream")
    assert sorted((r["branch"], r["action"]) for r in stored) == sorted(
        (name, action) for name, _b, _s in TWINS
        for action in ("indexing.started", "branch.state_changed", "lock.acquired"))
    ids = [r["audit_id"] for r in stored]
    assert len(set(ids)) == 6
    assert all(AUDIT_ID.match(i) and i.startswith("audit-oms:branch:feature-a-b:") for i in ids), ids

    # The failures of both runs: one notification each.
    for _name, branch_name, source in TWINS:
        await oms.publish("failed", _from(oms, "failed", branch_name, source))
    for name, _b, _s in TWINS:
        await oms.wait_phase(name, "ERROR")

    async def notices() -> list[dict[str, Any]] | None:
        stored = [json.loads(body) for _h, body in await oms.stream_messages(oms.settings.notifications_stream)]
        mine = [n for n in stored if (n.get("data") or {}).get("namespace") == oms.namespace]
        return mine if len(mine) >= 2 else None
    stored = await wait_for(notices, what="2 notifications")
    assert sorted(n["data"]["branch"] for n in stored) == ["twin-eu", "twin-us"]


async def test_same_id_from_another_source_for_one_branch_is_not_a_duplicate(oms: Oms) -> None:
    await oms.create_branch("twin-one", "feature/twin-one", autoMerge=False)
    first = oms.event("started", "feature/twin-one", "idx-1", event_id="evt-7", started_at=AT)
    first["source"] = "funnel-eu"
    await oms.publish("started", first)
    await oms.wait_phase("twin-one", "LOCKED_FOR_WRITE")
    second = oms.event("failed", "feature/twin-one", "idx-1", event_id="evt-7", started_at=AT)
    second["source"] = "funnel-us"
    await oms.publish("failed", second)
    await oms.wait_phase("twin-one", "ERROR")
    await wait_for(lambda: oms.audits_for("feature/twin-one", "indexing.failed"), what="indexing.failed record")
