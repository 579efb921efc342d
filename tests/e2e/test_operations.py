"""Operating it on call, end to end: the kubectl plugin, admin requests, the lock lifecycle, /metrics,
readiness and notifications, against the embedded API server, a real nats-server and the real operator."""

from __future__ import annotations

import asyncio
import io
import json
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from branch_operator.api.models import FINALIZER, LockType
from branch_operator.domain.locks import lock_body
from branch_operator.domain.timefmt import parse_time
from branch_operator.embedded.env import EmbeddedEnv, OperatorHandle
from branch_operator.embedded.natsserver import free_port
from branch_operator.kubectl_branch import cli as plugin

from ..promtool import check_metrics
from .conftest import Oms, open_oms, wait_for

pytestmark = pytest.mark.asyncio(loop_scope="session")



async def kb(oms: Oms, *argv: str, namespace: bool = True) -> tuple[int, str, str]:
    """`kubectl branch ARGV` in-process, against the test's cluster and namespace."""
    out, err = io.StringIO(), io.StringIO()
    ns = ["-n", oms.namespace] if namespace else []
    code = await plugin.run(["--kubeconfig", str(oms.env.kubeconfig), *ns, *argv], out, err)
    return code, out.getvalue(), err.getvalue()


def status(obj: dict[str, Any]) -> dict[str, Any]:
    return obj.get("status") or {}


def action_of(record: Any) -> str:
    return str(getattr(record.action, "value", record.action))


async def write_lock(oms: Oms, branch: dict[str, Any], key: str = "editor", **kw: Any) -> dict[str, Any]:
    body = lock_body(branch, kw.pop("lock_type", LockType.WRITE), key=key, holder=kw.pop("holder", "oms-editor"),
                     reason=kw.pop("reason", "editing the schema"), **kw)
    lock, _ = await oms.kube.create_lock(oms.namespace, body)
    return lock


async def locks_of(oms: Oms, name: str) -> list[dict[str, Any]]:
    return await oms.kube.list_locks(oms.namespace, name)


async def blocked(oms: Oms, name: str, reason: str) -> dict[str, Any]:
    return await oms.wait_branch(
        name, lambda o: reason in (status(o).get("merge") or {}).get("reasons", []), what=f"{name} blocked by {reason}")


async def annotate(oms: Oms, name: str, annotations: dict[str, str | None]) -> None:
    await oms.kube.patch("branches", oms.namespace, name, {"metadata": {"annotations": annotations}})


async def request_cleared(oms: Oms, name: str) -> dict[str, Any]:
    return await oms.wait_branch(
        name, lambda o: not {"oms.dev/set-state", "oms.dev/force-unlock", "oms.dev/reason"}
        & set(o["metadata"].get("annotations") or {}), what="admin annotations removed")


# ------------------------------------------------------------------------------------ read commands


async def test_list_describe_why_and_locks(oms: Oms) -> None:
    await oms.create_policy()
    branch = await oms.create_branch("feature-invalid", "feature/invalid")
    await write_lock(oms, branch, ttl_seconds=3600)
    await oms.run_indexing("feature/invalid", "idx-7", records=3, passed=False,
                           errors=["ObjectType User: email has no type"])
    await blocked(oms, "feature-invalid", "LockHeld")

    code, out, _ = await kb(oms, "list")
    assert code == 0
    header, *rows = out.splitlines()
    assert header.split() == ["NAME", "BRANCH", "PHASE", "RECORDS", "VALID", "MERGEABLE", "REASONS", "LOCKS", "AGE"]
    row = rows[0].split()
    assert row[:6] + row[7:8] == ["feature-invalid", "feature/invalid", "READY", "3", "false", "False", "1"]
    # Every reason the READY branch is not merging, as `kubectl get branches` prints them.
    assert {"ValidationFailed", "LockHeld"} <= set(json.loads(row[6]))
    code, out, _ = await kb(oms, "list", "-A", namespace=False)  # flags after the command, like kubectl
    assert code == 0 and out.splitlines()[0].split()[0] == "NAMESPACE"
    assert any(line.split()[:2] == [oms.namespace, "feature-invalid"] for line in out.splitlines())

    code, out, _ = await kb(oms, "describe", "feature-invalid")
    assert code == 0, out
    for expected in ("Name:           feature-invalid", "Phase:          READY", "Conditions:", "Mergeable",
                     "Last indexing run:", "Indexing id:  idx-7", "Validation:   FAILED",
                     "ObjectType User: email has no type", "Decision:     Blocked", "Locks:", "oms-editor",
                     "Events:", "IndexingCompleted", "MergeBlocked"):
        assert expected in out, (expected, out)

    code, out, _ = await kb(oms, "why", "feature-invalid")
    assert code == 0
    assert "Decision: Blocked" in out and "Policy:   default" in out
    assert "- ValidationFailed: the last indexing run failed validation" in out
    assert "- LockHeld: a WRITE/MERGE lock is held" in out
    code, out, _ = await kb(oms, "why", "feature-invalid", "-o", "json")
    assert code == 0 and set(json.loads(out)["reasons"]) == {"ValidationFailed", "LockHeld"}

    code, out, _ = await kb(oms, "locks", "feature-invalid")
    assert code == 0
    header, row = out.splitlines()
    assert header.split() == ["NAME", "BRANCH", "TYPE", "HOLDER", "ACQUIRED", "RENEWED", "TTL", "EXPIRES", "REASON"]
    assert row.split()[1:4] == ["feature-invalid", "WRITE", "oms-editor"] and "3600s" in row and " in " in row
    code, out, _ = await kb(oms, "locks")
    assert code == 0 and "feature-invalid" in out


