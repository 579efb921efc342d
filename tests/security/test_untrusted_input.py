"""Events are untrusted input. tests/test_events.py covers the contract's shape checks (lengths, the
branch-name pattern, ``:``/newlines in branch names, control characters in ids, DNS-1123 namespaces) and
tests/test_audit.py the audit-id slugs; this module adds what they leave out:

* free text (validation errors, admin annotations) with line breaks, ANSI/C1 escape sequences and bidi
  overrides is escaped before it reaches Branch status, Kubernetes Events, audit records, notifications or
  logs, and bounded;
* identifiers carrying such characters are rejected;
* an event naming a namespace the operator does not watch is dead-lettered with the reason, not written;
* end to end, with the real operator watching two namespaces.
"""

from __future__ import annotations

import itertools
import json
import re
import unicodedata
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import nats
import pytest
import pytest_asyncio
from hypothesis import given, settings
from hypothesis import strategies as st

from branch_operator.api.models import BRANCH_NAME_PATTERN, MAX_BRANCH_NAME
from branch_operator.clients.kube import KubeClient
from branch_operator.config import Settings
from branch_operator.contracts.funnel import EventRejected, escape_controls, parse_message
from branch_operator.contracts.funnel_encode import encode_structured, make_event
from branch_operator.domain.audit import AuditRecord, branch_slug, make_audit_id, parse_audit_id
from branch_operator.embedded.env import EmbeddedEnv, OperatorHandle
from branch_operator.ingest import guard

from ..waiting import poll
from .conftest import LogCapture

STARTED, COMPLETED, FAILED = "funnel.indexing.started", "funnel.indexing.completed", "funnel.indexing.failed"
SUBJECT = {"started": STARTED, "completed": COMPLETED, "failed": FAILED}

# Every kind of character that can forge a line, drive a terminal or reorder what a reader sees.
HOSTILE = ["\n", "\r", "\x1b[31m", "\x1b]0;pwned\x07", "\x9b2J", "\x00", "\x7f", "\u2028", "\u2029", "\u202e",
           "\u2066", "\u200f"]
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")  # Kubernetes label values


def dangerous(text: str) -> list[str]:
    """The characters in ``text`` that must never reach a log line, an Event or a terminal raw."""
    return [c for c in text if unicodedata.category(c) in ("Cc", "Cs", "Zl", "Zp")
            or c in "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"]


def raw(event: dict[str, Any]) -> bytes:
    return json.dumps(event).encode()


def rejected(subject: str, event: dict[str, Any]) -> EventRejected:
    with pytest.raises(EventRejected) as info:
        parse_message(subject, raw(event), None)
    return info.value


# ----------------------------------------------------------------------------------- free text


@pytest.mark.parametrize("bad", HOSTILE)
def test_validation_errors_are_escaped_not_rejected(bad: str) -> None:
    text = f"field x{bad}INFO forged log line"
    event = make_event("completed", "feature/x", "idx-1", passed=False, errors=[text, {"msg": text}])
    vr = parse_message(COMPLETED, raw(event), None).data.validation_results
    assert vr is not None and len(vr.errors) == 2
    for entry in vr.errors:
        assert dangerous(entry) == [], entry
        assert "forged log line" in entry
    assert vr.errors[0] == escape_controls(text)


def test_escape_controls_examples() -> None:
    assert escape_controls("line 1\nline 2") == "line 1\\nline 2"
    assert escape_controls("\x1b[31mred\x1b[0m") == "\\x1b[31mred\\x1b[0m"
    assert escape_controls("\x9b2J") == "\\x9b2J"
    assert escape_controls("abc\u202edef") == "abc\\u202edef"
    assert escape_controls("a\u2028b") == "a\\u2028b"
    # Ordinary text, including non-ASCII letters and spaces, is left alone.
    for fine in ("schema: field 'x' missing", "Fëature ünïcode 日本語", "a\u00a0b", "emoji \U0001f600"):
        assert escape_controls(fine) == fine


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_property_escaped_text_is_inert(text: str) -> None:
    once = escape_controls(text)
    assert dangerous(once) == []
    assert escape_controls(once) == once


