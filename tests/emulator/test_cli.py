"""The command line: help, the base URL on the first stdout line, environment variables, flag
errors, a clean SIGTERM, and the ``openai-batch-emulator`` console script."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.emulator.helpers import chat_lines, create_batch, run_batch, sdk

MODULE = [sys.executable, "-m", "airflow_provider_batch.emulator"]
CONSOLE_SCRIPT = Path(sys.executable).parent / "openai-batch-emulator"


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MODULE, *args], capture_output=True, text=True, timeout=30, env={**os.environ, **(env or {})}
    )


def test_help() -> None:
    result = _run("--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: openai-batch-emulator")
    for flag in (
        "--port",
        "--data-dir",
        "--api-key",
        "--upstream",
        "--time-scale",
        "--fault-rate",
        "--shuffle-output",
        "--dialect",
        "--file-processing-delay",
        "--max-files-without-expiry",
        "--token-limit-fail-fast",
        "--enqueued-token-limit",
        "--enqueued-token-limits",
    ):
        assert flag in result.stdout
    assert "BATCH_EMULATOR_<FLAG>" in result.stdout


def test_console_script_is_installed() -> None:
    assert CONSOLE_SCRIPT.is_file(), CONSOLE_SCRIPT
    assert os.access(CONSOLE_SCRIPT, os.X_OK), CONSOLE_SCRIPT
    result = subprocess.run([str(CONSOLE_SCRIPT), "--help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: openai-batch-emulator")


def test_first_line_is_the_base_url_and_sigterm_exits_cleanly(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [*MODULE, "--port", "0", "--data-dir", str(tmp_path / "data")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline().strip()
        match = re.fullmatch(r"http://127\.0\.0\.1:(\d+)/v1", first)
        assert match, first
        assert int(match.group(1)) > 0  # --port 0 picked a real port
        response = httpx.get(f"{first}/batches", timeout=10)  # usable as soon as it is printed
        assert response.status_code == 200
        assert response.json()["object"] == "list"
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
        assert time.monotonic() - started < 3
        assert process.stdout.read() == ""  # nothing but the URL on stdout
        assert f"data dir: {tmp_path / 'data'}" in (process.stderr.read() if process.stderr else "")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_sigterm_right_after_start_exits_cleanly(tmp_path: Path) -> None:
    process = subprocess.Popen([*MODULE, "--port", "0", "--data-dir", str(tmp_path)], stdout=subprocess.PIPE)
    assert process.stdout is not None
    assert process.stdout.readline().startswith(b"http://")
    process.send_signal(signal.SIGTERM)  # before the server has finished starting up
    assert process.wait(timeout=10) == 0


def test_environment_variables_set_flags(make_emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCH_EMULATOR_TIME_SCALE", "20000")
    monkeypatch.setenv("BATCH_EMULATOR_SHUFFLE_OUTPUT", "false")
    monkeypatch.setenv("BATCH_EMULATOR_FAULT_KINDS", "429,drop")
    monkeypatch.setenv("BATCH_EMULATOR_LINE_DELAY", "5")
    server = make_emulator("--line-delay", "0")  # flags win over the environment
    settings = server.admin("GET", "settings")
    assert (settings["time_scale"], settings["shuffle_output"], settings["line_delay"]) == (
        20000.0,
        False,
        0.0,
    )
    assert settings["faults"]["kinds"] == ["429", "drop"]
    client = sdk(server)
    batch = create_batch(client, chat_lines(1))
    assert 4 <= batch.expires_at - batch.created_at <= 5  # 24 h / 20000 = 4.32 s
    assert run_batch(client, chat_lines(2)).status == "completed"


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--fault-kinds", "teapot"], {}, "faults.kinds must be a non-empty subset"),
        (["--fault-rate", "2"], {}, "faults.rate must be between 0 and 1"),
        (["--time-scale", "0"], {}, "--time-scale must be positive"),
        (["--line-delay", "-1"], {}, "must not be negative"),
        (["--fault-routes", "("], {}, "not a valid regular expression"),
        (["--port", "abc"], {}, "argument --port: invalid int value"),
        ([], {"BATCH_EMULATOR_PORT": "abc"}, "environment variable BATCH_EMULATOR_PORT: invalid value 'abc'"),
        ([], {"BATCH_EMULATOR_FAULT_RATE": "often"}, "BATCH_EMULATOR_FAULT_RATE"),
    ],
)
def test_bad_flags_are_usage_errors(args: list[str], env: dict[str, str], message: str) -> None:
    result = _run("--port", "0", *args, env=env)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""  # no URL: nothing was started


def test_a_port_in_use_is_said_plainly(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = _run("--port", str(port), "--data-dir", str(tmp_path / "data"))
    assert result.returncode == 1
    assert result.stderr == (
        f"openai-batch-emulator: port {port} on 127.0.0.1 is in use; stop what uses it, or choose another"
        " with --port (0 picks a free one).\n"
    )
    assert result.stdout == ""
    assert not (tmp_path / "data").exists(), "nothing was created"
