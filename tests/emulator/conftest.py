"""Emulator-suite guard: a test fails if an emulator logged a traceback while it ran.

A handler that crashes still answers (a 500, or a batch failed with ``emulator_error``), so the
status alone can hide a bug; the server log (``emulator.log`` in each data directory) cannot.
After every test, each ``emulator.log`` under pytest's base temporary directory is read from where
the previous check stopped: the session ``emulator``, ``make_emulator`` servers (already stopped
then), module-scoped servers and processes started by hand alike.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

# Detailed assertion messages inside the shared helpers too (must run before they are imported).
pytest.register_assert_rewrite("tests.emulator.helpers", "tests.emulator.schemas")

MARKERS = ("Traceback (most recent call last)", "Exception in ASGI application")
_checked: dict[Path, int] = {}
"""How many bytes of each log earlier checks have read."""


@pytest.fixture(autouse=True)
def _no_server_tracebacks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    yield
    failures = []
    for log in sorted(tmp_path_factory.getbasetemp().glob("**/emulator.log")):
        start = _checked.get(log, 0)
        with log.open("rb") as handle:
            handle.seek(start)
            new = handle.read()
        _checked[log] = start + len(new)
        text = new.decode(errors="replace")
        if any(marker in text for marker in MARKERS):
            failures.append(f"{log}:\n{text[-4000:]}")
    assert not failures, "the emulator logged an error:\n" + "\n".join(failures)
