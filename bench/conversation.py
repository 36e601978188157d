"""A deterministic chat for the prefix-reuse test: a long logbook as the system message, then
short questions about it.

The logbook (about `HISTORY_TOKENS` tokens) is what a server can keep in its KV cache from one
turn to the next; each turn adds only a short question and the previous answer. Every
conversation opens with its own session number, so no server has seen any of it before the
first turn (not in an earlier round, not in another conversation), while all conversations have
the same length.
"""

from __future__ import annotations

from typing import Callable

from clients import Message

HISTORY_TOKENS = 1500

_WEATHER = ("thick fog", "light rain", "a strong westerly wind", "clear skies", "a rising swell",
            "hail and sleet", "a warm southerly breeze")
_PLACES = ("north pier", "lighthouse gallery", "harbour office", "fish market", "boat yard",
           "old chapel", "signal tower", "rope works", "customs house")
_EVENTS = ("a trawler came back late with a torn net", "the fog bell was repaired",
           "two gulls nested on the lamp housing", "a supply boat unloaded barrels of lamp oil",
           "the keeper's daughter painted the door green", "a storm warning was raised at noon",
           "the harbour master inspected the moorings", "a seal slept on the slipway all day")

QUESTIONS = (
    "On which days was the fog bell repaired?",
    "Summarise the weather of the first week in two sentences.",
    "Which place in the logbook is mentioned most often?",
    "What happened on the day with the most ships?",
    "Did anything unusual happen at the old chapel?",
    "How many lamps were lit on day 12?",
    "Write one sentence the keeper might add tomorrow.",
    "Which entry would you read aloud to a child, and why?",
)


def entry(day: int) -> str:
    return (f"Day {day}: {_WEATHER[day % len(_WEATHER)]} over the {_PLACES[day % len(_PLACES)]}; "
            f"{_EVENTS[day % len(_EVENTS)]}. The keeper counted {day * 7 % 23 + 2} ships "
            f"passing and lit {day * 3 % 11 + 1} lamps.")


def logbook(session: str, tokenize: Callable[[str], list[int]]) -> str:
    """The system text: entries are added until it is at least `HISTORY_TOKENS` tokens long."""
    lines = [f"Session {session}. You are the assistant of the keeper of the lighthouse at Port "
             "Elias. Answer questions about this logbook briefly.", ""]
    day = 1
    while len(tokenize("\n".join(lines))) < HISTORY_TOKENS:
        lines.append(entry(day))
        day += 1
    return "\n".join(lines)


def questions(turns: int) -> list[str]:
    """The user's question for each turn (the list repeats beyond its length)."""
    return [QUESTIONS[i % len(QUESTIONS)] for i in range(turns)]


def opening(session: str, tokenize: Callable[[str], list[int]]) -> list[Message]:
    return [{"role": "system", "content": logbook(session, tokenize)}]