async def test_why_prints_checks_when_present(oms: Oms) -> None:
    await oms.create_branch("checked", "feature/checked", autoMerge=False)
    await oms.run_indexing("feature/checked", "idx-1")
    await blocked(oms, "checked", "AutoMergeDisabled")
    # status.merge.checks comes from the policy engine; written here so `why` is tested on its own.
    obj = await oms.branch("checked")
    merge = dict(status(obj)["merge"])
    merge["checks"] = [{"name": "autoMerge", "passed": False, "reason": "AutoMergeDisabled",
                        "evidence": "spec.autoMerge=false"},
                       {"name": "validation", "passed": True, "evidence": "run idx-1 passed validation"}]
    await oms.kube.patch_branch_status(oms.namespace, "checked", {"merge": merge}, resource_version=None)
    code, out, _ = await kb(oms, "why", "checked")
    assert code == 0
    assert "[FAIL] autoMerge: AutoMergeDisabled" in out and "evidence: spec.autoMerge=false" in out
    assert "[PASS] validation\n" in out and "evidence: run idx-1 passed validation" in out


async def test_unknown_branch_bad_arguments_and_no_cluster_fail_clearly(oms: Oms, tmp_path: Any) -> None:
    for argv in (["describe", "nope"], ["why", "nope"], ["locks", "nope"], ["unlock", "nope", "--reason", "x"],
                 ["set-state", "nope", "ACTIVE", "--reason", "x"], ["merge", "nope", "--reason", "x"]):
        code, out, err = await kb(oms, *argv)
        assert code == 1, (argv, out, err)
        assert err == f'error: branch "nope" not found in namespace "{oms.namespace}"\n', argv
    await oms.create_branch("args", "feature/args")
    code, _, err = await kb(oms, "unlock", "args")
    assert code == 2 and "--reason" in err
    code, _, err = await kb(oms, "set-state", "args", "DONE", "--reason", "x")
    assert code == 2 and "unknown state 'DONE'; one of ACTIVE, LOCKED_FOR_WRITE, READY, ERROR" in err
    code, _, err = await kb(oms, "set-state", "args", "ERROR", "--reason", "  ")
    assert code == 2 and "--reason must say why" in err
    code, _, err = await kb(oms, "describe", "args", "-A")
    assert code == 2 and "does not apply to describe" in err
    code, _, err = await kb(oms, "frobnicate")
    assert code == 2 and "invalid choice" in err

    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{free_port()}"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
        "users": [{"name": "u", "user": {"token": "t"}}]}))
    out_, err_ = io.StringIO(), io.StringIO()
    code = await plugin.run(["--kubeconfig", str(kubeconfig), "describe", "x"], out_, err_)
    assert code == 1 and err_.getvalue().startswith("error: cannot reach the Kubernetes API server")
    out_, err_ = io.StringIO(), io.StringIO()
    code = await plugin.run(["--kubeconfig", str(tmp_path / "missing"), "list"], out_, err_)
    assert code == 1 and err_.getvalue().startswith("error: cannot load Kubernetes configuration")


# ----------------------------------------------------------------------------------- admin: unlock


async def test_unlock_releases_lock_records_and_unblocks_merge(oms: Oms) -> None:
    await oms.create_policy()
    branch = await oms.create_branch("held", "feature/held")
    lock = await write_lock(oms, branch)
    await oms.run_indexing("feature/held", "idx-1")
    await blocked(oms, "held", "LockHeld")

    code, out, err = await kb(oms, "unlock", "held", "--reason", "editor crashed", "--requested-by", "alice")
    assert code == 0, err
    assert out.strip() == f"held: released 1 lock: {lock['metadata']['name']}"
    merged = await oms.wait_phase("held", "ACTIVE")  # nothing blocks the merge any more
    done = status(merged)["lastAdminAction"]
    assert done["action"] == "force-unlock" and done["requestedBy"] == "alice" and done["reason"] == "editor crashed"
    assert not {"oms.dev/force-unlock", "oms.dev/reason"} & set(merged["metadata"].get("annotations") or {})
    assert await locks_of(oms, "held") == []

    record = (await wait_for(lambda: oms.audits_for("feature/held", "admin.force_unlock"), what="audit"))[0]
    assert record.actor == "alice" and record.reason == "editor crashed"
    assert record.details["status"] == "applied" and record.details["released_locks"] == [lock["metadata"]["name"]]
    released = await wait_for(lambda: [a for a in oms.audits_for("feature/held", "lock.released")
                                       if a.actor == "alice"], what="lock.released by alice")
    assert [a.details["lock"] for a in released] == [lock["metadata"]["name"]]
    assert any(e["reason"] == "AdminForceUnlock" and "alice" in e["message"] for e in await oms.k8s_events("held"))
    # The audit command reads the same trail back from JetStream.
    code, out, _ = await kb(oms, "audit", "held", "--nats", oms.env.nats_url, "--action", "admin.force_unlock")
    assert code == 0 and "admin.force_unlock" in out and "alice" in out


