"""Job run: a 1,000,000-line input split, submitted as 20 batches, waited for and merged by the real operator.

``OpenAIBatchOperator(...).execute(context)`` (``deferrable=False``, ``output_path`` set) runs in a fresh
child process against an emulator process on a free port, with the task context of the unit tests
(``tests.batch_testing.make_context``) and its connection in an ``AIRFLOW_CONN_*`` variable. Two scenarios:

* **split**: ``--lines`` short chat requests (the lines of ``shard_split.py``, about 190 bytes each) at the
  default caps: 20 shards of 50,000 for a million lines, one round, merged into one result file;
* **rounds**: ``--round-lines`` requests in shards of half that (the default caps for 100,000 lines); every
  batch expires after 80 % of its lines (``metadata={"emulator_expire_after_lines": ...}``, which applies to
  every batch of the job) and 1 % of the lines carry the per-line directive
  ``"emulator": {"status_code": 500, "times": 1}`` (fail the first run only). Round 2 resubmits the expired
  lines and the 500s; round 3 the directive lines that first ran in round 2. Every line must run once,
  and each directive line twice (its 500, then its success): no success is paid for twice.

Polling is fast, ``poll_interval=0.5`` growing to ``max_poll_interval=2`` (the operator's defaults are 30 s
growing to 300 s), so the wait measures the emulator's work, not sleeping.

Figures, from the child (the operator's process, not the emulator's): wall and CPU seconds and peak RSS
growth per phase (fingerprint, validate + split, upload + create, wait, close a round, land the merged
file) and for the whole ``execute``, with the time of each upload, create, download of a round's files
(``fetch_round``) and classify-and-merge (``close_round``) inside them. RSS is sampled every 5 ms by a
thread (``_measure.PeakRss``) and read from the kernel's high-water mark (``VmHWM``, reset per phase),
growth counted from the child's size after its imports. The phases are timed by wrapping the operator's
own steps (``mock.patch.object`` around the real functions, which still run). From the emulator: its
requests during each phase, and for each round's wait the status calls (``GET /v1/batches`` listing pages
and ``GET /v1/batches/{id}``) against what one call per batch per look would have cost for the same looks.
The merged file is checked row by row, and the emulator's count of runs per ``custom_id`` line by line.
Goal: the operator's RSS growth stays under 200 MB for a million lines.

    .venv/bin/python benchmarks/job_run.py [--lines 1000000] [--round-lines 100000] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import msgspec
from _measure import MB, PeakRss, measure_call, print_figures, run_child_figures

from airflow_provider_batch.emulator.process import EmulatorProcess

ROOT = Path(__file__).resolve().parent.parent
ENDPOINT = "/v1/chat/completions"
CONN_ID = "bench_job"
API_KEY = "sk-bench-job"
POLL_INTERVAL, MAX_POLL_INTERVAL = 0.5, 2.0
DEFAULT_SHARD = 50_000  # OpenAI's requests per batch: the operator's default cap
EXPIRE_SHARE = 0.8  # the rounds scenario: each batch expires after this share of a shard's lines
FAIL_EVERY = 100  # the rounds scenario: one line in this many fails its first run with a 500
LIST, RETRIEVE = "GET /v1/batches", "GET /v1/batches/{id}"
GOAL_MB = 200


def write_input(path: Path, lines: int, fail_every: int = 0) -> int:
    """Short chat requests ``request-0000000``...; every ``fail_every``-th line (from line 8) fails its
    first run with a 500. Returns the file's size."""
    encoder = msgspec.json.Encoder()
    with path.open("wb", buffering=1 << 20) as out:
        for index in range(lines):
            body: dict[str, Any] = {
                "model": "gpt-4o-mini",
                "messages": [{"role": "user", "content": f"Say hello to number {index}."}],
                "max_tokens": 16,
            }
            if fail_every and index % fail_every == 7:
                body["emulator"] = {"status_code": 500, "times": 1}
            request = {"custom_id": f"request-{index:07d}", "method": "POST", "url": ENDPOINT, "body": body}
            out.write(encoder.encode(request) + b"\n")
    return path.stat().st_size


# The child: the operator, instrumented ----------------------------------------------------------------------


