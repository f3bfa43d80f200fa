"""The documentation runs as written.

A page marks its runnable blocks with an HTML comment on the line before the fence, which neither
mkdocs nor GitHub shows:

* ``<!-- docs-test: run -->``: a shell block runs as it stands, a Python block with ``python``;
* ``<!-- docs-test: file PATH -->``: the block is saved as PATH, as the page tells the reader to;
* ``<!-- docs-test: output -->``: what the run block before it prints, exactly;
* ``<!-- docs-test: server -->``: a server started in the background; its first line must be what
  the block's ``# prints ...`` comment says.

A page's marked blocks make one bash script, run in order, so that ``cd`` and ``export`` carry
over from block to block as they do in the reader's shell. It runs in a fresh directory with a new
user's environment: the virtualenv's ``bin`` on the ``PATH``, no ``AIRFLOW_*`` variables, ``HOME``
and ``TMPDIR`` in the sandbox. Port 8000, which the pages use, becomes a free port, so that a run
never meets another server. The script runs in a session of its own, guarded (``guardian.py``),
and everything left of it is killed at the end. Unmarked blocks are checked too, more cheaply:
Python compiles, every ``make`` target exists, every ``AIRFLOW_CONN_*`` is a connection Airflow
reads without a warning.

``make try`` (``scripts/try_dags.py``), which the getting-started page documents, is tested here
too: the page's example runs, and an interrupt stops everything it started.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psutil
import pytest
from airflow.sdk import Connection

from airflow_provider_batch.emulator.guardian import guard

ROOT = Path(__file__).resolve().parent.parent
# docs/reference/ is generated from docstrings, which the unit tests cover.
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
GETTING_STARTED = ROOT / "docs" / "getting-started.md"
DOCS_PORT = "8000"
SCRIPT_TIMEOUT = 240
MIN_SECRET_LENGTH = 5
"""Airflow's ``[logging] min_length_masked_secret``: a shorter password is logged unmasked, with
a warning."""

FENCED = re.compile(
    r"(?:^<!-- docs-test: (?P<mark>[^\n]*?) -->\n)?^```(?P<lang>[\w-]*)[^\n]*\n(?P<body>.*?)^```[ \t]*$",
    re.MULTILINE | re.DOTALL,
)
CODE_SPAN = re.compile(r"`([^`\n]+)`")
MAKE = re.compile(r"(?:^|[\s;&|(])make\s+([a-z][\w-]*)", re.MULTILINE)
CONN_EXPORT = re.compile(r"AIRFLOW_CONN_(\w+)='([^']*)'")


@dataclass
class Block:
    page: Path
    line: int
    lang: str
    body: str
    mark: str

    def __str__(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    text = page.read_text()
    return [
        Block(page, text.count("\n", 0, m.start("body")), m["lang"], m["body"], m["mark"] or "")
        for m in FENCED.finditer(text)
    ]


def marked_pages() -> list[Path]:
    return [page for page in PAGES if any(block.mark for block in blocks(page))]


# The page as a script --------------------------------------------------------------------------


@dataclass
class PageRun:
    sandbox: Path
    logs: Path
    steps: dict[int, Block]
    outputs: dict[int, str]
    """Expected output by step."""
    session: int

    def log(self, step: int) -> str:
        path = self.logs / f"step-{step}.log"
        return path.read_text() if path.exists() else "(not reached)\n"

    def all_logs(self) -> str:
        return "\n".join(f"--- step {n} ({block}):\n{self.log(n)}" for n, block in self.steps.items())


def page_script(page: Path, port: int, logs: Path) -> tuple[str, dict[int, Block], dict[int, str]]:
    """The page's marked blocks as one bash script, each step's output in its own log."""
    lines = ["set -e"]
    steps: dict[int, Block] = {}
    outputs: dict[int, str] = {}
    for block in blocks(page):
        if not block.mark:
            continue
        kind, _, argument = block.mark.partition(" ")
        body = block.body.replace(DOCS_PORT, str(port))
        log = logs / f"step-{len(steps)}.log"
        if kind == "output":
            assert steps, f"{block}: an output block needs a run block before it"
            outputs[len(steps) - 1] = body
            continue
        if kind == "file":
            lines.append(f"cat > {argument} <<'DOCS_TEST_EOF'\n{body}DOCS_TEST_EOF")
            continue
        assert kind in ("run", "server"), f"{block}: unknown mark {block.mark!r}"
        if block.lang == "python":
            body = f"python - <<'DOCS_TEST_EOF'\n{body}DOCS_TEST_EOF\n"
        if kind == "run":
            lines.append(f"{{\n{body}}} > {log} 2>&1")
        else:  # in the background, and the next step only once it has printed its first line
            lines.append(f"{{\n{body}}} > {log} 2>&1 &")
            lines.append(f"for _ in $(seq 300); do [ -s {log} ] && break; sleep 0.1; done")
        steps[len(steps)] = block
    return "\n".join(lines) + "\n", steps, outputs


def new_user_environment(home: Path) -> dict[str, str]:
    """A shell of someone who installed the project: its ``bin`` first on the ``PATH`` and nothing
    else of ours (the session's ``AIRFLOW_*`` variables point at the test database)."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("AIRFLOW", "BATCH_", "OPENAI", "PYTEST", "VIRTUAL_ENV"))
    }
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["HOME"] = env["TMPDIR"] = str(home)  # an emulator without --data-dir leaves its directory
    return env


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def session_members(session: int) -> list[psutil.Process]:
    members = []
    for process in psutil.process_iter(["status"]):
        try:
            if os.getsid(process.pid) == session and process.info["status"] != psutil.STATUS_ZOMBIE:
                members.append(process)
        except OSError:
            continue
    return members