async def test_unlock_refusals_change_nothing(oms: Oms) -> None:
    await oms.create_branch("free", "feature/free")
    code, _, err = await kb(oms, "unlock", "free", "--reason", "x")
    assert code == 1 and "holds no locks" in err

    branch = await oms.create_branch("indexing", "feature/indexing")
    await write_lock(oms, branch)
    code, _, err = await kb(oms, "unlock", "indexing", "--lock", "nope", "--reason", "x")
    assert code == 1 and "no lock nope on this branch" in err  # the operator says it now (audited)
    refused = await wait_for(lambda: oms.audits_for("feature/indexing", "admin.force_unlock"), what="audit")
    assert [(r.details["status"], r.details["value"]) for r in refused] == [("refused", "nope")]
    assert "lastAdminAction" not in status(await oms.branch("indexing"))


async def test_unlocking_a_running_runs_indexing_lock_abandons_the_run(oms: Oms) -> None:
    """Force forces: the run's INDEXING lock goes, the run ends (ERROR), and its late results are stale."""
    branch = await oms.create_branch("abandon", "feature/abandon")
    write = await write_lock(oms, branch)
    await oms.publish("started", oms.event("started", "feature/abandon", "idx-run"))
    await oms.wait_phase("abandon", "LOCKED_FOR_WRITE")
    code, out, err = await kb(oms, "unlock", "abandon", "--lock", "INDEXING", "--reason", "Funnel is gone",
                              "--requested-by", "alice")
    assert code == 0, err
    said = "indexing run idx-run abandoned by alice: Funnel is gone"
    assert said in out and "LOCKED_FOR_WRITE -> ERROR" in out
    obj = await oms.wait_phase("abandon", "ERROR")
    assert [lk["metadata"]["name"] for lk in await locks_of(oms, "abandon")] == [write["metadata"]["name"]]
    assert status(obj)["indexing"]["result"] == "abandoned"
    assert next(c for c in status(obj)["conditions"] if c["type"] == "Indexed")["reason"] == "IndexingAbandoned"
    record = (await wait_for(lambda: oms.audits_for("feature/abandon", "admin.force_unlock"), what="audit"))[0]
    assert record.details["status"] == "applied" and (record.from_state, record.to_state) == ("LOCKED_FOR_WRITE",
                                                                                              "ERROR")
    changed = await wait_for(lambda: [a for a in oms.audits_for("feature/abandon", "branch.state_changed")
                                      if a.to_state == "ERROR"], what="the transition audited")
    assert changed[0].reason == "AdminForceUnlock" and changed[0].actor == "alice"
    await wait_for(lambda: [a for a in oms.audits_for("feature/abandon", "lock.released") if a.actor == "alice"],
                   what="lock.released by alice")
    assert any(e["reason"] == "AdminForceUnlock" and said in e["message"] for e in await oms.k8s_events("abandon"))

    # The abandoned run reports back after all: too late, recorded as stale, nothing changes.
    late = oms.event("completed", "feature/abandon", "idx-run")
    await oms.publish("completed", late)
    stale = await wait_for(lambda: [a for a in oms.audits_for("feature/abandon", "event.stale")
                                    if a.correlation_id == late["id"]], what="the late result stale")
    assert stale[0].reason == "run idx-run was abandoned by an admin"
    assert status(await oms.branch("abandon"))["phase"] == "ERROR"


# -------------------------------------------------------------------------------- admin: set-state


async def test_set_state_recovers_error_branch(oms: Oms) -> None:
    branch = await oms.create_branch("problematic-branch", "problematic-branch")
    await write_lock(oms, branch)
    await oms.publish("started", oms.event("started", "problematic-branch", "idx-9"))
    await oms.wait_phase("problematic-branch", "LOCKED_FOR_WRITE")
    await oms.publish("failed", oms.event("failed", "problematic-branch", "idx-9"))
    await oms.wait_phase("problematic-branch", "ERROR")

    code, out, err = await kb(oms, "set-state", "problematic-branch", "ACTIVE", "--reason", "Funnel fixed; abandon run")
    assert code == 0, err
    assert "ERROR -> ACTIVE (abandon the failed run and reopen the branch)" in out
    obj = await oms.branch("problematic-branch")
    st = status(obj)
    assert st["phase"] == "ACTIVE" and st["lastAdminAction"]["action"] == "set-state"
    assert next(c for c in st["conditions"] if c["type"] == "Mergeable")["reason"] == "SetByAdmin"
    changed = await wait_for(lambda: [a for a in oms.audits_for("problematic-branch", "branch.state_changed")
                                      if a.from_state == "ERROR" and a.to_state == "ACTIVE"], what="transition")
    assert len(changed) == 1 and changed[0].reason == "AdminSetState"
    admin_record = (await wait_for(lambda: oms.audits_for("problematic-branch", "admin.set_state"),
                                   what="admin.set_state"))[0]
    assert (admin_record.from_state, admin_record.to_state) == ("ERROR", "ACTIVE")
    assert admin_record.reason == "Funnel fixed; abandon run" and admin_record.actor
    assert any(e["reason"] == "AdminSetState" for e in await oms.k8s_events("problematic-branch"))

    # Refused by the operator (audited), nothing written: same state, and a transition only an indexing run may make.
    code, _, err = await kb(oms, "set-state", "problematic-branch", "ACTIVE", "--reason", "again")
    assert code == 1 and "already ACTIVE" in err
    code, _, err = await kb(oms, "set-state", "problematic-branch", "READY", "--reason", "ship it")
    assert code == 1 and "ACTIVE -> READY is not allowed" in err