def test_validation_errors_stay_bounded_after_escaping() -> None:
    # Escaping grows the text (one character becomes up to six); the length bound still holds.
    event = make_event("completed", "feature/x", "idx-1", passed=False, errors=["\x1b" * 5000])
    vr = parse_message(COMPLETED, raw(event), None).data.validation_results
    assert vr is not None and len(vr.errors[0]) <= 1024


# ----------------------------------------------------------------------------------- identifiers


@pytest.mark.parametrize("bad", HOSTILE)
@pytest.mark.parametrize("attribute", ["id", "source"])
def test_event_attributes_with_control_characters_are_rejected(attribute: str, bad: str) -> None:
    event = make_event("started", "feature/x", "idx-1")
    event[attribute] = f"abc{bad}def"
    exc = rejected(STARTED, event)
    assert exc.reason_code == "InvalidCloudEvent"
    assert f"attribute {attribute} contains control characters" in exc.message


@pytest.mark.parametrize("bad", HOSTILE)
def test_indexing_id_with_control_characters_is_rejected(bad: str) -> None:
    exc = rejected(STARTED, make_event("started", "feature/x", f"idx{bad}1"))
    assert exc.reason_code == "InvalidData"
    assert "data.indexing_id: must not contain control characters" in exc.message
    assert exc.indexing_id is None  # not salvaged into the audit record either


@pytest.mark.parametrize(
    "name",
    ["evil:branch", "a\nb", "a\x1b[2Jb", "a\u202eb", "a b", "a\tb", "feature/\u00fcber", "-lead", ".hidden",
     "a" * (MAX_BRANCH_NAME + 1), "a;rm -rf", "a=b,c", "a\\b", "a\"b", "a$b", "a%0ab"],
)
def test_hostile_branch_names_are_rejected_with_the_field_named(name: str) -> None:
    exc = rejected(STARTED, make_event("started", name, "idx-1"))
    assert exc.reason_code == "InvalidData"
    assert exc.message.startswith("data.branch_name: "), exc.message
    assert exc.branch_name is None  # an unsafe name is not carried into the audit record
    assert dangerous(str(exc)) == []


@settings(max_examples=300, deadline=None)
@given(st.from_regex(BRANCH_NAME_PATTERN, fullmatch=True).filter(lambda n: len(n) <= MAX_BRANCH_NAME))
def test_property_accepted_branch_names_make_safe_ids_and_labels(name: str) -> None:
    """Whatever the contract accepts can't break an audit id, a label value or a log line."""
    event = parse_message(STARTED, raw(make_event("started", name, "idx-1")), None)
    assert event.data.branch_name == name
    slug = branch_slug(name)
    assert len(slug) <= 63 and LABEL_VALUE.match(slug) and ":" not in slug
    audit_id = make_audit_id(name, "indexing.started", event.occurred_at, seed=event.id)
    assert parse_audit_id(audit_id).slug == slug
    assert dangerous(name) == []


def test_rejection_messages_quote_hostile_values_escaped() -> None:
    event = make_event("started", "feature/x", "idx-1")
    event["type"] = "com.evil\n\x1b[31m"
    exc = rejected(STARTED, event)
    assert dangerous(str(exc)) == []
    event = make_event("started", "feature/x", "idx-1")
    event["specversion"] = "2.0\r\nOms-Dlq-Reason: forged"
    exc = rejected(STARTED, event)
    assert exc.reason_code == "UnsupportedSpecVersion" and dangerous(str(exc)) == []


# ----------------------------------------------------------------------------------- namespaces


@pytest.mark.parametrize(
    ("namespace", "watched", "problem"),
    [
        ("team-a", [], None),
        ("team-a", ["team-a", "team-b"], None),
        ("team-c", ["team-a", "team-b"], "not one of the namespaces this operator watches (team-a, team-b)"),
        ("Team-A", [], "not a DNS-1123 label"),
        ("kube_system", [], "not a DNS-1123 label"),
        ("a" * 64, [], "not a DNS-1123 label"),
        ("", [], "not a DNS-1123 label"),
        ("a\nb", ["a\nb"], "not a DNS-1123 label"),
    ],
)
def test_namespace_problem(namespace: str, watched: list[str], problem: str | None) -> None:
    found = guard.namespace_problem(namespace, watched)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found
        assert dangerous(found) == []


