"""The n-gram drafter's lookup, its hit-rate estimate and the draft-length plan (pure logic)."""

from __future__ import annotations

import pytest

from ollamalite.runtime.engine import draft
from ollamalite.runtime.engine.draft import (
    ROW,
    UBATCH,
    Candidate,
    Drafter,
    Memory,
    Prices,
    plan,
)


@pytest.fixture(autouse=True)
def trigrams(monkeypatch: pytest.MonkeyPatch) -> None:
    """The examples below match 3 tokens, whatever length the engine uses."""
    monkeypatch.setattr(draft, "NGRAM", 3)


def test_continues_from_the_latest_earlier_match() -> None:
    d = Drafter([1, 2, 3, 4, 5, 9, 1, 2, 3, 7, 8, 6])
    for token in (1, 2, 3):
        d.add(token)
    assert d.continuation(3) == [7, 8, 6]  # the second 1 2 3, not the first
    assert d.continuation(8) == [7, 8, 6, 1, 2, 3]  # up to the end of what is known
    assert d.continuation(0) == []
    d.add(0)
    assert d.continuation(4) == []  # 2 3 0 never occurred


def test_every_generated_token_scores_the_guess_made_for_it() -> None:
    d = Drafter([5, 6, 7, 8] * 3)  # ...6 7 8 is followed by 5
    start = d.rate
    d.add(5)  # guessed right
    after_hit = d.rate
    assert after_hit > start
    d.add(0)  # 6 7 8 5 -> 6 guessed, 0 came
    after_miss = d.rate
    assert after_miss < after_hit
    d.add(1)  # 8 5 0 never occurred: no guess, nothing scored
    assert d.rate == after_miss


def test_prompt_tokens_are_indexed_but_not_scored() -> None:
    assert Drafter([1, 2, 3, 1, 2, 3, 1, 2, 3]).rate == pytest.approx(draft.PRIOR_RATE)


def test_right_guesses_raise_the_rate_toward_one_and_wrong_ones_lower_it() -> None:
    d = Drafter([1, 2, 3, 4])
    for _ in range(40):
        d.add(d.continuation(1)[0] if d.continuation(1) else 1)
    assert d.rate > 0.95
    wrong = Drafter([1, 2, 3, 4] * 2)
    for token in (9, 1, 2, 3, 8, 1, 2, 3, 7):  # each 1 2 3 is followed by something new
        wrong.add(token)
    assert wrong.rate < draft.PRIOR_RATE


def one_alone(rate: float, available: int = 20) -> int:
    """The draft length for a slot generating alone (one row, one micro-batch)."""
    return plan([Candidate(list(range(available)), rate, False)], 1, UBATCH + ROW)[0]


def test_a_lone_slot_drafts_longer_the_likelier_its_guesses() -> None:
    lengths = [one_alone(rate) for rate in (0.3, 0.6, 0.7, 0.8, 0.9, 0.99)]
    assert lengths[:2] == [0, 0]  # a row costs more than 0.6 of a token is worth
    assert lengths == sorted(lengths) and 0 < lengths[2] < lengths[4] < lengths[5]
    assert one_alone(1.0) == draft.MAX_DRAFT  # a sure guess is drafted as far as allowed


def test_a_draft_is_at_most_what_the_lookup_has() -> None:
    assert one_alone(0.99, available=3) == 3
    assert plan([Candidate([], 0.99, False)], 1, UBATCH + ROW) == [0]


def test_beside_busy_slots_drafting_seldom_pays() -> None:
    """Four generating slots in one micro-batch: a draft adds rows and a micro-batch for every
    one of them, so even a good guesser does not draft; a certain one would."""
    busy = [Candidate(list(range(20)), 0.9, True)] + [Candidate([], 0.0, True)] * 3
    assert plan(busy, 4, UBATCH + 4 * ROW) == [0, 0, 0, 0]


def test_rows_of_a_prompt_chunk_make_drafting_cheap() -> None:
    """A step that evaluates 128 prompt rows anyway: a few drafted rows barely lengthen it."""
    assert one_alone(0.5) == 0
    with_prompt = plan([Candidate(list(range(20)), 0.5, False)], 1, 2 * UBATCH + 129 * ROW)
    assert with_prompt[0] > 0