async def test_set_state_ends_a_stuck_indexing_run(oms: Oms) -> None:
    await oms.create_branch("stuck", "feature/stuck")
    await oms.publish("started", oms.event("started", "feature/stuck", "idx-lost"))
    await oms.wait_phase("stuck", "LOCKED_FOR_WRITE")
    code, out, err = await kb(oms, "set-state", "stuck", "error", "--reason", "Funnel crashed mid-run")
    assert code == 0, err
    obj = await oms.wait_phase("stuck", "ERROR")
    assert await locks_of(oms, "stuck") == []
    assert next(c for c in status(obj)["conditions"] if c["type"] == "Locked")["status"] == "False"
    assert "released stuck-indexing-" in out


async def test_invalid_annotation_requests_are_cleared_with_a_warning(oms: Oms) -> None:
    """Requests written by hand (kubectl annotate): each invalid one changes nothing but says why."""
    await oms.create_branch("manual", "feature/manual")
    cases = [
        ({"oms.dev/set-state": "READY", "oms.dev/reason": "try"}, "ACTIVE -> READY is not allowed"),
        ({"oms.dev/set-state": "ERROR"}, "needs a reason"),
        ({"oms.dev/set-state": "BROKEN", "oms.dev/reason": "x"}, "unknown state 'BROKEN'"),
        ({"oms.dev/set-state": "ERROR", "oms.dev/force-unlock": "all", "oms.dev/reason": "x"}, "one admin action"),
        ({"oms.dev/force-unlock": "all", "oms.dev/reason": "x"}, "holds no locks"),
    ]
    for request, why in cases:
        before = await oms.branch("manual")
        await annotate(oms, "manual", {**request, "oms.dev/requested-by": "bob"})
        after = await request_cleared(oms, "manual")
        assert status(after)["phase"] == "ACTIVE" and "lastAdminAction" not in status(after)
        assert status(after) == status(before)

        async def warned(why: str = why) -> bool:
            return any(e["reason"] == "AdminActionRefused" and why in e["message"] and "bob" in e["message"]
                       for e in await oms.k8s_events("manual"))
        await wait_for(warned, what=f"Warning Event saying {why!r}")
    # A valid one written by hand is applied; the requester defaults to the last manager (none here).
    await annotate(oms, "manual", {"oms.dev/set-state": "ERROR", "oms.dev/reason": "quarantine"})
    quarantined = await oms.wait_phase("manual", "ERROR")
    assert status(quarantined)["lastAdminAction"]["requestedBy"] == "unknown"


async def test_every_refusal_is_audited(oms: Oms) -> None:
    """Invalid requests written by hand, and requests the plugin sends that the operator refuses: each leaves
    an admin.* record with details.status refused, who asked and why it was refused."""
    await oms.create_branch("refusals", "feature/refusals")
    await oms.wait_phase("refusals", "ACTIVE")

    def refused(action: str) -> list[Any]:
        return [a for a in oms.audits_for("feature/refusals", action) if a.details.get("status") == "refused"]

    await annotate(oms, "refusals", {"oms.dev/set-state": "ERROR", "oms.dev/requested-by": "bob"})
    await request_cleared(oms, "refusals")
    no_reason = (await wait_for(lambda: refused("admin.set_state"), what="refused set-state without a reason"))[0]
    assert no_reason.actor == "bob" and "needs a reason" in no_reason.details["result"]
    assert no_reason.details["value"] == "ERROR"

    await annotate(oms, "refusals", {"oms.dev/set-state": "ERROR", "oms.dev/force-unlock": "all",
                                     "oms.dev/reason": "both", "oms.dev/requested-by": "bob"})
    await request_cleared(oms, "refusals")
    both = await wait_for(lambda: refused("admin.force_unlock"), what="refused force-unlock with set-state")
    assert both[0].reason == "both" and "one admin action" in both[0].details["result"]
    await wait_for(lambda: len(refused("admin.set_state")) == 2, what="the set-state half audited too")

    # What the plugin used to refuse on its own now reaches the operator, which refuses it on the record.
    code, _, err = await kb(oms, "set-state", "refusals", "READY", "--reason", "ship it", "--requested-by", "carol")
    assert code == 1 and "the operator refused" in err and "ACTIVE -> READY is not allowed" in err
    by_carol = await wait_for(lambda: [a for a in refused("admin.set_state") if a.actor == "carol"],
                              what="carol's refused set-state")
    assert by_carol[0].details["value"] == "READY" and by_carol[0].correlation_id
    code, _, err = await kb(oms, "unlock", "refusals", "--reason", "x", "--requested-by", "carol")
    assert code == 1 and "the operator refused" in err and "holds no locks" in err
    await wait_for(lambda: [a for a in refused("admin.force_unlock") if a.actor == "carol"],
                   what="carol's refused force-unlock")
    assert status(await oms.branch("refusals"))["phase"] == "ACTIVE"


