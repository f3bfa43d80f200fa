"""The guardian (``airflow_provider_batch/emulator/guardian.py``): what a process starts is stopped
when it dies, by SIGKILL, SIGTERM or SIGINT, and nothing else is.

``guarded_tree.py`` runs, in a child process and a session of its own, a small tree of every shape
the end-to-end stack has (a session leader with children in their own group and session, a daemon
known by its pid file, the emulator); the test lists the tree from outside with psutil, signals
the child and expects the tree gone, and the two processes the guardian was not to stop (never
guarded; guarded then released) still there. ``tests/e2e/test_interrupted.py`` does the same to
the real stack.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from airflow_provider_batch.emulator.guardian import ProcessTree, describe

ROOT = Path(__file__).resolve().parents[2]
GONE_WITHIN = 15.0
"""Seconds for the tree to go: the guardian's grace (5 s) and a SIGKILL round, with room to spare."""


def _alive(processes: list[psutil.Process]) -> list[psutil.Process]:
    return [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_a_dying_parent_takes_its_guarded_tree_along(tmp_path: Path, sig: signal.Signals) -> None:
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.emulator.guarded_tree", str(tmp_path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    spared: list[psutil.Process] = []
    tree: list[psutil.Process] = []
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line, "the child did not get ready (its stderr is in the captured output)"
        pids = json.loads(line)
        spared = [psutil.Process(pids.pop(name)) for name in ("kept", "bystander")]
        daemon = psutil.Process(pids["daemon"])
        tree = [p for p in psutil.Process(child.pid).children(recursive=True) if p not in spared]
        tree.append(daemon)
        listing = describe(tree)
        for command in ("sleep 3601", "sleep 3602", "airflow_provider_batch.emulator --port"):
            assert command in listing, f"the tree lacks {command!r}:\n{listing}"

        child.send_signal(sig)
        child.wait(30)
        signalled = time.monotonic()
        while (left := _alive(tree)) and time.monotonic() < signalled + GONE_WITHIN:
            time.sleep(0.1)
        assert not left, f"still there {GONE_WITHIN:.0f} s after the {sig.name}:\n{describe(left)}"
        assert _alive(spared) == spared, "the guardian stopped a process it was not to stop"
    finally:
        with contextlib.suppress(ProcessLookupError):
            child.kill()
        child.wait()
        for process in _alive([*tree, *spared]):
            process.kill()


def test_a_stale_pid_file_names_nobody(tmp_path: Path) -> None:
    """A pid file counts only for a process working in its directory: once the daemon is gone and
    its pid taken by another process, the file must not make that process a member."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    other = subprocess.Popen(["sleep", "60"], cwd=elsewhere)
    try:
        pid_file = tmp_path / "daemon.pid"
        pid_file.write_text(f"{other.pid}\n")
        tree = ProcessTree()
        tree.add_pid_file(pid_file)
        assert tree.members() == []

        pid_file = elsewhere / "daemon.pid"
        pid_file.write_text(f"{other.pid}\n")
        tree.add_pid_file(pid_file)
        assert [p.pid for p in tree.members()] == [other.pid]
    finally:
        other.kill()
        other.wait()


def test_a_member_stays_one_after_its_parent_dies() -> None:
    """A child in a session of its own, orphaned when its parent dies, is still found: the tree
    remembers it from an earlier look (the guardian looks before its first signal)."""
    shell = subprocess.Popen(
        ["bash", "-c", "setsid sleep 61 & echo $!; wait"], stdout=subprocess.PIPE, text=True
    )
    assert shell.stdout is not None
    orphan = psutil.Process(int(shell.stdout.readline()))
    try:
        tree = ProcessTree([shell.pid])
        assert {p.pid for p in tree.members()} == {shell.pid, orphan.pid}
        shell.kill()
        shell.wait()
        assert orphan.ppid() != shell.pid
        assert [p.pid for p in tree.members()] == [orphan.pid]
        assert tree.kill() == []
        assert _alive([orphan]) == []
    finally:
        with contextlib.suppress(psutil.Error):
            orphan.kill()
