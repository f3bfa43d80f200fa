"""Child processes that stop when the process that started them dies, however it dies.

The tests, the demo and the benchmarks start servers that must not outlive them: the emulator,
Airflow's components with their task workers, PostgreSQL. A ``finally`` block stops them after an
exception or a Ctrl-C, but nothing runs in a process killed by SIGKILL, nor in a Python process
killed by SIGTERM (it has no handler for it), and Airflow's components run in sessions of their own,
out of reach of a signal to the parent's process group. ``PR_SET_PDEATHSIG`` is no answer either:
it reaches only direct children, and it fires when the creating *thread* ends. So the cleanup lives
in another process, the guardian:

* :func:`guard` starts it once per process (``python -m airflow_provider_batch.emulator.guardian``,
  in a session of its own, so that a Ctrl-C or a signal to the parent's group leaves it alone) and
  tells it, through a pipe, each process to guard. :func:`guard_pid_file` names a daemon by its pid
  file instead, for a server such as PostgreSQL's postmaster that detaches from whoever starts it.
* The guardian learns that its parent died from that pipe reaching end-of-file, which the kernel
  delivers whatever killed the parent. A child the parent forked keeps the pipe open, so the
  guardian also checks twice a second whether its own parent pid changed (an orphan is adopted).
* It then stops every guarded process and everything that came of it (a :class:`ProcessTree`):
  SIGTERM to all of them, :data:`GRACE` seconds to end, SIGKILL to whatever is left, until nothing is.

A parent that exits normally closes the pipe too; the guardian then sweeps what is still running
(normally nothing: the parent stopped it) and ends, and the parent waits for that at exit, so its
command returns only once nothing of it is left. :func:`release` keeps a process out of the sweep
on purpose (``DEMO_KEEP=1`` leaves Airflow running for a look at the UI).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import psutil

GRACE = 5.0
"""Seconds the guardian gives the processes to end on SIGTERM before it SIGKILLs them."""
KILL_TIMEOUT = 10.0
"""Seconds of SIGKILL rounds after which a process still there (stuck in the kernel) is reported."""
PARENT_CHECK = 0.5
"""Seconds between the guardian's checks of its parent pid."""