async def test_merge_request_annotation(oms: Oms) -> None:
    await oms.create_branch("manual-merge", "feature/manual-merge", autoMerge=False)
    code, _, err = await kb(oms, "merge", "manual-merge", "--reason", "release 1.2")
    assert code == 1 and "only READY branches can be merged" in err
    await oms.run_indexing("feature/manual-merge", "idx-1")
    await blocked(oms, "manual-merge", "AutoMergeDisabled")
    code, out, err = await kb(oms, "merge", "manual-merge", "--reason", "release 1.2", "--requested-by", "carol")
    assert code == 0, err
    assert "merge of manual-merge requested (release 1.2)" in out
    # The reconciler consumes the request (it may already have); until then it reads as the plugin wrote it.
    obj = await oms.branch("manual-merge")
    annotations = obj["metadata"].get("annotations") or {}
    if "oms.dev/merge-request" in annotations:
        assert annotations["oms.dev/merge-request"] == "release 1.2"
        assert annotations["oms.dev/requested-by"] == "carol"


# --------------------------------------------------------------------------------- publish and audit


async def test_publish_and_audit_trail(oms: Oms) -> None:
    await oms.create_branch("audited", "feature/audited", autoMerge=False)
    code, out, err = await kb(oms, "publish", "started", "feature/audited", "--indexing-id", "idx-a",
                              "--nats", oms.env.nats_url)
    assert code == 0, err
    assert re.match(r"published com\.oms\.indexing\.started id=\S+ seq=\d+", out)
    await oms.wait_phase("audited", "LOCKED_FOR_WRITE")
    code, out, err = await kb(oms, "publish", "completed", "feature/audited", "--indexing-id", "idx-a",
                              "--records", "7", "--binary", "--nats", oms.env.nats_url)
    assert code == 0, err
    await oms.wait_phase("audited", "READY")

    async def trail() -> list[dict[str, Any]]:
        code, out, _ = await kb(oms, "audit", "audited", "--nats", oms.env.nats_url, "-o", "json")
        records = [json.loads(line) for line in out.splitlines()] if code == 0 else []
        return records if {"indexing.completed", "lock.released"} <= {r["action"] for r in records} else []
    records = await wait_for(trail, what="the audit trail on the stream")
    assert {r["branch"] for r in records} == {"audited"} and {r["namespace"] for r in records} == {oms.namespace}
    assert [r["action"] for r in records][:2] == ["indexing.started", "branch.state_changed"]
    code, out, _ = await kb(oms, "audit", "audited", "--nats", oms.env.nats_url, "--limit", "1")
    assert code == 0 and len(out.splitlines()) == 2 and out.splitlines()[0].split()[:2] == ["TIME", "ACTION"]

    code, _, err = await kb(oms, "audit", "never-existed", "--nats", oms.env.nats_url)
    assert code == 1 and "not found" in err and "no audit records" in err
    dead = f"nats://127.0.0.1:{free_port()}"
    code, _, err = await kb(oms, "audit", "audited", "--nats", dead)
    assert code == 1 and err.startswith(f"error: cannot connect to NATS at {dead}")
    code, _, err = await kb(oms, "publish", "started", "feature/audited", "--nats", dead)
    assert code == 1 and "cannot publish to NATS" in err


# ------------------------------------------------------------------------------------ lock lifecycle


