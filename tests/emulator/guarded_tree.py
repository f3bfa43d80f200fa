"""The child of ``test_guardian.py``: ``python -m tests.emulator.guarded_tree WORK``.

Starts, guarded, a small tree of every shape the end-to-end stack has:

* a *component*, like an Airflow component: a session leader with a child in a process group of
  its own (like a task process) and a child in a session of its own (like a BashOperator's shell);
* a *daemon* known only by its pid file, detached into a session of its own and working in the
  file's directory, as ``pg_ctl`` leaves PostgreSQL's postmaster; its pid file is guarded before
  it starts;
* the emulator (``EmulatorProcess``), in this process's own session and process group;

and two processes the guardian must leave alone: a *bystander* never guarded, in this process's
session, and a *kept* one guarded then released. Prints the pids as one JSON line, then sleeps with
a ``finally`` that stops the emulator, as the fixtures do, until the test signals it.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from airflow_provider_batch.emulator.guardian import guard, guard_pid_file, release
from airflow_provider_batch.emulator.process import EmulatorProcess

COMPONENT = """
import subprocess, time
subprocess.Popen(["sleep", "3601"], process_group=0)
subprocess.Popen(["sleep", "3602"], start_new_session=True)
print("started", flush=True)
time.sleep(3600)
"""
DAEMON = """
import os, sys, time
work = sys.argv[1]
if os.fork() == 0:
    os.setsid()
    os.chdir(work)
    with open("daemon.pid.tmp", "w") as pid_file:
        pid_file.write(f"{os.getpid()}\\n")
    os.rename("daemon.pid.tmp", "daemon.pid")
    os.execvp("sleep", ["sleep", "3603"])
while not os.path.exists(os.path.join(work, "daemon.pid")):
    time.sleep(0.01)
"""


def main(work: Path) -> None:
    # A SIGINT raises KeyboardInterrupt, so the finally runs, even when this was started from a
    # shell's background job, which ignores SIGINT (and Python keeps an ignored SIGINT ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    emulator = EmulatorProcess(work / "emulator")
    try:
        component = subprocess.Popen(
            [sys.executable, "-c", COMPONENT], stdout=subprocess.PIPE, start_new_session=True
        )
        guard(component.pid)
        assert component.stdout is not None
        component.stdout.readline()  # its children run
        guard_pid_file(work / "daemon.pid")
        subprocess.run([sys.executable, "-c", DAEMON, str(work)], check=True, timeout=30)
        kept = subprocess.Popen(["sleep", "3604"])
        guard(kept.pid)
        release(kept.pid)
        bystander = subprocess.Popen(["sleep", "3605"])
        daemon = int((work / "daemon.pid").read_text())
        pids = {"component": component.pid, "daemon": daemon, "emulator": emulator.process.pid}
        print(json.dumps({**pids, "kept": kept.pid, "bystander": bystander.pid}), flush=True)
        time.sleep(3600)
    finally:
        emulator.stop()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
