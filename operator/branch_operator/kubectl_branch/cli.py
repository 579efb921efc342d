"""`kubectl-branch`: the on-call view of Branches (installed on PATH, so `kubectl branch ...` works).

Read commands (`list`, `describe`, `why`, `locks`) use the caller's own Kubernetes RBAC. Admin commands
(`unlock`, `set-state`, `merge`) only annotate the Branch (RBAC: ``patch branches``); the operator carries
the request out, records ``status.lastAdminAction``, an Event and an audit record, and the plugin waits
for that outcome. Whether a request may be carried out is the operator's decision, refusals included
(they are audited); the plugin only rejects usage errors, which request nothing. `publish` and `audit`
talk to NATS (``--nats``, default ``$NATS_URL``).

Exit codes: 0 done; 1 failed or refused (unknown branch, operator refused, no cluster, timeout);
2 usage (bad arguments, missing ``--reason``, unknown state).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import io
import json
import logging
import os
import sys
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

from branch_operator.api.models import (
    ANNOTATION_FORCE_UNLOCK,
    ANNOTATION_MERGE_REQUEST,
    ANNOTATION_REASON,
    ANNOTATION_REQUEST_ID,
    ANNOTATION_REQUESTED_BY,
    ANNOTATION_SET_STATE,
    LABEL_BRANCH,
    Branch,
    BranchLock,
    Phase,
)
from branch_operator.cli.publish import add_event_arguments
from branch_operator.clients.kube import KubeClient, KubeError, NotFound, Transient
from branch_operator.config import Settings
from branch_operator.domain.locks import label_value
from branch_operator.kubectl_branch import output, render
from branch_operator.kubectl_branch.listing import Listing

# Re-exported for callers of the first version of this module.
branch_rows = render.branch_rows
render_table = render.render_table

USAGE, FAILED, OK = 2, 1, 0
INTERRUPTED = 1  # kubectl's interrupt handler exits 1 after Ctrl-C


class PluginError(Exception):
    """A clear, expected failure: printed as ``error: <message>``, exit ``code``."""

    def __init__(self, message: str, code: int = FAILED) -> None:
        super().__init__(message)
        self.code = code


class Context:
    def __init__(self, args: argparse.Namespace, out: TextIO, err: TextIO) -> None:
        self.args = args
        self.out = out
        self.err = err
        self.fmt = output.parse_output(getattr(args, "output", None))
        self._kube: KubeClient | None = None

    async def kube(self) -> KubeClient:
        if self._kube is None:
            try:
                self._kube = await KubeClient.connect(self.args.kubeconfig, self.args.context)
            except Exception as exc:  # no kubeconfig, unknown context: say so in one line
                raise PluginError(f"cannot load Kubernetes configuration: {exc}") from exc
        return self._kube

    async def close(self) -> None:
        if self._kube is not None:
            await self._kube.close()

    @property
    def namespace(self) -> str:
        return str(self.args.namespace or current_namespace(self.args.kubeconfig, self.args.context))

    def print(self, text: str = "") -> None:
        print(text, file=self.out)

    def emit(self, text: str) -> None:
        """Structured output; a JSONPath template prints exactly what it says (no newline added), as kubectl."""
        if self.fmt.kind == "jsonpath":
            self.out.write(text)
        else:
            self.print(text)


def current_namespace(kubeconfig: str | None, context: str | None) -> str:
    """The kubeconfig context's namespace, like kubectl; 'default' if it names none."""
    active = _context_entry(kubeconfig, context)
    return str((active or {}).get("context", {}).get("namespace") or "default")


def requester(kubeconfig: str | None, context: str | None) -> str:
    """Who is asking, for ``oms.dev/requested-by``: the kubeconfig user of the context, and the OS user.

    Self-declared (the API server's audit log has the authenticated identity); it says who to ask.
    """
    active = _context_entry(kubeconfig, context)
    kube_user = str((active or {}).get("context", {}).get("user") or "")
    try:
        os_user = getpass.getuser()
    except Exception:
        os_user = ""
    if kube_user and os_user and os_user != kube_user:
        return f"{kube_user} ({os_user})"
    return kube_user or os_user or "unknown"


