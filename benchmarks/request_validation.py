"""Batch input validation: our validator against a bare ``msgspec.json.decode`` of the same lines.

Writes a chat-completions batch input at the size limits (50,000 lines of about 4 KB, about 200 MB), then
prints the median over ``--repeat`` runs of each reader's throughput, their ratio, and the validator's peak
extra memory measured two ways: ``tracemalloc`` (Python allocations) and resident set size sampled every
5 ms in a thread (everything, including the allocator's slack). Goals: the validator keeps at least half the
speed of a bare decode, which only parses, and stays under 64 MB of extra memory whatever the file size.

Both readers read the file the same way (:class:`~airflow_provider_batch.jsonl.JsonlLines`, 1 MiB
blocks), so the comparison isolates what validation adds to decoding. ``--non-ascii`` mixes accented, CJK
and emoji words into the text, written as raw UTF-8 as ``msgspec`` and ``orjson`` write them (``json.dumps``
would escape them to ASCII): the validator's slower path, since every such line gets a UTF-8 check.

    .venv/bin/python benchmarks/request_validation.py [--lines 50000] [--line-bytes 4000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import msgspec
from _measure import MB, measure_call

from airflow_provider_batch.jsonl import JsonlLines
from airflow_provider_batch.requests import validate_batch_file

ENDPOINT = "/v1/chat/completions"
ASCII_WORDS = ["the", "batch", "api", "runs", "requests", "within", "a", "day", "at", "half", "price"]
NON_ASCII_WORDS = ["café", "naïve", "über", "niño", "façade", "日本語", "Ελληνικά", "emoji🙂", *ASCII_WORDS]


def write_input(path: Path, lines: int, line_bytes: int, non_ascii: bool) -> int:
    """A chat-completions batch input whose lines are about ``line_bytes`` long; returns the file size."""
    rng = random.Random(0)
    words = NON_ASCII_WORDS if non_ascii else ASCII_WORDS
    text = " ".join(rng.choice(words) for _ in range(line_bytes * 2)).encode()
    encoder = msgspec.json.Encoder()
    with path.open("wb", buffering=1024 * 1024) as out:
        for index in range(lines):
            request = {
                "custom_id": f"request-{index:05d}",
                "method": "POST",
                "url": ENDPOINT,
                "body": {
                    "model": "gpt-4o-mini",
                    "messages": [
                        {"role": "system", "content": "You answer in one short paragraph."},
                        {"role": "user", "content": ""},
                    ],
                    "max_tokens": 256,
                    "temperature": 0.2,
                },
            }
            room = line_bytes - len(encoder.encode(request)) - 1
            start = rng.randrange(len(text) - room)
            content = text[start : start + room].decode(errors="ignore")  # cut on character boundaries
            request["body"]["messages"][1]["content"] = content
            out.write(encoder.encode(request) + b"\n")
    return path.stat().st_size


def bare_decode(path: Path) -> None:
    """The baseline: read as the validator does, decode every line into Python objects, check nothing."""
    with path.open("rb", buffering=0) as stream:
        for _, _, raw in JsonlLines(stream):
            msgspec.json.decode(raw)


def validate(path: Path) -> None:
    report = validate_batch_file(path, endpoint=ENDPOINT)
    if not report.valid:
        raise SystemExit(f"the generated file should be valid: {report.errors[0]}")


def timed(run: Callable[[Path], None], path: Path) -> tuple[float, int]:
    """Seconds for one run and the RSS growth seen during it."""
    figures = measure_call(lambda: run(path))
    return figures["seconds"], figures["rss"]


def traced_peak(run: Callable[[Path], None], path: Path) -> int:
    """Peak Python allocations of one run above what was allocated before it."""
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        run(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=50_000)
    parser.add_argument("--line-bytes", type=int, default=4_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--non-ascii", action="store_true", help="mix raw UTF-8 words into the text")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as work:
        path = Path(work) / "input.jsonl"
        size = write_input(path, args.lines, args.line_bytes, args.non_ascii)
        runs: dict[str, list[float]] = {"validate_batch_file": [], "msgspec.json.decode": []}
        growth = 0
        for _ in range(args.repeat):  # interleaved, so both see the same page cache and CPU state
            seconds, rss = timed(validate, path)
            runs["validate_batch_file"].append(seconds)
            growth = max(growth, rss)
            runs["msgspec.json.decode"].append(timed(bare_decode, path)[0])
        traced = traced_peak(validate, path)

    text = "non-ASCII words as raw UTF-8" if args.non_ascii else "ASCII text"
    print(f"input: {size:,} bytes, {args.lines:,} lines of ~{args.line_bytes:,} bytes, {ENDPOINT}, {text}")
    print(f"median of {args.repeat} runs; MB = 10^6 bytes")
    print(f"{'reader':<22}{'median s':>10}{'MB/s':>10}{'lines/s':>12}")
    medians = {name: statistics.median(times) for name, times in runs.items()}
    for name, seconds in medians.items():
        print(f"{name:<22}{seconds:>10.3f}{size / MB / seconds:>10,.0f}{args.lines / seconds:>12,.0f}")
    ratio = medians["msgspec.json.decode"] / medians["validate_batch_file"]
    print(f"throughput ratio validator / bare decode: {ratio:.2f} (goal >= 0.5)")
    print(
        f"validator peak extra memory: tracemalloc {traced / MB:.1f} MB,"
        f" RSS growth {growth / MB:.1f} MB (goal < 64 MB)"
    )


if __name__ == "__main__":
    main()
