"""Least privilege, proven from what the code does: the real operator (kopf + the operator's own client)
runs every code path that talks to Kubernetes against the embedded API server, whose request log
records each call with its user agent. Each call is mapped to the (apiGroup, resource, verb) that the
Kubernetes authorizer would check, and the result is compared with ``branch_operator.rbac.RULES``
both ways: everything used is granted, and everything granted is used (or is on the allowlist below,
with the reason). ``tests/chart`` proves the chart and the kustomize base grant exactly ``RULES`` (plus
``LEADER_ELECTION_RULES`` in the Lease's namespace when several replicas elect a leader).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import nats
import pytest

from branch_operator import rbac
from branch_operator.api.models import LockType
from branch_operator.clients.kube import USER_AGENT, KubeClient, NotFound
from branch_operator.contracts.funnel_encode import encode_structured, make_event
from branch_operator.domain.locks import lock_body
from branch_operator.embedded.apiserver.server import EmbeddedApiServer, RequestRecord
from branch_operator.embedded.env import EmbeddedEnv, OperatorHandle

from ..waiting import poll

Grant = tuple[str, str, str]  # (apiGroup, resource[/subresource], verb)

# Granted in RULES but reached by no code path of this version, each with the reason it stays.
# An entry that the scenario does use fails the test too (the allowlist must not hide real use).
ALLOWED_UNUSED: dict[Grant, str] = {}

OPERATOR_AGENTS = (USER_AGENT.split("/")[0] + "/", "kopf/")
HARNESS_AGENT = "oms-security-test-harness"


# --------------------------------------------------------------------------------- the mapping


def to_grant(method: str, path: str, query: dict[str, str]) -> Grant | None:
    """(apiGroup, resource[/subresource], verb) as the API server's request-info resolver derives it;
    None for non-resource URLs (discovery, /version, /openapi), which RBAC rules on resources don't cover."""
    parts = [p for p in path.split("/") if p]
    if parts[:2] == ["api", "v1"]:
        group, rest = "", parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 3:
        group, rest = parts[1], parts[3:]
    else:
        return None
    if not rest:
        return None  # a group-version discovery document
    if rest[0] == "namespaces" and len(rest) >= 3:
        rest = rest[2:]  # namespaced: /namespaces/{ns}/{resource}[/{name}[/{subresource}]]
    resource = rest[0]
    name = rest[1] if len(rest) > 1 else None
    subresource = rest[2] if len(rest) > 2 else None
    if subresource:
        resource = f"{resource}/{subresource}"
    watch = query.get("watch", "").lower() in ("1", "true")
    verb = {
        "GET": "watch" if watch else ("get" if name else "list"),
        "HEAD": "get" if name else "list",
        "POST": "create",
        "PUT": "update",
        "PATCH": "patch",
        "DELETE": "delete" if name else "deletecollection",
    }.get(method)
    if verb is None:
        raise AssertionError(f"unexpected method {method} {path}")
    return group, resource, verb


@pytest.mark.parametrize(
    ("method", "path", "query", "grant"),
    [
        ("GET", "/apis/oms.dev/v1alpha1/branches", {"watch": "true"}, ("oms.dev", "branches", "watch")),
        ("GET", "/apis/oms.dev/v1alpha1/branches", {}, ("oms.dev", "branches", "list")),
        ("GET", "/apis/oms.dev/v1alpha1/namespaces/a/branches", {"watch": "1"}, ("oms.dev", "branches", "watch")),
        ("GET", "/apis/oms.dev/v1alpha1/namespaces/a/branches/b", {}, ("oms.dev", "branches", "get")),
        ("PATCH", "/apis/oms.dev/v1alpha1/namespaces/a/branches/b/status", {}, ("oms.dev", "branches/status", "patch")),
        ("POST", "/apis/oms.dev/v1alpha1/namespaces/a/branchlocks", {}, ("oms.dev", "branchlocks", "create")),
        ("DELETE", "/apis/oms.dev/v1alpha1/namespaces/a/branchlocks/l", {}, ("oms.dev", "branchlocks", "delete")),
        ("DELETE", "/apis/oms.dev/v1alpha1/namespaces/a/branchlocks", {}, ("oms.dev", "branchlocks",
                                                                             "deletecollection")),
        ("POST", "/api/v1/namespaces/a/events", {}, ("", "events", "create")),
        ("GET", "/api/v1/namespaces", {}, ("", "namespaces", "list")),
        ("GET", "/api/v1/namespaces/a", {}, ("", "namespaces", "get")),
        ("PUT", "/apis/coordination.k8s.io/v1/namespaces/a/leases/l", {}, ("coordination.k8s.io", "leases", "update")),
        ("GET", "/apis/oms.dev/v1alpha1", {}, None),
        ("GET", "/apis", {}, None),
        ("GET", "/api", {}, None),
        ("GET", "/version", {}, None),
    ],
)
def test_request_to_grant(method: str, path: str, query: dict[str, str], grant: Grant | None) -> None:
    assert to_grant(method, path, query) == grant


