"""#27: the pydantic models start-up defers (``defer_build``) are built once the daemon is ready, one per
turn of its loop, and every one of tillplug's models can be built (else its first use would fail)."""

import asyncio
import importlib
import logging
import pkgutil

import pytest
from pydantic import BaseModel, ConfigDict

import tillplug
from tillplug.daemon.wiring import complete_deferred_models, models_of


class Deferred(BaseModel):
    model_config = ConfigDict(defer_build=True)
    points: int


class Spend(Deferred):
    money: int


class Refund(Deferred):
    reason: str


def test_deferred_models_are_built_one_per_turn_of_the_loop():
    assert not Spend.__pydantic_complete__ and not Refund.__pydantic_complete__
    turns = 0

    async def meanwhile() -> None:
        nonlocal turns
        for _ in range(50):
            turns += 1
            await asyncio.sleep(0)

    async def both() -> tuple[int, int]:
        other = asyncio.ensure_future(meanwhile())
        built = await complete_deferred_models(package=__name__.rpartition(".")[0])
        turns_while_building = turns
        await other
        return built, turns_while_building

    built, turns_while_building = asyncio.run(both())
    assert built == 3  # Deferred, Spend and Refund
    assert Deferred.__pydantic_complete__ and Spend.__pydantic_complete__ and Refund.__pydantic_complete__
    assert turns_while_building >= built  # the loop turned after each: a request waits for one model at most
    assert Spend(points=3, money=2).money == 2


def test_every_tillplug_model_builds(caplog: pytest.LogCaptureFixture):
    for module in pkgutil.walk_packages(tillplug.__path__, "tillplug."):
        if not module.name.startswith(("tillplug.__main__", "tillplug.sim", "tillplug.commands")):  # not the daemon's
            importlib.import_module(module.name)
    models = models_of()
    assert len(models) > 100, len(models)
    with caplog.at_level(logging.WARNING, logger="tillplug"):
        asyncio.run(complete_deferred_models())
    assert [r.getMessage() for r in caplog.records if "could not be built" in r.getMessage()] == []
    assert [m.__qualname__ for m in models if not m.__pydantic_complete__] == []
