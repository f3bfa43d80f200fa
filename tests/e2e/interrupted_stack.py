"""The run that ``test_interrupted.py`` interrupts: ``python -m tests.e2e.interrupted_stack WORK``.

It starts what the end-to-end fixtures start, the same way: the emulator, a PostgreSQL server and a
real Airflow on it (api-server, scheduler with the LocalExecutor, dag-processor, triggerer), then
triggers ``interrupted_dags/hold.py`` so that a task worker, its task process and the task's shell
run too. Once they all do, it prints one JSON line (its pid and PostgreSQL's data directory) and
sleeps, with the fixtures' ``finally`` around it, until the test kills it.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

from airflow_stack import AirflowStack, Postgres  # noqa: E402

from airflow_provider_batch.emulator.process import EmulatorProcess  # noqa: E402
from tests.e2e.interrupted_dags.hold import HOLD_COMMAND, HOLD_DAG, HOLD_TASK  # noqa: E402

DAGS_FOLDER = Path(__file__).resolve().parent / "interrupted_dags"


def shell_running() -> bool:
    """Whether the task's shell runs (its command line, under this process)."""
    for process in psutil.Process().children(recursive=True):
        try:
            if " ".join(process.cmdline()).endswith(HOLD_COMMAND):
                return True
        except psutil.Error:  # ended meanwhile
            continue
    return False


def main(work: Path) -> None:
    # A SIGINT raises KeyboardInterrupt, so the finally runs, even when this was started from a
    # shell's background job, which ignores SIGINT (and Python keeps an ignored SIGINT ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    emulator = EmulatorProcess(work / "emulator")
    postgres = Postgres()
    connection = {"conn_type": "openai_batch", "host": emulator.base_url}
    stack = AirflowStack(
        work / "home",
        DAGS_FOLDER,
        database_url=postgres.start(),
        env={"AIRFLOW_CONN_OPENAI_DEFAULT": json.dumps(connection)},
    )
    try:
        stack.migrate()
        stack.start()
        stack.wait_for_dag(HOLD_DAG, timeout=180)
        run_id = stack.trigger(HOLD_DAG)
        stack.wait(lambda: stack.task_state(HOLD_DAG, run_id, HOLD_TASK) == "running", 180, "the task to run")
        stack.wait(shell_running, 60, "the task's shell")
        print(json.dumps({"pid": os.getpid(), "postgres_dir": str(postgres.data_dir)}), flush=True)
        time.sleep(3600)
    finally:
        stack.stop()
        postgres.stop()
        emulator.stop()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