def grants(rules: Iterable[rbac.Rule]) -> set[Grant]:
    return {(r.api_group, r.resource, verb) for r in rules for verb in r.verbs}


def used_by_operator(requests: Iterable[RequestRecord]) -> dict[Grant, list[str]]:
    used: dict[Grant, list[str]] = {}
    for r in requests:
        if not r.user_agent.startswith(OPERATOR_AGENTS):
            continue
        grant = to_grant(r.method, r.path, r.query)
        if grant is not None:
            used.setdefault(grant, []).append(f"{r.user_agent.split('/')[0]}: {r.method} {r.path}")
    return used


# --------------------------------------------------------------------------------- the scenario




async def test_rbac_rules_are_exactly_what_the_code_uses(tmp_path: Path) -> None:
    env = EmbeddedEnv(workdir=tmp_path / "env")
    env.api = EmbeddedApiServer(request_log_size=200_000)  # large enough never to drop a request here
    await env.start()
    kube = await KubeClient.connect(str(env.kubeconfig))
    kube.api.user_agent = HARNESS_AGENT  # so the harness's own calls are not counted as the operator's
    ns = "rbac"
    await kube.core.create_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    operator = OperatorHandle(env.settings(default_namespace=ns), env.kubeconfig)
    try:
        await operator.start()
        await _scenario(env, kube, ns)
    finally:
        await kube.close()
        await operator.stop()
        await env.stop()

    requests = list(env.api.requests)
    assert len(requests) < (env.api.requests.maxlen or 0), "the request log wrapped: raise request_log_size"
    agents = {r.user_agent.split("/")[0] for r in requests}
    assert {"oms-branch-operator", "kopf", HARNESS_AGENT} <= agents, agents

    used = used_by_operator(requests)
    granted = grants(rbac.RULES)
    missing = sorted(set(used) - granted)
    assert not missing, "the operator calls what RBAC does not grant:\n" + "\n".join(
        f"  {g}: e.g. {used[g][0]}" for g in missing)
    unused = sorted(granted - set(used) - set(ALLOWED_UNUSED))
    assert not unused, "RBAC grants what no code path uses (remove from rbac.RULES, the chart and "\
        "manifests/base, or allowlist with the reason):\n" + "\n".join(f"  {g}" for g in unused)
    wrongly_allowed = sorted(set(ALLOWED_UNUSED) & set(used))
    assert not wrongly_allowed, f"allowlisted as unused but used: {wrongly_allowed}"
    assert not set(ALLOWED_UNUSED) - granted, "the allowlist names grants that RULES does not have"


