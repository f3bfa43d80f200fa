"""Nothing outlives an interrupted run: a run of the end-to-end stack killed by SIGKILL leaves no
process behind (issue 10, item 5).

``interrupted_stack.py`` runs, in a child process and a session of its own, what the end-to-end
fixtures start: the emulator, a PostgreSQL server, a real Airflow on it and a running task with its
shell. The test lists that run's processes from outside, with its own means rather than the code
under test: the child's descendants, the postmaster (through its pid file; ``pg_ctl`` detaches it)
with its descendants, and every process in any of their sessions. It SIGKILLs the child, when no
``finally`` block runs, and expects every one of them gone within GONE_WITHIN seconds.

One stack start covers the hard case. A SIGTERM ends a Python process the same way (it has no
handler: no ``finally`` runs), and a SIGINT runs the ``finally`` blocks, then the same sweep at
exit; ``tests/test_guardian.py`` checks all three signals on a small tree of the same shapes (a
session leader with children in their own groups and sessions, a daemon known by its pid file, the
emulator) in seconds.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from airflow_provider_batch.emulator.guardian import describe
from tests.e2e.interrupted_dags.hold import HOLD_COMMAND

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]
READY_WITHIN = 420.0
"""Seconds for the child to start everything: migrate, start, parse, run the task."""
GONE_WITHIN = 30.0
"""Seconds after the SIGKILL by which nothing of the run may be left: the guardian's SIGTERM, its
5 s of grace and its SIGKILL rounds, with room for a loaded machine."""
PIECES = (
    "airflow api_server",  # the title the api-server gives itself
    "airflow scheduler",
    "LocalExecutor",  # the scheduler's task workers
    "airflow dag-processor",
    "airflow triggerer",
    "airflow_provider_batch.emulator --port",
    "postgres -D",
    "postgres: airflow airflow",  # a backend serving Airflow
    HOLD_COMMAND,
)
"""Command lines that must be among the run's processes, so the test covers each kind of them (the
guardian is not one: it is the fix, not the run, though it too must be gone in the end)."""


def _session(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None


def _in_sessions(sessions: set[int]) -> dict[int, psutil.Process]:
    found = {}
    for process in psutil.process_iter(["status"]):
        if process.info["status"] != psutil.STATUS_ZOMBIE and _session(process.pid) in sessions:
            found[process.pid] = process
    return found


def _run_processes(child: int, postgres_dir: Path) -> tuple[dict[int, psutil.Process], set[int]]:
    """The run's processes and their sessions, as one who did not start them would find them."""
    postmaster = int((postgres_dir / "postmaster.pid").read_text().split()[0])
    found: dict[int, psutil.Process] = {}
    for root in (psutil.Process(child), psutil.Process(postmaster)):
        for process in [root, *root.children(recursive=True)]:
            found[process.pid] = process
    sessions = {sid for pid in found if (sid := _session(pid)) is not None} - {os.getsid(0)}
    found.update(_in_sessions(sessions))
    return found, sessions


def _left(run: dict[int, psutil.Process], sessions: set[int]) -> list[psutil.Process]:
    """What is still there of the run, including anything started since it was listed."""
    left = {pid: p for pid, p in run.items() if p.is_running() and p.status() != psutil.STATUS_ZOMBIE}
    left.update(_in_sessions(sessions))
    return list(left.values())


def _ready(child: subprocess.Popen[bytes], log: Path) -> dict[str, Any]:
    """The child's JSON line, once everything runs."""
    assert child.stdout is not None
    deadline = time.monotonic() + READY_WITHIN
    while time.monotonic() < deadline:
        if select.select([child.stdout], [], [], 1.0)[0]:
            line = child.stdout.readline()
            if line:
                return json.loads(line)
        if child.poll() is not None:
            break
    pytest.fail(f"the run did not get ready (exit {child.poll()}):\n{log.read_text()[-5000:]}")


def test_a_run_killed_by_sigkill_leaves_no_process(tmp_path: Path) -> None:
    log = tmp_path / "child.log"
    with log.open("wb") as stderr:
        child = subprocess.Popen(
            [sys.executable, "-m", "tests.e2e.interrupted_stack", str(tmp_path)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=stderr,
            start_new_session=True,
        )
    run: dict[int, psutil.Process] = {}
    sessions: set[int] = set()
    postgres_dir: Path | None = None
    try:
        ready = _ready(child, log)
        postgres_dir = Path(ready["postgres_dir"])
        run, sessions = _run_processes(child.pid, postgres_dir)
        listing = describe(run.values())
        missing = [piece for piece in PIECES if piece not in listing]
        assert not missing, f"the run lacks {missing}; it has:\n{listing}"

        child.kill()
        child.wait()
        killed = time.monotonic()
        while (left := _left(run, sessions)) and time.monotonic() < killed + GONE_WITHIN:
            time.sleep(0.2)
        gone_after = time.monotonic() - killed
        assert not left, (
            f"{len(left)} of the run's {len(run)} processes are still there {gone_after:.0f} s after its"
            f" SIGKILL:\n{describe(left)}"
        )
        print(f"\nall {len(run)} processes of the run were gone {gone_after:.1f} s after its SIGKILL")
    finally:
        # Whatever happened, leave nothing behind: the processes, then the cluster's files.
        with contextlib.suppress(ProcessLookupError):
            child.kill()
        child.wait()
        for process in _left(run, sessions):
            with contextlib.suppress(psutil.Error):
                process.kill()
        if postgres_dir is not None:
            shutil.rmtree(postgres_dir, ignore_errors=True)
