"""Shard splitting: a 1,000,000-line input cut into OpenAI-sized batches, against the bare validator.

Writes a chat-completions input of ``--lines`` short lines (about 190 bytes each), then runs, each in a
fresh child process so that one run's heap cannot hide the next one's memory:

- ``split_batch_file`` with OpenAI's limits (50,000 requests per batch: 20 shards for a million lines),
  which validates every line, checks ``custom_id`` uniqueness across the whole input and writes the shards;
- ``validate_batch_file`` on the same file, which reads every line too (it stops early only past 200 MiB,
  which a million short lines stay under) and reports request 50,001 as over the limit of one batch.

Prints seconds, lines/s, MB/s and peak RSS growth for each. Goal: the splitter's RSS growth stays under
200 MB for a million lines (its only growth is 32 to 64 bytes of id digest per request).

    .venv/bin/python benchmarks/shard_split.py [--lines 1000000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import msgspec
from _measure import MB, measure_call, print_figures, run_child_figures

from airflow_provider_batch.requests import validate_batch_file
from airflow_provider_batch.shards import split_batch_file

ENDPOINT = "/v1/chat/completions"


def write_input(path: Path, lines: int) -> int:
    """A valid chat-completions input of short lines; returns its size."""
    encoder = msgspec.json.Encoder()
    with path.open("wb", buffering=1 << 20) as out:
        for index in range(lines):
            request = {
                "custom_id": f"request-{index:07d}",
                "method": "POST",
                "url": ENDPOINT,
                "body": {
                    "model": "gpt-4o-mini",
                    "messages": [{"role": "user", "content": f"Say hello to number {index}."}],
                    "max_tokens": 16,
                },
            }
            out.write(encoder.encode(request) + b"\n")
    return path.stat().st_size


def split(path: Path) -> dict[str, int]:
    plan = split_batch_file(path, path.parent / "shards", endpoint=ENDPOINT)
    return {"shards": len(plan.shards), "requests": plan.requests}


def validate(path: Path) -> dict[str, int]:
    """The public validator over the same file: past request 50,000 it keeps reading and counting, so its
    one expected complaint is the request limit."""
    report = validate_batch_file(path, endpoint=ENDPOINT)
    if [error.message.split(",")[0] for error in report.errors] != ["expected at most 50"]:
        raise SystemExit(f"the generated file should break only the request limit: {report.errors[:1]}")
    return {"shards": 0, "requests": report.requests}


def child(kind: str, path: Path) -> None:
    run = {"split": split, "validate": validate}[kind]

    def timed() -> dict[str, float]:
        # CPU time beside measure_call's wall time: on a shared machine the wall time also counts waiting.
        started = time.process_time()
        figures: dict[str, float] = {**run(path)}
        figures["cpu_seconds"] = time.process_time() - started
        return figures

    print_figures(measure_call(timed))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--child", choices=["split", "validate"], help=argparse.SUPPRESS)
    parser.add_argument("--path", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.path)
        return

    with tempfile.TemporaryDirectory() as work:
        path = Path(work) / "input.jsonl"
        size = write_input(path, args.lines)
        figures = {
            kind: run_child_figures(sys.argv[0], "--child", kind, "--path", str(path))
            for kind in ("split", "validate")
        }

    print(f"input: {size:,} bytes, {args.lines:,} lines of ~{size // args.lines} bytes, {ENDPOINT}")
    print("one run each, in a fresh child process; rates per CPU second; MB = 10^6 bytes")
    print(f"{'run':<34}{'shards':>7}{'wall s':>8}{'CPU s':>7}{'lines/s':>10}{'MB/s':>6}{'RSS growth MB':>15}")
    names = {"split": "split_batch_file (default limits)", "validate": "validate_batch_file"}
    for kind, run in figures.items():
        cpu = run["cpu_seconds"]
        print(
            f"{names[kind]:<34}{run['shards']:>7}{run['seconds']:>8.2f}{cpu:>7.2f}{args.lines / cpu:>10,.0f}"
            f"{size / MB / cpu:>6.0f}{run['rss'] / MB:>15.1f}"
        )
    print(f"goal: split RSS growth < 200 MB; got {figures['split']['rss'] / MB:.1f} MB")


if __name__ == "__main__":
    main()