def kill_session(session: int) -> None:
    """SIGTERM first, so that a server cleans up its temporary directory; then SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        members = session_members(session)
        for process in members:
            with contextlib.suppress(psutil.Error):
                process.send_signal(sig)
        psutil.wait_procs(members, timeout=5)


def run_page(page: Path, tmp_path: Path, sessions: list[int]) -> PageRun:
    """Run the page's marked blocks; fail with every step's output if one fails or prints other
    than the page says. The script's session goes to ``sessions``, whose processes are killed
    after the test (:func:`page_session`), passed or failed."""
    sandbox, logs = tmp_path / "sandbox", tmp_path / "logs"
    sandbox.mkdir()
    logs.mkdir()
    port = free_port()
    script, steps, outputs = page_script(page, port, logs)
    (logs / "script.sh").write_text(script)
    shell = subprocess.Popen(
        ["bash", str(logs / "script.sh")],
        cwd=sandbox,
        env=new_user_environment(sandbox),
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    guard(shell.pid)  # its processes die with this one, however it dies
    sessions.append(shell.pid)
    run = PageRun(sandbox, logs, steps, outputs, session=shell.pid)
    try:
        out, _ = shell.communicate(timeout=SCRIPT_TIMEOUT)
    except subprocess.TimeoutExpired:
        kill_session(run.session)
        pytest.fail(f"{page.name} did not finish in {SCRIPT_TIMEOUT} s\n{run.all_logs()}")
    assert shell.returncode == 0, f"{page.name} failed:\n{out}\n{run.all_logs()}"
    for step, expected in outputs.items():
        assert run.log(step) == expected, f"{steps[step]} printed other than the page says"
    for step, block in steps.items():
        if block.mark == "server" and (said := re.search(r"#\s*prints\s+(\S+)", block.body)):
            first_line = run.log(step).partition("\n")[0]
            assert first_line == said[1].replace(DOCS_PORT, str(port)), f"{block} printed {first_line!r}"
    return run


@pytest.fixture
def page_session() -> Iterator[list[int]]:
    """Sessions to kill after the test, passed or not."""
    sessions: list[int] = []
    yield sessions
    for session in sessions:
        kill_session(session)


# The tests -----------------------------------------------------------------------------------------


def test_getting_started_runs_as_written(tmp_path: Path, page_session: list[int]) -> None:
    """The first page a user reads: a fresh Airflow home, the emulator in the background, the DAG
    run by ``airflow dags test``, its results read back, the emulator stopped."""
    run = run_page(GETTING_STARTED, tmp_path, page_session)
    home = run.sandbox / "batch-try"

    with sqlite3.connect(home / "airflow.db") as db:
        query = "select task_id, state, end_date from task_instance where dag_id = 'classify_reviews'"
        states = {task: state for task, state, _ in db.execute(query)}
        ended = {task: end for task, _, end in db.execute(query)}
        (manifest,) = db.execute(
            "select value from xcom where task_id = 'classify' and key = 'return_value'"
        ).fetchone()
    assert states == {"build_requests": "success", "classify": "success"}
    manifest = json.loads(manifest)
    (results,) = (home / "results").glob("*.jsonl")
    assert Path(manifest["results_uri"].removeprefix("file://")) == results
    assert manifest["request_counts"] == {"total": 2, "completed": 2, "failed": 0}
    # The short poll_interval: the task ends seconds after the batch does, not 30 s later.
    lag = datetime.fromisoformat(ended["classify"]).replace(tzinfo=UTC).timestamp() - manifest["completed_at"]
    assert lag < 10, f"the task ended {lag:.0f} s after its batch completed"
    assert "too short" not in run.all_logs(), "the connection's key trips Airflow's masking warning"
    # The page's own stop command stopped the emulator: nothing the reader started is left.
    deadline = time.monotonic() + 15
    while (left := session_members(run.session)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, f"still running after the page's last step: {[p.cmdline() for p in left]}"


@pytest.mark.parametrize(
    "page", [page for page in marked_pages() if page != GETTING_STARTED], ids=lambda page: page.name
)
def test_page_runs_as_written(page: Path, tmp_path: Path, page_session: list[int]) -> None:
    """The other pages' runnable blocks: the README's and the emulator's quick starts, imports."""
    run_page(page, tmp_path, page_session)


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_python_blocks_compile(page: Path) -> None:
    """Fragments that need context to run (a DAG around them, a key) must at least be Python."""
    for block in blocks(page):
        if block.lang == "python":
            compile(block.body, str(block), "exec")


