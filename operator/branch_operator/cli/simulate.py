"""``branch-operator simulate -f policy.yaml``: what a proposed AutoMergePolicy would do, before it is in Git.

The proposed policies (one or more YAML documents of kind AutoMergePolicy) replace the live policies of
the same name, or join them, and every Branch of the namespace is evaluated exactly as the operator
would (same selection, same checks, same locks on the branch and its target) at the current time.
Nothing is written. :func:`simulate` is pure; :func:`run` does the reading and printing.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import yaml
from pydantic import ValidationError

from branch_operator.api.models import (
    AutoMergePolicy,
    AutoMergePolicySpec,
    BranchLock,
    BranchStatus,
    MergeDecision,
    Phase,
)
from branch_operator.domain.merge import (
    PolicyRef,
    blocking_locks,
    evaluate_merge,
    review_policies,
    select_policy,
    target_branch_object,
)
from branch_operator.domain.merge.trace import policy_statuses

__all__ = ["SimRow", "Simulation", "load_proposed", "render", "run", "simulate"]


@dataclass(frozen=True, slots=True)
class SimRow:
    name: str
    branch_name: str
    phase: str
    policy: str  # the governing policy, "" when none matches
    current: str  # the decision status.merge shows now, "" when none
    decision: str  # what the proposed policy set decides; "-" for branches that are not READY
    reasons: list[str] = field(default_factory=list)
    why: list[str] = field(default_factory=list)  # failing checks as "name: evidence"


@dataclass(frozen=True, slots=True)
class Simulation:
    namespace: str
    proposed: list[str]
    problems: dict[str, str]  # proposed policy name -> why it would be rejected (Accepted=False)
    matched: dict[str, int]  # proposed policy name -> branches it matches
    governed: dict[str, int]  # proposed policy name -> branches it would win
    rows: list[SimRow]


def load_proposed(text: str) -> list[dict[str, Any]]:
    """The AutoMergePolicy documents of a YAML stream; ``ValueError`` for anything else in it."""
    docs = [d for d in yaml.safe_load_all(text) if d is not None]
    if not docs:
        raise ValueError("no YAML documents found")
    for doc in docs:
        if not isinstance(doc, dict) or doc.get("kind") != AutoMergePolicy.KIND:
            kind = doc.get("kind") if isinstance(doc, dict) else type(doc).__name__
            raise ValueError(f"expected kind {AutoMergePolicy.KIND}, got {kind!r}")
        if not (doc.get("metadata") or {}).get("name"):
            raise ValueError("every AutoMergePolicy needs metadata.name")
    return docs


def _refs(objs: Sequence[Mapping[str, Any]], generation_of_proposed: bool) -> list[PolicyRef]:
    refs = []
    for obj in objs:
        meta = obj["metadata"]
        try:
            spec = AutoMergePolicySpec.model_validate(obj.get("spec") or {})
        except ValidationError:
            continue  # rejected as a whole, as the operator does; reported by policy_statuses
        refs.append(PolicyRef(meta["name"], None if generation_of_proposed else meta.get("generation"), spec))
    return refs


def simulate(
    proposed: Sequence[Mapping[str, Any]], *, namespace: str, policies: Sequence[Mapping[str, Any]],
    branches: Sequence[Mapping[str, Any]], locks: Sequence[Mapping[str, Any]], now: datetime,
) -> Simulation:
    names = [str(p["metadata"]["name"]) for p in proposed]
    live = [p for p in policies if p["metadata"]["name"] not in names]
    combined = [*live, *({**p, "metadata": {**p["metadata"], "generation": None}} for p in proposed)]
    views = policy_statuses(combined, branches)
    accepted = review_policies([*_refs(live, False), *_refs(proposed, True)]).accepted
    rows = []
    for obj in sorted(branches, key=lambda b: str(b["metadata"]["name"])):
        rows.append(_row(obj, accepted, branches, locks, now))
    return Simulation(
        namespace=namespace,
        proposed=names,
        problems={n: views[n].message for n in names if n in views and not views[n].accepted},
        matched={n: views[n].matched for n in names if n in views},
        governed={n: views[n].governed for n in names if n in views},
        rows=rows,
    )


def _row(obj: Mapping[str, Any], accepted: Sequence[PolicyRef], branches: Sequence[Mapping[str, Any]],
         locks: Sequence[Mapping[str, Any]], now: datetime) -> SimRow:
    meta, spec, status_raw = obj["metadata"], obj.get("spec") or {}, obj.get("status") or {}
    name, branch_name = str(meta["name"]), str(spec.get("branchName", ""))
    target = str(spec.get("targetBranch", "main"))
    selection = select_policy(accepted, branch_name=branch_name, target_branch=target,
                              labels=meta.get("labels") or {})
    phase = str(status_raw.get("phase") or "")
    current = str((status_raw.get("merge") or {}).get("decision") or "")
    policy = selection.policy.name if selection.policy is not None else ""
    if phase != Phase.READY.value:
        return SimRow(name, branch_name, phase or "-", policy, current, "-")
    target_obj = target_branch_object(branches, target)
    target_name = str(target_obj["metadata"]["name"]) if target_obj is not None else None
    status = BranchStatus.model_validate(status_raw)
    evaluation = evaluate_merge(
        phase=Phase.READY, auto_merge=bool(spec.get("autoMerge", True)), indexing=status.indexing,
        conflicts=status.conflicts, other_locks=blocking_locks(locks, name, include_indexing=False),
        policy=selection.policy, now=now, branch_name=branch_name, target_branch=target, target_object=target_name,
        target_locks=blocking_locks(locks, target_name, include_indexing=True) if target_name else [],
        tied=selection.tied,
    )
    decision = evaluation.decision.value
    why = [f"{c.name}: {c.evidence}" for c in evaluation.checks if not c.passed]
    if evaluation.decision in (MergeDecision.MERGED, MergeDecision.WOULD_MERGE):
        why = [f"policy: {evaluation.checks[0].evidence}"]
    return SimRow(name, branch_name, phase, policy, current, decision, [r.value for r in evaluation.reasons], why)


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    return "\n".join("   ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                     for row in [header, *rows])


def render(sim: Simulation) -> str:
    out = []
    total = len(sim.rows)
    for name in sim.proposed:
        if name in sim.problems:
            out.append(f"Proposed policy {name} would NOT be accepted: {sim.problems[name]}")
        else:
            out.append(f"Proposed policy {name} (namespace {sim.namespace}): valid; matches "
                       f"{sim.matched.get(name, 0)} of {total} branches and would govern {sim.governed.get(name, 0)}.")
    if not sim.rows:
        out.append(f"No branches in namespace {sim.namespace}.")
        return "\n".join(out)
    rows = [[r.name, r.branch_name, r.phase, r.policy or "<none>", r.current or "-", r.decision,
             ",".join(r.reasons) or "-"] for r in sim.rows]
    out.append(_table(["NAME", "BRANCH", "PHASE", "POLICY", "NOW", "WOULD BE", "REASONS"], rows))
    explained = [r for r in sim.rows if r.decision != "-"]
    if explained:
        out.append("")
        out.append("Why:")
        for r in explained:
            out.append(f"  {r.name}: {r.decision}")
            out.extend(f"    - {line}" for line in r.why)
    not_ready = total - len(explained)
    if not_ready:
        out.append("")
        out.append(f"{not_ready} branch(es) are not READY: they have no indexing result to merge; POLICY shows "
                   f"which policy would govern them.")
    return "\n".join(out)


def read_file(path: str) -> str:
    return sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")


async def run(text: str, *, namespace: str | None, kubeconfig: str | None, context: str | None = None,
              out: TextIO = sys.stdout, now: datetime | None = None) -> int:
    """Read the live namespace, print the simulation of the proposed policies in ``text``; 1 if one is invalid."""
    from branch_operator.clients.kube import KubeClient

    proposed = load_proposed(text)
    ns = namespace or proposed[0]["metadata"].get("namespace") or _context_namespace(kubeconfig, context)
    kube = await KubeClient.connect(kubeconfig, context)
    try:
        policies = await kube.list_policies(ns)
        branches = await kube.list_branches(ns)
        locks = await kube.list_objects(BranchLock.PLURAL, ns)
    finally:
        await kube.close()
    sim = simulate(proposed, namespace=ns, policies=policies, branches=branches, locks=locks,
                   now=now or datetime.now(UTC))
    print(render(sim), file=out)
    return 1 if sim.problems else 0


def _context_namespace(kubeconfig: str | None, context: str | None) -> str:
    """The kubeconfig context's namespace, like kubectl; 'default' if it names none."""
    try:
        from kubernetes import config as sync_config

        contexts, active = sync_config.list_kube_config_contexts(  # type: ignore[no-untyped-call]
            config_file=kubeconfig)
        if context:
            active = next(c for c in contexts if c["name"] == context)
        return str(active.get("context", {}).get("namespace") or "default")
    except Exception:
        return "default"