def test_check_event_uses_the_events_namespace_or_the_default() -> None:
    watched = Settings(watch_namespaces="team-a, team-b", default_namespace="team-a")
    for namespace in ("team-a", "team-b", None):
        event = parse_message(STARTED, raw(make_event("started", "f/x", "idx-1", namespace=namespace)), None)
        guard.check_event(event, watched)  # accepted
        assert guard.event_namespace(event, watched) == (namespace or "team-a")

    outside = parse_message(STARTED, raw(make_event("started", "f/x", "idx-1", namespace="team-c")), None)
    with pytest.raises(EventRejected) as info:
        guard.check_event(outside, watched)
    assert info.value.reason_code == guard.NAMESPACE_NOT_ALLOWED == "NamespaceNotAllowed"
    assert "'team-c'" in info.value.message and "it comes from the event" in info.value.message
    assert (info.value.event_id, info.value.branch_name) == (outside.id, "f/x")

    # A default namespace outside the watched ones (a misconfiguration) rejects, saying so.
    misconfigured = Settings(watch_namespaces="team-a", default_namespace="default")
    bare = parse_message(STARTED, raw(make_event("started", "f/x", "idx-1")), None)
    with pytest.raises(EventRejected, match="operator's default namespace"):
        guard.check_event(bare, misconfigured)

    # Watching the whole cluster: any well-formed namespace goes (RBAC is the limit there).
    guard.check_event(outside, Settings())


# ------------------------------------------------------------------------------- end to end

_ids = itertools.count(1)


@dataclass
class Watched:
    env: EmbeddedEnv
    operator: OperatorHandle
    kube: KubeClient
    logs: LogCapture
    audits: list[AuditRecord] = field(default_factory=list)

    @property
    def settings(self) -> Settings:
        return self.operator.settings

    async def publish(self, kind: str, event: dict[str, Any]) -> None:
        payload, headers = encode_structured(event)
        nc = await nats.connect(self.env.nats_url)
        try:
            await nc.jetstream().publish(SUBJECT[kind], payload, headers=headers)
        finally:
            await nc.close()

    async def stream(self, name: str) -> list[tuple[dict[str, str], bytes]]:
        nc = await nats.connect(self.env.nats_url)
        try:
            js = nc.jetstream()
            info = await js.stream_info(name)
            if not info.state.messages:
                return []
            out = []
            for seq in range(info.state.first_seq, info.state.last_seq + 1):
                msg = await js.get_msg(name, seq)
                out.append((dict(msg.headers or {}), msg.data or b""))
            return out
        finally:
            await nc.close()

    async def dead_letter(self, event_id: str) -> dict[str, str]:
        async def find() -> dict[str, str] | None:
            for headers, body in await self.stream(self.settings.dlq_stream):
                if event_id.encode() in body:
                    return headers
            return None
        found: dict[str, str] = await poll(find, f"{event_id} in the dead-letter stream")
        return found

    async def audit(self, event_id: str, action: str) -> AuditRecord:
        """The audit record ``action`` for an event (records are published just after the Kubernetes writes)."""
        async def find() -> AuditRecord | None:
            return next((a for a in self.audits if a.correlation_id == event_id and str(a.action) == action), None)
        found: AuditRecord = await poll(find, f"the {action} audit record of {event_id}")
        return found

    async def create_branch(self, namespace: str, name: str, branch_name: str) -> None:
        await self.kube.create("branches", namespace, {
            "apiVersion": "oms.dev/v1alpha1", "kind": "Branch", "metadata": {"name": name},
            "spec": {"branchName": branch_name}})

    async def phase(self, namespace: str, name: str, phase: str) -> dict[str, Any]:
        async def check() -> dict[str, Any] | None:
            obj = await self.kube.get_branch(namespace, name)
            return obj if (obj.get("status") or {}).get("phase") == phase else None
        found: dict[str, Any] = await poll(check, f"{namespace}/{name} to reach {phase}")
        return found




@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def watched(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Watched]:
    logs = LogCapture().install()
    env = EmbeddedEnv(workdir=tmp_path_factory.mktemp("untrusted") / "env")
    await env.start()
    kube = await KubeClient.connect(str(env.kubeconfig))
    for ns in ("team-a", "team-b", "team-c"):
        await kube.core.create_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    operator = OperatorHandle(env.settings(watch_namespaces="team-a,team-b", default_namespace="team-a"),
                              env.kubeconfig)
    try:
        await operator.start()
        w = Watched(env, operator, kube, logs)
        operator.runtime.emitter.audit_observers.append(w.audits.append)
        yield w
    finally:
        await kube.close()
        await operator.stop()
        await env.stop()
        logs.uninstall()