class KernelPeak:
    """This process's peak RSS as the kernel keeps it (``VmHWM``), which also sees a peak between two
    samples of ``PeakRss`` (a thread that may wait for the GIL while a long C call allocates).

    ``VmHWM`` belongs to the process image, so unlike ``getrusage``'s ``ru_maxrss`` (which Linux carries
    over from the parent through fork and exec) it starts at this process's own size; writing ``5`` to
    ``/proc/self/clear_refs`` resets it to the current RSS, so each phase gets its own peak. Linux only:
    elsewhere every reading is None.
    """

    def __init__(self) -> None:
        self.highest = 0  # across every reading, resets or not

    def reset(self, *, count_before: bool = True) -> None:
        """Start a new peak from the current RSS; ``count_before``: keep the peak until now in ``highest``."""
        if count_before:
            self.read()
        with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")

    def read(self) -> int | None:
        try:
            status = Path("/proc/self/status").read_text()
        except OSError:
            return None
        match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
        if match is None:
            return None
        peak = int(match.group(1)) * 1024
        self.highest = max(self.highest, peak)
        return peak


def emulator_requests(root_url: str) -> Counter[str]:
    """The emulator's request counts by route (its admin routes are not counted there)."""
    headers = {"Authorization": f"Bearer {API_KEY}"}
    request = urllib.request.Request(f"{root_url}/_emulator/stats", headers=headers)
    with urllib.request.urlopen(request, timeout=30) as response:
        return Counter(json.load(response)["requests"])


class Recorder:
    """Times each phase of ``execute`` (wall and CPU), takes this process's peak RSS during it (sampled, and
    the kernel's), and diffs the emulator's request counts around it; counts the looks of each wait (calls
    of ``poll_batches``/``poll_batch``) and times each upload and create."""

    def __init__(self, root_url: str) -> None:
        self.root_url = root_url
        self.baseline = PeakRss().baseline
        self.kernel = KernelPeak()
        self.phases: list[dict[str, Any]] = []
        self.looks: list[int] = []  # batches asked about, per look of the current wait
        self.calls: dict[str, list[tuple[float, float]]] = {}  # (wall, CPU) seconds of each call, by name
        self._in_poll_batches = False

    @contextlib.contextmanager
    def phase(self, name: str, round_number: int | None) -> Iterator[dict[str, Any]]:
        before = emulator_requests(self.root_url)
        record: dict[str, Any] = {"phase": name, "round": round_number}
        self.kernel.reset()
        with PeakRss() as rss:
            started, cpu = time.perf_counter(), time.process_time()
            try:
                yield record
            finally:
                record["seconds"] = time.perf_counter() - started
                record["cpu_seconds"] = time.process_time() - cpu
        record["rss"] = rss.peak - self.baseline
        kernel_peak = self.kernel.read()
        record["kernel_rss"] = None if kernel_peak is None else kernel_peak - self.baseline
        record["requests"] = dict(emulator_requests(self.root_url) - before)
        self.phases.append(record)

    def timing(self, function: Callable[..., Any], name: str) -> Any:
        calls = self.calls.setdefault(name, [])

        def timed(*args: Any, **kwargs: Any) -> Any:
            started, cpu = time.perf_counter(), time.process_time()
            try:
                return function(*args, **kwargs)
            finally:
                calls.append((time.perf_counter() - started, time.process_time() - cpu))

        return timed

    def wrap(self, function: Callable[..., Any], name: str, round_of: Callable[..., int | None]) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            with self.phase(name, round_of(*args, **kwargs)) as record:
                if name == "wait":
                    self.looks = []
                try:
                    return function(*args, **kwargs)
                finally:
                    if name == "wait":
                        record["looks"] = len(self.looks)
                        record["batches_looked_at"] = sum(self.looks)

        return timed

    def counting_looks(self, poll_batches: Callable[..., Any], poll_batch: Callable[..., Any]) -> Any:
        def many(hook: Any, batch_ids: Any, **kwargs: Any) -> Any:
            self.looks.append(len(batch_ids))
            self._in_poll_batches = True
            try:
                return poll_batches(hook, batch_ids, **kwargs)
            finally:
                self._in_poll_batches = False

        def one(hook: Any, batch_id: str) -> Any:
            if not self._in_poll_batches:  # a single batch's look (a batch the listing missed is no look)
                self.looks.append(1)
            return poll_batch(hook, batch_id)

        return many, one


