"""The n-gram drafter's lookup and back-off (pure logic)."""

from __future__ import annotations

from ollamalite.runtime.engine import draft
from ollamalite.runtime.engine.draft import Drafter, draft_budget


def test_drafts_what_followed_the_latest_earlier_match() -> None:
    d = Drafter([1, 2, 3, 4, 5, 9, 1, 2, 3, 7, 8, 6])
    for token in (1, 2, 3):
        d.add(token)
    assert d.draft(3) == [7, 8, 6]  # the second 1 2 3, not the first
    assert d.draft(8) == [7, 8, 6, 1, 2, 3]  # up to the end of what is known
    assert d.draft(0) == []
    d.add(0)
    assert d.draft(4) == []  # 2 3 0 never occurred


def test_a_long_draft_is_cut_at_max_draft() -> None:
    d = Drafter(list(range(40)) + [0, 1, 2])
    assert d.draft(100) == list(range(3, 3 + draft.MAX_DRAFT))


def test_failing_drafts_pause_drafting_then_it_tries_again() -> None:
    d = Drafter([1, 2, 3, 4] * 4)
    assert d.draft(4)
    d.record(4, 0)
    assert d.rate < draft.RATE_START
    d.record(4, 0)  # below MIN_RATE: paused
    assert [d.draft(4) for _ in range(draft.BACKOFF_STEPS)] == [[]] * draft.BACKOFF_STEPS
    assert d.draft(4) == [1, 2, 3, 4]
    d.record(4, 4)
    assert d.rate > draft.RATE_START


def test_budget_shrinks_with_busy_slots() -> None:
    assert [draft_budget(n) for n in range(5)] == [0, draft.MAX_DRAFT, draft.MAX_DRAFT // 2, 0, 0]