def _paths_touching(requests: list[Any], namespace: str) -> list[str]:
    return [f"{r.method} {r.path}" for r in requests if f"/namespaces/{namespace}/" in r.path]


@pytest.mark.asyncio(loop_scope="module")
async def test_event_for_an_unwatched_namespace_is_dead_lettered_not_written(watched: Watched) -> None:
    await watched.create_branch("team-c", "feature-x", "feature/x")
    before = len(watched.env.api.requests)
    event = make_event("started", "feature/x", "idx-c", namespace="team-c", event_id=f"ev-ns-{next(_ids)}")
    await watched.publish("started", event)

    headers = await watched.dead_letter(event["id"])
    assert headers["Oms-Dlq-Reason-Code"] == "NamespaceNotAllowed"
    assert "'team-c'" in headers["Oms-Dlq-Reason"] and "team-a, team-b" in headers["Oms-Dlq-Reason"]
    audit = await watched.audit(event["id"], "event.rejected")
    assert (audit.reason, audit.branch_name) == ("NamespaceNotAllowed", "feature/x")

    # Nothing was read or written in team-c on the event's behalf.
    assert _paths_touching(list(watched.env.api.requests)[before:], "team-c") == []
    obj = await watched.kube.get_branch("team-c", "feature-x")
    assert not obj.get("status")
    assert await watched.kube.list_locks("team-c", "feature-x") == []


@pytest.mark.asyncio(loop_scope="module")
async def test_events_for_watched_namespaces_and_the_default_are_applied(watched: Watched) -> None:
    await watched.create_branch("team-a", "feature-a", "feature/a")
    await watched.create_branch("team-b", "feature-b", "feature/b")
    await watched.phase("team-a", "feature-a", "ACTIVE")
    await watched.phase("team-b", "feature-b", "ACTIVE")
    # No namespace in the event: the default, team-a.
    await watched.publish("started", make_event("started", "feature/a", "idx-a"))
    await watched.publish("started", make_event("started", "feature/b", "idx-b", namespace="team-b"))
    await watched.phase("team-a", "feature-a", "LOCKED_FOR_WRITE")
    await watched.phase("team-b", "feature-b", "LOCKED_FOR_WRITE")


@pytest.mark.asyncio(loop_scope="module")
async def test_hostile_validation_errors_are_escaped_everywhere(watched: Watched) -> None:
    await watched.create_branch("team-a", "feature-esc", "feature/esc")
    await watched.phase("team-a", "feature-esc", "ACTIVE")
    await watched.publish("started", make_event("started", "feature/esc", "idx-e"))
    await watched.phase("team-a", "feature-esc", "LOCKED_FOR_WRITE")
    errors = ["bad\n2025-01-01 INFO forged: all good", "\x1b[2J\x1b[31mterminal takeover\x1b[0m",
              "right\u202etfel", "csi\x9b31m"]
    failed = make_event("completed", "feature/esc", "idx-e", status="failed", passed=False, errors=errors,
                        event_id=f"ev-esc-{next(_ids)}")
    await watched.publish("completed", failed)
    obj = await watched.phase("team-a", "feature-esc", "ERROR")

    stored = obj["status"]["indexing"]["validation"]["errors"]
    assert stored == [escape_controls(e) for e in errors]
    texts: list[str] = [json.dumps(obj["status"], ensure_ascii=False)]
    async def event_messages() -> list[str] | None:
        # The Event is posted right after the status write: wait for it.
        events = await watched.kube.core.list_namespaced_event("team-a")
        messages = [e.message or "" for e in events.items if e.involved_object.name == "feature-esc"]
        return messages if any("terminal takeover" in m for m in messages) else None
    texts += await poll(event_messages, "the Warning Event quoting the errors")
    await watched.audit(failed["id"], "indexing.failed")

    async def notifications() -> list[str]:
        return [body.decode() for _h, body in await watched.stream(watched.settings.notifications_stream)
                if failed["id"].encode() in body]
    notes = await poll(notifications, "the failure notification")
    texts += [a.to_json() for a in watched.audits if a.correlation_id == failed["id"]]
    texts += [json.dumps(json.loads(n), ensure_ascii=False) for n in notes]  # decoded, as a consumer reads it
    for text in texts:
        assert dangerous(text) == [], text