def test_make_targets_exist() -> None:
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][\w-]*):", makefile, re.MULTILINE))
    named = {}
    for page in PAGES:
        text = page.read_text()
        code = [block.body for block in blocks(page)] + CODE_SPAN.findall(FENCED.sub("", text))
        for snippet in code:
            for target in MAKE.findall(snippet):
                named.setdefault(target, page.name)
    assert {"test", "demo", "try"} <= set(named), "the check lost sight of the pages' make commands"
    missing = {target: page for target, page in named.items() if target not in targets}
    assert not missing, f"make targets named in the docs but not in the Makefile: {missing}"


def test_connection_examples_are_valid() -> None:
    """Every ``AIRFLOW_CONN_*`` the pages export is JSON that Airflow reads as one of our
    connections, with a key long enough to be masked in logs."""
    found = 0
    for page in PAGES:
        for name, value in CONN_EXPORT.findall(page.read_text()):
            connection = Connection.from_json(value, conn_id=name.lower())
            assert connection.conn_type in ("openai_batch", "openai"), f"{page.name}: {name}"
            # The key is the password, or the official provider's openai_client_kwargs.api_key.
            key = connection.password or connection.extra_dejson["openai_client_kwargs"]["api_key"]
            assert len(key) >= MIN_SECRET_LENGTH, f"{page.name}: {name}'s key {key!r} is too short to mask"
            found += 1
    assert found >= 5


# make try ----------------------------------------------------------------------------------------


def try_command(tmp_path: Path, dags: str, command: str) -> list[str]:
    """The command ``make try DAGS=... CMD=...`` runs, as the Makefile says (``make -n``), with the
    sandbox in ``tmp_path`` rather than the checkout's ``.try/``."""
    dry_run = subprocess.run(
        ["make", "-n", "try", f"DAGS={dags}", f"CMD={command}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    (line,) = [line for line in dry_run.splitlines() if "scripts/try_dags.py" in line]
    words = shlex.split(line)
    script = next(i for i, word in enumerate(words) if word.endswith("scripts/try_dags.py"))
    # This tier's interpreter rather than the Makefile's .venv, so every tier tests its versions.
    return [sys.executable, *words[1 : script + 1], "--home", str(tmp_path / "try"), *words[script + 1 :]]


def start_try(tmp_path: Path, dags: str, command: str) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        try_command(tmp_path, dags, command),
        cwd=ROOT,
        env=new_user_environment(tmp_path),
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    guard(process.pid)
    return process


def test_make_try_runs_the_documented_example(tmp_path: Path, page_session: list[int]) -> None:
    """The page's ``make try DAGS=example_dags CMD="airflow dags test ..."`` runs the example DAG
    on the emulator and stops the emulator at the end."""
    example = re.search(r'make try DAGS=(\S+) CMD="([^"]+)"', GETTING_STARTED.read_text())
    assert example, "the getting-started page lost its make try example"
    process = start_try(tmp_path, example[1], example[2])
    page_session.append(process.pid)
    out, _ = process.communicate(timeout=SCRIPT_TIMEOUT)
    assert process.returncode == 0, out
    assert "doc-pasta is closest to doc-sauce" in out  # the example's last task printed its answer
    assert out.rstrip().endswith("Stopped the emulator.")
    assert not session_members(process.pid)


@pytest.mark.parametrize("interrupt", ["ctrl-c", "sigterm"])
def test_make_try_stops_the_emulator_when_interrupted(
    interrupt: str, tmp_path: Path, page_session: list[int]
) -> None:
    """Ctrl-C (SIGINT to the whole foreground group) while the sandbox runs a command, or a SIGTERM
    to the script while it migrates: the emulator and every other child are stopped."""
    process = start_try(tmp_path, "example_dags", "sleep 600")
    page_session.append(process.pid)
    assert process.stdout is not None
    awaited = "Sandbox ready" if interrupt == "ctrl-c" else "Emulator at"
    seen = ""
    while awaited not in seen:
        line = process.stdout.readline()
        assert line, f"the script ended before {awaited!r}:\n{seen}"
        seen += line
    emulator = psutil.Process(int(re.search(r"\(pid (\d+)", seen)[1]))
    if interrupt == "ctrl-c":
        time.sleep(0.5)  # sleep 600 has started
        os.killpg(process.pid, signal.SIGINT)
    else:
        process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=30)
    assert "Stopped the emulator." in out
    assert not emulator.is_running() or emulator.status() == psutil.STATUS_ZOMBIE
    assert not session_members(process.pid), "something the sandbox started is still running"
