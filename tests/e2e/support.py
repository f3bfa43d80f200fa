"""Helpers of the end-to-end tier: the running pieces of one backend (:class:`E2E`), reads of the
metadata database, and the watcher that SIGKILLs a task process on request.

Everything observed here is observed from outside, the way an operator of the system would:
Airflow's REST API, its log files and metadata database, the emulator's HTTP API, and ``ps``.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

if TYPE_CHECKING:
    from airflow_stack import AirflowStack

    from airflow_provider_batch.emulator.process import EmulatorProcess

FINISHED_TI_STATES = frozenset({"success", "failed", "skipped", "upstream_failed", "removed"})
FINISHED_RUN_STATES = frozenset({"success", "failed"})


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, every: float = 0.5) -> Any:
    """Poll ``predicate`` until it returns something truthy, and return that."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def q(value: str) -> str:
    """Quote a value for a query string (run ids hold ``+`` and ``:``)."""
    return urllib.parse.quote(str(value), safe="")


# metadata database ------------------------------------------------------------------------------


class MetadataDB:
    """Read-only access to Airflow's metadata database, SQLite or PostgreSQL, from the test process."""

    def __init__(self, url: str, raw_paths: list[Path]) -> None:
        self.url = url
        self.fernet_key = ""
        """``[core] fernet_key`` of the stack, set once its ``airflow.cfg`` exists."""
        self.is_sqlite = url.startswith("sqlite")
        self.raw_paths = raw_paths
        """Files or directories holding the database's bytes (SQLite file and WAL; PostgreSQL's
        data directory, WAL included), scanned raw so that deleted rows count too."""

    @contextlib.contextmanager
    def _connect(self) -> Iterator[Any]:
        if self.is_sqlite:
            path = self.url.removeprefix("sqlite:///")
            connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        else:
            import psycopg2

            connection = psycopg2.connect(re.sub(r"^postgresql\+\w+://", "postgresql://", self.url))
        try:
            yield connection
        finally:
            connection.close()

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run ``sql`` with ``?`` placeholders on either backend."""
        with self._connect() as connection:
            cursor = connection.cursor()
            cursor.execute(sql if self.is_sqlite else sql.replace("?", "%s"), params)
            rows = cursor.fetchall()
            if not self.is_sqlite:
                connection.rollback()
            return rows

    def triggers_of_run(self, dag_id: str, run_id: str) -> dict[tuple[str, int], dict[str, Any]]:
        """The trigger rows the run's deferred task instances point at, kwargs decoded.

        Airflow's ``Trigger.encrypted_kwargs`` attribute is the ``kwargs`` column.
        """
        rows = self.query(
            "SELECT ti.task_id, ti.map_index, t.id, t.classpath, t.kwargs, t.triggerer_id"
            " FROM task_instance ti JOIN trigger t ON ti.trigger_id = t.id"
            " WHERE ti.dag_id = ? AND ti.run_id = ?",
            (dag_id, run_id),
        )
        return {
            (task_id, map_index): {
                "id": trigger_id,
                "classpath": classpath,
                "raw": raw,
                "kwargs": self.decode_kwargs(raw),
                "triggerer_id": triggerer_id,
            }
            for task_id, map_index, trigger_id, classpath, raw, triggerer_id in rows
        }

    def decode_kwargs(self, raw: str) -> dict[str, Any]:
        """Plain JSON on the deferral path (observed on 3.3.2); Fernet-encrypted should Airflow
        start encrypting there, as ``Trigger.encrypt_kwargs`` does."""
        if raw.startswith("{"):
            return _serde_plain(json.loads(raw))
        from cryptography.fernet import Fernet

        return _serde_plain(json.loads(Fernet(self.fernet_key.encode()).decrypt(raw.encode())))

    def tables(self) -> list[str]:
        if self.is_sqlite:
            return [r[0] for r in self.query("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return [r[0] for r in self.query("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]

    def find(self, needle: str) -> list[str]:
        """Every place ``needle`` occurs: live rows (``table.column``) and the raw database files."""
        hits: list[str] = []
        with self._connect() as connection:
            for table in self.tables():
                cursor = connection.cursor()
                cursor.execute(f'SELECT * FROM "{table}"')
                columns = [d[0] for d in cursor.description]
                for row in cursor.fetchall():
                    for column, value in zip(columns, row, strict=True):
                        if needle in _text(value):
                            hits.append(f"{table}.{column}")
            if not self.is_sqlite:
                connection.rollback()
        encoded = needle.encode()
        for root in (path for path in self.raw_paths if path.exists()):
            for path in [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()):
                with contextlib.suppress(OSError):
                    if encoded in path.read_bytes():
                        hits.append(f"file {path}")
        return sorted(set(hits))


def _text(value: Any) -> str:
    if isinstance(value, memoryview):
        value = value.tobytes()
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return str(value)


def _serde_plain(value: Any) -> Any:
    """Strip ``airflow.sdk.serde`` wrappers (``{"__classname__", "__version__", "__data__"}``)."""
    if isinstance(value, dict):
        if "__data__" in value and "__classname__" in value:
            return _serde_plain(value["__data__"])
        return {k: _serde_plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_serde_plain(v) for v in value]
    return value


# killing a task process on request ---------------------------------------------------------------


class KillWatcher:
    """SIGKILL task processes that ask for it (see ``request_kill`` in ``dags/e2e_common.py``).

    A test DAG's operator writes ``{pid, task_id, batch_id, ...}`` at the exact point where it
    wants to die (after ``create``, before ``defer``) and blocks; this thread kills that PID with
    SIGKILL, as the kernel's OOM killer or a lost node would. It only kills processes descending
    from the stack's own components, which the test started.
    """

    def __init__(self, stack: AirflowStack, directory: Path) -> None:
        self.stack = stack
        self.directory = directory
        self.kills: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="e2e-kill-watcher", daemon=True)

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            for marker in sorted(self.directory.glob("*.json")):
                record = json.loads(marker.read_text())
                record.update(self._kill(int(record["pid"])))
                self.kills.append(record)
                marker.rename(marker.with_suffix(".done"))

    def _kill(self, pid: int) -> dict[str, Any]:
        roots = {process.pid for process in self.stack.processes.values()}
        try:
            process = psutil.Process(pid)
            lineage = [parent.pid for parent in process.parents()]
            if not roots.intersection(lineage):
                return {"killed": False, "error": f"pid {pid} does not descend from the stack {roots}"}
            cmdline = " ".join(process.cmdline())
            process.send_signal(signal.SIGKILL)
            process.wait(30)
        except psutil.Error as exc:
            return {"killed": False, "error": repr(exc)}
        return {"killed": True, "killed_at": time.time(), "cmdline": cmdline, "lineage": lineage}

    def kills_of(self, run_id: str, task_id: str) -> list[dict[str, Any]]:
        return [k for k in self.kills if k["run_id"] == run_id and k["task_id"] == task_id]


# one backend's running pieces --------------------------------------------------------------------


@dataclass
class E2E:
    """The stack, emulator and database of one backend, with the reads the tests share."""

    backend: str
    stack: AirflowStack
    emulator: EmulatorProcess
    db: MetadataDB
    work: Path
    canary: str
    watcher: KillWatcher
    trigger_samples: list[dict[str, Any]] = field(default_factory=list)
    """Trigger rows seen while tasks were deferred (rows are deleted once their task resumes)."""

    # REST ------------------------------------------------------------------------------------

    def ti(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> dict[str, Any]:
        return self.stack.task_instance(dag_id, run_id, task_id, map_index)

    def tis(self, dag_id: str, run_id: str, task_id: str | None = None) -> list[dict[str, Any]]:
        query = f"?limit=1000{'&task_id=' + q(task_id) if task_id else ''}"
        return self.stack.api("GET", f"dags/{dag_id}/dagRuns/{run_id}/taskInstances{query}")["task_instances"]

    def wait_ti_state(
        self,
        dag_id: str,
        run_id: str,
        task_id: str,
        states: frozenset[str] | set[str],
        timeout: float,
        map_index: int = -1,
    ) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            ti = self.ti(dag_id, run_id, task_id, map_index)
            return ti if ti.get("state") in states else None

        try:
            return wait_until(reached, timeout, f"{dag_id}.{task_id} to reach {sorted(states)}")
        except TimeoutError as exc:
            ti = self.ti(dag_id, run_id, task_id, map_index)
            raise AssertionError(f"{exc}; it is {ti.get('state')!r} (try {ti.get('try_number')})") from None

    def wait_idle(self, timeout: float = 300) -> None:
        """Wait until no DAG run is queued or running, so a test that disturbs every task (a
        triggerer kill, API faults) or counts API calls has the stack to itself."""

        def idle() -> bool:
            runs = self.stack.api("GET", "dags/~/dagRuns?state=queued&state=running&limit=1")
            return runs["total_entries"] == 0

        wait_until(idle, timeout, "the stack to have no queued or running DAG run")

    def wait_run_finished(self, dag_id: str, run_id: str, timeout: float) -> str:
        return wait_until(
            lambda: (state := self.stack.run_state(dag_id, run_id)) in FINISHED_RUN_STATES and state,
            timeout,
            f"run {dag_id}/{run_id} to finish",
        )

    def xcom(
        self, dag_id: str, run_id: str, task_id: str, key: str = "return_value", map_index: int = -1
    ) -> Any:
        entry = self.stack.api(
            "GET",
            f"dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}?map_index={map_index}",
        )
        return entry["value"]

    def asset_events(self, dag_id: str, run_id: str, task_id: str | None = None) -> list[dict[str, Any]]:
        query = f"source_dag_id={q(dag_id)}&source_run_id={q(run_id)}&limit=100"
        if task_id:
            query += f"&source_task_id={q(task_id)}"
        return self.stack.api("GET", f"assets/events?{query}")["asset_events"]

    # logs ------------------------------------------------------------------------------------

    def task_log_dir(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> Path:
        path = self.stack.home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
        return path / f"map_index={map_index}" if map_index >= 0 else path

    def task_log(self, dag_id: str, run_id: str, task_id: str, attempt: int, map_index: int = -1) -> str:
        """The worker's log of one try (the triggerer writes its own ``attempt=N.log.trigger.*``)."""
        path = self.task_log_dir(dag_id, run_id, task_id, map_index) / f"attempt={attempt}.log"
        return path.read_text(errors="replace")

    # emulator --------------------------------------------------------------------------------

    def batches(self, **metadata: str) -> list[Any]:
        """Every batch on the emulator whose metadata holds all of ``metadata`` (newest first)."""
        client = self.emulator.client(max_retries=10)
        return [
            batch
            for batch in client.batches.list(limit=100)  # auto-pages through every batch
            if all((batch.metadata or {}).get(k) == v for k, v in metadata.items())
        ]

    def batches_of(self, dag_id: str, run_id: str, task_id: str) -> list[Any]:
        return self.batches(airflow_dag_id=dag_id, airflow_run_id=run_id, airflow_task_id=task_id)

    def batch(self, batch_id: str) -> Any:
        return self.emulator.client(max_retries=10).batches.retrieve(batch_id)

    def sample_triggers(self, dag_id: str, run_id: str) -> dict[tuple[str, int], dict[str, Any]]:
        rows = self.db.triggers_of_run(dag_id, run_id)
        self.trigger_samples.extend(rows.values())
        return rows
