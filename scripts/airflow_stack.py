"""A real Airflow on this machine: api-server, scheduler, dag-processor and triggerer, with the
LocalExecutor and a project-local AIRFLOW_HOME, started and stopped by PID; and a throwaway
PostgreSQL server for its metadata database.

``make demo`` and the end-to-end tests use it, so both run what users run: the real scheduler
defers the task, the real triggerer runs our trigger, and the REST API is what a person clicking
in the UI would call. SQLite by default; any SQLAlchemy URL (PostgreSQL) works.

Every process started here is guarded (``airflow_provider_batch/emulator/guardian.py``): it stops,
with its task workers and anything else it started, when the process that started it dies, even by
SIGKILL, when no ``finally`` block runs.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from airflow_provider_batch.emulator.guardian import ProcessTree, describe, guard, guard_pid_file

COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
POSTGRES_SCRIPT = Path(__file__).resolve().with_name("postgres.sh")
STOP_GRACE = 20.0
"""Seconds the components get to end on SIGTERM before they are SIGKILLed."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class AirflowStack:
    """Airflow's components as child processes sharing one environment.

    :param home: AIRFLOW_HOME (created; logs of each component go to ``home/logs/<name>.log``).
    :param dags_folder: the DAG files to serve.
    :param env: extra environment, e.g. ``AIRFLOW_CONN_*`` connections.
    :param database_url: ``sql_alchemy_conn``; SQLite under ``home`` when not given.
    """

    def __init__(
        self,
        home: Path,
        dags_folder: Path,
        *,
        env: dict[str, str] | None = None,
        database_url: str | None = None,
    ) -> None:
        self.home = Path(home).resolve()
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "logs").mkdir(exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        database_url = database_url or f"sqlite:///{self.home / 'airflow.db'}"
        bin_dir = Path(sys.executable).parent
        self.airflow = str(bin_dir / "airflow")
        self.env = {
            **os.environ,
            "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(Path(dags_folder).resolve()),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "8",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": database_url,
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__BASE_URL": self.url,
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "3",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "3",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
            "AIRFLOW__SCHEDULER__TRIGGER_TIMEOUT_CHECK_INTERVAL": "2",
            "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "1",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            # Free ports, so two stacks (or a stack and a local Airflow) can run side by side.
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
            **(env or {}),
        }
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._token: str | None = None

    # lifecycle --------------------------------------------------------------------------------

    def migrate(self) -> None:
        self.run_cli("db", "migrate", timeout=300)

    def start(self, components: tuple[str, ...] = COMPONENTS) -> None:
        for name in components:
            self.start_component(name)
        self.wait(lambda: self._healthy(), 120, "the API server to answer")

    def start_component(self, name: str) -> None:
        log = (self.home / "logs" / f"{name}.log").open("ab")
        command = [self.airflow, name] + (["--port", str(self.port)] if name == "api-server" else [])
        # A session of its own: signals to the component's group or session spare this process,
        # and a terminal's Ctrl-C reaches only this process, whose ``finally`` stops the stack.
        process = subprocess.Popen(
            command, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        guard(process.pid)
        self.processes[name] = process

    def kill_component(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Signal one component and everything it started: its workers, their tasks (each in a
        process group of its own) and their children; a crash when ``sig`` is SIGKILL."""
        process = self.processes.pop(name)
        ProcessTree([process.pid]).signal(sig)
        process.wait(30)

    def stop(self) -> None:
        """SIGTERM every component and everything it started, SIGKILL what is left after
        STOP_GRACE seconds; raise if anything survives even that."""
        left = ProcessTree(process.pid for process in self.processes.values()).stop(STOP_GRACE)
        for name, process in list(self.processes.items()):
            process.wait(10)
            self.processes.pop(name)
        if left:
            raise RuntimeError(f"processes of the Airflow stack survived SIGKILL:\n{describe(left)}")

    def __enter__(self) -> AirflowStack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def run_cli(self, *args: str, timeout: float = 120) -> str:
        done = subprocess.run(
            [self.airflow, *args], env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"airflow {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
            )
        return done.stdout

    # REST API ---------------------------------------------------------------------------------

    def api(self, method: str, path: str, payload: Any = None) -> Any:
        if self._token is None:
            with urllib.request.urlopen(f"{self.url}/auth/token", timeout=30) as response:
                self._token = json.load(response)["access_token"]
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(f"{self.url}/api/v2/{path.lstrip('/')}", data=data, method=method)
        request.add_header("Authorization", f"Bearer {self._token}")
        request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                body = response.read()
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"{method} {path}: HTTP {exc.code} {exc.read()[:500]!r}") from None
        return json.loads(body) if body else None

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/api/v2/monitor/health", timeout=5) as response:
                return response.status == 200
        except OSError:
            return False

    def wait_for_dag(self, dag_id: str, timeout: float = 120) -> None:
        def parsed() -> bool:
            try:
                self.api("GET", f"dags/{dag_id}")
            except RuntimeError:
                return False
            return True

        self.wait(parsed, timeout, f"DAG {dag_id} to be parsed")

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None) -> str:
        self.api("PATCH", f"dags/{dag_id}", {"is_paused": False})
        run = self.api("POST", f"dags/{dag_id}/dagRuns", {"logical_date": None, "conf": conf or {}})
        return run["dag_run_id"]

    def task_instance(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> dict[str, Any]:
        suffix = f"/{map_index}" if map_index >= 0 else ""
        return self.api("GET", f"dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}{suffix}")

    def task_state(self, dag_id: str, run_id: str, task_id: str) -> str | None:
        return self.task_instance(dag_id, run_id, task_id).get("state")

    def set_task_state(self, dag_id: str, run_id: str, task_id: str, state: str) -> None:
        self.api("PATCH", f"dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}", {"new_state": state})

    def run_state(self, dag_id: str, run_id: str) -> str:
        return self.api("GET", f"dags/{dag_id}/dagRuns/{run_id}")["state"]

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value") -> Any:
        entry = self.api("GET", f"dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}")
        return entry["value"]

    @staticmethod
    def wait(predicate: Callable[[], bool], timeout: float, what: str, every: float = 0.5) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(every)
        raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")

    def logs(self, name: str) -> str:
        return (self.home / "logs" / f"{name}.log").read_text(errors="replace")

    def remove(self) -> None:
        shutil.rmtree(self.home, ignore_errors=True)


class Postgres:
    """A throwaway PostgreSQL server (``scripts/postgres.sh``) on a free port, for the metadata
    database.

    ``pg_ctl`` detaches the postmaster into a session of its own, so once the script has ended no
    parent-child link leads to the server. The guardian is told its ``postmaster.pid`` before the
    script starts, and the script itself while it runs: a parent killed at any moment of the start
    leaves neither a half-made cluster's ``initdb`` nor a server behind.
    """

    def __init__(self) -> None:
        self.port = free_port()
        self.data_dir = Path(f"/tmp/airflow-provider-batch-pg-{self.port}")
        """Under ``/tmp``, not a private temporary directory: the server may run as user
        ``postgres``, which must be able to reach it."""
        self.url = ""

    def start(self) -> str:
        """Start the server; return its SQLAlchemy URL."""
        guard_pid_file(self.data_dir / "postmaster.pid")
        script = subprocess.Popen(
            self._command("start"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        guard(script.pid)
        stdout, stderr = script.communicate(timeout=600)
        if script.returncode != 0:
            raise RuntimeError(f"postgres.sh start failed:\n{stdout}\n{stderr}")
        self.url = stdout.strip().splitlines()[-1]
        return self.url

    def stop(self) -> None:
        """Stop the server and remove its data directory."""
        subprocess.run(self._command("stop"), capture_output=True, timeout=120, check=False)

    def _command(self, action: str) -> list[str]:
        return ["bash", str(POSTGRES_SCRIPT), action, str(self.port), str(self.data_dir)]