async def test_leased_lock_is_stamped_and_expires_after_its_ttl(oms: Oms) -> None:
    branch = await oms.create_branch("leased", "feature/leased")
    lock = await write_lock(oms, branch, key="short", ttl_seconds=1)
    name = lock["metadata"]["name"]
    key = (oms.namespace, name)
    forever = await write_lock(oms, branch, key="forever")

    async def gone() -> bool:
        return all(lk["metadata"]["name"] != name for lk in await locks_of(oms, "leased"))
    await wait_for(gone, timeout=10, what="the expired lock deleted")
    record = await wait_for(lambda: oms.audits_for("feature/leased", "lock.expired"), what="lock.expired")
    assert record[0].details["lock"] == name and record[0].details["ttl_seconds"] == 1
    assert record[0].reason == "TTLExpired"
    async def warned() -> list[dict[str, Any]]:
        return [e for e in await oms.k8s_events("leased") if e["reason"] == "LockExpired" and name in e["message"]]
    [expired_event] = await wait_for(warned, what="LockExpired Event")
    assert (expired_event["related"]["kind"], expired_event["related"]["name"]) == ("BranchLock", name)

    async def notified() -> bool:
        return any(n["type"] == "com.oms.branch.lock_expired" and n["data"]["details"]["lock"] == name
                   for n in await oms.stream_json(oms.settings.notifications_stream))
    await wait_for(notified, what="lock_expired notification on NATS")
    # The lock without a TTL has no deadline, and no stamp: it has no lease to start (one write less per lock).
    # Both were seen seconds ago (the leased one was stamped then, and has expired since).
    assert (oms.namespace, forever["metadata"]["name"]) in oms.operator.runtime.lock_lifecycle.held
    assert not (await oms.kube.get("branchlocks", oms.namespace, forever["metadata"]["name"])).get("status")
    assert oms.operator.runtime.lock_lifecycle.scheduler.deadline((oms.namespace, forever["metadata"]["name"])) is None
    assert oms.operator.runtime.lock_lifecycle.scheduler.deadline(key) is None


async def _stamped(oms: Oms, name: str) -> dict[str, Any] | None:
    obj = await oms.kube.get("branchlocks", oms.namespace, name)
    return obj if (obj.get("status") or {}).get("acquiredAt") else None


