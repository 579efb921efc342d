"""One audit vocabulary: an action is named by its ``AuditAction`` member, never spelt out as a string."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import branch_operator
from branch_operator.domain.audit import AuditAction

PACKAGE = Path(branch_operator.__file__).parent
VOCABULARY = Path("domain/audit.py")
SKIPPED = (Path("embedded"),)  # the embedded API server is test infrastructure
# Still names its merge actions with module constants; they become AuditAction members with the merge
# module's restructuring, and this entry goes.
NOT_YET: set[Path] = set()
# The namespaces of AuditAction values, so a new action spelt out as text is caught before it is a member.
_NAMESPACES = sorted({a.value.split(".", 1)[0] for a in AuditAction})
ACTION_TEXT = re.compile(rf"(?:{'|'.join(_NAMESPACES)})\.[a-z_]+")


def spelt_out_actions(source: str) -> list[tuple[int, str]]:
    """(line, text) of every string literal, or literal part of an f-string, that is an action name."""
    return [(node.lineno, node.value) for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and ACTION_TEXT.fullmatch(node.value.strip("|:")) is not None]


def test_the_scan_finds_a_spelt_out_action() -> None:
    source = 'A = "lock.released"\nB = f"{x}|lock.expired"\nC = "see lock.released"\nD = AuditAction.LOCK_RELEASED\n'
    assert spelt_out_actions(source) == [(1, "lock.released"), (2, "|lock.expired")]


def test_no_module_spells_out_an_audit_action() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if rel == VOCABULARY or rel in NOT_YET or any(rel.is_relative_to(s) for s in SKIPPED):
            continue
        offenders += [f"{rel}:{line} {text!r}" for line, text in spelt_out_actions(path.read_text(encoding="utf-8"))]
    assert offenders == [], "audit actions spelt out instead of AuditAction members: " + ", ".join(offenders)
