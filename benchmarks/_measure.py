"""Measuring helpers shared by the benchmark scripts (a helper module: ``make bench`` does not run it).

The scripts run as ``python benchmarks/<name>.py``, so this folder is on ``sys.path`` and they import these
with ``from _measure import ...``. One definition each keeps the side-by-side figures comparable: every
script samples memory the same way, and both naive joins do the same work.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import msgspec
import psutil

from airflow_provider_batch.emulator.guardian import guard

MB = 1_000_000  # the tables' MB: 10^6 bytes


class PeakRss:
    """Peak resident set size of a process (``pid``, default this one) while the ``with`` block runs.

    RSS is sampled by a background thread every ``every`` seconds, because the peak is transient: the code
    measured runs to completion without pausing, and its memory is mostly given back by the time it returns,
    so a reading before and after would miss it; another process's (the emulator's) peak happens while this
    one is busy driving it. A last sample on exit catches a peak at the very end that is shorter than one
    interval. ``growth`` is the peak minus the size when the object was made.
    """

    def __init__(self, pid: int | None = None, every: float = 0.005) -> None:
        self._process = psutil.Process(pid)
        self._every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.baseline = self.peak = self._process.memory_info().rss

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self._every)

    def _sample(self) -> None:
        self.peak = max(self.peak, self._process.memory_info().rss)

    @property
    def growth(self) -> int:
        return self.peak - self.baseline

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def measure_call(run: Callable[[], dict[str, Any] | None]) -> dict[str, Any]:
    """Call ``run`` once; return its figures plus ``seconds`` and ``rss`` (this process's RSS growth).

    Every side of the side-by-side scripts is timed and sampled by this one function, so the sides'
    figures cover the same span: the call itself, without imports or setup.
    """
    with PeakRss() as rss:
        started = time.perf_counter()
        figures = run() or {}
        figures["seconds"] = time.perf_counter() - started
    figures["rss"] = rss.growth
    return figures


def print_figures(figures: Mapping[str, Any]) -> None:
    """Print a child's figures as one JSON line, flushed: the last stdout line is what the parent reads."""
    print(json.dumps(figures), flush=True)


def run_child_figures(script: str, *arguments: str, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Run ``script`` in a fresh Python process and return the figures it printed last (``print_figures``).

    A fresh process per run keeps one run's heap from inflating or hiding the next one's memory. A failing
    child raises ``CalledProcessError`` (its stderr on the exception) rather than leave a hole in the table.
    The child is guarded: it stops with this process, however that ends (see ``guardian.py``).
    """
    command = [sys.executable, script, *arguments]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    guard(child.pid)
    stdout, stderr = child.communicate()
    if child.returncode != 0:
        raise subprocess.CalledProcessError(child.returncode, command, stdout, stderr)
    figures: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    return figures


# The naive join: what most batch scripts do, the baseline of results_join.py and results_download.py ------


def naive_results_by_id(files: Iterable[list[str]]) -> dict[str, dict[str, Any]]:
    """``json.loads`` every non-blank result line into a dict by custom_id; ``files``: each file's lines.

    Pass a generator of ``text.splitlines()``: with it and ``chain``, each file's text is freed once split
    and its lines once read, before the next file is read, as in the loop a batch script would write
    (``for line in path.read_text().splitlines()``), so the memory measured is that loop's.
    """
    results: dict[str, dict[str, Any]] = {}
    for line in itertools.chain.from_iterable(files):
        if line.strip():
            record = json.loads(line)
            results[record["custom_id"]] = record
    return results


def naive_ok(record: dict[str, Any]) -> bool:
    """Whether a result line is a success: no batch error and a 2xx response."""
    response = record.get("response") or {}
    return record.get("error") is None and 200 <= (response.get("status_code") or 0) < 300


def naive_row(custom_id: str, line: int, record: dict[str, Any] | None) -> dict[str, Any]:
    """The joined row for the input request at ``line``, from its result line (None when there is none).

    The same columns as ``results.write_joined`` writes, so the naive joins do comparable work.
    """
    response = (record or {}).get("response") or {}
    error = (record or {}).get("error") or {}
    return {
        "custom_id": custom_id,
        "line": line,
        "ok": record is not None and naive_ok(record),
        "status_code": response.get("status_code"),
        "body": response.get("body"),
        "error_code": error.get("code") if record is not None else "missing",
        "error_message": error.get("message"),
    }


def joined_order(path: Path) -> str:
    """Digest of the custom_id sequence of a joined file, to check that two joins agree on row order."""

    class Row(msgspec.Struct):
        custom_id: str | None

    digest = hashlib.sha256()
    decoder = msgspec.json.Decoder(Row)
    with path.open("rb") as rows:
        for line in rows:
            digest.update(str(decoder.decode(line).custom_id).encode() + b"\n")
    return digest.hexdigest()
