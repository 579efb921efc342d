"""Event identity is (source, id): the key status remembers, and the ids derived from it."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

from branch_operator.api.models import BranchStatus, LockType
from branch_operator.domain.indexing_event import event_key
from branch_operator.domain.lifecycle import Outcome, plan_indexing_event
from branch_operator.domain.locks import indexing_lock_key, lock_name

from .test_domain_states import NOW, Phase, completed, status

text = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=300)


@given(source=text, other=text, event_id=text)
def test_keys_tell_sources_apart_and_fit_status(source: str, other: str, event_id: str) -> None:
    key = event_key(source, event_id)
    assert key == event_key(source, event_id)  # a redelivery: the same key
    assert len(key) <= 253
    if other != source:
        assert event_key(other, event_id) != key


def test_long_ids_keep_their_head_and_stay_distinct() -> None:
    a, b = "x" * 300, "x" * 299 + "y"
    assert event_key("s", a) != event_key("s", b)
    assert event_key("s", a).startswith("x" * 200) and len(event_key("s", a)) == 253
    assert event_key("funnel-eu", "evt-42").startswith("evt-42@")


def test_the_same_id_from_another_source_is_not_a_duplicate() -> None:
    seen = completed(event_id="evt-42")
    current = BranchStatus.model_validate({**status(Phase.LOCKED_FOR_WRITE).wire(),
                                           "recentEventIds": [event_key("funnel-eu", "evt-42")]})
    assert plan_indexing_event(current, replace(seen, source="funnel-eu"), now=NOW).outcome is Outcome.DUPLICATE
    assert plan_indexing_event(current, replace(seen, source="funnel-us"), now=NOW).outcome is Outcome.APPLIED


def test_lock_names_differ_for_a_recreated_branch() -> None:
    old = lock_name("b", LockType.INDEXING, indexing_lock_key("uid-1", "idx-1"))
    assert old != lock_name("b", LockType.INDEXING, indexing_lock_key("uid-2", "idx-1"))
    assert old == lock_name("b", LockType.INDEXING, indexing_lock_key("uid-1", "idx-1"))
