"""Emulator end to end: upload → create → completed → download for large echo batches.

Prints, for each input shape, the time of each phase and the emulator's peak RSS (sampled every
20 ms), so the two claims are checked in one run: a 50,000-line batch takes well under 30 s on
two cores, and the server's memory does not grow with the file size (uploads are spooled to
disk, processing goes chunk by chunk, downloads stream).

    .venv/bin/python benchmarks/emulator_throughput.py [--lines 50000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from _measure import PeakRss

from airflow_provider_batch.emulator.process import EmulatorProcess


def write_input(path: Path, lines: int, padding: int) -> int:
    """A chat-completions batch input; ``padding`` characters of prompt per line."""
    filler = "lorem ipsum " * (padding // 12)
    with path.open("w") as out:
        for index in range(lines):
            request = {
                "custom_id": f"request-{index}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": "gpt-4o-mini",
                    "messages": [{"role": "user", "content": f"question {index}: {filler}"}],
                    "max_tokens": 16,
                },
            }
            out.write(json.dumps(request) + "\n")
    return path.stat().st_size


def run_once(server: EmulatorProcess, source: Path, work: Path) -> dict[str, float]:
    client = server.client(max_retries=0, timeout=600)
    times: dict[str, float] = {}
    started = time.perf_counter()
    with source.open("rb") as handle:
        uploaded = client.files.create(file=(source.name, handle), purpose="batch")
    times["upload"] = time.perf_counter() - started

    mark = time.perf_counter()
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    while batch.status not in {"completed", "failed", "expired", "cancelled"}:
        time.sleep(0.05)
        batch = client.batches.retrieve(batch.id)
    assert batch.status == "completed", batch
    assert batch.request_counts.completed == batch.request_counts.total
    times["process"] = time.perf_counter() - mark

    mark = time.perf_counter()
    target = work / "output.jsonl"
    with (
        client.files.with_streaming_response.content(batch.output_file_id) as response,
        target.open("wb") as out,
    ):
        for block in response.iter_bytes(1024 * 1024):
            out.write(block)
    times["download"] = time.perf_counter() - mark
    times["total"] = time.perf_counter() - started
    times["output_mb"] = target.stat().st_size / 1e6
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    shapes = [("short prompts", 40), ("long prompts", 3_000)]
    print(f"Emulator end to end, {args.lines:,} lines, median of {args.repeat} runs (echo engine)\n")
    header = f"{'input':<15}{'size MB':>9}{'upload s':>10}{'process s':>11}{'download s':>12}{'total s':>9}"
    header += f"{'lines/s':>10}{'peak RSS MB':>13}{'RSS growth MB':>15}"
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for label, padding in shapes:
            source = work / f"input-{padding}.jsonl"
            size = write_input(source, args.lines, padding)
            with EmulatorProcess(work / f"data-{padding}") as server:
                runs = []
                with PeakRss(server.process.pid, every=0.02) as rss:
                    for _ in range(args.repeat):
                        runs.append(run_once(server, source, work))
                median = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
                print(
                    f"{label:<15}{size / 1e6:>9.1f}{median['upload']:>10.2f}{median['process']:>11.2f}"
                    f"{median['download']:>12.2f}{median['total']:>9.2f}"
                    f"{args.lines / median['total']:>10,.0f}"
                    f"{rss.peak / 1e6:>13.1f}{(rss.peak - rss.baseline) / 1e6:>15.1f}"
                )
    print("\nGoal: total under 30 s for 50,000 lines; RSS growth independent of the file size.")


if __name__ == "__main__":
    main()