def child(job: dict[str, Any]) -> None:
    """Run the operator once in this fresh process and print its figures as JSON."""
    sys.path.insert(0, str(ROOT))  # tests.batch_testing: the task context of the unit tests
    from airflow_provider_batch import landing
    from airflow_provider_batch.hooks.batch import OpenAIBatchHook
    from airflow_provider_batch.operators import batch as operator_module
    from airflow_provider_batch.operators.batch import OpenAIBatchOperator
    from tests.batch_testing import make_context

    recorder = Recorder(job["root_url"])
    first_round: Callable[..., int | None] = lambda *args, **kwargs: None  # noqa: E731
    current_round: Callable[..., int | None] = lambda self, state, *args: state.current.number  # noqa: E731
    many, one = recorder.counting_looks(OpenAIBatchHook.poll_batches, OpenAIBatchHook.poll_batch)
    wrapped = [
        (operator_module, "input_fingerprint", "fingerprint", first_round),
        (operator_module, "split_batch_file", "split", first_round),
        (operator_module, "land_job_results", "land", first_round),
        (OpenAIBatchOperator, "_submit_round", "submit", lambda self, context, state, number, plan: number),
        (OpenAIBatchOperator, "_wait", "wait", current_round),
        (OpenAIBatchOperator, "_close_round", "close", current_round),
    ]
    operator = OpenAIBatchOperator(
        task_id="job_run",
        endpoint=ENDPOINT,
        conn_id=CONN_ID,
        input_path=job["input"],
        output_path=job["output"],
        deferrable=False,
        poll_interval=POLL_INTERVAL,
        max_poll_interval=MAX_POLL_INTERVAL,
        max_requests_per_batch=job["shard_requests"],
        metadata=job["metadata"],
    )
    context = make_context("job_run")
    timed_calls = [  # inside the phases: what an upload waits for, and what closing or landing a round does
        (OpenAIBatchHook, "upload_file", "hook.upload_file"),
        (OpenAIBatchHook, "create_batch", "hook.create_batch"),
        *((module, "fetch_round", "fetch_round (download)") for module in (operator_module, landing)),
        *((module, "close_round", "close_round (classify, merge)") for module in (operator_module, landing)),
    ]
    with contextlib.ExitStack() as stack:
        for owner, name, phase, round_of in wrapped:
            stack.enter_context(
                mock.patch.object(owner, name, recorder.wrap(getattr(owner, name), phase, round_of))
            )
        stack.enter_context(mock.patch.object(OpenAIBatchHook, "poll_batches", many))
        stack.enter_context(mock.patch.object(OpenAIBatchHook, "poll_batch", one))
        for owner, name, label in timed_calls:
            stack.enter_context(mock.patch.object(owner, name, recorder.timing(getattr(owner, name), label)))
        recorder.kernel.reset(count_before=False)  # the imports' peak is not the operator's
        cpu = time.process_time()
        figures = measure_call(lambda: {"manifest": operator.execute(context)})
        figures["cpu_seconds"] = time.process_time() - cpu
    closed = 0
    for record in recorder.phases:  # a round's input is split after the previous round is closed
        closed += record["phase"] == "close"
        if record["phase"] in ("fingerprint", "split"):
            record["round"] = closed + 1
    figures["phases"] = recorder.phases
    figures["baseline"] = recorder.baseline
    recorder.kernel.read()
    figures["kernel_rss"] = recorder.kernel.highest - recorder.baseline if recorder.kernel.highest else None
    figures["calls"] = recorder.calls
    print_figures(figures)


# The parent: emulator, input, checks, tables ----------------------------------------------------------------


class _Row(msgspec.Struct):
    custom_id: str | None
    line: int
    ok: bool
    round: int


def check_output(path: Path, lines: int) -> Counter[int]:
    """The merged file has one successful row per input line, in input order; returns rows by round."""
    decoder = msgspec.json.Decoder(_Row)
    by_round: Counter[int] = Counter()
    count = 0
    with path.open("rb") as rows:
        for count, raw in enumerate(rows, start=1):
            row = decoder.decode(raw)
            if row.custom_id != f"request-{count - 1:07d}" or row.line != count or not row.ok:
                raise SystemExit(f"row {count} of the merged file is wrong: {raw[:200]!r}")
            by_round[row.round] += 1
    if count != lines:
        raise SystemExit(f"the merged file has {count:,} rows for {lines:,} input lines")
    return by_round


def check_processed(server: EmulatorProcess, lines: int, fail_every: int) -> int:
    """Every line ran once, a directive line twice (its 500, then its success); returns lines run."""
    counted = server.lines()
    runs = counted["custom_ids"]
    expected = {
        f"request-{index:07d}": 2 if fail_every and index % fail_every == 7 else 1 for index in range(lines)
    }
    if runs != expected:
        wrong = [
            (custom_id, runs.get(custom_id))
            for custom_id, times in expected.items()
            if runs.get(custom_id) != times
        ]
        raise SystemExit(f"lines run a wrong number of times (custom_id, runs): {wrong[:5]}")
    return int(counted["processed"])


