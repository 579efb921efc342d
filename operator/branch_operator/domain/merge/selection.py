"""AutoMergePolicy selection: which policies are in force, and which one governs a Branch.

Pure logic, no I/O. The I/O layer lists the policies of the Branch's namespace, drops the ones
:func:`review_policies` rejects, calls :func:`select_policy`, then
:func:`~branch_operator.domain.merge.decision.evaluate_merge`, and records the result with
:mod:`branch_operator.domain.merge.trace` only when it differs from what status shows.

Matching (:func:`policy_matches`) is the AND of three filters, each of which is "any" when empty:

* ``branchSelector`` on the Branch's labels, with Kubernetes LabelSelector semantics: every
  ``matchLabels`` pair must be present; ``In`` needs the key with one of the values, ``NotIn`` matches
  when the key is absent or its value is not listed, ``Exists``/``DoesNotExist`` test the key only.
  An absent or empty selector constrains nothing.
* ``branchNamePatterns`` on ``spec.branchName``: the branch matches if any glob does (:func:`glob_match`).
* ``targetBranches`` on ``spec.targetBranch``: same globs; a plain name matches only itself.

So a policy with neither selector nor patterns governs every Branch of its namespace. A matching policy
with ``enabled: false`` is still selected: a high-priority disabled policy is how auto-merge is switched
off for part of a namespace. The highest ``priority`` wins; a tie goes to the first name in byte
order and is reported in the ``policy`` check's evidence.

Glob syntax, path-aware because OMS branch names are ``/``-separated (``feature/user-schema``):

* ``*`` any run of characters within one segment (never ``/``); ``?`` one such character;
* ``[abc]``, ``[a-z]``, ``[!abc]`` one character of (not of) a set, never ``/``;
* ``**`` any run of characters across segments; as a whole segment, ``**/`` also matches zero
  segments, so ``**/hotfix`` matches ``hotfix`` and ``team/a/hotfix``;
* matching is case-sensitive and anchored at both ends. A pattern with an unclosed set (``[``,
  ``[!``, ``feature/[ab``) or an invalid one (``[z-a]``) is refused: the policy is not accepted
  (:func:`glob_problem`), since it would match nothing its author meant.

A policy is *accepted* (:func:`review_policies`) unless its spec is invalid beyond what the CRD schema
can say (a cron expression, time zone or duration that does not parse, a glob that is refused, a
``branchSelector`` that can match no labels at all: :func:`selector_problems`) or it *conflicts*: it has the
same priority and exactly the same selector, patterns and target branches as another accepted policy
with an earlier name, so it could never govern anything and its author's intent is ambiguous.
A rejected policy is ignored as a whole, never half-applied.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from pydantic import ValidationError

from branch_operator.api.models import AutoMergePolicySpec, LabelSelector, LabelSelectorRequirement
from branch_operator.domain.conditions import truncate
from branch_operator.domain.windows import Window, compile_window, parse_cron, parse_duration, parse_zone

__all__ = [
    "PolicyRef",
    "PolicyReview",
    "Selection",
    "glob_match",
    "glob_problem",
    "policy_matches",
    "policy_problems",
    "policy_windows",
    "review_policies",
    "schema_problems",
    "select_policy",
    "selector_matches",
    "selector_problems",
]

_MAX_MESSAGE = 4096
INVALID_SPEC = "InvalidSpec"  # the Accepted condition's reason for a spec that cannot be applied


class PolicyRef(NamedTuple):
    name: str
    generation: int | None
    spec: AutoMergePolicySpec



# -------------------------------------------------------------------------------------------- matching


def selector_matches(selector: LabelSelector | None, labels: Mapping[str, str]) -> bool:
    if selector is None:
        return True
    if any(labels.get(k) != v for k, v in selector.match_labels.items()):
        return False
    return all(_requirement_matches(r, labels) for r in selector.match_expressions)


def _requirement_matches(req: LabelSelectorRequirement, labels: Mapping[str, str]) -> bool:
    present = req.key in labels
    if req.operator == "In":
        return present and labels[req.key] in req.values
    if req.operator == "NotIn":
        return not present or labels[req.key] not in req.values
    if req.operator == "Exists":
        return present
    return not present  # DoesNotExist


@functools.lru_cache(maxsize=1024)
def _set_end(pattern: str, i: int) -> int:
    """Where the set opened by the ``[`` at ``i`` closes, or -1 when it never does ("]" first is a member)."""
    n = len(pattern)
    j = i + 1
    if j < n and pattern[j] == "!":
        j += 1
    if j < n and pattern[j] == "]":
        j += 1
    while j < n and pattern[j] != "]":
        j += 1
    return j if j < n else -1


def _escape_set(body: str) -> str:
    """A glob set's characters as a regex set's: only what the regex engine reads specially is escaped."""
    return re.sub(r"([\\\[\]^&~|])", r"\\\1", body)


def _compile_glob(pattern: str) -> re.Pattern[str]:
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            if pattern.startswith("**", i):
                whole_segment = (i == 0 or pattern[i - 1] == "/") and pattern.startswith("/", i + 2)
                if whole_segment:
                    out.append("(?:.*/)?")
                    i += 3
                else:
                    out.append(".*")
                    i += 2
                while i < n and pattern[i] == "*":  # "***" means nothing more than "**"
                    i += 1
                continue
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            j = _set_end(pattern, i)
            if j < 0:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1 : j]
                negate = body.startswith("!")
                if negate:
                    body = body[1:]
                body = _escape_set(body)
                # A set never matches the segment separator, in line with "*" and "?".
                out.append(f"(?!/)[{'^' if negate else ''}{body}]")
                i = j
        else:
            out.append(re.escape(c))
        i += 1
    try:
        return re.compile("".join(out), re.DOTALL)
    except re.error:
        # A set the regex engine rejects (e.g. the reversed range "[z-a]") must not make every branch of
        # the namespace fail to evaluate; the pattern is then matched literally.
        return re.compile(re.escape(pattern), re.DOTALL)


def glob_problem(pattern: str) -> str | None:
    """Why ``pattern`` is not a usable glob, or None: an unclosed ``[`` set, or a set the regex engine refuses."""
    i, n = 0, len(pattern)
    while i < n:
        if pattern[i] == "[":
            j = _set_end(pattern, i)
            if j < 0:
                return f"{pattern!r}: the set opened at position {i + 1} is never closed with ']'"
            body = pattern[i + 1: j].removeprefix("!")
            try:
                re.compile(f"[{_escape_set(body)}]")
            except re.error as exc:
                return f"{pattern!r}: invalid set [{pattern[i + 1: j]}] ({exc})"
            i = j
        i += 1
    return None


def glob_match(pattern: str, name: str) -> bool:
    """Whether ``name`` matches the path-aware glob ``pattern`` (see the module docstring)."""
    return _compile_glob(pattern).fullmatch(name) is not None


def policy_matches(
    policy_spec: AutoMergePolicySpec,
    *,
    branch_name: str,
    target_branch: str,
    labels: Mapping[str, str],
) -> bool:
    if not selector_matches(policy_spec.branch_selector, labels):
        return False
    if policy_spec.branch_name_patterns and not any(
        glob_match(p, branch_name) for p in policy_spec.branch_name_patterns
    ):
        return False
    return not policy_spec.target_branches or any(glob_match(t, target_branch) for t in policy_spec.target_branches)


@dataclass(frozen=True, slots=True)
class Selection:
    policy: PolicyRef | None  # the governing policy, None when nothing matches
    matched: list[str]  # every matching policy name, winner first, then by (priority desc, name)
    tied: list[str]  # names sharing the winner's priority, winner first; empty when the win is clear

    @property
    def ambiguous(self) -> bool:
        return bool(self.tied)


def select_policy(
    policies: Sequence[PolicyRef],
    *,
    branch_name: str,
    target_branch: str,
    labels: Mapping[str, str],
) -> Selection:
    """The matching policy with the highest ``priority``; ties go to the lexicographically first name."""
    matching = [
        p
        for p in policies
        if policy_matches(p.spec, branch_name=branch_name, target_branch=target_branch, labels=labels)
    ]
    # Name order breaks ties so that every replica, and every reconcile, picks the same policy.
    matching.sort(key=lambda p: (-p.spec.priority, p.name))
    if not matching:
        return Selection(policy=None, matched=[], tied=[])
    winner = matching[0]
    tied = [p.name for p in matching if p.spec.priority == winner.spec.priority]
    return Selection(policy=winner, matched=[p.name for p in matching], tied=tied if len(tied) > 1 else [])


# -------------------------------------------------------------------------------------------- review


def policy_windows(spec: AutoMergePolicySpec) -> list[Window]:
    """The spec's merge windows, compiled; ``ValueError`` for the first one that does not parse."""
    windows = []
    for i, w in enumerate(spec.merge_windows):
        try:
            windows.append(compile_window(w.kind, w.schedule, w.duration, w.time_zone))
        except ValueError as exc:
            raise ValueError(f"mergeWindows[{i}]: {exc}") from exc
    return windows


def schema_problems(exc: ValidationError) -> str:
    """A spec the models refuse (what the CRD schema would refuse), as a condition message says it."""
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'spec'}: {e['msg']}" for e in exc.errors()[:5])


def selector_problems(selector: LabelSelector | None) -> list[str]:
    """Why ``selector`` matches no set of labels at all, by construction; empty when some labels match.

    A policy with such a selector governs nothing, which is never what its author meant. The operator
    values (``In``/``NotIn`` need values, ``Exists``/``DoesNotExist`` take none) are checked as the API
    server checks a LabelSelector; the rest are contradictions between requirements on one key.
    """
    if selector is None:
        return []
    problems: list[str] = []
    # Per key: the values it may take (None = any value), and whether it must be present / absent.
    allowed: dict[str, set[str] | None] = {}
    denied: dict[str, set[str]] = {}
    present: set[str] = set()
    absent: set[str] = set()
    for key, value in selector.match_labels.items():
        allowed[key] = {value}
        present.add(key)
    for i, req in enumerate(selector.match_expressions):
        where = f"matchExpressions[{i}]"
        if req.operator in ("In", "NotIn") and not req.values:
            problems.append(f"{where}: operator {req.operator} needs at least one value")
            continue
        if req.operator in ("Exists", "DoesNotExist") and req.values:
            problems.append(f"{where}: operator {req.operator} takes no values")
            continue
        if req.operator == "In":
            before = allowed.get(req.key)
            allowed[req.key] = set(req.values) if before is None else before & set(req.values)
            present.add(req.key)
        elif req.operator == "NotIn":
            denied.setdefault(req.key, set()).update(req.values)
        elif req.operator == "Exists":
            present.add(req.key)
        else:
            absent.add(req.key)
    for key in sorted(present & absent):
        problems.append(f"label {key!r} is required and also required to be absent: no branch can match")
    for key, values in sorted(allowed.items()):
        if values is not None and not values - denied.get(key, set()):
            problems.append(f"label {key!r} has no value every requirement allows: no branch can match")
    return problems


def policy_problems(spec: AutoMergePolicySpec) -> list[str]:
    """What is wrong with a schema-valid spec; empty when it can be applied."""
    problems = []
    for i, w in enumerate(spec.merge_windows):
        # Each field on its own, so one apply shows every mistake of a window, not the first.
        checks: tuple[tuple[Callable[[str], object], str], ...] = (
            (parse_cron, w.schedule), (parse_duration, w.duration), (parse_zone, w.time_zone))
        for parse, text in checks:
            try:
                parse(text)
            except ValueError as exc:
                problems.append(f"mergeWindows[{i}]: {exc}")
    if spec.freeze is not None and spec.freeze.until is not None and spec.freeze.until.tzinfo is None:
        problems.append("freeze.until: needs a time zone (e.g. 2025-07-01T00:00:00Z)")
    globs = (("branchNamePatterns", spec.branch_name_patterns), ("targetBranches", spec.target_branches))
    for field, patterns in globs:
        for i, pattern in enumerate(patterns):
            problem = glob_problem(pattern)
            if problem is not None:
                problems.append(f"{field}[{i}]: {problem}")
    problems += [f"branchSelector: {problem}" for problem in selector_problems(spec.branch_selector)]
    return problems


def _criteria(spec: AutoMergePolicySpec) -> tuple[Any, ...]:
    selector = spec.branch_selector
    selector_key = (
        None
        if selector is None or (not selector.match_labels and not selector.match_expressions)
        else (
            tuple(sorted(selector.match_labels.items())),
            tuple(sorted((r.key, r.operator, tuple(sorted(r.values))) for r in selector.match_expressions)),
        )
    )
    return spec.priority, selector_key, frozenset(spec.branch_name_patterns), frozenset(spec.target_branches)


@dataclass(frozen=True, slots=True)
class PolicyReview:
    accepted: list[PolicyRef]  # by name
    rejected: dict[str, tuple[str, str]]  # name -> (condition reason, message)


def review_policies(policies: Sequence[PolicyRef]) -> PolicyReview:
    """Split policies into the ones in force and the ones ignored as a whole (invalid or conflicting)."""
    accepted: list[PolicyRef] = []
    rejected: dict[str, tuple[str, str]] = {}
    owner: dict[tuple[Any, ...], str] = {}
    for policy in sorted(policies, key=lambda p: p.name):
        try:
            problems = policy_problems(policy.spec)
        except Exception as exc:  # a check that breaks on one spec must cost that policy only
            problems = [f"could not be checked ({type(exc).__name__}: {exc})"]
        if problems:
            rejected[policy.name] = (INVALID_SPEC, truncate("; ".join(problems), _MAX_MESSAGE))
            continue
        criteria = _criteria(policy.spec)
        first = owner.setdefault(criteria, policy.name)
        if first != policy.name:
            rejected[policy.name] = (
                "ConflictingPolicy",
                f"same priority ({policy.spec.priority}) and the same selector, branch name patterns and "
                f"target branches as policy {first}, which wins by name order; this policy could never apply",
            )
            continue
        accepted.append(policy)
    return PolicyReview(accepted=accepted, rejected=rejected)
