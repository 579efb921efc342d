"""The kstatus conditions (``Ready``, ``Reconciling``, ``Stalled``) of Branches and AutoMergePolicies.

Flux (through cli-utils' kstatus), Argo CD and ``kubectl wait --for=condition=...`` read these; without
them kstatus calls any object whose ``status.observedGeneration`` is current ``Current``, so a rejected
policy would pass a Flux ``wait: true``. ``Ready`` has positive polarity; ``Reconciling`` and ``Stalled``
are abnormal-true and are written ``False`` rather than left out, so ``kubectl wait
--for=condition=Stalled=false`` works too. Every condition carries the generation it was computed for.

What each phase means (docs/installation.md, "GitOps health"):

    phase              Ready  Reconciling  Stalled   why
    ACTIVE             True   False        False     usable; also what a merged branch returns to
    READY              True   False        False     indexed and usable; the merge decision (a window, a
                                                     block) is the Mergeable condition's business, not
                                                     readiness: a branch waiting for Monday's window is
                                                     not unhealthy, and a Flux wait must not time out on it
    LOCKED_FOR_WRITE   False  True         False     indexing runs; it ends on its own
    ERROR              False  False        True      needs a new indexing run or an administrator

Pure: the phase-writing functions of :mod:`branch_operator.domain.lifecycle` and the policy status of
:mod:`branch_operator.domain.merge.trace` call these with the conditions they are about to write.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from branch_operator.api.models import ConditionType, Phase
from branch_operator.domain.conditions import ConditionStatus, find_condition, set_condition

__all__ = ["PolicyTransition", "branch_readiness", "observed_branch_status", "policy_readiness", "policy_transition"]

_READY, _RECONCILING, _STALLED = ConditionType.READY, ConditionType.RECONCILING, ConditionType.STALLED

# phase -> (Ready, Reconciling, Stalled, reason)
_BY_PHASE: dict[Phase, tuple[ConditionStatus, ConditionStatus, ConditionStatus, str]] = {
    Phase.ACTIVE: ("True", "False", "False", "Active"),
    Phase.READY: ("True", "False", "False", "Indexed"),
    Phase.LOCKED_FOR_WRITE: ("False", "True", "False", "IndexingInProgress"),
    Phase.ERROR: ("False", "False", "True", "Error"),
}


def branch_readiness(
    conditions: Sequence[Mapping[str, Any]], phase: Phase, *, message: str, now: datetime,
    observed_generation: int | None,
) -> list[dict[str, Any]]:
    """``conditions`` with Ready, Reconciling and Stalled set for a Branch entering ``phase``.

    ``message`` says why the branch is in ``phase`` (the transition's own words); it goes on the
    conditions that are True, and ``False`` ones say what is not the case.
    """
    ready, reconciling, stalled, reason = _BY_PHASE[phase]
    out = set_condition(conditions, _READY, ready, reason, message, now, observed_generation)
    out = set_condition(out, _RECONCILING, reconciling, reason if reconciling == "True" else "NotReconciling",
                        message if reconciling == "True" else f"The branch is {phase.value}.", now,
                        observed_generation)
    return set_condition(out, _STALLED, stalled, reason if stalled == "True" else "NotStalled",
                         message if stalled == "True" else f"The branch is {phase.value}.", now, observed_generation)


def observed_branch_status(
    status: Mapping[str, Any], generation: int | None, now: datetime,
) -> dict[str, Any] | None:
    """The patch that makes a Branch's readiness speak for ``generation``, or None when it already does.

    A spec edit (``autoMerge``, ``targetBranch``) moves no phase, yet kstatus and ``kubectl wait`` treat
    conditions of an older generation as not yet known. A Branch written before these conditions existed
    gets them here too. The phase stays; each condition keeps its message.
    """
    try:
        phase = Phase(str(status.get("phase")))
    except ValueError:
        return None
    conditions = status.get("conditions") or []
    ready = find_condition(conditions, _READY)
    if ready is not None and status.get("observedGeneration") == generation and (
            ready.get("observedGeneration") == generation):
        return None
    message = str(ready.get("message") or "") if ready is not None else ""
    out = branch_readiness(conditions, phase, message=message or f"The branch is {phase.value}.", now=now,
                           observed_generation=generation)
    patch: dict[str, Any] = {"conditions": out}
    if generation is not None:
        patch["observedGeneration"] = generation
    return patch


def policy_readiness(
    conditions: Sequence[Mapping[str, Any]], *, accepted: bool, reason: str, message: str, now: datetime,
    observed_generation: int | None,
) -> list[dict[str, Any]]:
    """``conditions`` with Ready, Reconciling and Stalled set from the policy's Accepted verdict.

    A rejected policy is Stalled, not Reconciling: the operator will not get further until its spec is
    changed in Git. Reconciling is False whenever the operator writes: the generation it has not yet
    observed is what ``status.observedGeneration`` lagging ``metadata.generation`` says, and kstatus,
    ``kubectl wait`` and the Argo CD health check read exactly that.
    """
    status: ConditionStatus = "True" if accepted else "False"
    out = set_condition(conditions, _READY, status, reason, message, now, observed_generation)
    out = set_condition(out, _RECONCILING, "False", "Observed", "The operator has observed this generation.",
                        now, observed_generation)
    stalled: ConditionStatus = "False" if accepted else "True"
    return set_condition(out, _STALLED, stalled, "Accepted" if accepted else reason,
                         "The policy is in force." if accepted else message, now, observed_generation)


@dataclass(frozen=True, slots=True)
class PolicyTransition:
    """The Kubernetes Event a policy status change is worth (posted once per ``key``)."""

    type_: Literal["Normal", "Warning"]
    reason: Literal["PolicyAccepted", "PolicyRejected", "PolicyChanged"]
    message: str
    key: str


def policy_transition(
    current_status: Mapping[str, Any], *, uid: str, generation: int | None, accepted: bool, reason: str,
    message: str,
) -> PolicyTransition | None:
    """The Event for moving from ``current_status`` to this verdict, or None when nothing changed.

    Accepted for the first time or again, rejected (or rejected for another reason), or a new generation
    that is still accepted: a transition each. A resync that recomputes the same verdict for the same
    generation is none. ``key`` names the Event, so two replicas or a restart post it once.
    """
    shown = find_condition(current_status.get("conditions") or [], ConditionType.ACCEPTED)
    was = None if shown is None else (shown.get("status"), shown.get("reason"))
    old_generation = current_status.get("observedGeneration")
    now_is = ("True" if accepted else "False", reason)
    if was == now_is and old_generation == generation:
        return None
    key = f"policy:{uid}:{generation}:{now_is[0]}:{reason}"
    if not accepted:
        return PolicyTransition("Warning", "PolicyRejected", message, key)
    if was is not None and was[0] == "True":
        return PolicyTransition("Normal", "PolicyChanged",
                                f"Generation {generation} of the policy is valid and in force.", key)
    return PolicyTransition("Normal", "PolicyAccepted", message, key)