def run_scenario(
    work: Path, name: str, lines: int, shard_requests: int | None, fail_every: int, expire_after: int | None
) -> dict[str, Any]:
    source = work / f"{name}-input.jsonl"
    size = write_input(source, lines, fail_every)
    output = work / f"{name}-merged.jsonl"
    metadata = {"emulator_expire_after_lines": str(expire_after)} if expire_after else None
    with EmulatorProcess(work / f"{name}-emulator", api_key=API_KEY) as server:
        connection = {"conn_type": "openai_batch", "host": server.base_url, "password": API_KEY}
        env = {**os.environ, f"AIRFLOW_CONN_{CONN_ID.upper()}": json.dumps(connection)}
        job = {
            "input": str(source),
            "output": str(output),
            "root_url": server.root_url,
            "shard_requests": shard_requests,
            "metadata": metadata,
        }
        with PeakRss(server.process.pid, every=0.02) as emulator_rss:
            try:
                figures = run_child_figures(__file__, "--child", "--job", json.dumps(job), env=env)
            except subprocess.CalledProcessError as exc:  # the operator's own error, not a bare exit status
                raise SystemExit(f"the {name} run failed:\n{exc.stderr[-5_000:]}") from None
        figures["processed"] = check_processed(server, lines, fail_every)
        client = server.client()
        figures["results_size"] = sum(
            client.files.retrieve(file_id).bytes
            for job_round in figures["manifest"]["rounds"]
            for batch in job_round["batches"]
            for file_id in (batch["output_file_id"], batch["error_file_id"])
            if file_id
        )
    figures["rows_by_round"] = check_output(output, lines)
    figures.update(name=name, lines=lines, size=size, fail_every=fail_every, emulator_rss=emulator_rss.growth)
    figures["merged_size"] = output.stat().st_size
    output.unlink()
    return figures


PHASES = {
    "fingerprint": "fingerprint input (hash)",
    "split": "validate + split",
    "submit": "upload + create",
    "wait": "wait",
    "close": "close round (fetch, classify)",
    "land": "land merged file",
}


def print_scenario(figures: dict[str, Any], about: str = "") -> None:
    manifest = figures["manifest"]
    rounds = manifest["rounds"]
    print(
        f"\n== {figures['name']}: {figures['lines']:,} lines ({figures['size'] / MB:.0f} MB),"
        f" {manifest['shards']} shards of at most {rounds[0]['batches'][0]['requests']:,},"
        f" {len(rounds)} round(s); result files {figures['results_size'] / MB:.0f} MB, merged file"
        f" {figures['merged_size'] / MB:.0f} MB"
    )
    if about:
        print(about)
    header = (
        f"{'phase':<31}{'round':>6}{'wall s':>8}{'CPU s':>7}{'RSS growth MB':>15}{'kernel peak MB':>16}"
        "  emulator requests"
    )
    print(header)
    print("-" * len(header))
    for record in figures["phases"]:
        calls = ", ".join(f"{route} x{count}" for route, count in sorted(record["requests"].items()))
        round_number = "" if record["round"] is None else record["round"]
        print(
            f"{PHASES[record['phase']]:<31}{round_number!s:>6}{record['seconds']:>8.2f}"
            f"{record['cpu_seconds']:>7.2f}{record['rss'] / MB:>15.1f}"
            f"{megabytes(record['kernel_rss']):>16}  {calls}"
        )
    accounted = sum(record["seconds"] for record in figures["phases"])
    print(f"{'other (checks, manifest...)':<31}{'':>6}{figures['seconds'] - accounted:>8.2f}")
    print(
        f"{'execute, total':<31}{'':>6}{figures['seconds']:>8.2f}{figures['cpu_seconds']:>7.2f}"
        f"{figures['rss'] / MB:>15.1f}{megabytes(figures['kernel_rss']):>16}"
    )
    print(
        "RSS growth: sampled every 5 ms; kernel peak: VmHWM, reset at each phase's start (it also sees a peak"
        f" between samples); both from the child's {figures['baseline'] / MB:.0f} MB after imports."
        f" Emulator RSS growth: {figures['emulator_rss'] / MB:.0f} MB."
    )
    for name, calls in figures["calls"].items():
        walls, cpu = [wall for wall, _ in calls], sum(cpu for _, cpu in calls)
        print(
            f"{name}: {len(calls)} call(s), {sum(walls):.2f} s in all ({cpu:.2f} s CPU);"
            f" first {walls[0]:.2f} s, median {statistics.median(walls):.2f} s, longest {max(walls):.2f} s"
        )

    print("\nStatus calls while waiting, per round, against one GET per batch per look:")
    header = (
        f"{'round':>5}{'batches':>9}{'looks':>7}{'list pages':>12}{'GETs by id':>12}{'calls':>7}"
        f"{'looks x batches':>17}{'x less':>8}{'1 GET per unfinished':>22}"
    )
    print(header)
    print("-" * len(header))
    for record in (r for r in figures["phases"] if r["phase"] == "wait"):
        batches = len(rounds[record["round"] - 1]["batches"])
        listing, single = record["requests"].get(LIST, 0), record["requests"].get(RETRIEVE, 0)
        calls = listing + single
        naive = record["looks"] * batches
        print(
            f"{record['round']:>5}{batches:>9}{record['looks']:>7}{listing:>12}{single:>12}{calls:>7}"
            f"{naive:>17}{naive / max(calls, 1):>8.1f}{record['batches_looked_at']:>22}"
        )

    print("\nLines per round (from the manifest; ran: submitted, less those a batch expired before running):")
    total_ran = 0
    for job_round in rounds:
        statuses = Counter(batch["status"] for batch in job_round["batches"])
        outcome = job_round["outcome"]
        reasons = (outcome or {}).get("retry_reasons", {})
        unrun = reasons.get("batch_expired", 0) + reasons.get("missing", 0)
        ran = job_round["requests"] - unrun
        total_ran += ran
        verdicts = (
            f"; succeeded {outcome['succeeded']:,}, resubmitted {outcome['retry']:,}"
            f" {outcome['retry_reasons']}, failed for good {outcome['final']:,}"
            if outcome
            else ""
        )
        print(
            f"  round {job_round['round']}: {job_round['requests']:,} requests in {len(job_round['batches'])}"
            f" batch(es) {dict(statuses)}, {ran:,} ran{verdicts}"
        )
    by_round = ", ".join(
        f"round {number}: {rows:,}" for number, rows in sorted(figures["rows_by_round"].items())
    )
    print(
        f"Checked: the merged file has {figures['lines']:,} successful rows in input order ({by_round});"
        f" the emulator ran {figures['processed']:,} lines ({total_ran:,} by the manifest), each exactly as"
        f" often as expected ({'once, a directive line twice' if figures['fail_every'] else 'once each'})."
    )