@pytest.mark.asyncio(loop_scope="module")
async def test_hostile_branch_name_is_dead_lettered_with_an_unknown_slug(watched: Watched) -> None:
    event = make_event("started", "evil:branch\n\x1b[31m", "idx-h", event_id=f"ev-name-{next(_ids)}")
    await watched.publish("started", event)
    headers = await watched.dead_letter(event["id"])
    assert headers["Oms-Dlq-Reason-Code"] == "InvalidData"
    assert headers["Oms-Dlq-Reason"].startswith("InvalidData: data.branch_name: ")
    audit = await watched.audit(event["id"], "event.rejected")
    assert audit.branch_name is None
    assert audit.audit_id.startswith("audit-oms:branch:unknown:event.rejected:")


@pytest.mark.asyncio(loop_scope="module")
async def test_hostile_admin_text_is_escaped_and_bounded_everywhere(watched: Watched) -> None:
    """Admin annotations are as untrusted as events: a requester with a newline must not forge a log line,
    a reason with terminal escapes must not reach an Event raw, and a huge value is not copied around."""
    await watched.create_branch("team-a", "feature-adm", "feature/adm")
    await watched.phase("team-a", "feature-adm", "ACTIVE")
    forged = "alice\n2025-06-26 12:00:00,000 INFO branch_operator.admin_exec: team-a/inj-1: admin set-state ACTIVE"
    reason = "\x1b[2J\x1b[31mquarantine\x1b[0m \u202etxet"
    await watched.kube.patch("branches", "team-a", "feature-adm", {"metadata": {"annotations": {
        "oms.dev/set-state": "ERROR", "oms.dev/reason": reason, "oms.dev/requested-by": forged}}})
    obj = await watched.phase("team-a", "feature-adm", "ERROR")
    last = obj["status"]["lastAdminAction"]
    assert (last["requestedBy"], last["reason"]) == (escape_controls(forged), escape_controls(reason))
    # A 100 KB value, refused: its record stays small.
    await watched.kube.patch("branches", "team-a", "feature-adm", {"metadata": {"annotations": {
        "oms.dev/set-state": "Z" * 100_000, "oms.dev/reason": reason, "oms.dev/requested-by": forged}}})

    def admin_records() -> list[AuditRecord]:
        return [a for a in watched.audits if a.branch == "feature-adm" and str(a.action).startswith("admin.")]
    records = await poll(lambda: admin_records() if len(admin_records()) >= 2 else None, "both admin records")

    async def event_messages() -> list[str] | None:
        events = await watched.kube.core.list_namespaced_event("team-a")
        messages = [e.message or "" for e in events.items if e.involved_object.name == "feature-adm"
                    and e.reason in ("AdminSetState", "AdminActionRefused")]
        return messages if len(messages) >= 2 else None
    messages = await poll(event_messages, "the applied and the refused admin Events")
    logged = [r.getMessage() for r in watched.logs.records
              if r.name.startswith("branch_operator") and "feature-adm" in r.getMessage() and "admin" in r.getMessage()]
    assert len(logged) >= 2, logged
    texts = [json.dumps(obj["status"], ensure_ascii=False), *messages, *logged, *(a.to_json() for a in records)]
    for text in texts:
        assert dangerous(text) == [], text
    assert all("alice\\n2025-06-26" in t for t in [*messages, *logged]), [*messages, *logged]
    assert max(len(a.to_json()) for a in records) < 8_000, [len(a.to_json()) for a in records]


@pytest.mark.asyncio(loop_scope="module")
async def test_no_log_record_carries_raw_control_characters(watched: Watched) -> None:
    """Runs after the hostile events above (same module, same operator): every message logged so far,
    by the operator, kopf, nats or aiohttp, is a single inert line."""
    assert watched.logs.records, "the capture saw nothing"
    offenders = [r for r in watched.logs.records if dangerous(r.getMessage())]
    assert offenders == [], [f"{r.name}: {r.getMessage()!r}" for r in offenders[:5]]
    assert any("NamespaceNotAllowed" in r.getMessage() for r in watched.logs.records)

