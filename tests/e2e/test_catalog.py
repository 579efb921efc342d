"""The Branch catalog in the running operator: targets that appear later, entries that went stale."""

from __future__ import annotations

from typing import Any

import pytest

from .conftest import Oms

pytestmark = pytest.mark.asyncio(loop_scope="session")


def target_check(obj: dict[str, Any]) -> str:
    checks = ((obj.get("status") or {}).get("merge") or {}).get("checks", [])
    return str(next((c["evidence"] for c in checks if c["name"] == "targetLocks"), ""))


async def test_a_target_branch_created_later_is_seen_by_the_ready_branches_merging_into_it(oms: Oms) -> None:
    # Frozen: the feeder stays READY, so only the new target's appearance can change its decision.
    await oms.create_policy("frozen", freeze={"reason": "hold"})
    await oms.create_branch("feeder", "feature/feeder", targetBranch="release")
    await oms.run_indexing("feature/feeder", "idx-1")
    before = await oms.wait_branch("feeder", lambda o: "has no Branch" in target_check(o), what="target unknown")
    assert target_check(before) == "target release has no Branch in this namespace"

    await oms.create_branch("release-line", "release")
    # Well within the 30 s resync: the new Branch's own watch event re-decides the feeder.
    after = await oms.wait_branch("feeder", lambda o: "Branch release-line" in target_check(o), timeout=5.0,
                                  what="target known")
    assert target_check(after) == "target release (Branch release-line): no locks held"


async def test_a_catalog_entry_for_a_deleted_branch_gives_way_to_the_branch_carrying_the_name(oms: Oms) -> None:
    await oms.create_branch("zz-real", "feature/stale")
    runtime = oms.operator.runtime

    async def stale() -> None:
        # As if "aa-gone" had been listed at start-up and deleted before kopf's watch began: no event
        # ever removes it, and it sorts first, so the catalog answers with it.
        runtime.catalog.prime([{"metadata": {"namespace": oms.namespace, "name": "aa-gone"},
                                "spec": {"branchName": "feature/stale"}}])
        assert runtime.catalog.find(oms.namespace, "feature/stale") == "aa-gone"

    await oms.operator.call(stale())
    await oms.publish("started", oms.event("started", "feature/stale", "idx-1"))
    await oms.wait_phase("zz-real", "LOCKED_FOR_WRITE")
    assert runtime.catalog.find(oms.namespace, "feature/stale") == "zz-real"
    assert not oms.audits_for("feature/stale", "event.unexpected")