def megabytes(size: int | None) -> str:
    return "n/a" if size is None else f"{size / MB:.1f}"


def growth(figures: dict[str, Any]) -> int:
    """The child's peak RSS growth: the larger of the sampled peak and the kernel's."""
    return max(figures["rss"], figures["kernel_rss"] or 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000, help="lines of the split scenario")
    parser.add_argument("--round-lines", type=int, default=100_000, help="lines of the rounds scenario")
    parser.add_argument("--quick", action="store_true", help="20,000 and 4,000 lines, shards of 1/20 and 1/2")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--job", type=json.loads, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.job)
        return

    if args.quick:
        args.lines, args.round_lines = 20_000, 4_000
    if not 2 <= args.round_lines <= 2 * DEFAULT_SHARD:
        parser.error(f"--round-lines must be between 2 and {2 * DEFAULT_SHARD:,}: the scenario runs 2 shards")
    # The default caps (None) where they cut what the scenario needs: 20 shards, and 2; else smaller caps.
    split_shard = None if args.lines >= 20 * DEFAULT_SHARD else -(-args.lines // 20)
    round_shard = None if args.round_lines == 2 * DEFAULT_SHARD else -(-args.round_lines // 2)
    expire_after = int(EXPIRE_SHARE * (round_shard or DEFAULT_SHARD))
    print(
        "Job run: OpenAIBatchOperator.execute(), deferrable=False, in a fresh child process, against an"
        f" emulator process (echo engine); poll_interval={POLL_INTERVAL:g} s growing to"
        f" {MAX_POLL_INTERVAL:g} s (defaults: 30 s to 300 s), so the wait is the emulator's work, not"
        " sleeping. One run each; MB = 10^6 bytes; RSS growth counted from the child's size after imports."
    )
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        split = run_scenario(work, "split", args.lines, split_shard, 0, None)
        print_scenario(split)
        rounds = run_scenario(work, "rounds", args.round_lines, round_shard, FAIL_EVERY, expire_after)
        print_scenario(
            rounds,
            f"every batch expires after {expire_after:,} lines (emulator_expire_after_lines); one line in"
            f" {FAIL_EVERY} fails its first run with a 500 (directive times=1)",
        )
    print(
        f"\ngoal: the operator's RSS growth < {GOAL_MB} MB for {args.lines:,} lines;"
        f" got {growth(split) / MB:.1f} MB ({args.lines / split['seconds']:,.0f} lines/s end to end)"
    )


if __name__ == "__main__":
    main()
