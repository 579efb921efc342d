"""`kubectl-branch`: the on-call view of Branches (installed on PATH, so `kubectl branch ...` works)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from .kube import KubeClient, KubeError


def _age(ts: str | None, now: datetime) -> str:
    if not ts:
        return "<unknown>"
    try:
        then = datetime.fromisoformat(ts.replace("Z", "+00:00"))
    except ValueError:
        return "<unknown>"
    secs = int((now - then).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size:
            return f"{secs // size}{unit}"
    return f"{max(secs, 0)}s"


def _condition(status: dict[str, Any], ctype: str) -> str:
    for cond in status.get("conditions") or []:
        if cond.get("type") == ctype:
            return str(cond.get("status", ""))
    return ""


def branch_rows(branches: list[dict[str, Any]], locks: list[dict[str, Any]], *, all_namespaces: bool,
                now: datetime) -> list[list[str]]:
    held: dict[tuple[str, str], int] = {}
    for lock in locks:
        key = (lock["metadata"].get("namespace", ""), lock.get("spec", {}).get("branch", ""))
        held[key] = held.get(key, 0) + 1
    rows = []
    for b in sorted(branches, key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"])):
        meta, spec, st = b["metadata"], b.get("spec", {}), b.get("status") or {}
        indexing = st.get("indexing") or {}
        validation = indexing.get("validation") or {}
        row = [
            meta["name"], spec.get("branchName", ""), st.get("phase", ""),
            "" if indexing.get("recordsIndexed") is None else str(indexing["recordsIndexed"]),
            "" if validation.get("passed") is None else str(validation["passed"]).lower(),
            _condition(st, "Mergeable"),
            str(held.get((meta.get("namespace", ""), meta["name"]), 0)),
            _age(meta.get("creationTimestamp"), now),
        ]
        rows.append(([meta.get("namespace", "")] if all_namespaces else []) + row)
    return rows


def render_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = ["   ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in [header, *rows]]
    return "\n".join(lines)


async def _list(args: argparse.Namespace) -> int:
    kube = await KubeClient.connect(args.kubeconfig, args.context)
    try:
        ns = None if args.all_namespaces else (args.namespace or _current_namespace(args))
        branches = await kube.list_branches(ns)
        locks = await kube.list_objects("branchlocks", ns)
    finally:
        await kube.close()
    header = ["NAME", "BRANCH", "PHASE", "RECORDS", "VALID", "MERGEABLE", "LOCKS", "AGE"]
    if args.all_namespaces:
        header = ["NAMESPACE", *header]
    rows = branch_rows(branches, locks, all_namespaces=args.all_namespaces, now=datetime.now(UTC))
    if not rows:
        print(f"No branches found in {'any namespace' if ns is None else ns + ' namespace'}.", file=sys.stderr)
        return 0
    print(render_table(header, rows))
    return 0


def _current_namespace(args: argparse.Namespace) -> str:
    """The kubeconfig context's namespace, like kubectl; 'default' if it names none."""
    try:
        from kubernetes import config as sync_config

        _contexts, active = sync_config.list_kube_config_contexts(  # type: ignore[no-untyped-call]
            config_file=args.kubeconfig)
        if args.context:
            active = next(c for c in _contexts if c["name"] == args.context)
        return str(active.get("context", {}).get("namespace") or "default")
    except Exception:
        return "default"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kubectl branch", description="Inspect and operate OMS branches.")
    p.add_argument("-n", "--namespace")
    p.add_argument("-A", "--all-namespaces", action="store_true")
    p.add_argument("--context")
    p.add_argument("--kubeconfig")
    sub = p.add_subparsers(dest="command", required=True)
    ls = sub.add_parser("list", aliases=["ls"], help="list branches with phase, records, validation and locks")
    ls.set_defaults(fn=_list)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(asyncio.run(args.fn(args)))
    except KubeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # no cluster, bad kubeconfig: one clear line, not a traceback
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