def _context_entry(kubeconfig: str | None, context: str | None) -> dict[str, Any] | None:
    try:
        from kubernetes import config as sync_config

        contexts, active = sync_config.list_kube_config_contexts(config_file=kubeconfig)  # type: ignore[no-untyped-call]
        if context:
            return next((c for c in contexts if c["name"] == context), None)
        return dict(active) if active else None
    except Exception:
        return None


# -------------------------------------------------------------------------------------- helpers


async def _get_branch(ctx: Context, name: str) -> dict[str, Any]:
    kube = await ctx.kube()
    try:
        return await kube.get_branch(ctx.namespace, name)
    except NotFound:
        raise PluginError(f'branch "{name}" not found in namespace "{ctx.namespace}"') from None


async def _branch_locks(ctx: Context, branch: dict[str, Any]) -> list[dict[str, Any]]:
    kube = await ctx.kube()
    name = branch["metadata"]["name"]
    locks = await kube.list_locks(branch["metadata"]["namespace"], label_value(name))
    return [lk for lk in locks if (lk.get("spec") or {}).get("branch") == name]


async def _events(ctx: Context, obj: dict[str, Any]) -> list[dict[str, Any]]:
    kube = await ctx.kube()
    meta = obj["metadata"]
    try:
        result = await kube.core.list_namespaced_event(
            meta["namespace"], field_selector=f"involvedObject.name={meta['name']}")
    except Exception:
        return []  # no `list events` permission: describe still shows the rest
    items = [kube.api.sanitize_for_serialization(i) for i in result.items]
    return [e for e in items if (e.get("involvedObject") or {}).get("name") == meta["name"]
            and (e.get("involvedObject") or {}).get("kind") in (None, Branch.KIND)]


def _reason(args: argparse.Namespace) -> str:
    reason = (args.reason or "").strip()
    if not reason:
        raise PluginError("--reason must say why (it is recorded in the audit trail)", USAGE)
    return reason


def _now() -> datetime:
    return datetime.now(UTC)


# ------------------------------------------------------------------------------------ read commands


async def cmd_list(ctx: Context) -> int:
    kube = await ctx.kube()
    all_ns = bool(ctx.args.all_namespaces)
    ns = None if all_ns else ctx.namespace
    branches, version = await kube.list_with_version(Branch.PLURAL, ns, ctx.args.selector)
    locks = await kube.list_objects(BranchLock.PLURAL, ns)
    wide = ctx.fmt.kind == "wide"
    header = (["NAMESPACE"] if all_ns else []) + (render.BRANCH_WIDE if wide else render.BRANCH_HEADER)

    def rows(objs: list[dict[str, Any]], held: list[dict[str, Any]]) -> list[list[str]]:
        return render.branch_rows(objs, held, all_namespaces=all_ns, now=_now(), wide=wide)

    table = Listing(ctx, header, [output.with_kind(b, Branch.KIND) for b in _by_name(branches)], rows(branches, locks))
    if not table.show(f"No branches found in {'any namespace' if ns is None else ns + ' namespace'}."):
        return OK

    async def row(obj: dict[str, Any]) -> list[str]:
        meta = obj["metadata"]
        held = await kube.list_locks(meta.get("namespace", ""), label_value(meta["name"]))
        return rows([obj], [lk for lk in held if (lk.get("spec") or {}).get("branch") == meta["name"]])[0]

    await table.follow(kube.watch_objects(Branch.PLURAL, ns, resource_version=version,
                                          label_selector=ctx.args.selector), Branch.KIND, row)
    return OK


async def cmd_describe(ctx: Context) -> int:
    branch = await _get_branch(ctx, ctx.args.name)
    locks = await _branch_locks(ctx, branch)
    events = render.sort_events(await _events(ctx, branch))
    if ctx.fmt.structured:
        items = ([output.with_kind(branch, Branch.KIND)] + [output.with_kind(lk, BranchLock.KIND) for lk in locks]
                 + [output.with_kind(e, "Event") for e in events])
        ctx.emit(output.render_structured(ctx.fmt, output.as_list(items)))
    else:
        ctx.print(render.describe_branch(branch, locks, events, _now()))
    return OK


