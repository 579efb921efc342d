"""kubectl-branch without a cluster: argument handling and rendering (the e2e tests run every command)."""

from __future__ import annotations

import contextlib
import io
from datetime import UTC, datetime

from branch_operator.domain.timefmt import human_duration
from branch_operator.kubectl_branch import cli as plugin
from branch_operator.kubectl_branch.audit import matches
from branch_operator.kubectl_branch.render import (
    BRANCH_HEADER,
    audit_rows,
    branch_rows,
    describe_branch,
    explain_merge,
    lock_rows,
)

NOW = datetime(2025, 6, 26, 12, 0, tzinfo=UTC)


def test_kubectl_flags_before_or_after_the_command() -> None:
    parser = plugin.build_parser()
    before = parser.parse_args(["-n", "team-a", "--context", "prod", "list"])
    after = parser.parse_args(["list", "-n", "team-a", "--context", "prod", "-A"])
    assert (before.namespace, before.context, before.all_namespaces) == ("team-a", "prod", False)
    assert (after.namespace, after.context, after.all_namespaces) == ("team-a", "prod", True)
    assert parser.parse_args(["--kubeconfig", "k", "why", "b"]).kubeconfig == "k"


async def test_usage_errors_exit_2_with_a_message() -> None:
    for argv, text in ((["unlock", "b"], "--reason"), (["set-state", "b"], "STATE"), ([], "COMMAND"),
                       (["publish", "begun", "x"], "invalid choice")):
        err = io.StringIO()
        assert await plugin.run(argv, io.StringIO(), err) == 2, argv
        assert text in err.getvalue() or "required" in err.getvalue(), (argv, err.getvalue())


def test_unlock_help_says_what_forcing_the_indexing_lock_does() -> None:
    """Help, docs and behaviour agree (the behaviour: tests/e2e/test_operations.py)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        plugin.build_parser().parse_args(["unlock", "--help"])
    text = " ".join(out.getvalue().split())
    assert "INDEXING lock of a running run ends that run" in text and "ERROR" in text


def test_render_describe_of_a_fresh_branch() -> None:
    text = describe_branch({"metadata": {"name": "b", "namespace": "oms", "creationTimestamp": "2025-06-26T11:00:00Z",
                                         "annotations": {"oms.dev/set-state": "ERROR"}},
                            "spec": {"branchName": "feature/b"}}, [], [], NOW)
    assert "Phase:          <none>" in text and "Created:        2025-06-26T11:00:00Z (60m ago)" in text
    assert "Pending admin requests:\n  oms.dev/set-state: ERROR" in text
    assert "Conditions:\n  <none>" in text and "Merge:\n  <not evaluated>" in text and "Events:\n  <none>" in text


def test_why_without_a_decision() -> None:
    text = explain_merge({"metadata": {"name": "b"}, "spec": {"branchName": "feature/b"},
                          "status": {"phase": "ACTIVE"}}, NOW)
    assert text.splitlines() == ["Branch b (feature/b -> main) is ACTIVE.",
                                 "No merge decision yet: the operator evaluates merges only for READY branches."]


def test_lock_rows_show_expiry() -> None:
    lock = {"metadata": {"name": "l", "creationTimestamp": "2025-06-26T11:00:00Z"},
            "spec": {"branch": "b", "lockType": "WRITE", "holder": "svc", "ttlSeconds": 600, "reason": "edit\nnow"},
            "status": {"acquiredAt": "2025-06-26T11:00:00Z", "renewedAt": "2025-06-26T11:55:00Z"}}
    assert lock_rows([lock], all_namespaces=False, now=NOW) == [
        ["l", "b", "WRITE", "svc", "60m", "5m", "600s", "in 5m", "edit now"]]
    lock["status"]["renewedAt"] = "2025-06-26T11:00:00Z"
    assert lock_rows([lock], all_namespaces=True, now=NOW)[0][8] == "overdue"
    assert human_duration(59) == "59s" and human_duration(3 * 86400 + 5) == "3d"


def test_audit_filtering_and_rows() -> None:
    mine = {"namespace": "oms", "branch": "b", "branch_name": "feature/b", "action": "lock.expired"}
    orphan = {"namespace": "oms", "branch": None, "branch_name": "feature/b", "action": "event.unexpected"}
    other_ns = {"namespace": "dev", "branch": "b", "branch_name": "feature/b"}
    assert matches(mine, namespace="oms", name="b", branch_name="feature/b")
    assert matches(orphan, namespace="oms", name="b", branch_name="feature/b")
    assert not matches(orphan, namespace="oms", name="b", branch_name=None)
    assert not matches(other_ns, namespace="oms", name="b", branch_name="feature/b")
    row = audit_rows([{"timestamp": "2025-06-26T10:00:00Z", "action": "admin.set_state", "from_state": "ERROR",
                       "to_state": "ACTIVE", "reason": "fixed", "actor": "alice",
                       "details": {"status": "applied", "request_id": "r", "released_locks": []}}])
    assert row == [["2025-06-26T10:00:00Z", "admin.set_state", "ERROR->ACTIVE", "fixed", "alice", "status=applied"]]


def test_every_block_reason_has_a_hint() -> None:
    from branch_operator.api.models import BlockReason
    from branch_operator.kubectl_branch.render import REASON_HINTS

    assert set(REASON_HINTS) == {r.value for r in BlockReason}


def test_list_shows_every_reason_a_ready_branch_is_not_merging() -> None:
    def br(name: str, status: dict[str, object] | None) -> dict[str, object]:
        meta = {"name": name, "namespace": "oms", "creationTimestamp": "2025-06-26T11:00:00Z"}
        obj: dict[str, object] = {"metadata": meta, "spec": {"branchName": f"feature/{name}"}}
        if status is not None:
            obj["status"] = status
        return obj

    reasons = ["ValidationFailed", "LockHeld", "OutsideMergeWindow"]
    blocked = br("blocked", {"phase": "READY", "merge": {"decision": "Blocked", "reasons": reasons}})
    merged = br("merged", {"phase": "ACTIVE", "merge": {"decision": "Merged", "reasons": []}})
    fresh = br("fresh", None)
    rows = {r[0]: dict(zip(BRANCH_HEADER, r, strict=True)) for r in branch_rows([blocked, merged, fresh], [],
                                                                                  all_namespaces=False, now=NOW)}
    # Every reason, in the operator's order, spelled as `kubectl get branches` prints the Reasons column.
    assert rows["blocked"]["REASONS"] == '["ValidationFailed","LockHeld","OutsideMergeWindow"]'
    assert rows["merged"]["REASONS"] == "[]"
    assert rows["fresh"]["REASONS"] == ""
    assert BRANCH_HEADER.index("REASONS") == BRANCH_HEADER.index("MERGEABLE") + 1
