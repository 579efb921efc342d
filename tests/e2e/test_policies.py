"""End to end: policies, windows, freezes, dry run, break-glass, simulate and the merge backends.

The first half uses the session's operator (real clock, ``event`` backend). The second half runs its
own environment whose operator has a :class:`ManualClock` and the ``webhook`` backend pointed at a local
aiohttp server standing in for OMS: windows open and freezes end because the test moves the clock, not
because it sleeps.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from io import StringIO
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web

from branch_operator.api.models import (
    ANNOTATION_MERGE_REQUEST,
    ANNOTATION_REQUESTED_BY,
    API_VERSION,
    AutoMergePolicy,
    Branch,
    LockType,
)
from branch_operator.cli.simulate import run as run_simulate
from branch_operator.clients.kube import Invalid
from branch_operator.domain.indexing_event import event_key
from branch_operator.domain.locks import lock_body
from branch_operator.embedded.env import EmbeddedEnv, OperatorHandle
from branch_operator.kit.deadlines import ManualClock

from .conftest import Oms, open_oms, wait_for

pytestmark = pytest.mark.asyncio(loop_scope="session")


def merge_of(obj: dict[str, Any]) -> dict[str, Any]:
    return (obj.get("status") or {}).get("merge") or {}


def phase(obj: dict[str, Any]) -> str | None:
    return (obj.get("status") or {}).get("phase")


def condition(obj: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next((c for c in (obj.get("status") or {}).get("conditions", []) if c["type"] == ctype), {})


def checks(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in merge_of(obj).get("checks", [])}


async def wait_decision(oms: Oms, name: str, decision: str, timeout: float = 10.0) -> dict[str, Any]:
    return await oms.wait_branch(name, lambda o: merge_of(o).get("decision") == decision, timeout,
                                 what=f"{name} decision {decision}")


async def patch_policy(oms: Oms, name: str, spec: dict[str, Any]) -> None:
    await oms.kube.patch(AutoMergePolicy.PLURAL, oms.namespace, name, {"spec": spec})


async def policy_status(oms: Oms, name: str) -> dict[str, Any]:
    return (await oms.kube.get(AutoMergePolicy.PLURAL, oms.namespace, name)).get("status") or {}


async def merged_messages(oms: Oms, branch: str) -> list[tuple[dict[str, str], dict[str, Any]]]:
    out = []
    for headers, data in await oms.stream_messages(oms.settings.branch_events_stream):
        body = json.loads(data)
        if body["type"] == "com.oms.branch.merged" and body["data"]["branch"] == branch \
                and body["data"]["namespace"] == oms.namespace:
            out.append((headers, body))
    return out


async def request_merge(oms: Oms, name: str, reason: str, by: str | None = "alice") -> None:
    annotations = {ANNOTATION_MERGE_REQUEST: reason}
    if by:
        annotations[ANNOTATION_REQUESTED_BY] = by
    await oms.kube.patch("branches", oms.namespace, name, {"metadata": {"annotations": annotations}})


# ----------------------------------------------------------------------------- the session's operator


async def test_policy_applied_after_ready_merges_with_a_full_trace_announced_once(oms: Oms) -> None:
    await oms.create_branch("late", "feature/late")
    completed = await oms.run_indexing("feature/late", "idx-1", records=1250)
    blocked = await wait_decision(oms, "late", "Blocked")
    assert merge_of(blocked)["reasons"] == ["NoMatchingPolicy"]
    assert checks(blocked)["policy"] == {"name": "policy", "passed": False, "reason": "NoMatchingPolicy",
                                         "evidence": "no AutoMergePolicy matches this branch"}

    await oms.create_policy("gitops-applied", branchNamePatterns=["feature/*"])
    merged = await oms.wait_phase("late", "ACTIVE")

    merge = merge_of(merged)
    assert (merge["decision"], merge["policy"], merge["policyGeneration"]) == ("Merged", "gitops-applied", 1)
    assert merge["eventId"] == event_key(completed["source"], completed["id"])
    assert [c["name"] for c in merge["checks"]] == [
        "policy", "target", "freeze", "autoMerge", "validation", "minRecords", "conflicts", "expiry", "locks",
        "targetLocks", "window"]
    assert all(c["passed"] for c in merge["checks"])
    assert merge["mergeId"].startswith("merge-")
    assert merged["status"]["outbox"]["key"] == f"merge:{merge['mergeId']}"  # announced from the merge write
    assert not merge.get("announcedAt")  # no separate write marks it announced

    messages = await wait_for(lambda: merged_messages(oms, "late"), what="com.oms.branch.merged")
    assert [h.get("Nats-Msg-Id") for h, _ in messages] == [f"merged:{merge['mergeId']}"]
    audit = await wait_for(lambda: oms.audits_for("feature/late", "branch.merged"), what="branch.merged audit")
    assert len(audit) == 1 and audit[0].timestamp == datetime.fromisoformat(merge["mergedAt"].replace("Z", "+00:00"))
    # A restarted operator does not know what it published before: it publishes the merge's outbox again
    # (the Branch's next look, e.g. the start-up listing), with the same ids, so nothing is doubled.
    emitter = oms.operator.runtime.emitter
    await wait_for(lambda: emitter.box_sent(merged["status"]["outbox"]), what="the first announcement done")
    emitter._sent.clear()
    republished = []
    original = emitter.republish

    async def counting(messages: Any) -> None:
        batch = list(messages)
        republished.extend(m.msg_id for m in batch)
        await original(batch)
    emitter.republish = counting  # type: ignore[method-assign]
    try:
        await oms.kube.patch("branches", oms.namespace, "late", {"metadata": {"labels": {"touched": "yes"}}})
        await wait_for(lambda: emitter.box_sent(merged["status"]["outbox"]), what="the outbox published again")
    finally:
        emitter.republish = original  # type: ignore[method-assign]
    assert f"merged:{merge['mergeId']}" in republished
    assert len(await merged_messages(oms, "late")) == 1  # JetStream dropped the copy by Nats-Msg-Id
    assert [e["reason"] for e in await oms.k8s_events("late")].count("AutoMerged") == 1

    async def status_written() -> dict[str, Any] | None:  # policy status is written after a short debounce
        st = await policy_status(oms, "gitops-applied")
        return st if st.get("conditions") and st.get("governedBranches") == 1 else None
    status = await wait_for(status_written, what="policy status")
    accepted = next(c for c in status["conditions"] if c["type"] == "Accepted")
    assert (accepted["status"], accepted["reason"]) == ("True", "Valid")
    assert (status["observedGeneration"], status["matchedBranches"], status["governedBranches"]) == (1, 1, 1)
    assert status["lastEvaluationTime"]


async def test_an_announcement_that_fails_after_the_merge_is_retried(oms: Oms) -> None:
    """NATS fails right after the merge's commit (a crash there is the same): the merge stands, and its
    announcement goes out a few seconds later, once."""
    await oms.create_policy("announce", branchNamePatterns=["feature/*"])
    await oms.create_branch("flaky", "feature/flaky")
    emitter = oms.operator.runtime.emitter
    failed: list[str] = []
    original = emitter.send_outbox

    async def failing_once(key: str, messages: Any) -> None:
        batch = list(messages)
        if key.startswith("merge:") and not failed and any('"branch":"flaky"' in m.data for m in batch):
            failed.append(key)
            raise TimeoutError("injected: no ack from JetStream")
        await original(key, batch)
    emitter.send_outbox = failing_once  # type: ignore[method-assign]
    try:
        await oms.run_indexing("feature/flaky", "idx-1", records=10)
        merged = await oms.wait_phase("flaky", "ACTIVE")
        await wait_for(lambda: failed, what="the injected publish failure")
        assert merged["status"]["outbox"]["key"] == failed[0]
        messages = await wait_for(lambda: merged_messages(oms, "flaky"), timeout=15, what="the retried announcement")
    finally:
        emitter.send_outbox = original  # type: ignore[method-assign]
    assert [h.get("Nats-Msg-Id") for h, _ in messages] == [f"merged:{merge_of(merged)['mergeId']}"]
    assert emitter.box_sent(merged["status"]["outbox"])


async def test_disabling_a_policy_stops_merges_and_enabling_it_merges(oms: Oms) -> None:
    await oms.create_policy("switch")
    await patch_policy(oms, "switch", {"enabled": False})
    await oms.create_branch("paused", "feature/paused")
    await oms.run_indexing("feature/paused", "idx-1")
    blocked = await wait_decision(oms, "paused", "Blocked")
    assert merge_of(blocked)["reasons"] == ["AutoMergeDisabled"]
    assert merge_of(blocked)["policyGeneration"] == 2
    assert condition(blocked, "Mergeable")["reason"] == "AutoMergeDisabled"
    assert "policy switch disables auto-merge" in condition(blocked, "Mergeable")["message"]
    [blocked_event] = await wait_for(lambda: _events_with(oms, "paused", "MergeBlocked"), what="MergeBlocked Event")
    # The policy the decision was made under is the Event's related object (kubectl describe shows it).
    assert blocked_event["related"] == {"apiVersion": "oms.dev/v1alpha1", "kind": "AutoMergePolicy",
                                        "name": "switch", "namespace": oms.namespace}

    await patch_policy(oms, "switch", {"enabled": True})
    merged = await oms.wait_phase("paused", "ACTIVE")
    assert merge_of(merged)["policyGeneration"] == 3


async def test_a_freeze_blocks_every_match_until_it_is_lifted(oms: Oms) -> None:
    await oms.create_policy("frozen", freeze={"reason": "release 2.0 code freeze"})
    await oms.create_branch("cold", "feature/cold")
    await oms.run_indexing("feature/cold", "idx-1")
    blocked = await wait_decision(oms, "cold", "Blocked")
    assert merge_of(blocked)["reasons"] == ["Frozen"]
    assert checks(blocked)["freeze"]["evidence"] == "frozen until lifted: release 2.0 code freeze"
    assert "nextEvaluationTime" in merge_of(blocked)  # the timeout still wakes it; the freeze itself never ends

    await patch_policy(oms, "frozen", {"freeze": None})
    await oms.wait_phase("cold", "ACTIVE")


async def test_dry_run_never_merges(oms: Oms) -> None:
    await oms.create_policy("rehearsal", dryRun=True)
    await oms.create_branch("rehearsed", "feature/rehearsed")
    await oms.run_indexing("feature/rehearsed", "idx-1")
    would = await wait_decision(oms, "rehearsed", "WouldMerge")
    assert phase(would) == "READY"
    assert (condition(would, "Mergeable")["status"], condition(would, "Mergeable")["reason"]) == ("True", "DryRun")
    await wait_for(lambda: _events_with(oms, "rehearsed", "WouldMerge"), what="WouldMerge Event")
    # Another look (a lock elsewhere, the resync) changes nothing: still READY, never announced.
    decision = await oms.operator.call(oms.operator.runtime.reconciler.reconcile_key((oms.namespace, "rehearsed")))
    assert decision is not None and decision.value == "WouldMerge"
    assert phase(await oms.branch("rehearsed")) == "READY"
    assert await merged_messages(oms, "rehearsed") == []
    assert not oms.audits_for("feature/rehearsed", "branch.merged")


async def test_a_lock_on_the_target_branch_blocks_until_released(oms: Oms) -> None:
    await oms.create_policy()
    # A Branch for the trunk names a target other than itself (the CRD refuses a self-target).
    target = await oms.create_branch("main-line", "main", targetBranch="release/next", autoMerge=False)
    lock, _ = await oms.kube.create_lock(oms.namespace, lock_body(target, LockType.WRITE, key="release",
                                                                  holder="release-bot", reason="cutting 2.0"))
    await oms.create_branch("feeder", "feature/feeder")
    await oms.run_indexing("feature/feeder", "idx-1")
    blocked = await wait_decision(oms, "feeder", "Blocked")
    assert merge_of(blocked)["reasons"] == ["TargetLockHeld"]
    assert checks(blocked)["targetLocks"]["evidence"] == (
        f"target main (Branch main-line): held: {lock['metadata']['name']}")

    await oms.kube.delete_lock(oms.namespace, lock["metadata"]["name"])
    await oms.wait_phase("feeder", "ACTIVE")


async def test_a_branch_cannot_target_itself(oms: Oms) -> None:
    body = {"apiVersion": API_VERSION, "kind": Branch.KIND, "metadata": {"name": "selfm-one"},
            "spec": {"branchName": "selfm/one", "targetBranch": "selfm/one"}}
    with pytest.raises(Invalid) as refused:
        await oms.kube.create(Branch.PLURAL, oms.namespace, body)
    assert refused.value.status == 422
    assert "spec.targetBranch must differ from spec.branchName" in str(refused.value)

    await oms.create_branch("selfm-two", "selfm/two")
    with pytest.raises(Invalid) as refused:
        await oms.kube.patch(Branch.PLURAL, oms.namespace, "selfm-two", {"spec": {"targetBranch": "selfm/two"}})
    assert refused.value.status == 422
    assert (await oms.kube.get(Branch.PLURAL, oms.namespace, "selfm-two"))["spec"]["targetBranch"] == "main"


async def test_min_records_indexed(oms: Oms) -> None:
    await oms.create_policy(minRecordsIndexed=2000)
    await oms.create_branch("thin", "feature/thin")
    await oms.run_indexing("feature/thin", "idx-1", records=1250)
    blocked = await wait_decision(oms, "thin", "Blocked")
    assert merge_of(blocked)["reasons"] == ["InsufficientRecords"]
    assert checks(blocked)["minRecords"]["evidence"] == "1250 records indexed (minimum 2000)"


async def test_invalid_and_conflicting_policies_are_ignored_as_a_whole(oms: Oms) -> None:
    await oms.create_policy("fallback", priority=1)
    await oms.create_policy("broken", priority=100, enabled=False,
                            mergeWindows=[{"kind": "allow", "schedule": "0 25 * * *", "duration": "1h"}])
    await oms.create_policy("fallback-copy", priority=1)  # the same filters and priority; later by name

    async def rejected(name: str) -> dict[str, Any] | None:
        conds = (await policy_status(oms, name)).get("conditions") or []
        return next((c for c in conds if c["type"] == "Accepted" and c["status"] == "False"), None)

    broken = await wait_for(lambda: rejected("broken"), what="broken policy not accepted")
    assert broken["reason"] == "InvalidSpec" and "mergeWindows[0]" in broken["message"]
    copy = await wait_for(lambda: rejected("fallback-copy"), what="duplicate policy not accepted")
    assert copy["reason"] == "ConflictingPolicy" and "as policy fallback," in copy["message"]

    # The broken policy (priority 100, disabled) is not half-applied: the fallback governs and merges.
    await oms.create_branch("governed", "feature/governed")
    await oms.run_indexing("feature/governed", "idx-1")
    merged = await wait_decision(oms, "governed", "Merged")
    assert phase(merged) == "ACTIVE" and merge_of(merged)["policy"] == "fallback"
    assert (await policy_status(oms, "broken")).get("governedBranches") == 0


async def test_a_re_evaluation_that_changes_nothing_writes_nothing(oms: Oms) -> None:
    await oms.create_policy(minRecordsIndexed=10)
    await oms.create_branch("steady", "feature/steady")
    await oms.run_indexing("feature/steady", "idx-1", records=1)
    blocked = await wait_decision(oms, "steady", "Blocked")
    reconciler = oms.operator.runtime.reconciler  # runs on the operator's own loop: operator.call
    for _ in range(3):
        assert (await oms.operator.call(reconciler.reconcile_key((oms.namespace, "steady")))).value == "Blocked"
    after = await oms.branch("steady")
    assert after["metadata"]["resourceVersion"] == blocked["metadata"]["resourceVersion"]
    assert len(oms.audits_for("feature/steady", "branch.merge_blocked")) == 1


async def test_break_glass_merge_request_bypasses_disabled_and_is_consumed_once(oms: Oms) -> None:
    await oms.create_policy("off", enabled=False)
    await oms.create_branch("urgent", "hotfix/urgent", autoMerge=False)
    await oms.run_indexing("hotfix/urgent", "idx-1")
    await wait_decision(oms, "urgent", "Blocked")

    await request_merge(oms, "urgent", "INC-42: customers cannot log in", by="alice")
    merged = await oms.wait_phase("urgent", "ACTIVE")

    merge = merge_of(merged)
    request = merge["manualRequest"]
    assert (request["reason"], request["requestedBy"], request["outcome"]) == (
        "INC-42: customers cannot log in", "alice", "Merged")
    assert checks(merged)["autoMerge"]["evidence"].endswith("bypassed by merge request from alice")
    annotations = merged["metadata"].get("annotations") or {}
    assert ANNOTATION_MERGE_REQUEST not in annotations and ANNOTATION_REQUESTED_BY not in annotations
    record = (await wait_for(lambda: oms.audits_for("hotfix/urgent", "branch.merged"), what="merge audit"))[0]
    assert record.reason == "ManualMerge"
    assert (record.details["request_reason"], record.details["requested_by"]) == (
        "INC-42: customers cannot log in", "alice")
    requested = await wait_for(lambda: oms.audits_for("hotfix/urgent", "branch.merge_requested"))
    assert requested[0].details["outcome"] == "merged"
    await wait_for(lambda: merged_messages(oms, "urgent"), what="merge announced")
    await wait_for(lambda: _events_with(oms, "urgent", "ManualMerge"), what="ManualMerge Event")


async def test_break_glass_never_overrides_failed_validation_unless_the_policy_allows(oms: Oms) -> None:
    await oms.create_policy("strict", enabled=False)
    await oms.create_branch("broken-run", "hotfix/broken-run")
    await oms.run_indexing("hotfix/broken-run", "idx-1", passed=False, errors=["User.email has no type"])
    await wait_decision(oms, "broken-run", "Blocked")

    await request_merge(oms, "broken-run", "please", by="bob")
    refused = await oms.wait_branch("broken-run", lambda o: bool(merge_of(o).get("manualRequest")),
                                    what="request recorded")
    assert phase(refused) == "READY"
    request = merge_of(refused)["manualRequest"]
    assert (request["reason"], request["requestedBy"], request["outcome"]) == ("please", "bob", "Blocked")
    assert request["message"] == "Merge request blocked: validation failed with 1 error(s)."
    # Later evaluations show the automatic decision again and keep the answer to the request.
    after = await oms.wait_branch("broken-run", lambda o: merge_of(o)["message"].startswith("Auto-merge blocked"))
    assert merge_of(after)["manualRequest"] == request
    assert ANNOTATION_MERGE_REQUEST not in (refused["metadata"].get("annotations") or {})  # consumed
    await wait_for(lambda: _events_with(oms, "broken-run", "MergeRequestRefused"), what="MergeRequestRefused Event")
    record = (await wait_for(lambda: oms.audits_for("hotfix/broken-run", "branch.merge_requested")))[0]
    assert (record.details["outcome"], record.details["requested_by"]) == ("refused", "bob")

    await patch_policy(oms, "strict", {"allowManualMergeWithFailedValidation": True})
    reevaluated = await oms.wait_branch("broken-run", lambda o: merge_of(o).get("policyGeneration") == 2,
                                        what="re-evaluation under the changed policy")
    assert phase(reevaluated) == "READY"  # the policy change alone does not merge: it needs a request
    await request_merge(oms, "broken-run", "accepting the known error", by="bob")
    merged = await oms.wait_phase("broken-run", "ACTIVE")
    assert "accepted for a merge request" in checks(merged)["validation"]["evidence"]


async def test_a_merge_request_on_a_branch_that_is_not_ready_is_refused_and_consumed(oms: Oms) -> None:
    await oms.create_branch("idle", "feature/idle")
    await request_merge(oms, "idle", "merge it", by=None)
    events = await wait_for(lambda: _events_with(oms, "idle", "MergeRequestRefused"), what="refusal Event")
    assert "the branch is ACTIVE" in events[0]["message"]
    obj = await oms.branch("idle")
    assert ANNOTATION_MERGE_REQUEST not in (obj["metadata"].get("annotations") or {})
    assert phase(obj) == "ACTIVE"


async def _events_with(oms: Oms, name: str, reason: str) -> list[dict[str, Any]]:
    return [e for e in await oms.k8s_events(name) if e["reason"] == reason]


async def test_simulate_shows_what_a_proposed_policy_would_do(oms: Oms, tmp_path: Any) -> None:
    await oms.create_policy("live", enabled=False)
    await oms.create_branch("sim-a", "feature/sim-a")
    await oms.create_branch("sim-b", "feature/sim-b")
    await oms.create_branch("sim-c", "chore/sim-c")
    await oms.run_indexing("feature/sim-a", "idx-1")
    await oms.run_indexing("feature/sim-b", "idx-1", passed=False)
    await wait_decision(oms, "sim-a", "Blocked")
    await wait_decision(oms, "sim-b", "Blocked")
    proposed = (
        "apiVersion: oms.dev/v1alpha1\nkind: AutoMergePolicy\nmetadata:\n  name: proposed\n"
        "spec:\n  priority: 10\n  branchNamePatterns: [feature/*]\n"
    )
    out = StringIO()
    code = await run_simulate(proposed, namespace=oms.namespace, kubeconfig=str(oms.env.kubeconfig), out=out)
    text = out.getvalue()
    assert code == 0, text
    assert "Proposed policy proposed" in text and "matches 2 of 3 branches and would govern 2" in text
    rows = {line.split()[0]: line.split() for line in text.splitlines() if line.startswith("sim-")}
    assert rows["sim-a"][3:6] == ["proposed", "Blocked", "Merged"]
    assert rows["sim-b"][3:7] == ["proposed", "Blocked", "Blocked", "ValidationFailed"]
    assert rows["sim-c"][2:4] == ["ACTIVE", "live"]
    assert "    - validation: validation failed with 0 error(s) (event " in text, text
    # Nothing was written: the live decision is unchanged.
    assert merge_of(await oms.branch("sim-a"))["decision"] == "Blocked"

    # The command line, as a person runs it; an invalid proposal exits 1 and says why.
    bad = tmp_path / "bad.yaml"
    bad.write_text(proposed.replace("branchNamePatterns: [feature/*]",
                                    "mergeWindows: [{kind: deny, schedule: '0 25 * * *', duration: 1h}]"))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "branch_operator.cli.main", "simulate", "-f", str(bad), "-n", oms.namespace,
        "--kubeconfig", str(oms.env.kubeconfig), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 1, (stdout, stderr)
    assert b"would NOT be accepted" in stdout and b"outside 0-23" in stdout


# ----------------------------------------------------------- own environment: manual clock, webhook


SATURDAY = datetime(2024, 1, 6, 3, 0, tzinfo=UTC)  # 12:00 in Seoul
MONDAY_0900_SEOUL = datetime(2024, 1, 8, 0, 0, tzinfo=UTC)


@dataclass
class MergeEndpoint:
    """A stand-in for the OMS merge endpoint: records requests, answers as told per branch."""

    answers: dict[str, list[tuple[int, str]]] = field(default_factory=dict)  # branch -> queued answers
    requests: list[tuple[dict[str, str], dict[str, Any]]] = field(default_factory=list)
    runner: web.AppRunner | None = None
    url: str = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/merge", self._merge)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/merge"

    async def _merge(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append((dict(request.headers), body))
        queue = self.answers.get(body["branch"]) or []
        status, text = queue.pop(0) if queue else (200, '{"merged": true}')
        return web.Response(status=status, text=text, content_type="application/json")

    def calls(self, branch: str) -> list[tuple[dict[str, str], dict[str, Any]]]:
        return [(h, b) for h, b in self.requests if b["branch"] == branch]

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@dataclass
class Clocked:
    env: EmbeddedEnv
    operator: OperatorHandle
    clock: ManualClock
    endpoint: MergeEndpoint


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def clocked() -> AsyncIterator[Clocked]:
    endpoint = MergeEndpoint()
    await endpoint.start()
    env = EmbeddedEnv()
    await env.start()
    clock = ManualClock(SATURDAY)
    settings = env.settings(
        merge_backend="webhook", merge_webhook_url=endpoint.url, merge_webhook_retries=2,
        merge_webhook_backoff_seconds=0.01, merge_webhook_timeout_seconds=5, merge_retry_interval_seconds=300,
        reconcile_interval_seconds=3600,  # nothing here may depend on the periodic resync
    )
    operator = OperatorHandle(settings, env.kubeconfig, clock=clock)
    await operator.start()
    yield Clocked(env, operator, clock, endpoint)
    await operator.stop()
    await env.stop()
    await endpoint.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def c_oms(clocked: Clocked) -> AsyncIterator[Oms]:
    clocked.clock.set(SATURDAY)
    async with open_oms(clocked.env, clocked.operator) as h:
        yield h


async def index_at(oms: Oms, branch_name: str, when: datetime, **kw: Any) -> None:
    """One indexing run that completed at ``when`` (the manual clock's time, not the wall clock's)."""
    started = when - timedelta(minutes=5)
    await oms.publish("started", oms.event("started", branch_name, "idx-1", started_at=started))

    async def locked() -> bool:
        return any(lk["spec"].get("indexingId") == "idx-1"
                   for lk in await oms.kube.list_objects("branchlocks", oms.namespace))
    await wait_for(locked, what=f"INDEXING lock of {branch_name}")
    await oms.publish("completed", oms.event("completed", branch_name, "idx-1", started_at=started,
                                             completed_at=when, **kw))


async def test_a_window_opening_merges_a_deferred_branch_without_anyone_touching_it(
    clocked: Clocked, c_oms: Oms
) -> None:
    oms = c_oms
    await oms.create_policy("seoul-office-hours", timeoutHours=72, mergeWindows=[
        {"kind": "allow", "schedule": "0 9 * * 1-5", "duration": "9h", "timeZone": "Asia/Seoul"}])
    await oms.create_branch("weekend", "feature/weekend")
    await index_at(oms, "feature/weekend", SATURDAY)

    deferred = await wait_decision(oms, "weekend", "Deferred")
    merge = merge_of(deferred)
    assert merge["reasons"] == ["OutsideMergeWindow"]
    assert merge["nextEvaluationTime"] == "2024-01-08T00:00:00Z"
    assert checks(deferred)["window"]["evidence"] == (
        "outside every allow window; next opening 2024-01-08T00:00:00Z")
    assert condition(deferred, "Mergeable")["reason"] == "OutsideMergeWindow"
    scheduler = clocked.operator.runtime.scheduler
    # Scheduled right after the write this test has just read: waited for, not raced.
    await wait_for(lambda: scheduler.deadline((oms.namespace, "weekend")) == MONDAY_0900_SEOUL,
                   what="the wake-up at the window's opening")

    clocked.clock.set(MONDAY_0900_SEOUL - timedelta(minutes=1))  # not yet: nothing happens
    assert phase(await oms.branch("weekend")) == "READY" and clocked.endpoint.calls("weekend") == []

    clocked.clock.set(MONDAY_0900_SEOUL)
    merged = await oms.wait_phase("weekend", "ACTIVE")
    calls = clocked.endpoint.calls("weekend")
    assert len(calls) == 1
    headers, body = calls[0]
    assert headers["Idempotency-Key"] == merge_of(merged)["mergeId"]
    assert (body["branch_name"], body["target_branch"], body["policy"]) == (
        "feature/weekend", "main", "seoul-office-hours")
    assert merge_of(merged)["mergedAt"] == "2024-01-08T00:00:00Z"


async def test_a_deny_window_defers_until_it_ends(clocked: Clocked, c_oms: Oms) -> None:
    oms = c_oms
    await oms.create_policy("no-saturday-mornings", mergeWindows=[
        {"kind": "allow", "schedule": "0 0 * * *", "duration": "24h"},
        {"kind": "deny", "schedule": "0 0 * * 6", "duration": "6h"}])
    await oms.create_branch("denied", "feature/denied")
    await index_at(oms, "feature/denied", SATURDAY)
    deferred = await wait_decision(oms, "denied", "Deferred")
    assert "denied by deny '0 0 * * 6' for 6h (UTC)" in checks(deferred)["window"]["evidence"]
    clocked.clock.set(datetime(2024, 1, 6, 6, 0, tzinfo=UTC))
    await oms.wait_phase("denied", "ACTIVE")


async def test_a_freeze_with_an_end_lifts_itself(clocked: Clocked, c_oms: Oms) -> None:
    oms = c_oms
    until = SATURDAY + timedelta(hours=2)
    await oms.create_policy("thaw", freeze={"reason": "migration", "until": "2024-01-06T05:00:00Z"})
    await oms.create_branch("thawing", "feature/thawing")
    await index_at(oms, "feature/thawing", SATURDAY)
    frozen = await wait_decision(oms, "thawing", "Blocked")
    assert merge_of(frozen)["reasons"] == ["Frozen"]
    assert merge_of(frozen)["nextEvaluationTime"] == "2024-01-06T05:00:00Z"
    clocked.clock.set(until)
    merged = await oms.wait_phase("thawing", "ACTIVE")
    assert checks(merged)["freeze"]["evidence"] == "freeze ended at 2024-01-06T05:00:00Z"


async def test_webhook_conflict_records_the_conflicts_and_keeps_the_branch_ready(
    clocked: Clocked, c_oms: Oms
) -> None:
    oms = c_oms
    conflicts = {"conflicts": [{"path": "schema/User.json", "message": "both sides changed email"}]}
    clocked.endpoint.answers["contested"] = [(409, json.dumps(conflicts))]
    await oms.create_policy()
    await oms.create_branch("contested", "feature/contested")
    await index_at(oms, "feature/contested", SATURDAY)
    blocked = await wait_decision(oms, "contested", "Blocked")
    assert phase(blocked) == "READY"
    assert merge_of(blocked)["reasons"] == ["ConflictsDetected"]
    assert blocked["status"]["conflicts"] == conflicts["conflicts"]
    await wait_for(lambda: _events_with(oms, "contested", "MergeConflict"), what="MergeConflict Event")
    assert len(clocked.endpoint.calls("contested")) == 1  # a 409 is an answer, not retried

    # OMS resolves the conflicts (it owns status.conflicts): the branch merges, same idempotency key.
    await oms.kube.patch_branch_status(oms.namespace, "contested", {"conflicts": []}, resource_version=None)
    merged = await oms.wait_phase("contested", "ACTIVE")
    keys = {h["Idempotency-Key"] for h, _ in clocked.endpoint.calls("contested")}
    assert keys == {merge_of(merged)["mergeId"]}


async def test_webhook_outage_fails_loudly_keeps_the_branch_ready_and_retries_later(
    clocked: Clocked, c_oms: Oms
) -> None:
    oms = c_oms
    clocked.endpoint.answers["outage"] = [(503, "unavailable")] * 3
    await oms.create_policy()
    await oms.create_branch("outage", "feature/outage")
    await index_at(oms, "feature/outage", SATURDAY)
    failed = await wait_decision(oms, "outage", "Failed")
    merge = merge_of(failed)
    assert phase(failed) == "READY"
    assert merge["attempts"] == 1
    assert "503" in merge["message"] and "after 3 attempts" in merge["message"]
    assert merge["nextEvaluationTime"] == "2024-01-06T03:05:00Z"
    calls = clocked.endpoint.calls("outage")
    assert len(calls) == 3 and {h["Idempotency-Key"] for h, _ in calls} == {merge["mergeId"]}
    failed_events = await wait_for(lambda: _events_with(oms, "outage", "MergeFailed"), what="MergeFailed Event")
    assert failed_events[0]["type"] == "Warning"
    assert (failed_events[0]["related"]["kind"], failed_events[0]["related"]["name"]) == ("AutoMergePolicy", "default")

    async def notified() -> bool:
        return any(n["type"] == "com.oms.branch.merge_failed" and n["data"].get("branch") == "outage"
                   and n["data"].get("namespace") == oms.namespace
                   for n in await oms.stream_json(oms.settings.notifications_stream))
    await wait_for(notified, what="merge_failed notification")

    # A re-evaluation before the retry time does not hammer the endpoint.
    await clocked.operator.call(clocked.operator.runtime.reconciler.reconcile_key((oms.namespace, "outage")))
    assert len(clocked.endpoint.calls("outage")) == 3

    clocked.clock.set(SATURDAY + timedelta(minutes=5))  # the endpoint answers 200 again by now
    merged = await oms.wait_phase("outage", "ACTIVE")
    assert len(clocked.endpoint.calls("outage")) == 4
    assert merge_of(merged)["decision"] == "Merged"


async def test_a_failed_merge_is_notified_once(clocked: Clocked, c_oms: Oms) -> None:
    """One ``merge_failed`` notification per failed merge on ``oms.notifications.branch``, from the one
    producer of incident notifications (the notifier), not a second copy with another id from the reconciler."""
    oms = c_oms
    clocked.endpoint.answers["paged"] = [(503, "unavailable")] * 3  # every attempt of one execution
    notifier = clocked.operator.runtime.notifier
    delivered: list[tuple[str, str, bool]] = []

    def record(incident: Any, sink: str, ok: bool) -> None:
        if incident.branch == "paged" and incident.namespace == oms.namespace:
            delivered.append((incident.kind, sink, ok))
    notifier.delivered.append(record)
    try:
        await oms.create_policy()
        await oms.create_branch("paged", "feature/paged")
        await index_at(oms, "feature/paged", SATURDAY)
        failed = await wait_decision(oms, "paged", "Failed")
        assert merge_of(failed)["attempts"] == 1
        # Both would-be producers are done: the incident went out, and a reconcile of the Branch waits for
        # the one that recorded the failure (one evaluation per Branch at a time) and, before the retry
        # time, calls nothing.
        await wait_for(lambda: ("merge_failed", "nats", True) in delivered, what="the incident sent to NATS")
        await clocked.operator.call(clocked.operator.runtime.reconciler.reconcile_key((oms.namespace, "paged")))
        assert len(clocked.endpoint.calls("paged")) == 3
    finally:
        notifier.delivered.remove(record)

    sent = []
    for headers, data in await oms.stream_messages(oms.settings.notifications_stream):
        body = json.loads(data)
        if (body["type"] == "com.oms.branch.merge_failed" and body["data"].get("branch") == "paged"
                and body["data"].get("namespace") == oms.namespace):
            sent.append((headers.get("Nats-Msg-Id"), body))
    assert len(sent) == 1, [msg_id for msg_id, _ in sent]
    msg_id, body = sent[0]
    assert msg_id == f"incident:{body['data']['incident']}"
    assert body["data"]["severity"] == "critical"
    assert body["data"]["details"]["merge_id"] == merge_of(failed)["mergeId"]


async def test_a_watch_event_of_a_version_already_decided_on_reads_nothing(oms: Oms) -> None:
    """The Branch watch brings back every version the operator itself wrote; one already decided on is skipped
    without reading the Branch again. Other triggers (here: by name) always read and decide."""
    await oms.create_branch("decided", "feature/decided")
    await oms.kube.patch_branch_status(oms.namespace, "decided", {"phase": "READY"}, resource_version=None)
    await wait_decision(oms, "decided", "Blocked")  # no policy in this namespace
    reconciler = oms.operator.runtime.reconciler
    key = (oms.namespace, "decided")

    async def decided_on_latest() -> dict[str, Any] | None:
        # kopf's own first writes (finalizer, annotations) can land after the decision and make a newer
        # version, which is then decided on again: wait for the version that is current and decided on.
        current = await oms.branch("decided")
        return current if reconciler._decided.get(key) == current["metadata"]["resourceVersion"] else None
    blocked = await wait_for(decided_on_latest, what="the current version decided on")
    path = f"/namespaces/{oms.namespace}/branches/decided"

    def reads() -> int:
        return sum(1 for r in oms.env.api.requests if r.method == "GET" and r.path.endswith(path)
                   and r.user_agent.startswith("oms-branch-operator"))
    before = reads()
    assert await oms.operator.call(reconciler.reconcile(blocked, watched=True)) is None
    assert reads() == before
    assert await oms.operator.call(reconciler.reconcile(blocked)) is not None
    assert reads() == before + 1


async def test_a_result_that_makes_a_branch_ready_is_merged_without_reading_it_again(oms: Oms) -> None:
    """The processor hands its READY write's response to the reconciler, which decides on it: between the
    READY write and the merge write nobody reads the Branch (without the hand-off, the merge waits for the
    READY version's watch event and then reads the Branch). The test itself reads nothing meanwhile: it
    waits on the API server's request log, since its client looks like the operator's."""
    await oms.create_policy()
    await oms.create_branch("handed", "feature/handed")
    await oms.wait_phase("handed", "ACTIVE")  # initialised
    path = f"/namespaces/{oms.namespace}/branches/handed"
    await oms.run_indexing("feature/handed", "idx-1")

    def requests() -> list[Any]:
        return [r for r in list(oms.env.api.requests) if r.path.endswith((path, path + "/status"))]

    def status_write_to(phase: str, after: int = -1) -> int | None:
        return next((i for i, r in enumerate(requests()) if i > after and r.method == "PATCH"
                     and r.path.endswith("/status") and isinstance(r.body, dict)
                     and r.body.get("status", {}).get("phase") == phase), None)

    def merged() -> tuple[int, int] | None:
        ready = status_write_to("READY")
        active = None if ready is None else status_write_to("ACTIVE", after=ready)
        return None if ready is None or active is None else (ready, active)
    ready, active = await wait_for(merged, what="the READY write and then the merge write")
    assert [(r.method, r.path) for r in requests()[ready + 1:active]] == []