async def cmd_why(ctx: Context) -> int:
    branch = await _get_branch(ctx, ctx.args.name)
    if ctx.fmt.structured:
        named = [output.with_kind(branch, Branch.KIND)]
        ctx.emit(output.render_structured(ctx.fmt, render.why_document(branch), named))
    else:
        ctx.print(render.explain_merge(branch, _now()))
    return OK


async def cmd_locks(ctx: Context) -> int:
    kube = await ctx.kube()
    all_ns = not ctx.args.name and bool(ctx.args.all_namespaces)
    ns = None if all_ns else ctx.namespace
    selector = ctx.args.selector
    if ctx.args.name:
        branch = await _get_branch(ctx, ctx.args.name)
        # The branch label selects on the server; spec.branch is the truth (a label can be edited).
        selector = ",".join(filter(None, [f"{LABEL_BRANCH}={label_value(ctx.args.name)}", selector]))
    locks, version = await kube.list_with_version(BranchLock.PLURAL, ns, selector)
    if ctx.args.name:
        locks = [lk for lk in locks if (lk.get("spec") or {}).get("branch") == branch["metadata"]["name"]]
    wide = ctx.fmt.kind == "wide"
    header = (["NAMESPACE"] if all_ns else []) + (render.LOCK_WIDE if wide else render.LOCK_HEADER)

    def rows(objs: list[dict[str, Any]]) -> list[list[str]]:
        return render.lock_rows(objs, all_namespaces=all_ns, now=_now(), wide=wide)

    where = (f"branch {ctx.args.name}" if ctx.args.name
             else "any namespace" if all_ns else f"{ctx.namespace} namespace")
    table = Listing(ctx, header, [output.with_kind(lk, BranchLock.KIND) for lk in _by_name(locks)], rows(locks))
    if not table.show(f"No locks held on {where}."):
        return OK

    async def row(obj: dict[str, Any]) -> list[str]:
        return rows([obj])[0]

    await table.follow(kube.watch_objects(BranchLock.PLURAL, ns, resource_version=version, label_selector=selector),
                       BranchLock.KIND, row)
    return OK


