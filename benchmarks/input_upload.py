"""Input upload: validate and upload a 200 MB batch input with this provider, against the official provider.

Writes a chat-completions input at the size limits (50,000 lines of about 4 KB, about 200 MB, with
``request_validation.write_input``) and sends it to an emulator three ways, each run in a fresh child
process so that one side's heap cannot inflate or hide another's memory:

* ours: ``require_valid_batch_file`` (the operator's check: every line against the endpoint and OpenAI's
  limits, nothing uploaded if a line is bad) then ``OpenAIBatchHook.upload_file`` (streamed);
* official: ``OpenAIHook.upload_file``, which uploads without looking at the lines;
* msgspec decode: a bare ``msgspec.json.decode`` of every line (``request_validation.bare_decode``), which
  checks nothing and uploads nothing: the parsing limit, for scale.

Figures: seconds (ours split into validation and upload), MB/s of the file, and the child's peak RSS growth
(sampled every 5 ms by a thread, minus the size before the run). Medians of ``--repeat`` runs, sides
alternating. The emulator runs on the same two cores, so the upload times include its work on the body.

    .venv/bin/python benchmarks/input_upload.py [--lines 50000] [--line-bytes 4000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from _measure import MB, measure_call, print_figures, run_child_figures
from request_validation import ENDPOINT, bare_decode, write_input
from triggerer_scale import API_KEY, CONN_IDS, connections

from airflow_provider_batch.emulator.process import EmulatorProcess

SIDES = ("ours", "official", "msgspec decode")


def ours(path: Path) -> dict[str, Any]:
    from airflow_provider_batch.hooks.batch import OpenAIBatchHook
    from airflow_provider_batch.requests import require_valid_batch_file

    started = time.perf_counter()
    report = require_valid_batch_file(path, endpoint=ENDPOINT)
    validated = time.perf_counter()
    uploaded = OpenAIBatchHook(conn_id=CONN_IDS["ours"]).upload_file(path)
    return {
        "validate": validated - started,
        "upload": time.perf_counter() - validated,
        "file_id": uploaded.id,
        "bytes": uploaded.bytes,
        "requests": report.requests,
    }


def official(path: Path) -> dict[str, Any]:
    from airflow.providers.openai.hooks.openai import OpenAIHook

    started = time.perf_counter()
    uploaded = OpenAIHook(conn_id=CONN_IDS["official"]).upload_file(str(path), purpose="batch")
    return {"upload": time.perf_counter() - started, "file_id": uploaded.id, "bytes": uploaded.bytes}


def decode_only(path: Path) -> dict[str, Any]:
    bare_decode(path)
    return {}


RUNNERS = {"ours": ours, "official": official, "msgspec decode": decode_only}


def child(side: str, path: Path) -> None:
    """Run one side once in this fresh process and print its figures as JSON."""
    # The imports are not part of either side's cost.
    import msgspec  # noqa: F401
    from airflow.providers.openai.hooks.openai import OpenAIHook  # noqa: F401

    import airflow_provider_batch.hooks.batch
    import airflow_provider_batch.requests  # noqa: F401

    print_figures(measure_call(lambda: RUNNERS[side](path)))


def run_child(side: str, path: Path, server: EmulatorProcess) -> dict[str, Any]:
    env = {**os.environ, **connections(server.base_url)}
    figures = run_child_figures(__file__, "--child", side, "--data", str(path), env=env)
    if "file_id" in figures:  # keep the emulator's disk small: each upload is another 200 MB
        if figures["bytes"] != path.stat().st_size:
            raise SystemExit(f"{side}: uploaded {figures['bytes']} bytes of {path.stat().st_size}")
        server.client().files.delete(figures["file_id"])
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=50_000)
    parser.add_argument("--line-bytes", type=int, default=4_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--child", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.getLogger("httpx2").setLevel(logging.WARNING)  # no line per HTTP call
    if args.child:
        child(args.child, args.data)
        return

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        path = work / "input.jsonl"
        size = write_input(path, args.lines, args.line_bytes, non_ascii=False)
        runs: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
        with EmulatorProcess(work / "emulator", api_key=API_KEY) as server:
            for _ in range(args.repeat):
                for side in SIDES:
                    runs[side].append(run_child(side, path, server))

    print(
        f"input: {size / MB:.1f} MB, {args.lines:,} lines of ~{args.line_bytes:,} bytes, {ENDPOINT};"
        f" median of {args.repeat} runs, each in a fresh process; MB = 10^6 bytes\n"
    )
    header = f"{'side':<16}{'validate s':>12}{'upload s':>10}{'total s':>9}{'MB/s':>8}{'RSS growth MB':>15}"
    print(header)
    print("-" * len(header))
    medians: dict[str, float] = {}
    for side in SIDES:
        side_runs = runs[side]
        seconds = medians[side] = statistics.median(run["seconds"] for run in side_runs)
        validate = statistics.median(run.get("validate", 0.0) for run in side_runs)
        upload = statistics.median(run.get("upload", 0.0) for run in side_runs)
        rss = statistics.median(run["rss"] for run in side_runs)
        cells = [
            f"{validate:>12.2f}" if side == "ours" else f"{'-':>12}",
            f"{upload:>10.2f}" if side != "msgspec decode" else f"{'-':>10}",
        ]
        print(f"{side:<16}{''.join(cells)}{seconds:>9.2f}{size / MB / seconds:>8.0f}{rss / MB:>15.1f}")
    print(
        f"\nours / official time: {medians['ours'] / medians['official']:.2f}"
        f" (validation adds {statistics.median(run['validate'] for run in runs['ours']):.2f} s);"
        f" ours' validation / bare decode time:"
        f" {statistics.median(run['validate'] for run in runs['ours']) / medians['msgspec decode']:.2f}"
    )


if __name__ == "__main__":
    main()
