"""Run the emulator in a child process: what tests, the demo and the benchmarks share.

The child is the real command line (``python -m airflow_provider_batch.emulator``) on a free
port, so everything talks HTTP over real sockets, exactly as a user's client would. It is guarded
(``guardian.py``): it stops when the process that started it dies, even by SIGKILL.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

from airflow_provider_batch.emulator.guardian import guard


class EmulatorProcess:
    """A running emulator: its base URL, its data directory and a few admin helpers."""

    def __init__(self, data_dir: Path | None = None, *args: str, api_key: str | None = None) -> None:
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="openai-batch-emulator-"))
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.args = list(args)
        self.api_key = api_key
        command = [sys.executable, "-m", "airflow_provider_batch.emulator", "--port", "0"]
        command += ["--data-dir", str(self.data_dir), *self.args]
        if api_key:
            command += ["--api-key", api_key]
        self._log = (self.data_dir / "emulator.log").open("ab")
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=self._log, env=os.environ.copy()
        )
        guard(self.process.pid)  # stopped even if this process is killed (see guardian.py)
        assert self.process.stdout is not None
        first_line = self.process.stdout.readline().decode().strip()
        if not first_line.startswith("http"):
            self.stop()
            raise RuntimeError(f"the emulator did not start; see {self.data_dir / 'emulator.log'}")
        # The first line ends in /v1 exactly in the openai dialect; under --dialect azure it is
        # the azure_endpoint, http://127.0.0.1:PORT.
        self.dialect = "openai" if first_line.endswith("/v1") else "azure"
        self.root_url = first_line.removesuffix("/v1")
        """``http://127.0.0.1:PORT``: the admin routes' root, and Azure's ``azure_endpoint``."""
        self.base_url = first_line if self.dialect == "openai" else f"{self.root_url}/openai/v1"
        """What a plain OpenAI client takes as ``base_url``: ``http://127.0.0.1:PORT/v1``, or
        Azure's v1 routes ``http://127.0.0.1:PORT/openai/v1``."""

    # lifecycle ------------------------------------------------------------------------------

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Stop the server (SIGTERM: graceful; SIGKILL: a crash) and return its exit code."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode

    def restart(self, sig: int = signal.SIGTERM) -> EmulatorProcess:
        """Stop this server and start a new one on the same data directory (and flags)."""
        self.stop(sig)
        return EmulatorProcess(self.data_dir, *self.args, api_key=self.api_key)

    def __enter__(self) -> EmulatorProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # clients ----------------------------------------------------------------------------------

    def client_options(self) -> dict[str, Any]:
        """How a client of this dialect reaches the server: ``base_url`` for ``OpenAI``, or
        ``azure_endpoint`` and ``api_version`` for ``AzureOpenAI`` (its classic routes)."""
        from airflow_provider_batch.emulator.azure import DEFAULT_API_VERSION

        if self.dialect == "azure":
            return {"azure_endpoint": self.root_url, "api_version": DEFAULT_API_VERSION}
        return {"base_url": self.base_url}

    def client(self, **options: Any) -> Any:
        """An ``OpenAI`` client, or an ``AzureOpenAI`` one under the azure dialect."""
        import openai

        cls = openai.AzureOpenAI if self.dialect == "azure" else openai.OpenAI
        return cls(**self.client_options(), api_key=self.api_key or "emulator", **options)

    def async_client(self, **options: Any) -> Any:
        import openai

        cls = openai.AsyncAzureOpenAI if self.dialect == "azure" else openai.AsyncOpenAI
        return cls(**self.client_options(), api_key=self.api_key or "emulator", **options)

    # admin ------------------------------------------------------------------------------------

    def admin(self, method: str, path: str, payload: Any = None) -> Any:
        """Call an admin route under ``/_emulator`` and return its JSON."""
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(f"{self.root_url}/_emulator/{path}", data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if self.api_key:
            request.add_header("Authorization", f"Bearer {self.api_key}")
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.load(response)

    def configure(self, **changes: Any) -> dict[str, Any]:
        """Change settings at runtime (e.g. ``configure(faults={"rate": 0.3})``)."""
        return self.admin("PATCH", "settings", changes)

    def stats(self) -> dict[str, Any]:
        return self.admin("GET", "stats")

    def reset_stats(self) -> dict[str, Any]:
        """Reset the statistics and the line counts."""
        return self.admin("DELETE", "stats")

    def enqueued_tokens(self) -> dict[str, Any]:
        """The enqueued-token limit's view, per model: ``{"current": {model: tokens}, "peak":
        {model: tokens}, "refused": {model: batches}}`` (the ``enqueued_tokens`` of :meth:`stats`)."""
        return dict(self.stats()["enqueued_tokens"])

    def lines(self) -> dict[str, Any]:
        """Batch lines processed: ``{"processed": N, "custom_ids": {custom_id: times, ...}}``."""
        return self.admin("GET", "lines")