def _by_name(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(objs, key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"]))


# ----------------------------------------------------------------------------------- admin commands


async def cmd_unlock(ctx: Context) -> int:
    reason = _reason(ctx.args)
    branch = await _get_branch(ctx, ctx.args.name)
    selector = ",".join(ctx.args.lock or []) or "all"
    # Which locks exist, and which may go, is the operator's to say (audited), as for set-state.
    return await _request(ctx, branch, {ANNOTATION_FORCE_UNLOCK: selector}, reason)


async def cmd_set_state(ctx: Context) -> int:
    try:
        target = Phase(ctx.args.state.upper())
    except ValueError:
        raise PluginError(f"unknown state {ctx.args.state!r}; one of {', '.join(p.value for p in Phase)}",
                          USAGE) from None
    reason = _reason(ctx.args)
    branch = await _get_branch(ctx, ctx.args.name)
    # Whether the transition is allowed is the operator's to say, on the Branch as it is when the request
    # is claimed, and its refusal is audited; a check here would refuse on a stale read and leave no trace.
    return await _request(ctx, branch, {ANNOTATION_SET_STATE: target.value}, reason)


async def cmd_merge(ctx: Context) -> int:
    reason = _reason(ctx.args)
    branch = await _get_branch(ctx, ctx.args.name)
    phase = (branch.get("status") or {}).get("phase")
    if phase != Phase.READY.value:
        raise PluginError(f"branch {ctx.args.name} is {phase or 'not initialised'}; only READY branches can be "
                          f"merged (see kubectl branch why {ctx.args.name})")
    kube = await ctx.kube()
    meta = branch["metadata"]
    annotations = {ANNOTATION_MERGE_REQUEST: reason,
                   ANNOTATION_REQUESTED_BY: ctx.args.requested_by or requester(ctx.args.kubeconfig, ctx.args.context)}
    await kube.patch(Branch.PLURAL, meta["namespace"], meta["name"], {"metadata": {"annotations": annotations}})
    ctx.print(f"merge of {meta['name']} requested ({reason}); the operator's merge policy decides.")
    if not ctx.args.wait:
        ctx.print(f"Follow it with: kubectl branch why {meta['name']}")
        return OK
    deadline = asyncio.get_running_loop().time() + ctx.args.timeout
    while asyncio.get_running_loop().time() < deadline:
        current = await _get_branch(ctx, meta["name"])
        if ANNOTATION_MERGE_REQUEST not in (current["metadata"].get("annotations") or {}):
            ctx.print(render.explain_merge(current, _now()))
            return OK if (current.get("status") or {}).get("merge", {}).get("decision") == "Merged" else FAILED
        await asyncio.sleep(0.2)  # polling the API server for the operator's answer, with a deadline
    raise PluginError(f"the operator did not take up the merge request within {ctx.args.timeout:g}s "
                      f"(is it running?); the annotation {ANNOTATION_MERGE_REQUEST} stays set")


async def _request(ctx: Context, branch: dict[str, Any], action: dict[str, str], reason: str) -> int:
    """Annotate the Branch with an admin request, then (unless --no-wait) report what the operator did."""
    kube = await ctx.kube()
    meta = branch["metadata"]
    request_id = uuid.uuid4().hex[:16]
    who = ctx.args.requested_by or requester(ctx.args.kubeconfig, ctx.args.context)
    annotations = {**action, ANNOTATION_REASON: reason, ANNOTATION_REQUESTED_BY: who,
                   ANNOTATION_REQUEST_ID: request_id}
    await kube.patch(Branch.PLURAL, meta["namespace"], meta["name"], {"metadata": {"annotations": annotations}})
    what = " ".join(f"{k.split('/')[1]} {v}" for k, v in action.items())
    if not ctx.args.wait:
        ctx.print(f"requested {what} on {meta['name']} (request {request_id}); the operator applies it")
        return OK
    loop = asyncio.get_running_loop()
    deadline = loop.time() + ctx.args.timeout
    while loop.time() < deadline:
        current = await _get_branch(ctx, meta["name"])
        done = (current.get("status") or {}).get("lastAdminAction") or {}
        if done.get("requestId") == request_id:
            ctx.print(f"{meta['name']}: {done.get('result', '')}")
            return OK
        if not any(k in (current["metadata"].get("annotations") or {}) for k in action):
            refusal = next((e for e in await _events(ctx, current) if e.get("reason") == "AdminActionRefused"
                            and f"[request {request_id}]" in (e.get("message") or "")), None)
            if refusal is not None:
                raise PluginError(f"the operator refused: {refusal.get('message')}")
        await asyncio.sleep(0.2)  # polling the API server for the operator's answer, with a deadline
    raise PluginError(f"no answer from the operator within {ctx.args.timeout:g}s (is it running?); "
                      f"request {request_id} may still be applied")


# ------------------------------------------------------------------------------------ NATS commands


def _nats_url(args: argparse.Namespace) -> str:
    return str(args.nats or os.environ.get("NATS_URL") or Settings().nats_url)


async def cmd_publish(ctx: Context) -> int:
    from branch_operator.cli.publish import event_from_args, subject_for
    from branch_operator.contracts.funnel_encode import encode_binary, encode_structured
    from branch_operator.kubectl_branch.audit import connect

    args = ctx.args
    settings = Settings()
    event = event_from_args(args, namespace=args.namespace)
    payload, headers = encode_binary(event) if args.binary else encode_structured(event)
    url = _nats_url(args)
    try:
        nc = await connect(url, args.timeout)
    except Exception as exc:
        raise PluginError(f"cannot publish to NATS at {url}: {exc or type(exc).__name__}") from exc
    try:
        ack = await nc.jetstream().publish(subject_for(args.kind, settings), payload, headers=headers or None,
                                           timeout=args.timeout)
    except Exception as exc:
        raise PluginError(f"cannot publish to NATS at {url}: {exc or type(exc).__name__}") from exc
    finally:
        await nc.close()
    ctx.print(f"published {event['type']} id={event['id']} seq={ack.seq}")
    return OK


async def cmd_audit(ctx: Context) -> int:
    from branch_operator.kubectl_branch.audit import AuditUnavailable, matches, read_audit

    args = ctx.args
    settings = Settings()
    namespace = ctx.namespace
    branch_name: str | None = None
    try:
        branch = await (await ctx.kube()).get_branch(namespace, args.name)
        branch_name = (branch.get("spec") or {}).get("branchName")
    except (NotFound, PluginError):
        branch = None  # deleted branches keep their audit trail; look it up by name only
    except KubeError:
        branch = None
    try:
        records = await read_audit(_nats_url(args), args.stream or settings.audit_stream,
                                   args.subject or settings.audit_subject)
    except AuditUnavailable as exc:
        raise PluginError(str(exc)) from exc
    mine = [r for r in records if matches(r, namespace=namespace, name=args.name, branch_name=branch_name)]
    if args.action:
        mine = [r for r in mine if r.get("action") in args.action]
    if args.limit:
        mine = mine[-args.limit:]
    if not mine:
        if branch is None:
            raise PluginError(f'branch "{args.name}" not found in namespace "{namespace}" and no audit records '
                              f"for it")
        print(f"No audit records for {args.name}.", file=ctx.err)
        return OK
    if args.output == "json":
        for record in mine:
            ctx.print(json.dumps(record, separators=(",", ":")))
    else:
        ctx.print(render.render_table(render.AUDIT_HEADER, render.audit_rows(mine)))
    return OK


# ------------------------------------------------------------------------------------------- parser


def _common(p: argparse.ArgumentParser, *, sub: bool) -> None:
    """kubectl's flags, accepted before and after the command (`kubectl branch -n x list` or `... list -n x`)."""
    keep = argparse.SUPPRESS if sub else None  # a subcommand only overrides what it was given
    p.add_argument("-n", "--namespace", default=keep, help="namespace (default: the context's)")
    p.add_argument("-A", "--all-namespaces", action="store_true",
                   default=argparse.SUPPRESS if sub else False, help="every namespace (list, locks)")
    p.add_argument("--context", default=keep, help="kubeconfig context")
    p.add_argument("--kubeconfig", default=keep, help="kubeconfig file")


def _read_flags(p: argparse.ArgumentParser, *, watch: bool) -> None:
    p.add_argument("-o", "--output", metavar="FORMAT",
                   help=f"output format: {'|'.join(output.FORMATS)} (default: the table or text)")
    if not watch:
        return
    p.add_argument("-l", "--selector", help="label selector, e.g. team=search,tier!=canary (passed to the API)")
    p.add_argument("-w", "--watch", action="store_true", help="after the listing, print a row for every change")
    p.add_argument("--watch-only", action="store_true", help="print a row for every change, not the listing")


def _admin_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--reason", required=True, help="why (recorded in status, the Event and the audit trail)")
    p.add_argument("--requested-by", help="who is asking (default: kubeconfig user and OS user)")
    p.add_argument("--no-wait", dest="wait", action="store_false", help="don't wait for the operator's answer")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the operator (default 30)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kubectl branch", description="Inspect and operate OMS branches.")
    _common(p, sub=False)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, fn: Any, help_: str, aliases: Sequence[str] = ()) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, aliases=list(aliases), help=help_, description=help_)
        _common(sp, sub=True)
        sp.set_defaults(fn=fn)
        return sp

    ls = command("list", cmd_list, "branches: phase, records, validation, mergeable, blocking reasons, locks, age",
                 ["ls"])
    _read_flags(ls, watch=True)
    d = command("describe", cmd_describe, "status, conditions, last indexing run, locks and recent Events")
    d.add_argument("name")
    _read_flags(d, watch=False)
    w = command("why", cmd_why, "the merge decision and every reason")
    w.add_argument("name")
    _read_flags(w, watch=False)
    lk = command("locks", cmd_locks, "locks of one branch, or of every branch in the namespace")
    lk.add_argument("name", nargs="?")
    _read_flags(lk, watch=True)
    u = command("unlock", cmd_unlock, "force-release a branch's locks (all, or --lock NAME|TYPE); releasing "
                "the INDEXING lock of a running run ends that run: the branch goes to ERROR and the run's "
                "later results are ignored as stale")
    u.add_argument("name")
    u.add_argument("--lock", action="append", help="a lock name or type (INDEXING, WRITE, MERGE); repeatable")
    _admin_flags(u)
    s = command("set-state", cmd_set_state, "move a branch to another phase by hand (allowed transitions only)")
    s.add_argument("name")
    s.add_argument("state", help="ACTIVE, READY or ERROR (LOCKED_FOR_WRITE only by an indexing run)")
    _admin_flags(s)
    m = command("merge", cmd_merge, "ask the operator to merge a READY branch now")
    m.add_argument("name")
    _admin_flags(m)
    m.set_defaults(wait=False)
    m.add_argument("--wait", dest="wait", action="store_true", help="wait for and print the decision")
    pub = command("publish", cmd_publish, "publish a Funnel indexing event to NATS (for testing)")
    add_event_arguments(pub)
    pub.add_argument("--nats", help="NATS URL (default $NATS_URL)")
    pub.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for NATS (default 10)")
    a = command("audit", cmd_audit, "the branch's audit trail from the JetStream audit stream")
    a.add_argument("name")
    a.add_argument("--nats", help="NATS URL (default $NATS_URL)")
    a.add_argument("--action", action="append", help="only this action (repeatable), e.g. admin.set_state")
    a.add_argument("--limit", type=int, default=0, help="only the last N records")
    a.add_argument("-o", "--output", choices=["table", "json"], default="table")
    a.add_argument("--stream", help=argparse.SUPPRESS)
    a.add_argument("--subject", help=argparse.SUPPRESS)
    return p