class ProcessTree:
    """Some root processes and everything that came of them, looked up afresh at each look.

    A member is a root; or a process in a session or process group that a member leads (Airflow
    runs each task in a process group of its own and PostgreSQL's backends share the postmaster's
    session; such an id stays taken while any process uses it, so it keeps naming the same group
    after its leader is gone); or a child of a member (a grandchild in a new session, such as a
    BashOperator's shell, is reached through its parent). Members are remembered as they are seen,
    as ``psutil.Process`` objects, which know a process by its pid *and* start time: one stays a
    member after its parent dies, and a pid the system later hands to an unrelated process is never
    taken for it. Zombies are not members: they are dead already, and only their parent reaps them.

    A root can also be a pid file (:meth:`add_pid_file`), read at each look, so it may be named
    before the daemon exists; the pid in it counts only if that process works in the file's
    directory, as PostgreSQL's postmaster does in its data directory, so a stale file whose pid
    now belongs to another process is ignored.
    """

    def __init__(self, pids: Iterable[int] = ()) -> None:
        self._roots: dict[int, psutil.Process] = {}
        self._known: dict[int, psutil.Process] = {}
        self._pid_files: set[Path] = set()
        for pid in pids:
            self.add(pid)

    def add(self, pid: int) -> None:
        """Add a root by pid: a process that is still there (or a zombie not yet reaped)."""
        with contextlib.suppress(psutil.Error):
            self._roots[pid] = self._known[pid] = psutil.Process(pid)

    def add_pid_file(self, path: Path) -> None:
        self._pid_files.add(Path(path).resolve())

    def discard(self, pid: int) -> None:
        """Forget a root (and it no longer counts as a member, unless a member's child)."""
        self._roots.pop(pid, None)
        self._known.pop(pid, None)

    def __bool__(self) -> bool:
        return bool(self._roots or self._pid_files)

    def members(self) -> list[psutil.Process]:
        """The processes of the tree now, each remembered for the next look."""
        for path in self._pid_files:
            daemon = _pid_file_daemon(path)
            if daemon is not None:
                self._roots.setdefault(daemon.pid, daemon)
                self._known.setdefault(daemon.pid, daemon)
        table: dict[int, psutil.Process] = {}
        children: dict[int, list[int]] = {}
        leaders: dict[int, tuple[int, int]] = {}  # pid -> (process group, session)
        for process in psutil.process_iter(["ppid", "status"]):
            if process.info["status"] == psutil.STATUS_ZOMBIE or process.pid == os.getpid():
                continue
            table[process.pid] = process
            children.setdefault(process.info["ppid"], []).append(process.pid)
            with contextlib.suppress(OSError):
                leaders[process.pid] = (os.getpgid(process.pid), _session(process.pid))
        # A remembered pid now held by another process names neither that process nor its groups.
        self._known = {
            pid: known for pid, known in self._known.items() if pid not in table or table[pid] == known
        }
        found = {
            pid
            for pid, process in table.items()
            if pid in self._known or any(leader in self._known for leader in leaders.get(pid, ()))
        }
        pending = list(found)
        while pending:
            for child in children.get(pending.pop(), []):
                if child not in found:
                    found.add(child)
                    pending.append(child)
        for pid in found:
            self._known.setdefault(pid, table[pid])
        return [self._known[pid] for pid in sorted(found)]

    def signal(self, sig: int) -> list[psutil.Process]:
        """Send ``sig`` to every member; return them."""
        members = self.members()
        for process in members:
            with contextlib.suppress(psutil.Error):
                process.send_signal(sig)
        return members

    def wait(self, timeout: float) -> bool:
        """Wait until no member is left; whether that happened within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while self.members():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True

    def kill(self, timeout: float = KILL_TIMEOUT) -> list[psutil.Process]:
        """SIGKILL every member, again for any that appeared meanwhile, until none is left; return
        the members still there after ``timeout`` seconds (stuck in the kernel)."""
        deadline = time.monotonic() + timeout
        while self.signal(signal.SIGKILL) and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.members()

    def stop(self, grace: float) -> list[psutil.Process]:
        """SIGTERM every member, give them ``grace`` seconds to end, then :meth:`kill` the rest.

        The processes are looked up before the first signal, so that children still hanging off a
        member are remembered before that member ends and leaves them orphaned."""
        if not self.signal(signal.SIGTERM) or self.wait(grace):
            return []
        return self.kill()


def _session(pid: int) -> int:
    try:
        return os.getsid(pid)
    except PermissionError:  # some systems hide other sessions' ids: rely on groups and children
        return -1


def _pid_file_daemon(path: Path) -> psutil.Process | None:
    try:
        process = psutil.Process(int(path.read_text().split()[0]))
        if Path(process.cwd()).resolve() == path.parent:
            return process
    except (OSError, ValueError, IndexError, psutil.Error):
        pass
    return None


def describe(processes: Iterable[psutil.Process]) -> str:
    """One line per process, pid and command line, for error messages and reports."""
    lines = []
    for process in processes:
        try:
            command = " ".join(process.cmdline()).strip() or process.name()
        except psutil.Error:
            command = "(gone)"
        lines.append(f"  {process.pid} {command}")
    return "\n".join(lines)


# The parent's side ------------------------------------------------------------------------------


class _Channel:
    """This process's guardian: started on first use, and again after a fork (the forked child
    is another parent, which the first guardian does not watch)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owner = 0
        self._guardian: subprocess.Popen[bytes] | None = None

    def send(self, line: str) -> None:
        with self._lock:
            if self._owner != os.getpid() or self._guardian is None or self._guardian.poll() is not None:
                self._guardian = subprocess.Popen(
                    [sys.executable, "-m", __name__],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.DEVNULL,
                    start_new_session=True,
                )
                self._owner = os.getpid()
            assert self._guardian.stdin is not None
            self._guardian.stdin.write(line.encode() + b"\n")
            self._guardian.stdin.flush()

    def close(self, timeout: float = GRACE + KILL_TIMEOUT + 5) -> None:
        """At a normal exit: let the guardian sweep what is left, and wait for it."""
        with self._lock:
            if self._guardian is None or self._owner != os.getpid():
                return
            assert self._guardian.stdin is not None
            self._guardian.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._guardian.wait(timeout)


_channel = _Channel()
atexit.register(_channel.close)


def guard(pid: int) -> None:
    """Stop process ``pid``, and everything that came of it, when this process dies.

    Call it right after starting the process, before reaping it, so that the pid is still its."""
    _channel.send(f"pid {pid}")


def guard_pid_file(path: Path) -> None:
    """Stop the daemon whose pid ``path`` holds (see :class:`ProcessTree`) when this process dies.

    Call it before starting the daemon: the file is read only when the time comes."""
    _channel.send(f"file {Path(path).resolve()}")


def release(pid: int) -> None:
    """Let process ``pid`` outlive this process (it no longer counts as a root)."""
    _channel.send(f"release {pid}")


# The guardian's side ----------------------------------------------------------------------------


def _watch(tree: ProcessTree) -> None:
    """Read registrations from stdin until the parent is gone."""
    parent = os.getppid()
    pending = b""
    while os.getppid() == parent:
        readable, _, _ = select.select([0], [], [], PARENT_CHECK)
        if not readable:
            continue
        chunk = os.read(0, 65536)
        if not chunk:
            return
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            kind, _, value = line.decode().partition(" ")
            if kind == "pid":
                tree.add(int(value))
            elif kind == "file":
                tree.add_pid_file(Path(value))
            elif kind == "release":
                tree.discard(int(value))


def main() -> None:
    # Its own session keeps terminal signals away; a deliberate SIGTERM means "clean up now".
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    tree = ProcessTree()
    try:
        _watch(tree)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if tree and (left := tree.stop(GRACE)):
            print(f"guardian: could not stop\n{describe(left)}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
