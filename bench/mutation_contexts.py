"""A pytest plugin for ``python -m bench mutation``'s unmutated coverage run: which test ran each line.

Loaded with ``-p bench.mutation_contexts`` under ``coverage run``.  Each phase of each test (setup,
call, teardown) is a coverage context named ``<node id>|<phase>``, in this process and in every
subprocess a test starts meanwhile (``COVERAGE_PROCESS_CONFIG``, which the subprocess's coverage
start-up reads, carries the same name as its static context).  Lines run outside any test (imports
at collection) have the empty context; a subprocess started with an environment of its own is not
measured at all.  The
node ids, in the order pytest ran them, go to the file ``TILLPLUG_MUTATION_ORDER`` names.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ORDER_ENV = "TILLPLUG_MUTATION_ORDER"


def _switch(context: str | None) -> None:
    coverage: Any = __import__("coverage")
    cov = coverage.Coverage.current()
    if cov is None:
        return
    cov.switch_context(context or "")
    # What a subprocess started now measures under: this process's config, named for this phase.
    config = copy.copy(cov.config)
    config.context = context
    os.environ["COVERAGE_PROCESS_CONFIG"] = config.serialize()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    _switch(f"{item.nodeid}|setup")
    try:
        return (yield)
    finally:
        _switch(None)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    _switch(f"{item.nodeid}|call")
    try:
        return (yield)
    finally:
        _switch(None)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Iterator[None]:
    _switch(f"{item.nodeid}|teardown")
    try:
        return (yield)
    finally:
        _switch(None)


def pytest_collection_finish(session: pytest.Session) -> None:
    order = os.environ.get(ORDER_ENV)
    if order:
        Path(order).write_text("".join(f"{item.nodeid}\n" for item in session.items))
