"""Every phase change is decided in ``domain/lifecycle.py``: no other module writes ``status.phase``.

A scan of the package's source for the two ways a status patch gets a phase: a ``"phase"`` key in a dict
literal and a ``x["phase"] = ...`` assignment (``phaseTransitionTime`` likewise, and ``dict(phase=...)``
or ``.update(phase=...)``). Reads (``status.get("phase")``) are fine anywhere.
"""

from __future__ import annotations

import ast
from pathlib import Path

import branch_operator

PACKAGE = Path(branch_operator.__file__).parent
DECIDER = Path("domain/lifecycle.py")
# The embedded API server is test infrastructure, not the operator.
SKIPPED = (Path("embedded"),)
PHASE_KEYS = frozenset({"phase", "phaseTransitionTime"})
# (module, enclosing function): places that build a phase into an object that is never written.
NOT_WRITES = {
    # A stand-in object that only tells the reconciler to read the Branch itself.
    (Path("controllers/merge.py"), "reconcile_key"),
    # `kubectl branch why -o json`: a printed report that quotes the phase, never written to the API.
    (Path("kubectl_branch/render.py"), "why_document"),
}


def _is_phase_key(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and node.value in PHASE_KEYS


def phase_writes(source: str) -> list[tuple[int, str | None]]:
    """(line, enclosing function) of every phase write in ``source``."""
    found: list[tuple[int, str | None]] = []

    def visit(node: ast.AST, function: str | None) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            function = node.name
        hit = False
        if isinstance(node, ast.Dict):
            hit = any(_is_phase_key(k) for k in node.keys)
        elif isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            hit = any(isinstance(t, ast.Subscript) and _is_phase_key(t.slice) for t in targets)
        elif isinstance(node, ast.Call):
            func = node.func
            named = (isinstance(func, ast.Name) and func.id == "dict") or (
                isinstance(func, ast.Attribute) and func.attr in ("update", "setdefault"))
            hit = named and (any(k.arg in PHASE_KEYS for k in node.keywords)
                             or (isinstance(func, ast.Attribute) and func.attr == "setdefault"
                                 and bool(node.args) and _is_phase_key(node.args[0])))
        if hit:
            found.append((getattr(node, "lineno", 0), function))
        for child in ast.iter_child_nodes(node):
            visit(child, function)

    visit(ast.parse(source), None)
    return found


def test_the_scan_finds_each_kind_of_phase_write() -> None:
    source = '''
def a(patch):
    patch["phase"] = "ACTIVE"
def b():
    return {"status": {"phaseTransitionTime": "now"}}
def c(patch):
    patch.update(phase="READY")
def d(status):
    return status.get("phase"), status["phase"]
'''
    assert phase_writes(source) == [(3, "a"), (5, "b"), (7, "c")]


def test_only_lifecycle_writes_the_phase() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if rel == DECIDER or any(rel.is_relative_to(s) for s in SKIPPED):
            continue
        for line, function in phase_writes(path.read_text(encoding="utf-8")):
            if (rel, function) not in NOT_WRITES:
                offenders.append(f"{rel}:{line} (in {function})")
    assert offenders == [], "status.phase is written outside domain/lifecycle.py: " + ", ".join(offenders)


def test_lifecycle_is_where_the_phase_is_written() -> None:
    # Guards the scan itself: were it blind to how lifecycle writes the phase, the test above proves nothing.
    assert phase_writes((PACKAGE / DECIDER).read_text(encoding="utf-8"))