async def _scenario(env: EmbeddedEnv, kube: KubeClient, ns: str) -> None:
    """Every path that reaches Kubernetes: start-up, watches, branch initialisation, a lock taken after a
    failed status write (create conflicts, the lock is read back), merge, blocked merge, policy and lock
    changes, failure with every lock released, an admin force-unlock, lock expiry, Branch deletion (the
    finalizer), an unknown branch (listed via the API)."""
    api = env.api
    settings = env.settings(default_namespace=ns)

    async def publish(kind: str, branch_name: str, indexing_id: str, **kw: Any) -> None:
        payload, headers = encode_structured(make_event(kind, branch_name, indexing_id, **kw))
        nc = await nats.connect(env.nats_url)
        try:
            await nc.jetstream().publish(getattr(settings, f"subject_{kind}"), payload, headers=headers)
        finally:
            await nc.close()

    async def phase(name: str, wanted: str) -> dict[str, Any]:
        async def check() -> dict[str, Any] | None:
            obj = await kube.get_branch(ns, name)
            return obj if (obj.get("status") or {}).get("phase") == wanted else None
        found: dict[str, Any] = await poll(check, f"{name} to reach {wanted}")
        return found

    async def branch(name: str, branch_name: str) -> dict[str, Any]:
        await kube.create("branches", ns, {"apiVersion": "oms.dev/v1alpha1", "kind": "Branch",
                                           "metadata": {"name": name}, "spec": {"branchName": branch_name}})
        return await phase(name, "ACTIVE")

    await kube.create("automergepolicies", ns, {
        "apiVersion": "oms.dev/v1alpha1", "kind": "AutoMergePolicy", "metadata": {"name": "features"},
        "spec": {"enabled": True, "branchNamePatterns": ["feature/**"]}})

    async def policy_status() -> bool:  # the operator reports on each policy in its status
        return bool((await kube.get("automergepolicies", ns, "features")).get("status"))
    await poll(policy_status, "the policy's status")

    # 1. Indexing then merge. The first status write fails once, so the redelivery finds its lock
    #    already there (create -> 409 -> get).
    await branch("feature-a", "feature/a")
    api.inject_fault(method="PATCH", path_regex=rf"/namespaces/{ns}/branches/feature-a/status$", status=500)
    await publish("started", "feature/a", "idx-a")
    await phase("feature-a", "LOCKED_FOR_WRITE")
    await publish("completed", "feature/a", "idx-a", records_indexed=5)
    merged = await phase("feature-a", "ACTIVE")
    assert merged["status"]["merge"]["decision"] == "Merged"

    # 2. No matching policy: merge blocked; then a policy arrives (policy watch) and merges it.
    obj = await branch("hotfix-b", "hotfix/b")
    await publish("started", "hotfix/b", "idx-b")
    await phase("hotfix-b", "LOCKED_FOR_WRITE")
    await publish("completed", "hotfix/b", "idx-b")
    await poll(lambda: _decision(kube, ns, "hotfix-b", "Blocked"), "hotfix-b to be blocked")
    # A WRITE lock taken by another service (lock watch), then the policy, then the lock released.
    lock, _ = await kube.create_lock(ns, lock_body(obj, LockType.WRITE, key="editor", holder="oms-editor",
                                                   reason="editing"))
    await kube.create("automergepolicies", ns, {
        "apiVersion": "oms.dev/v1alpha1", "kind": "AutoMergePolicy", "metadata": {"name": "hotfixes"},
        "spec": {"enabled": True, "branchNamePatterns": ["hotfix/**"]}})
    await poll(lambda: _reasons_include(kube, ns, "hotfix-b", "LockHeld"), "the merge to wait for the lock")
    await kube.delete_lock(ns, lock["metadata"]["name"])
    await phase("hotfix-b", "ACTIVE")

    # 3. Failure with a foreign lock: every lock released.
    obj = await branch("feature-c", "feature/c")
    await kube.create_lock(ns, lock_body(obj, LockType.WRITE, key="x", holder="svc", reason="r"))
    await publish("started", "feature/c", "idx-c")
    await phase("feature-c", "LOCKED_FOR_WRITE")
    await publish("failed", "feature/c", "idx-c")
    await phase("feature-c", "ERROR")
    assert await kube.list_locks(ns, "feature-c") == []
    # Asking twice to merge it is refused twice alike: the second Event counts up the first (events: patch).
    for _ in range(2):
        await kube.patch("branches", ns, "feature-c", {"metadata": {"annotations": {
            "oms.dev/merge-request": "now", "oms.dev/requested-by": "admin"}}})

        async def consumed() -> bool:
            branch = await kube.get_branch(ns, "feature-c")
            return "oms.dev/merge-request" not in (branch["metadata"].get("annotations") or {})
        await poll(consumed, "the merge request to be refused")

    async def counted_up() -> bool:
        data = await kube._raw(lambda: kube.core.list_namespaced_event(ns, _preload_content=False))
        return any(e["involvedObject"]["name"] == "feature-c" and e["reason"] == "MergeRequestRefused"
                   and e.get("count", 1) == 2 for e in data["items"])
    await poll(counted_up, "the repeated MergeRequestRefused Event counted up")

    # 4. An admin's force-unlock through annotations (claimed by patching them away).
    obj = await kube.get_branch(ns, "feature-a")
    await kube.create_lock(ns, lock_body(obj, LockType.WRITE, key="stuck", holder="gone-service", reason="r"))
    await kube.patch("branches", ns, "feature-a", {"metadata": {"annotations": {
        "oms.dev/force-unlock": "all", "oms.dev/reason": "holder is gone", "oms.dev/requested-by": "admin"}}})

    async def unlocked() -> bool:
        branch = await kube.get_branch(ns, "feature-a")
        return (not await kube.list_locks(ns, "feature-a")
                and "oms.dev/force-unlock" not in (branch["metadata"].get("annotations") or {}))
    await poll(unlocked, "the force-unlock to be carried out")

    # 5. A lock with a TTL that nobody renews expires; a deleted Branch has its locks released.
    obj = await kube.get_branch(ns, "feature-c")
    await kube.create_lock(ns, lock_body(obj, LockType.MERGE, key="ttl", holder="svc", reason="r", ttl_seconds=1))
    await poll(lambda: _no_locks(kube, ns, "feature-c"), "the lock to expire")
    obj = await kube.get_branch(ns, "hotfix-b")
    await kube.create_lock(ns, lock_body(obj, LockType.WRITE, key="del", holder="svc", reason="r"))
    await kube.delete("branches", ns, "hotfix-b")
    await poll(lambda: _gone(kube, ns, "hotfix-b"), "the Branch to be deleted (finalizer released)")

    # 6. An event for a branch that does not exist: the operator asks the API before giving up.
    before = api.count_requests("GET", f"/namespaces/{ns}/branches")
    await publish("started", "feature/nobody", "idx-n")

    async def listed() -> bool:
        return api.count_requests("GET", f"/namespaces/{ns}/branches") > before
    await poll(listed, "the operator to list branches for an unknown one")
    await poll(lambda: _consumers_idle(env, settings), "every event to be acknowledged")


