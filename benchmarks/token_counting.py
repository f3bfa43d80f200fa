"""Token counting in the validation pass: its cost on top of the validator, against a bare decode.

Writes the same chat-completions input as ``request_validation.py`` (50,000 lines of about 4 KB, about
200 MB; ``--non-ascii`` mixes accented, CJK and emoji words in), then prints the median over ``--repeat``
runs, interleaved, of:

- ``msgspec.json.decode``: every line decoded into Python objects, nothing checked (the baseline);
- ``validate_batch_file``: the validator alone;
- ``validate + count``: the validator's pass with a ``TokenTally`` handed to its ``_Checker``, which is how
  the shard splitter counts: each checked line goes to ``TokenTally.add_checked`` with the model and output
  caps the validator's own decode read;
- ``count alone``: ``TokenTally.add_line`` on every line, and ``decode for counting``, the part of it that
  only decodes the fields the estimate reads (the rest is the tokenizer);
- ``validate + sampled``: as ``validate + count`` with ``TokenTally(sample_every=N)``, which counts one
  line in N and extrapolates the others' input tokens from their size (a line left out costs no decode of
  its own); the error of its total against the exact count is printed too.

Goal (issue 13): validation and counting together keep at least half the speed of the bare decode.

    .venv/bin/python benchmarks/token_counting.py [--lines 50000] [--line-bytes 4000] [--repeat 3]
        [--non-ascii] [--sample-every 50]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from _measure import MB
from request_validation import ENDPOINT, bare_decode, write_input

from airflow_provider_batch.jsonl import JsonlLines
from airflow_provider_batch.requests import _Checker, validate_batch_file
from airflow_provider_batch.tokens import _LINE_DECODER, TokenTally


def validate(path: Path) -> None:
    if not validate_batch_file(path, endpoint=ENDPOINT).valid:
        raise SystemExit("the generated file should be valid")


def validate_and_count(path: Path, sample_every: int = 1) -> TokenTally:
    """``validate_batch_file``'s loop with a tally in its checker (the size-limit check left out: the file
    fits)."""
    tally = TokenTally(ENDPOINT, sample_every=sample_every)
    checker = _Checker(ENDPOINT, 20, tokens=tally)
    with path.open("rb", buffering=0) as stream:
        for number, _, raw in JsonlLines(stream, skip_blank=False):
            if raw and not raw.isspace():
                checker.check_line(number, raw)
    if not checker.finish(0).valid:
        raise SystemExit("the generated file should be valid")
    return tally


def count_alone(path: Path) -> TokenTally:
    tally = TokenTally(ENDPOINT)
    with path.open("rb", buffering=0) as stream:
        for _, _, raw in JsonlLines(stream):
            tally.add_line(raw)
    return tally


def decode_for_counting(path: Path) -> None:
    with path.open("rb", buffering=0) as stream:
        for _, _, raw in JsonlLines(stream):
            _LINE_DECODER.decode(raw)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=50_000)
    parser.add_argument("--line-bytes", type=int, default=4_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--non-ascii", action="store_true", help="mix raw UTF-8 words into the text")
    parser.add_argument("--sample-every", type=int, default=50, help="N of the sampled count")
    args = parser.parse_args()

    readers: dict[str, Callable[[Path], object]] = {
        "msgspec.json.decode": bare_decode,
        "validate_batch_file": validate,
        "validate + count": validate_and_count,
        "count alone": count_alone,
        "decode for counting": decode_for_counting,
        "validate + sampled": lambda path: validate_and_count(path, args.sample_every),
    }
    with tempfile.TemporaryDirectory() as work:
        path = Path(work) / "input.jsonl"
        size = write_input(path, args.lines, args.line_bytes, args.non_ascii)
        tally = validate_and_count(path)  # warms the encoder up: it loads once per process
        sampled = validate_and_count(path, args.sample_every).total
        runs: dict[str, list[float]] = {name: [] for name in readers}
        cpu: dict[str, list[float]] = {name: [] for name in readers}
        for _ in range(args.repeat):  # interleaved, so every reader sees the same page cache and CPU state
            for name, run in readers.items():
                started, started_cpu = time.perf_counter(), time.process_time()
                run(path)
                runs[name].append(time.perf_counter() - started)
                cpu[name].append(time.process_time() - started_cpu)

    text = "non-ASCII words as raw UTF-8" if args.non_ascii else "ASCII text"
    print(f"input: {size:,} bytes, {args.lines:,} lines of ~{args.line_bytes:,} bytes, {ENDPOINT}, {text}")
    total = tally.total
    print(
        f"counted: {total.requests:,} requests, {total.input:,} input tokens"
        f" ({size / total.input:.2f} bytes per token), output bound {total.max_output:,}"
    )
    # The CPU time of the process is printed too: every reader runs on one thread, and on a shared machine
    # it moves far less with the load than the wall-clock time does.
    print(f"median of {args.repeat} runs; MB = 10^6 bytes; CPU: the process's CPU time")
    print(
        f"{'reader':<22}{'median s':>10}{'MB/s':>10}{'lines/s':>12}{'x bare decode':>15}"
        f"{'CPU s':>8}{'x bare (CPU)':>14}"
    )
    medians = {name: statistics.median(times) for name, times in runs.items()}
    cpu_medians = {name: statistics.median(times) for name, times in cpu.items()}
    bare, bare_cpu = medians["msgspec.json.decode"], cpu_medians["msgspec.json.decode"]
    for name, seconds in medians.items():
        print(
            f"{name:<22}{seconds:>10.3f}{size / MB / seconds:>10,.0f}{args.lines / seconds:>12,.0f}"
            f"{bare / seconds:>15.2f}{cpu_medians[name]:>8.3f}{bare_cpu / cpu_medians[name]:>14.2f}"
        )
    tokenizer = medians["count alone"] - medians["decode for counting"]
    print(
        f"counting adds {medians['validate + count'] - medians['validate_batch_file']:.2f} s to validation;"
        f" of counting alone, {medians['decode for counting']:.2f} s decode and about {tokenizer:.2f} s"
        f" tokenizer ({size / MB / tokenizer:,.0f} MB/s)"
    )
    ratio, ratio_cpu = bare / medians["validate + count"], bare_cpu / cpu_medians["validate + count"]
    print(f"throughput ratio validate + count / bare decode: {ratio:.2f} (CPU {ratio_cpu:.2f}; goal >= 0.5)")
    ratio, ratio_cpu = bare / medians["validate + sampled"], bare_cpu / cpu_medians["validate + sampled"]
    error = (sampled.input - total.input) / total.input
    print(
        f"throughput ratio validate + sampled (1 line in {args.sample_every}) / bare decode: {ratio:.2f}"
        f" (CPU {ratio_cpu:.2f});"
        f" input tokens {sampled.input:,} ({error:+.2%} of the exact count),"
        f" output bound {sampled.max_output:,} (exact: {total.max_output:,})"
    )


if __name__ == "__main__":
    main()
