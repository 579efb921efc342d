"""Merge decisions, pure: which policy governs a Branch, whether it may be merged, what a merge's result means.

* :mod:`.selection`: which AutoMergePolicies are in force and which one governs a Branch;
* :mod:`.checks`: each check of a merge decision with its evidence;
* :mod:`.decision`: :func:`evaluate_merge`, the decision made from the checks, and what a merge
  backend's result means (:func:`merge_step`, :func:`conflict_step`, :func:`pending_retry`);
* :mod:`.trace`: the ``status.merge`` trace of a Branch and the status of a policy.

The I/O half is :mod:`branch_operator.controllers.merge`.
"""

from branch_operator.domain.merge.checks import (
    Check,
    ManualRequest,
    blocking_locks,
    target_branch_object,
)
from branch_operator.domain.merge.decision import (
    REASON_ORDER,
    TIME_REASONS,
    Answer,
    DecisionReport,
    MergeEvaluation,
    MergeStep,
    Outcome,
    Step,
    classify_answer,
    conflict_step,
    decision_report,
    evaluate_merge,
    failed_attempts,
    merge_step,
    pending_retry,
)
from branch_operator.domain.merge.selection import (
    PolicyRef,
    PolicyReview,
    Selection,
    glob_match,
    policy_matches,
    policy_problems,
    policy_windows,
    review_policies,
    select_policy,
    selector_matches,
)
from branch_operator.domain.merge.trace import (
    PolicyStatusView,
    merge_changed,
    merge_key,
    merge_status_patch,
    policy_status_patch,
    policy_statuses,
)

__all__ = [
    "REASON_ORDER",
    "TIME_REASONS",
    "Answer",
    "Check",
    "DecisionReport",
    "ManualRequest",
    "MergeEvaluation",
    "MergeStep",
    "Outcome",
    "PolicyRef",
    "PolicyReview",
    "PolicyStatusView",
    "Selection",
    "Step",
    "blocking_locks",
    "classify_answer",
    "conflict_step",
    "decision_report",
    "evaluate_merge",
    "failed_attempts",
    "glob_match",
    "merge_changed",
    "merge_key",
    "merge_status_patch",
    "merge_step",
    "pending_retry",
    "policy_matches",
    "policy_problems",
    "policy_status_patch",
    "policy_statuses",
    "policy_windows",
    "review_policies",
    "select_policy",
    "selector_matches",
    "target_branch_object",
]
