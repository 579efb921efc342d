"""What makes an AutoMergePolicy or a Branch unacceptable: one answer for the validating admission webhook
and for the operator's own checks.

The webhook refuses at ``kubectl apply`` what the operator would otherwise take and mark afterwards: a
policy ``Accepted=False`` (reason ``InvalidSpec``, see :func:`~branch_operator.domain.merge.trace.policy_statuses`),
a Branch blocked ``SelfMerge`` or shadowed (``BranchNameShadowed``). Both read the reasons and messages
from here, so what ``kubectl apply`` prints is what the condition or Event would have said. What slips
through (the webhook off, objects stored before it was installed) is still caught by the operator.

Only what the CRD schema and its CEL rules cannot say is checked here (they run first in the API server):
cron field ranges, IANA zones, durations beyond 31 days, globs, selectors that match nothing, and a
second Branch claiming a ``spec.branchName`` of its namespace (which needs the other Branches).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from branch_operator.api.models import AutoMergePolicySpec, BlockReason, BranchSpec
from branch_operator.domain.conditions import truncate
from branch_operator.domain.merge.selection import INVALID_SPEC, policy_problems, schema_problems

__all__ = [
    "INVALID_SPEC",
    "MAX_MESSAGE",
    "SHADOWED",
    "Refusal",
    "branch_refusal",
    "parse_policy_spec",
    "policy_refusal",
    "schema_problems",
]

SHADOWED = "BranchNameShadowed"
MAX_MESSAGE = 4096
_IGNORED = "the policy would be ignored (Accepted=False)"


@dataclass(frozen=True, slots=True)
class Refusal:
    reason: str  # a condition / Event reason: InvalidSpec, SelfMerge, BranchNameShadowed
    message: str
    effect: str  # what the operator would do with the object, for the person applying it

    def __str__(self) -> str:
        return f"{self.effect} ({self.reason}): {self.message}"


def parse_policy_spec(raw: Mapping[str, Any] | None) -> tuple[AutoMergePolicySpec | None, Refusal | None]:
    """The parsed spec, or why it does not parse (what the CRD schema would have refused)."""
    try:
        return AutoMergePolicySpec.model_validate(dict(raw or {})), None
    except ValidationError as exc:
        return None, Refusal(INVALID_SPEC, truncate(schema_problems(exc), MAX_MESSAGE), _IGNORED)


def policy_refusal(raw: Mapping[str, Any] | None) -> Refusal | None:
    """Why an AutoMergePolicy spec would be ignored as a whole (``Accepted=False``), or None."""
    spec, refusal = parse_policy_spec(raw)
    if spec is None:
        return refusal
    problems = policy_problems(spec)
    return Refusal(INVALID_SPEC, truncate("; ".join(problems), MAX_MESSAGE), _IGNORED) if problems else None


def branch_refusal(
    raw: Mapping[str, Any] | None, *, name: str, claimants: Sequence[str] = (),
) -> Refusal | None:
    """Why a Branch ``name`` with this spec would never be merged or receive events, or None.

    ``claimants``: the Branches of the namespace already answering to its ``spec.branchName``.
    """
    try:
        spec = BranchSpec.model_validate(dict(raw or {}))
    except ValidationError as exc:
        return Refusal(INVALID_SPEC, truncate(schema_problems(exc), MAX_MESSAGE), "the Branch is invalid")
    if spec.target_branch == spec.branch_name:
        return Refusal(BlockReason.SELF_MERGE.value,
                       f"spec.targetBranch {spec.target_branch} is spec.branchName: the branch targets itself",
                       "the Branch would never be merged")
    others = [other for other in claimants if other != name]
    if others:
        return Refusal(SHADOWED, (
            f"Branch {others[0]} already has spec.branchName {spec.branch_name!r} in this namespace; only one "
            f"Branch receives a branch's indexing events, so give this one another branchName or delete "
            f"{others[0]} first."), "the Branch would receive no indexing events")
    return None
