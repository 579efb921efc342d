"""Merge decisions, pure: which policy governs a Branch, whether it may be merged, what a merge's result means.

* :mod:`.selection`: which AutoMergePolicies are in force and which one governs a Branch;
* :mod:`.checks`: each check of a merge decision with its evidence;
* :mod:`.decision`: :func:`evaluate_merge`, the decision made from the checks;
* :mod:`.trace`: the ``status.merge`` trace of a Branch and the status of a policy.

The I/O half is :mod:`branch_operator.controllers.merge`.
"""

from branch_operator.domain.merge.checks import (
    Check,
    ManualRequest,
    blocking_locks,
    target_branch_object,
)
from branch_operator.domain.merge.decision import REASON_ORDER, TIME_REASONS, MergeEvaluation, evaluate_merge
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
    "Check",
    "ManualRequest",
    "MergeEvaluation",
    "PolicyRef",
    "PolicyReview",
    "PolicyStatusView",
    "Selection",
    "blocking_locks",
    "evaluate_merge",
    "glob_match",
    "merge_changed",
    "merge_key",
    "merge_status_patch",
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