async def _no_locks(kube: KubeClient, ns: str, name: str) -> bool:
    return not await kube.list_locks(ns, name)


async def _gone(kube: KubeClient, ns: str, name: str) -> bool:
    try:
        await kube.get_branch(ns, name)
    except NotFound:
        return True
    return False


async def _decision(kube: KubeClient, ns: str, name: str, decision: str) -> bool:
    obj = await kube.get_branch(ns, name)
    return bool(((obj.get("status") or {}).get("merge") or {}).get("decision") == decision)


async def _reasons_include(kube: KubeClient, ns: str, name: str, reason: str) -> bool:
    obj = await kube.get_branch(ns, name)
    return reason in (((obj.get("status") or {}).get("merge") or {}).get("reasons") or [])


async def _consumers_idle(env: EmbeddedEnv, settings: Any) -> bool:
    nc = await nats.connect(env.nats_url)
    try:
        js = nc.jetstream()
        for durable in (settings.consumer_started, settings.consumer_completed, settings.consumer_failed):
            info = await js.consumer_info(settings.stream, durable)
            if info.num_ack_pending or info.num_pending:
                return False
        return True
    finally:
        await nc.close()


# ------------------------------------------------------------------------------ high availability


async def _ha_operator_requests(tmp_path: Path, scope: str) -> dict[Grant, list[str]]:
    """What an operator does with leader election on and kopf standalone, as the chart runs every replica
    with replicaCount > 1: watching the whole cluster (``rbac.scope: cluster``) or one namespace
    (``namespaced``). It initialises a Branch (so it acted, which only the replica in charge does) and
    stops gracefully (so a Lease holder releases the Lease)."""
    env = EmbeddedEnv(workdir=tmp_path / "env")
    env.api = EmbeddedApiServer(request_log_size=200_000)
    await env.start()
    kube = await KubeClient.connect(str(env.kubeconfig))
    kube.api.user_agent = HARNESS_AGENT
    ns = "ha"
    await kube.core.create_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    watch = "" if scope == "cluster" else ns
    settings = env.settings(default_namespace=ns, watch_namespaces=watch, leader_election=True,
                            leader_election_namespace=ns, leader_election_identity="replica-0")
    operator = OperatorHandle(settings, env.kubeconfig)
    try:
        await operator.start()
        await kube.create("branches", ns, {"apiVersion": "oms.dev/v1alpha1", "kind": "Branch",
                                           "metadata": {"name": "feature-ha"}, "spec": {"branchName": "feature/ha"}})

        async def initialised() -> bool:
            obj = await kube.get_branch(ns, "feature-ha")
            return (obj.get("status") or {}).get("phase") == "ACTIVE"
        await poll(initialised, "the operator in charge to initialise the Branch")
    finally:
        await kube.close()
        await operator.stop()
        await env.stop()
    return used_by_operator(env.api.requests)


@pytest.mark.parametrize("scope", ["cluster", "namespaced"])
async def test_ha_operator_needs_no_peering_and_nothing_beyond_rules_and_lease(tmp_path: Path, scope: str) -> None:
    """With replicas > 1 the chart turns on leader election and grants ``rbac.LEADER_ELECTION_RULES`` on top
    of ``RULES``, and no kopf peering rules any more: in both RBAC scopes, the operator must reach nothing
    of kopf.dev (a peering object it would wait for) and nothing outside those two sets."""
    used = await _ha_operator_requests(tmp_path, scope)
    peering = sorted(g for g in used if g[0] == "kopf.dev")
    assert not peering, f"kopf peering in use, which the chart neither creates nor grants: {peering}"
    missing = sorted(set(used) - grants(rbac.RULES) - grants(rbac.LEADER_ELECTION_RULES))
    assert not missing, "the HA operator calls what the chart does not grant:\n" + "\n".join(
        f"  {g}: e.g. {used[g][0]}" for g in missing)


async def test_ha_operator_uses_every_leader_election_rule(tmp_path: Path) -> None:
    """The other direction: the operator in charge reads, creates and (renewing, releasing) updates the Lease,
    so every grant of ``rbac.LEADER_ELECTION_RULES`` is used. tests/security/test_rbac_leader_election.py
    proves the same of the elector alone."""
    used = await _ha_operator_requests(tmp_path, "cluster")
    lease = {g for g in used if g[0] == "coordination.k8s.io"}
    assert lease == grants(rbac.LEADER_ELECTION_RULES), sorted(lease)
