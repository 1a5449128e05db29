"""How soon a give-back hears that the engine applied a deduction (``applied_within``): the void and
the tender wait on it at the counter, so it reads again 0.1 s after the first read, then twice as
long each time up to 0.5 s, and stops at its deadline with what it last saw."""

import asyncio

import pytest

from tillplug import errors as E
from tillplug.engine.models import Reaction
from tillplug.engine.reactors import applied_within

APPLIED = [Reaction(type="POINTS", points=-500)]


class Reactions:
    """The client's one seam here: the reactions of one event, read after read."""

    def __init__(self, answers: list[list[Reaction] | Exception]) -> None:
        self.answers = answers
        self.reads = 0

    async def event_reactions(self, event_id: str) -> list[Reaction]:
        answer = self.answers[min(self.reads, len(self.answers) - 1)]
        self.reads += 1
        if isinstance(answer, Exception):
            raise answer
        return answer


@pytest.fixture
def pauses(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Every pause applied_within asks for, taken at once (the schedule, not the clock, is tested)."""
    asked: list[float] = []
    real_sleep = asyncio.sleep

    async def sleep(seconds: float) -> None:
        asked.append(round(seconds, 3))
        await real_sleep(0)

    monkeypatch.setattr(asyncio, "sleep", sleep)  # the module reactors calls it through
    return asked


def test_the_reads_come_0_1_s_apart_then_twice_as_long_up_to_half_a_second(pauses):
    client = Reactions([[], [], [], [], APPLIED])
    assert asyncio.run(applied_within(client, "e1", 60)) is True
    assert client.reads == 5
    assert pauses == [0.1, 0.2, 0.4, 0.5]


def test_with_no_time_left_one_read_decides(pauses):
    assert asyncio.run(applied_within(Reactions([[]]), "e1", 0)) is False
    assert asyncio.run(applied_within(Reactions([E.EngineUnreachable()]), "e1", 0)) is None
    assert asyncio.run(applied_within(Reactions([APPLIED]), "e1", 0)) is True
    assert pauses == []
