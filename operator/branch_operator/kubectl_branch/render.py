"""What `kubectl branch` prints: pure functions from API objects (dicts) to text, so they are tested alone."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from branch_operator.api.models import ANNOTATION_FORCE_UNLOCK, ANNOTATION_MERGE_REQUEST, ANNOTATION_SET_STATE
from branch_operator.domain.timefmt import human_duration, parse_time

Obj = Mapping[str, Any]

# What to do about each blocking reason (shown by `why`): the runbook in one line each.
REASON_HINTS: Mapping[str, str] = {
    "NoMatchingPolicy": "no AutoMergePolicy in this namespace selects this branch and target; add one (GitOps)",
    "SelfMerge": "spec.targetBranch is the branch itself; point it at the branch to merge into",
    "AutoMergeDisabled": "spec.autoMerge is false or the matching policy has enabled: false",
    "ValidationFailed": "the last indexing run failed validation; fix the schema and re-index",
    "ConflictsDetected": "OMS reports merge conflicts (status.conflicts); resolve them in OMS",
    "Expired": "the run completed longer ago than the policy's timeoutHours; re-index to refresh it",
    "LockHeld": "a WRITE/MERGE lock is held (kubectl branch locks NAME); wait, or kubectl branch unlock",
    "Frozen": "the governing policy has a freeze (spec.freeze); it lifts at its `until`, or when removed in Git",
    "InsufficientRecords": "the run indexed fewer records than the policy's minRecordsIndexed; check Funnel",
    "TargetLockHeld": "the target branch is locked (kubectl branch locks on the target's Branch)",
    "OutsideMergeWindow": "outside the policy's merge windows; it merges when the next window opens by itself",
}


def age(ts: Any, now: datetime) -> str:
    then = parse_time(ts)
    return "<unknown>" if then is None else human_duration((now - then).total_seconds())


def condition(status: Obj, ctype: str) -> dict[str, Any]:
    for cond in status.get("conditions") or []:
        if cond.get("type") == ctype:
            return dict(cond)
    return {}


def render_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(header)]
    lines = ["   ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in [header, *rows]]
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------- list


def branch_rows(branches: Iterable[Obj], locks: Iterable[Obj], *, all_namespaces: bool,
                now: datetime, wide: bool = False) -> list[list[str]]:
    held: dict[tuple[str, str], int] = {}
    for lock in locks:
        key = (lock["metadata"].get("namespace", ""), (lock.get("spec") or {}).get("branch", ""))
        held[key] = held.get(key, 0) + 1
    rows = []
    for b in sorted(branches, key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"])):
        meta, spec, st = b["metadata"], b.get("spec") or {}, b.get("status") or {}
        indexing = st.get("indexing") or {}
        validation = indexing.get("validation") or {}
        row = [
            meta["name"], spec.get("branchName", ""), st.get("phase", ""),
            "" if indexing.get("recordsIndexed") is None else str(indexing["recordsIndexed"]),
            "" if validation.get("passed") is None else str(validation["passed"]).lower(),
            condition(st, "Mergeable").get("status", ""),
            merge_reasons_cell(st),
            str(held.get((meta.get("namespace", ""), meta["name"]), 0)),
            age(meta.get("creationTimestamp"), now),
        ]
        if wide:
            merge = st.get("merge") or {}
            row += [spec.get("targetBranch", "main"), merge.get("decision") or "", merge.get("policy") or ""]
        rows.append(([meta.get("namespace", "")] if all_namespaces else []) + row)
    return rows


BRANCH_HEADER = ["NAME", "BRANCH", "PHASE", "RECORDS", "VALID", "MERGEABLE", "REASONS", "LOCKS", "AGE"]
BRANCH_WIDE = [*BRANCH_HEADER, "TARGET", "DECISION", "POLICY"]


def merge_reasons_cell(status: Obj) -> str:
    """``status.merge.reasons`` as ``kubectl get branches`` prints its Reasons column: the list as compact JSON
    (Go's encoding/json), empty when the operator has not decided yet."""
    merge = status.get("merge")
    if not isinstance(merge, dict) or "reasons" not in merge:
        return ""
    text = json.dumps(merge["reasons"], separators=(",", ":"), ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


LOCK_HEADER = ["NAME", "BRANCH", "TYPE", "HOLDER", "ACQUIRED", "RENEWED", "TTL", "EXPIRES", "REASON"]
LOCK_WIDE = [*LOCK_HEADER, "INDEXING-ID", "OWNER"]


# ------------------------------------------------------------------------------------------- locks


def lock_rows(locks: Iterable[Obj], *, all_namespaces: bool, now: datetime, wide: bool = False) -> list[list[str]]:
    rows = []
    for lk in sorted(locks, key=lambda o: (o["metadata"].get("namespace", ""), (o.get("spec") or {}).get("branch", ""),
                                           o["metadata"]["name"])):
        meta, spec, st = lk["metadata"], lk.get("spec") or {}, lk.get("status") or {}
        acquired = st.get("acquiredAt") or meta.get("creationTimestamp")
        renewed = st.get("renewedAt") or acquired
        ttl = spec.get("ttlSeconds")
        expires = "never"
        base = max(filter(None, (parse_time(renewed), parse_time(acquired))), default=None)
        if ttl and base is not None:
            left = base.timestamp() + int(ttl) - now.timestamp()
            expires = f"in {human_duration(left)}" if left > 0 else "overdue"
        row = [meta["name"], spec.get("branch", ""), spec.get("lockType", ""), spec.get("holder", ""),
               age(acquired, now), age(renewed, now), f"{ttl}s" if ttl else "-", expires,
               _one_line(spec.get("reason") or "", 60)]
        if wide:
            owners = meta.get("ownerReferences") or []
            row += [spec.get("indexingId") or "", ",".join(f"{o.get('kind')}/{o.get('name')}" for o in owners)]
        rows.append(([meta.get("namespace", "")] if all_namespaces else []) + row)
    return rows


# ---------------------------------------------------------------------------------------- describe


def describe_branch(branch: Obj, locks: Sequence[Obj], events: Sequence[Obj], now: datetime) -> str:
    meta, spec, st = branch["metadata"], branch.get("spec") or {}, branch.get("status") or {}
    out: list[str] = []
    add = out.append
    add(f"Name:           {meta['name']}")
    add(f"Namespace:      {meta.get('namespace', '')}")
    add(f"Branch:         {spec.get('branchName', '')}")
    add(f"Target:         {spec.get('targetBranch', 'main')}")
    add(f"Auto merge:     {str(spec.get('autoMerge', True)).lower()}")
    add(f"Phase:          {st.get('phase') or '<none>'}"
        + (f" (since {st['phaseTransitionTime']}, {age(st['phaseTransitionTime'], now)} ago)"
           if st.get("phaseTransitionTime") else ""))
    add(f"Created:        {meta.get('creationTimestamp', '')} ({age(meta.get('creationTimestamp'), now)} ago)")
    if meta.get("deletionTimestamp"):
        add(f"Deleting since: {meta['deletionTimestamp']} (finalizers: {', '.join(meta.get('finalizers') or [])})")
    pending = {k: v for k, v in (meta.get("annotations") or {}).items()
               if k in (ANNOTATION_FORCE_UNLOCK, ANNOTATION_SET_STATE, ANNOTATION_MERGE_REQUEST)}
    if pending:
        add("Pending admin requests:")
        out.extend(f"  {k}: {v}" for k, v in sorted(pending.items()))

    add("Conditions:")
    conds = st.get("conditions") or []
    if conds:
        rows = [[c.get("type", ""), c.get("status", ""), c.get("reason", ""), age(c.get("lastTransitionTime"), now),
                 _one_line(c.get("message") or "", 100)] for c in conds]
        out.extend("  " + line for line in render_table(["TYPE", "STATUS", "REASON", "AGE", "MESSAGE"], rows)
                   .splitlines())
    else:
        add("  <none>")

    add("Last indexing run:")
    idx = st.get("indexing") or {}
    if idx:
        validation = idx.get("validation") or {}
        duration = idx.get("durationSeconds")
        add(f"  Indexing id:  {idx.get('indexingId', '')}  (event {idx.get('eventId', '')})")
        add(f"  Result:       {idx.get('result', '')}")
        add(f"  Started:      {idx.get('startedAt') or '-'}")
        add(f"  Completed:    {idx.get('completedAt') or '-'}"
            + (f"  ({human_duration(duration)})" if isinstance(duration, int | float) else ""))
        add(f"  Records:      {idx.get('recordsIndexed') if idx.get('recordsIndexed') is not None else '-'}")
        if validation:
            add(f"  Validation:   {'passed' if validation.get('passed') else 'FAILED'}")
            out.extend(f"    - {_one_line(e, 160)}" for e in (validation.get("errors") or [])[:10])
    else:
        add("  <none>")

    merge = st.get("merge") or {}
    add("Merge:")
    if merge:
        add(f"  Decision:     {merge.get('decision', '')}"
            + (f"  ({', '.join(merge.get('reasons') or [])})" if merge.get("reasons") else ""))
        if merge.get("message"):
            add(f"  Message:      {_one_line(merge['message'], 200)}")
        add(f"  Policy:       {merge.get('policy') or '-'}")
        if merge.get("mergedAt"):
            add(f"  Merged at:    {merge['mergedAt']} into {merge.get('targetBranch', '')}")
        add("  (kubectl branch why " + meta["name"] + " explains every reason)")
    else:
        add("  <not evaluated>")

    action = st.get("lastAdminAction") or {}
    if action:
        add("Last admin action:")
        add(f"  {action.get('action', '')} by {action.get('requestedBy', '')} at {action.get('at', '')}:"
            f" {action.get('result', '')}")
        add(f"  Reason:       {action.get('reason', '')}")

    add("Locks:")
    if locks:
        out.extend("  " + line for line in render_table(LOCK_HEADER, lock_rows(locks, all_namespaces=False, now=now))
                   .splitlines())
    else:
        add("  <none>")

    add("Events:")
    if events:
        rows = [[e.get("type", ""), e.get("reason", ""),
                 age(e.get("lastTimestamp") or e.get("eventTime") or (e.get("metadata") or {}).get("creationTimestamp"),
                     now),
                 (e.get("source") or {}).get("component") or e.get("reportingComponent") or "",
                 _one_line(e.get("message") or "", 120)] for e in events]
        out.extend("  " + line for line in render_table(["TYPE", "REASON", "AGE", "FROM", "MESSAGE"], rows)
                   .splitlines())
    else:
        add("  <none>")
    return "\n".join(out)


def sort_events(events: Iterable[Obj], limit: int = 20) -> list[Obj]:
    """Oldest first (as kubectl describe prints them), the most recent ``limit``."""
    def when(e: Obj) -> str:
        return str(e.get("lastTimestamp") or e.get("eventTime") or (e.get("metadata") or {}).get("creationTimestamp")
                   or "")
    return sorted(events, key=when)[-limit:]


# --------------------------------------------------------------------------------------------- why


def explain_merge(branch: Obj, now: datetime) -> str:
    meta, spec, st = branch["metadata"], branch.get("spec") or {}, branch.get("status") or {}
    merge = st.get("merge") or {}
    phase = st.get("phase") or "<none>"
    out = [f"Branch {meta['name']} ({spec.get('branchName', '')} -> {spec.get('targetBranch', 'main')}) is {phase}."]
    if not merge:
        out.append("No merge decision yet: the operator evaluates merges only for READY branches."
                   if phase != "READY" else "The merge decision is pending evaluation.")
        return "\n".join(out)
    decision = merge.get("decision") or "<none>"
    evaluated = merge.get("evaluatedAt")
    out.append(f"Decision: {decision}" + (f" (evaluated {age(evaluated, now)} ago)" if evaluated else ""))
    if merge.get("policy"):
        out.append(f"Policy:   {merge['policy']}")
    if merge.get("mergedAt"):
        target = merge.get("targetBranch") or spec.get("targetBranch", "main")
        out.append(f"Merged:   {merge['mergedAt']} into {target}")
    if merge.get("message"):
        out.append(f"Message:  {merge['message']}")
    reasons = merge.get("reasons") or []
    if reasons:
        out.append("Blocking reasons:")
        for reason in reasons:
            hint = REASON_HINTS.get(str(reason))
            out.append(f"  - {reason}" + (f": {hint}" if hint else ""))
    checks = merge.get("checks") or []
    if checks:
        out.append("Checks:")
        for check in checks:
            mark = "PASS" if check.get("passed") else "FAIL"
            line = f"  [{mark}] {check.get('name', '')}"
            if check.get("reason"):
                line += f": {check['reason']}"
            out.append(line)
            evidence = check.get("evidence")
            if evidence not in (None, "", [], {}):
                out.append(f"         evidence: {_one_line(_evidence(evidence), 200)}")
    if merge.get("nextEvaluationTime"):
        out.append(f"Next evaluation: {merge['nextEvaluationTime']} (a window, freeze or timeout may change it)")
    manual = merge.get("manualRequest") or {}
    if manual:
        detail = f": {manual['message']}" if manual.get("message") else ""
        out.append(f"Manual merge request by {manual.get('requestedBy') or '?'} ({manual.get('reason', '')}): "
                   f"{manual.get('outcome') or 'pending'}{detail}")
    mergeable = condition(st, "Mergeable")
    if mergeable:
        out.append(f"Mergeable condition: {mergeable.get('status')} ({mergeable.get('reason')})"
                   + (f": {mergeable['message']}" if mergeable.get("message") else ""))
    if phase != "READY" and decision not in ("Merged",):
        out.append(f"(The decision above was recorded earlier; the branch is {phase} now.)")
    return "\n".join(out)


def why_document(branch: Obj) -> dict[str, Any]:
    """`why -o json|yaml`: ``status.merge`` as it is, plus the branch's identity, its phase, one hint per
    blocking reason (``hints``: reason -> what to do) and the Mergeable condition."""
    meta, spec, st = branch["metadata"], branch.get("spec") or {}, branch.get("status") or {}
    merge = dict(st.get("merge") or {})
    return {**merge, "name": meta["name"], "namespace": meta.get("namespace", ""),
            "branchName": spec.get("branchName", ""), "targetBranch": spec.get("targetBranch", "main"),
            "phase": st.get("phase") or "",
            "hints": {str(r): REASON_HINTS[str(r)] for r in merge.get("reasons") or [] if str(r) in REASON_HINTS},
            "mergeable": condition(st, "Mergeable")}


# ------------------------------------------------------------------------------------------- audit


AUDIT_HEADER = ["TIME", "ACTION", "STATE", "REASON", "ACTOR", "DETAILS"]


def audit_rows(records: Iterable[Obj]) -> list[list[str]]:
    rows = []
    for r in records:
        states = ""
        if r.get("from_state") or r.get("to_state"):
            states = f"{r.get('from_state') or '-'}->{r.get('to_state') or '-'}"
        details = r.get("details") or {}
        brief = ", ".join(f"{k}={_one_line(str(v), 40)}" for k, v in sorted(details.items())
                          if v not in (None, "", [], {}) and k in _AUDIT_DETAIL_KEYS)
        rows.append([str(r.get("timestamp", "")), str(r.get("action", "")), states,
                     _one_line(str(r.get("reason") or ""), 40), str(r.get("actor") or ""), brief])
    return rows


_AUDIT_DETAIL_KEYS = frozenset({"lock", "lock_type", "records_indexed", "duration_seconds", "validation_passed",
                                "policy", "target_branch", "result", "status", "message", "subject", "holder"})


def _evidence(value: Any) -> str:
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    return str(value)


def _one_line(text: str, limit: int) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