# ---------------------------------------------------------------------------------------------- run


async def run(argv: Sequence[str], out: TextIO | None = None, err: TextIO | None = None) -> int:
    """The whole plugin as a coroutine (tests call this on their own event loop)."""
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    try:
        with contextlib.redirect_stderr(err) if err is not sys.stderr else contextlib.nullcontext():
            args = build_parser().parse_args(list(argv))
    except SystemExit as exc:  # argparse: usage errors exit 2, --help exits 0
        return int(exc.code or 0) if isinstance(exc.code, int) else USAGE
    if getattr(args, "all_namespaces", False) and args.command in ("describe", "why", "unlock", "set-state",
                                                                   "merge", "audit"):
        print(f"error: -A/--all-namespaces does not apply to {args.command}", file=err)
        return USAGE
    try:
        ctx = Context(args, out, err)
    except output.OutputError as exc:
        print(f"error: {exc}", file=err)
        return USAGE
    try:
        return int(await args.fn(ctx))
    except PluginError as exc:
        print(f"error: {exc}", file=err)
        return exc.code
    except output.TemplateFailed as exc:
        print(f"error: {exc}", file=err)
        return FAILED
    except Transient as exc:
        print(f"error: cannot reach the Kubernetes API server: {exc}", file=err)
        return FAILED
    except KubeError as exc:
        print(f"error: {exc}", file=err)
        return FAILED
    except Exception as exc:  # no cluster, bad kubeconfig: one clear line, not a traceback
        print(f"error: {type(exc).__name__}: {exc}", file=err)
        return FAILED
    finally:
        await ctx.close()


def main(argv: Sequence[str] | None = None) -> int:
    # The NATS client logs every failed connection attempt with a traceback; the plugin says it in one line.
    logging.getLogger("nats.aio.client").setLevel(logging.CRITICAL)
    try:
        return asyncio.run(run(sys.argv[1:] if argv is None else argv))
    except KeyboardInterrupt:  # Ctrl-C ends `-w` (or any wait): kubectl's exit status, no traceback
        return INTERRUPTED


def run_captured(argv: Sequence[str]) -> tuple[int, str, str]:
    """Run in a fresh event loop and capture the output: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    code = asyncio.run(run(argv, out, err))
    return code, out.getvalue(), err.getvalue()


if __name__ == "__main__":
    raise SystemExit(main())
