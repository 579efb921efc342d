"""The Branch catalog (catalog.py) and the handlers that keep and read it.

The catalog replaced four kopf indices; these tests pin what those indices answered (find by OMS name,
READY Branches, READY Branches by target, OMS name of a Branch) through every kind of change, and
compare it with a brute-force model over random event sequences.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import kopf
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from branch_operator.api.models import Branch
from branch_operator.clients.kube import NotFound
from branch_operator.controllers.branch_names import BranchNameClaims
from branch_operator.controllers.catalog import BranchCatalog
from branch_operator.controllers.triggers import MergeTriggers
from branch_operator.handlers import branches as handlers
from branch_operator.handlers import locks as lock_handlers


def branch(name: str, branch_name: str | None = None, *, ns: str = "ns", target: str | None = None,
           phase: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"branchName": branch_name if branch_name is not None else name}
    if target is not None:
        spec["targetBranch"] = target
    body: dict[str, Any] = {"metadata": {"namespace": ns, "name": name}, "spec": spec}
    if phase is not None:
        body["status"] = {"phase": phase}
    return body


# ------------------------------------------------------------------------------------- phases


def test_a_new_branch_is_found_but_not_ready() -> None:
    c = BranchCatalog()
    assert c.observe("ADDED", branch("b1", "feature/x")) is True
    assert c.find("ns", "feature/x") == "b1"
    assert c.branch_name_of("ns", "b1") == "feature/x"
    assert c.ready() == [] and not c.is_ready("ns", "b1")
    assert c.ready_by_target("ns", "main") == []


def test_ready_in_and_out() -> None:
    c = BranchCatalog()
    c.observe("ADDED", branch("b1", phase="ACTIVE"))
    assert c.observe("MODIFIED", branch("b1", phase="READY")) is False  # a phase change claims no new name
    assert c.ready() == [("ns", "b1")] and c.is_ready("ns", "b1")
    assert c.ready_by_target("ns", "main") == ["b1"]  # targetBranch defaults to main
    for phase in ("ACTIVE", "LOCKED_FOR_WRITE", "ERROR", None):
        c.observe("MODIFIED", branch("b1", phase=phase))
        assert c.ready() == [] and not c.is_ready("ns", "b1")
        assert c.ready_by_target("ns", "main") == []
        assert c.find("ns", "b1") == "b1"  # still there, only not READY
        c.observe("MODIFIED", branch("b1", phase="READY"))
        assert c.ready() == [("ns", "b1")]


def test_rename_moves_the_name_and_claims_it() -> None:
    c = BranchCatalog()
    c.observe("ADDED", branch("b1", "old", phase="READY", target="dev"))
    assert c.observe("MODIFIED", branch("b1", "new", phase="READY", target="dev")) is True
    assert c.find("ns", "old") is None
    assert c.find("ns", "new") == "b1"
    assert c.branch_name_of("ns", "b1") == "new"
    assert c.ready_by_target("ns", "dev") == ["b1"]
    assert c.observe("MODIFIED", branch("b1", "new", phase="READY", target="dev")) is False  # unchanged


def test_target_change_of_a_ready_branch() -> None:
    c = BranchCatalog()
    c.observe("ADDED", branch("b1", phase="READY", target="dev"))
    c.observe("MODIFIED", branch("b1", phase="READY", target="release"))
    assert c.ready_by_target("ns", "dev") == []
    assert c.ready_by_target("ns", "release") == ["b1"]
    assert c.ready() == [("ns", "b1")]


def test_delete_forgets_everything() -> None:
    c = BranchCatalog()
    c.observe("ADDED", branch("b1", "x", phase="READY", target="dev"))
    c.observe("DELETED", branch("b1", "x", phase="READY", target="dev"))
    assert len(c) == 0
    assert c.find("ns", "x") is None and c.branch_name_of("ns", "b1") is None
    assert c.ready() == [] and c.ready_by_target("ns", "dev") == []
    # Seen again after deletion: a new Branch, claiming its name again.
    assert c.observe("ADDED", branch("b1", "x")) is True


def test_delete_uses_what_the_catalog_knew_not_the_deleted_body() -> None:
    # The DELETED body can differ from the last event handled (kopf batches events): nothing may linger.
    c = BranchCatalog()
    c.observe("ADDED", branch("b1", "x", phase="READY", target="dev"))
    c.observe("DELETED", branch("b1", "y", phase="ACTIVE", target="other"))
    assert c.find("ns", "x") is None and c.ready() == [] and c.ready_by_target("ns", "dev") == []


def test_forget_of_an_unknown_branch_is_harmless() -> None:
    c = BranchCatalog()
    c.forget("ns", "nope")
    c.observe("DELETED", branch("nope"))
    assert len(c) == 0


# ------------------------------------------------------------------------------- prime, names


def test_prime_then_the_watch_listing_then_events() -> None:
    c = BranchCatalog()
    c.prime([branch("b1", "x", phase="READY"), branch("b2", "y", phase="ACTIVE", target="x")])
    assert c.find("ns", "x") == "b1" and c.ready() == [("ns", "b1")]
    # kopf's own first listing (type None) repeats what the start-up list said: no new claims.
    assert c.observe(None, branch("b1", "x", phase="READY")) is False
    assert c.observe(None, branch("b2", "y", phase="ACTIVE", target="x")) is False
    # Later events replace what the list said.
    c.observe("MODIFIED", branch("b2", "y", phase="READY", target="x"))
    assert c.ready_by_target("ns", "x") == ["b2"]
    assert c.ready() == [("ns", "b1"), ("ns", "b2")]


def test_several_branches_with_one_branch_name() -> None:
    c = BranchCatalog()
    for name in ("b3", "b1", "b2"):  # insertion order must not matter
        c.observe("ADDED", branch(name, "shared"))
    assert c.find("ns", "shared") == "b1"
    c.observe("DELETED", branch("b1", "shared"))
    assert c.find("ns", "shared") == "b2"
    c.observe("MODIFIED", branch("b2", "elsewhere"))
    assert c.find("ns", "shared") == "b3"
    assert c.find("ns", "elsewhere") == "b2"


def test_namespaces_are_separate() -> None:
    c = BranchCatalog()
    c.observe("ADDED", branch("b1", "x", ns="a", phase="READY"))
    c.observe("ADDED", branch("b1", "y", ns="b", phase="READY"))
    assert c.find("a", "x") == "b1" and c.find("b", "x") is None
    assert c.ready() == [("a", "b1"), ("b", "b1")]
    assert c.ready_by_target("a", "main") == ["b1"] and c.ready_by_target("c", "main") == []
    c.forget("a", "b1")
    assert c.ready() == [("b", "b1")] and c.branch_name_of("b", "b1") == "y"


# ------------------------------------------------------------------ against a brute-force model

names = st.sampled_from(["b1", "b2", "b3", "b4"])
branch_names = st.sampled_from(["main", "dev", "x"])
phases = st.sampled_from([None, "ACTIVE", "LOCKED_FOR_WRITE", "READY", "ERROR"])
events = st.one_of(
    st.tuples(st.sampled_from(["ADDED", "MODIFIED", None]), st.sampled_from(["n1", "n2"]), names, branch_names,
              st.one_of(st.none(), branch_names), phases),
    st.tuples(st.just("DELETED"), st.sampled_from(["n1", "n2"]), names, branch_names, st.none(), phases),
    st.tuples(st.just("FORGET"), st.sampled_from(["n1", "n2"]), names, st.just(""), st.none(), st.none()),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(events, max_size=40))
def test_property_matches_a_scan_of_every_branch(script: list[tuple[Any, ...]]) -> None:
    c = BranchCatalog()
    model: dict[tuple[str, str], dict[str, Any]] = {}
    for type_, ns, name, bn, target, phase in script:
        body = branch(name, bn, ns=ns, target=target, phase=phase)
        if type_ == "FORGET":
            c.forget(ns, name)
            model.pop((ns, name), None)
            continue
        before = model.get((ns, name))
        claimed = c.observe(type_, body)
        if type_ == "DELETED":
            model.pop((ns, name), None)
            assert claimed is False
        else:
            model[(ns, name)] = body
            assert claimed == (before is None or before["spec"]["branchName"] != bn)

    def phase_of(b: dict[str, Any]) -> Any:
        return (b.get("status") or {}).get("phase")

    assert len(c) == len(model)
    assert c.ready() == sorted(k for k, b in model.items() if phase_of(b) == "READY")
    for ns in ("n1", "n2"):
        for bn in ("main", "dev", "x"):
            found = sorted(n for (n_ns, n), b in model.items() if n_ns == ns and b["spec"]["branchName"] == bn)
            assert c.find(ns, bn) == (found[0] if found else None)
            assert c.ready_by_target(ns, bn) == sorted(
                n for (n_ns, n), b in model.items()
                if n_ns == ns and phase_of(b) == "READY" and b["spec"].get("targetBranch", "main") == bn)
        for name in ("b1", "b2", "b3", "b4"):
            b = model.get((ns, name))
            assert c.branch_name_of(ns, name) == (b["spec"]["branchName"] if b else None)
            assert c.is_ready(ns, name) == (b is not None and phase_of(b) == "READY")


# ------------------------------------------------------------------------------- the handlers


def test_the_catalog_handler_is_the_first_branch_handler_and_branches_have_no_kopf_index() -> None:
    registry = kopf.get_default_registry()
    on_branches = [h for h in registry._watching.get_all_handlers() if h.selector.any_name == Branch.PLURAL]
    assert on_branches[0].fn is handlers.branch_catalog
    indexed = [h.selector.any_name for h in registry._indexing.get_all_handlers()]
    assert Branch.PLURAL not in indexed


class FakeReconciler:
    def __init__(self) -> None:
        self.keys: list[tuple[str, str]] = []

    async def reconcile_key(self, key: tuple[str, str]) -> None:
        self.keys.append(key)


class FakeKube:
    def __init__(self) -> None:
        self.branches: dict[tuple[str, str], dict[str, Any]] = {}
        self.events: list[tuple[str, str, str, str, str | None]] = []

    async def get_branch(self, namespace: str, name: str) -> dict[str, Any]:
        if (namespace, name) not in self.branches:
            raise NotFound(404, f"branches {name} not found")
        return self.branches[(namespace, name)]

    async def post_event(self, obj: Any, *, type_: str, reason: str, message: str, action: str = "Reconcile",
                         once_per: str | None = None) -> None:
        self.events.append((obj["metadata"]["name"], type_, reason, message, once_per))


def fake_memo() -> tuple[Any, BranchCatalog, FakeReconciler]:
    catalog, reconciler = BranchCatalog(), FakeReconciler()
    kube = FakeKube()
    runtime = SimpleNamespace(catalog=catalog, reconciler=reconciler, triggers=MergeTriggers(catalog, reconciler),
                              branch_names=BranchNameClaims(catalog, kube), kube=kube, in_charge=True)
    return SimpleNamespace(runtime=runtime), catalog, reconciler


async def test_a_branch_that_another_with_the_same_branch_name_shadows_is_warned(
    caplog: pytest.LogCaptureFixture,
) -> None:
    memo, catalog, _ = fake_memo()
    kube = memo.runtime.kube

    async def add(name: str) -> None:
        body = branch(name, "feature/x")
        body["metadata"]["uid"] = f"uid-{name}"
        kube.branches[("ns", name)] = body
        await handlers.branch_catalog(type="ADDED", body=body, namespace="ns", memo=memo)

    await add("b")
    assert kube.events == []
    await add("c")  # "b" answers to feature/x: "c" never receives an event
    [(name, type_, reason, message, once)] = kube.events
    assert (name, type_, reason) == ("c", "Warning", "BranchNameShadowed")
    assert "feature/x" in message and "Branch b" in message and once
    assert "c" in caplog.text and "shadowed" in caplog.text
    kube.events.clear()
    await add("a")  # now "a" answers: "b" stops receiving events, and "c" is told who answers now
    assert sorted((e[0], e[2]) for e in kube.events) == [("b", "BranchNameShadowed"), ("c", "BranchNameShadowed")]
    assert all("Branch a" in e[3] for e in kube.events)
    assert catalog.find("ns", "feature/x") == "a"


async def test_a_new_target_re_evaluates_the_ready_branches_merging_into_it() -> None:
    memo, catalog, reconciler = fake_memo()
    catalog.prime([branch("f1", "feature/1", target="release", phase="READY"),
                   branch("f2", "feature/2", target="release", phase="READY"),
                   branch("f3", "feature/3", target="release", phase="ACTIVE"),
                   branch("f4", "feature/4", target="dev", phase="READY")])
    body = branch("rel", "release")
    await handlers.branch_catalog(type="ADDED", body=body, namespace="ns", memo=memo)
    assert catalog.find("ns", "release") == "rel"
    assert reconciler.keys == [("ns", "f1"), ("ns", "f2")]
    # Status writes and repeats of the same Branch are no news.
    await handlers.branch_catalog(type="MODIFIED", body=branch("rel", "release", phase="ACTIVE"), namespace="ns",
                                  memo=memo)
    assert reconciler.keys == [("ns", "f1"), ("ns", "f2")]
    # A second Branch claiming the name does not change whom the reconciler finds ("rel" < "zz").
    await handlers.branch_catalog(type="ADDED", body=branch("zz", "release"), namespace="ns", memo=memo)
    assert reconciler.keys == [("ns", "f1"), ("ns", "f2")]
    # Deleted: gone from the catalog, nothing to re-evaluate from this handler.
    await handlers.branch_catalog(type="DELETED", body=body, namespace="ns", memo=memo)
    assert catalog.find("ns", "release") == "zz" and reconciler.keys == [("ns", "f1"), ("ns", "f2")]


async def test_a_renamed_branch_re_evaluates_the_ready_branches_merging_into_its_new_name() -> None:
    memo, catalog, reconciler = fake_memo()
    catalog.prime([branch("f1", "feature/1", target="dev", phase="READY"), branch("d", "develop")])
    await handlers.branch_catalog(type="MODIFIED", body=branch("d", "dev"), namespace="ns", memo=memo)
    assert reconciler.keys == [("ns", "f1")]


async def test_a_target_lock_re_evaluates_the_ready_branches_merging_into_the_locked_branch() -> None:
    memo, catalog, reconciler = fake_memo()
    catalog.prime([branch("rel", "release"), branch("f1", "feature/1", target="release", phase="READY"),
                   branch("f2", "feature/2", target="main", phase="READY")])
    await lock_handlers.lock_changed(namespace="ns", spec={"branch": "rel"}, memo=memo)
    assert reconciler.keys == [("ns", "f1")]
    await lock_handlers.lock_changed(namespace="ns", spec={"branch": "unknown"}, memo=memo)
    assert reconciler.keys == [("ns", "f1")]


async def test_without_a_runtime_the_handlers_do_nothing() -> None:
    memo = SimpleNamespace()
    await handlers.branch_catalog(type="ADDED", body=branch("b1"), namespace="ns", memo=memo)
    await lock_handlers.lock_changed(namespace="ns", spec={"branch": "b1"}, memo=memo)


# ------------------------------------------------------------------- policy status keeper, primed at start-up


async def test_the_first_policy_status_pass_counts_every_branch_listed_at_start_up(tmp_path: Any) -> None:
    """Without priming, a pass during kopf's first walk over the Branches counts only those seen so far."""
    from datetime import UTC, datetime

    from branch_operator.clients.kube import KubeClient
    from branch_operator.controllers.policy_status import PolicyStatusKeeper
    from branch_operator.embedded.apiserver.server import EmbeddedApiServer
    from branch_operator.embedded.env import install_crds

    server = EmbeddedApiServer()
    url = await server.start()
    try:
        await install_crds(url)
        kube = await KubeClient.connect(str(server.write_kubeconfig(tmp_path / "kubeconfig")))
        try:
            await kube.core.create_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "p"}})
            for i in range(3):
                await kube.create("branches", "p", {"apiVersion": "oms.dev/v1alpha1", "kind": "Branch",
                                                    "metadata": {"name": f"b{i}"},
                                                    "spec": {"branchName": f"feature/b{i}"}})
            await kube.create("automergepolicies", "p", {
                "apiVersion": "oms.dev/v1alpha1", "kind": "AutoMergePolicy", "metadata": {"name": "all"},
                "spec": {"enabled": True, "branchNamePatterns": ["feature/*"]}})
            keeper = PolicyStatusKeeper(kube, lambda: datetime.now(UTC))
            keeper.prime(await kube.list_branches("p"))
            first = await kube.get("branches", "p", "b0")
            assert not keeper.branch_changed("ADDED", first)  # kopf's listing brings nothing new
            await keeper._refresh_once("p")
            status = (await kube.get("automergepolicies", "p", "all"))["status"]
            assert (status["matchedBranches"], status["governedBranches"]) == (3, 3)
        finally:
            await kube.close()
    finally:
        await server.stop()