async def test_renewal_extends_a_lock(oms: Oms) -> None:
    branch = await oms.create_branch("renewed", "feature/renewed")
    lock = await write_lock(oms, branch, key="renew", ttl_seconds=1)
    name = lock["metadata"]["name"]
    await wait_for(lambda: _stamped(oms, name), what="acquiredAt stamped")
    renewed_at = datetime.now(UTC) + timedelta(seconds=1)
    await oms.kube.patch_status("branchlocks", oms.namespace, name,
                                {"renewedAt": renewed_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")}, resource_version=None)

    async def gone() -> bool:
        return not any(lk["metadata"]["name"] == name for lk in await locks_of(oms, "renewed"))
    await wait_for(gone, timeout=15, what="the renewed lock expired")
    # Not before renewedAt + ttl: the renewal moved the deadline.
    expired = (await wait_for(lambda: oms.audits_for("feature/renewed", "lock.expired"), what="lock.expired"))[0]
    assert expired.details["renewed_at"].startswith(renewed_at.strftime("%Y-%m-%dT%H:%M:%S"))
    assert datetime.now(UTC) >= renewed_at + timedelta(seconds=1) - timedelta(milliseconds=50)


async def test_expires_at_follows_stamp_and_renewal(oms: Oms) -> None:
    branch = await oms.create_branch("expiring", "feature/expiring")
    lock = await write_lock(oms, branch, key="exp", ttl_seconds=3600)
    name = lock["metadata"]["name"]

    async def expiry() -> tuple[datetime, datetime] | None:
        st = (await oms.kube.get("branchlocks", oms.namespace, name)).get("status") or {}
        if not st.get("expiresAt"):
            return None
        return parse_time(st["expiresAt"]), parse_time(st.get("renewedAt"))  # type: ignore[return-value]

    first, renewed = await wait_for(expiry, what="status.expiresAt written with the stamp")
    assert first == renewed + timedelta(seconds=3600)
    later = (datetime.now(UTC) + timedelta(minutes=10)).replace(microsecond=0)
    await oms.kube.patch_status("branchlocks", oms.namespace, name, {"renewedAt": later.strftime("%Y-%m-%dT%H:%M:%SZ")},
                                resource_version=None)

    async def moved() -> datetime | None:
        got = await expiry()
        return got[0] if got and got[0] == later + timedelta(seconds=3600) else None
    await wait_for(moved, what="status.expiresAt moved by the renewal")


async def test_deleting_a_branch_releases_and_audits_its_locks(oms: Oms) -> None:
    branch = await oms.create_branch("doomed", "feature/doomed")
    lock = await write_lock(oms, branch)
    await oms.wait_branch("doomed", lambda o: FINALIZER in (o["metadata"].get("finalizers") or []),
                          what="the operator's finalizer on the Branch")
    await oms.kube.delete("branches", oms.namespace, "doomed")

    async def deleted() -> bool:
        try:
            await oms.branch("doomed")
        except Exception:
            return True
        return False
    await wait_for(deleted, what="the Branch gone once its finalizer ran")
    assert await locks_of(oms, "doomed") == []
    records = await wait_for(lambda: oms.audits_for("feature/doomed", "lock.released"), what="lock.released")
    assert [(r.reason, r.details["lock"]) for r in records] == [("BranchDeleted", lock["metadata"]["name"])]
    # Its audit trail outlives it.
    code, out, _ = await kb(oms, "audit", "doomed", "--nats", oms.env.nats_url)
    assert code == 0 and "BranchDeleted" in out


# ------------------------------------------------------------------------------------------ metrics


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one Prometheus sample (0 when absent)."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        metric, _, raw = head.partition("{")
        if metric != name:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', raw))
        if all(got.get(k) == v for k, v in labels.items()):
            return float(value)
    return 0.0


async def scrape(url: str, path: str = "/metrics") -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url + path) as resp:
        return resp.status, await resp.text()


async def test_metrics_show_what_the_scenarios_moved(oms: Oms) -> None:
    url = oms.operator.runtime.http_url
    assert url, "the embedded operator serves /metrics on a free port"
    _, before = await scrape(url)
    p = "oms_branch_operator_"

    # Scenario 1 (merged), 2 (failed), 3 (blocked), and a poison message.
    await oms.create_policy()
    await oms.create_branch("m-ok", "feature/m-ok")
    await oms.run_indexing("feature/m-ok", "idx-1", records=1250)
    await oms.wait_phase("m-ok", "ACTIVE")
    await oms.create_branch("m-bad", "m-bad")
    await oms.publish("started", oms.event("started", "m-bad", "idx-2"))
    await oms.wait_phase("m-bad", "LOCKED_FOR_WRITE")
    await oms.publish("completed", oms.event("completed", "m-bad", "idx-2", status="failed", passed=False))
    await oms.wait_phase("m-bad", "ERROR")
    await oms.create_branch("m-invalid", "feature/m-invalid")
    await oms.run_indexing("feature/m-invalid", "idx-3", passed=False)
    await blocked(oms, "m-invalid", "ValidationFailed")
    await oms.publish_raw(oms.settings.subject_completed, b'{"id": "metrics-poison", ')
    await wait_for(lambda: oms.audits_for(action="event.rejected"), what="the poison message rejected")

    async def moved() -> str | None:
        _, text = await scrape(url)
        return text if sample(text, p + "merges_total", result="merged") > sample(before, p + "merges_total",
                                                                                   result="merged") else None
    after = await wait_for(moved, what="merges_total to move")

    def delta(name: str, **labels: str) -> float:
        return sample(after, p + name, **labels) - sample(before, p + name, **labels)

    assert delta("events_received_total", type="started") >= 3
    assert delta("events_received_total", type="completed") >= 3
    assert delta("events_applied_total", type="started") >= 3
    assert delta("events_applied_total", type="completed") >= 3
    assert delta("state_transitions_total", from_state="ACTIVE", to_state="LOCKED_FOR_WRITE") >= 3
    assert delta("state_transitions_total", from_state="LOCKED_FOR_WRITE", to_state="READY") >= 2
    assert delta("state_transitions_total", from_state="READY", to_state="ACTIVE") >= 1
    assert delta("state_transitions_total", from_state="LOCKED_FOR_WRITE", to_state="ERROR") >= 1
    assert delta("merges_total", result="merged") >= 1
    assert delta("merge_blocks_total", reason="ValidationFailed") >= 1
    assert delta("events_rejected_total", type="completed", reason="InvalidJSON") >= 1
    assert delta("event_processing_seconds_count", type="completed") >= 3
    assert delta("indexing_duration_seconds_count", result="completed") >= 2
    assert delta("indexing_duration_seconds_count", result="failed") >= 1
    assert delta("indexed_records_total") >= 1250
    assert sample(after, p + "nats_connected") == 1
    assert sample(after, p + "ready", check="nats") == 1
    assert f'{p}consumer_pending_messages{{consumer="{oms.settings.consumer_completed}"}}' in after
    assert f'{p}locks_held{{lock_type="INDEXING"}}' in after
    # The stall monitor runs in every operator: its timer ticked while the scenarios ran.
    assert delta("event_loop_lag_seconds_count") >= 1
    # What Prometheus expects of any exporter, on the real operator's output with every family populated.
    assert sample(after, "process_cpu_seconds_total") > 0 and sample(after, p + "build_info") == 1
    assert "_created" not in after
    assert check_metrics(after) == ""


# ------------------------------------------------- a separate environment: NATS outages, notifications


class Webhook:
    """A local HTTP receiver standing in for Slack or an incident tool; the first ``fail`` calls get 503."""

    def __init__(self, fail: int = 0) -> None:
        self.received: list[dict[str, Any]] = []
        self.attempts = 0
        self.fail = fail
        self.port = free_port()
        self.runner: web.AppRunner | None = None

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return f"http://127.0.0.1:{self.port}/hook"

    async def _hook(self, request: web.Request) -> web.Response:
        self.attempts += 1
        if self.attempts <= self.fail:
            return web.Response(status=503, text="try later")
        self.received.append({"body": await request.json(), "key": request.headers.get("Idempotency-Key")})
        return web.Response(status=204)

    def kinds(self, branch: str) -> list[str]:
        return [r["body"]["kind"] for r in self.received if r["body"].get("branch") == branch]

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def ops_env() -> AsyncIterator[tuple[EmbeddedEnv, OperatorHandle, Webhook]]:
    hook = Webhook(fail=1)
    url = await hook.start()
    env = EmbeddedEnv()
    await env.start()
    operator = OperatorHandle(env.settings(notify_webhook_url=url, notify_blocked_after_seconds=1.0,
                                           notify_webhook_retries=3), env.kubeconfig)
    await operator.start()
    yield env, operator, hook
    await operator.stop()
    await env.stop()
    await hook.stop()


async def test_notifications_one_per_incident_to_nats_and_webhook(
    ops_env: tuple[EmbeddedEnv, OperatorHandle, Webhook],
) -> None:
    env, operator, hook = ops_env
    async with open_oms(env, operator) as oms:
        # An indexing failure (the first webhook call gets a 503 and is retried), published twice.
        await oms.create_branch("failing", "feature/failing")
        await oms.publish("started", oms.event("started", "feature/failing", "idx-f"))
        await oms.wait_phase("failing", "LOCKED_FOR_WRITE")
        failed = oms.event("failed", "feature/failing", "idx-f")
        await oms.publish("failed", failed)
        await oms.publish("failed", failed)
        await oms.wait_phase("failing", "ERROR")
        await wait_for(lambda: hook.kinds("failing"), what="the failure on the webhook")
        assert hook.attempts >= 2  # retried after the 503

        # A merge blocked longer than the threshold (1 s here).
        await oms.create_branch("stalled", "feature/stalled", autoMerge=False)
        await oms.run_indexing("feature/stalled", "idx-s")
        await blocked(oms, "stalled", "NoMatchingPolicy")
        await wait_for(lambda: hook.kinds("stalled"), what="the blocked merge on the webhook")

        # A failed merge (written as the merge backend would record it).
        await oms.create_branch("merge-fails", "feature/merge-fails", autoMerge=False)
        await oms.run_indexing("feature/merge-fails", "idx-m")
        obj = await blocked(oms, "merge-fails", "NoMatchingPolicy")
        merge = {**status(obj)["merge"], "decision": "Failed", "message": "OMS answered 500"}
        await oms.kube.patch_branch_status(oms.namespace, "merge-fails", {"merge": merge}, resource_version=None)
        await wait_for(lambda: "merge_failed" in hook.kinds("merge-fails"), what="the failed merge on the webhook")

        # An expired lock.
        branch = await oms.create_branch("lease", "feature/lease")
        await write_lock(oms, branch, key="k", ttl_seconds=1)
        await wait_for(lambda: hook.kinds("lease"), what="the expired lock on the webhook")

        await wait_for(lambda: oms.consumer_idle(oms.settings.consumer_failed), what="both copies acknowledged")
        assert hook.kinds("failing") == ["indexing_failed"]  # once, though the event came twice
        assert hook.kinds("stalled") == ["merge_blocked"]
        assert hook.kinds("lease") == ["lock_expired"]
        body = next(r for r in hook.received if r["body"]["branch"] == "failing")
        assert body["body"]["severity"] == "critical" and body["body"]["namespace"] == oms.namespace
        assert body["key"] == body["body"]["incident"]

        kinds = [(n["type"], n["data"].get("branch")) for n in await oms.stream_json(oms.settings.notifications_stream)]
        assert kinds.count(("com.oms.branch.indexing_failed", "failing")) == 1  # the processor's; not doubled
        assert ("com.oms.branch.merge_blocked", "stalled") in kinds
        assert ("com.oms.branch.merge_failed", "merge-fails") in kinds
        assert ("com.oms.branch.lock_expired", "lease") in kinds
        _, text = await scrape(operator.runtime.http_url)
        assert sample(text, "oms_branch_operator_notifications_total", kind="indexing_failed", sink="webhook",
                      result="sent") == 1
        assert sample(text, "oms_branch_operator_notifications_total", kind="lock_expired", sink="nats",
                      result="sent") >= 1


async def test_readiness_follows_nats_down_and_back(ops_env: tuple[EmbeddedEnv, OperatorHandle, Webhook]) -> None:
    env, operator, _ = ops_env
    url = operator.runtime.http_url
    assert (await scrape(url, "/readyz"))[0] == 200
    await asyncio.to_thread(env.nats.stop)
    try:
        async def not_ready() -> dict[str, Any] | None:
            code, text = await scrape(url, "/readyz")
            return json.loads(text) if code == 503 else None
        body = await wait_for(not_ready, timeout=15, what="/readyz to turn 503 while NATS is down")
        assert body["checks"]["nats"] is False and body["checks"]["kubernetes"] is True
        _, text = await scrape(url)
        assert sample(text, "oms_branch_operator_nats_connected") == 0
        assert (await scrape(url, "/healthz"))[0] == 200  # alive: not a reason to restart the pod
    finally:
        await asyncio.to_thread(env.nats.start)

    async def ready() -> bool:
        return (await scrape(url, "/readyz"))[0] == 200
    await wait_for(ready, timeout=30, what="/readyz back to 200 after NATS returned")
    # And it consumes again.
    async with open_oms(env, operator) as oms:
        await oms.create_branch("after-outage", "feature/after-outage")
        await oms.publish("started", oms.event("started", "feature/after-outage", "idx-o"))
        await oms.wait_phase("after-outage", "LOCKED_FOR_WRITE", timeout=20)