def test_the_step_drafts_at_most_max_draft_tokens_likeliest_slot_first() -> None:
    pair = [Candidate(list(range(20)), 0.9, False), Candidate(list(range(20)), 0.99, False)]
    lengths = plan(pair, 2, 2 * UBATCH + 2 * ROW)
    assert sum(lengths) <= draft.MAX_DRAFT
    assert lengths[1] >= lengths[0] and lengths[1] > 0


def test_an_earlier_answer_is_drafted_when_the_job_has_no_match() -> None:
    memory = Memory()
    memory.remember([0, 7, 1, 2, 3, 4, 5, 6], 4)  # prompt ... 7 1 2, answer 3 4 5 6
    assert memory.get((0, 7, 1)) is None  # only the n-gram before the answer is kept
    d = Drafter([9, 7, 1, 2], memory)
    assert d.continuation(8) == [3, 4, 5, 6]
    assert Drafter([9, 7, 1, 2]).continuation(8) == []  # no memory, no match


def test_the_occurrence_whose_context_agrees_longer_wins() -> None:
    memory = Memory()
    memory.remember([5, 6, 1, 2, 3, 40, 41], 0)  # 5 6 before 1 2 3, then 40
    assert Drafter([8, 8, 1, 2, 3, 30, 31, 5, 6, 1, 2, 3], memory).continuation(2) == [40, 41]
    assert Drafter([5, 6, 1, 2, 3, 30, 31, 9, 6, 1, 2, 3], memory).continuation(2) == [30, 31]


def test_memory_forgets_everything_past_its_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(draft, "MEMORY_NGRAMS", 10)
    memory = Memory()
    memory.remember([1, 2, 3, 4, 5, 6], 0)
    assert memory.get((1, 2, 3)) is not None
    memory.remember(list(range(10, 18)), 0)  # 3 + 5 > 10: the first answer goes
    assert memory.get((1, 2, 3)) is None and memory.get((10, 11, 12)) is not None
    memory.remember(list(range(100, 140)), 0)  # longer than the bound alone: its end is kept
    assert memory.get((100, 101, 102)) is None and memory.get((135, 136, 137)) == \
        (list(range(130, 140)), 8)


def test_timings_near_the_defaults_keep_them() -> None:
    """The in-engine timings behind the constants (10.3 ms for one row, 31.5 for four) and the
    load-time probe's spread on that machine (up to 1.02) are noise for the decision."""
    assert Prices.timed(0.0103, 0.0315, 3) == Prices()
    assert Prices.timed(0.0100, 0.0300, 4) == Prices()  # 1.0


def test_a_slow_micro_batch_is_priced_with_its_split_share() -> None:
    prices = Prices.timed(0.0035, 0.0055, 4)  # a row 0.5 ms, the rest of a step 3 ms
    assert prices.ubatch == pytest.approx(6.0)
    assert prices.split == pytest.approx(prices.ubatch * draft.SPLIT / draft.UBATCH)


def test_where_extra_rows_are_cheap_a_mediocre_guesser_drafts() -> None:
    """A memory-bound machine: one row 2 ms, each more 0.3 ms. A lone slot right 40% of the
    time drafts there, and not at this project's prices."""
    cheap = Prices.timed(0.002, 0.0032, 4)
    assert cheap.ubatch == pytest.approx(5.67, abs=0.01)
    guesser = [Candidate(list(range(20)), 0.4, False)]
    assert plan(guesser, 1, cheap.step(1, 1), cheap)[0] > 0
    assert plan(guesser, 1, Prices().step(1, 1))[0] == 0


@pytest.mark.parametrize("one, more", [(0.010, 0.009), (0.010, 0.010), (0.010, 0.200)])
def test_timings_that_make_no_sense_give_bounded_prices(one: float, more: float) -> None:
    prices = Prices.timed(one, more, 4)
    assert draft.MIN_UBATCH <= prices.ubatch <= draft.MAX_UBATCH
    if more <= one:
        assert prices == Prices()
    else:  # rows dearer than a whole step: the floor
        assert prices.ubatch == draft.MIN_UBATCH
