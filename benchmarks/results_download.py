"""Results download: fetch and join about 200 MB of batch results, this provider against the plain SDK.

Runs a real batch on the emulator to produce the results: 50,000 chat requests whose prompts (about
``--prompt-chars`` characters) the echo engine sends back, so the output file holds about 200 MB; about 5 %
of the requests carry the emulator's per-line directive for an HTTP 429 or 500, so there is an error file
too, and the emulator writes result lines out of input order, as OpenAI may. Then, each side in a fresh
child process (median of ``--repeat`` runs, sides alternating), the output and error files are downloaded
and joined to the input, one row per request in input order, written to a local JSONL file:

* ours: ``OpenAIBatchHook.download_file`` of both files to local temporary files (streamed in 1 MiB blocks,
  resumable), then ``results.write_joined`` (one indexing pass, then the input in order);
* SDK whole file: ``client.files.content(file_id).content`` on the official provider's client
  (``OpenAIHook(...).conn``; that provider has no download method), then ``json.loads`` of every line into a
  dict by ``custom_id`` and the input walked in order, as most batch scripts do.

Figures: seconds (download, join, total), MB/s of the two result files, and the child's peak RSS growth
(sampled every 5 ms by a thread, minus its size before the run). Both joins must give the same row order.
The input file is local to both sides (the operator that wrote it has it).

    .venv/bin/python benchmarks/results_download.py [--requests 50000] [--prompt-chars 3500] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec
from _measure import (
    MB,
    joined_order,
    measure_call,
    naive_results_by_id,
    naive_row,
    print_figures,
    run_child_figures,
)
from request_validation import ENDPOINT
from results_join import WORDS
from triggerer_scale import API_KEY, CONN_IDS, connections

from airflow_provider_batch.emulator.process import EmulatorProcess

SIDES = ("ours", "SDK whole file")
TERMINAL = {"completed", "failed", "expired", "cancelled"}


# The batch --------------------------------------------------------------------------------------------------


def write_requests(path: Path, requests: int, prompt_chars: int, seed: int = 11) -> None:
    """Chat requests with long prompts; about 5 % ask the emulator for an HTTP error instead of an answer."""
    rng = random.Random(seed)
    pool = " ".join(rng.choice(WORDS) for _ in range(200_000))
    encoder = msgspec.json.Encoder()
    with path.open("wb", buffering=1024 * 1024) as out:
        for index in range(requests):
            start = rng.randrange(len(pool) - prompt_chars)
            body: dict[str, Any] = {
                "model": "gpt-4o-mini",
                "messages": [{"role": "user", "content": pool[start : start + prompt_chars]}],
            }
            if rng.random() < 0.05:
                body["emulator"] = {"status_code": rng.choice([429, 500])}
            request = {"custom_id": f"request-{index:06d}", "method": "POST", "url": ENDPOINT, "body": body}
            out.write(encoder.encode(request) + b"\n")


def run_batch(server: EmulatorProcess, path: Path) -> tuple[str, str | None]:
    client = server.client(timeout=600)
    with path.open("rb") as handle:
        uploaded = client.files.create(file=(path.name, handle), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint=ENDPOINT, completion_window="24h")
    while batch.status not in TERMINAL:
        time.sleep(0.5)
        batch = client.batches.retrieve(batch.id)
    if batch.status != "completed" or batch.output_file_id is None:
        raise SystemExit(f"the batch did not complete: {batch}")
    return batch.output_file_id, batch.error_file_id


# The two sides ----------------------------------------------------------------------------------------------


def ours(job: dict[str, Any], work: Path) -> dict[str, Any]:
    from airflow_provider_batch.hooks.batch import OpenAIBatchHook
    from airflow_provider_batch.results import write_joined

    hook = OpenAIBatchHook(conn_id=CONN_IDS["ours"])
    started = time.perf_counter()
    files = {"output_file": work / "output.jsonl", "error_file": work / "error.jsonl"}
    hook.download_file(job["output_file_id"], files["output_file"])
    if job["error_file_id"]:
        hook.download_file(job["error_file_id"], files["error_file"])
    else:
        del files["error_file"]
    downloaded = time.perf_counter()
    target = work / "joined-ours.jsonl"
    write_joined(input_file=Path(job["input"]), destination=target, **files)
    return {"download": downloaded - started, "join": time.perf_counter() - downloaded, "target": str(target)}


def sdk_whole_file(job: dict[str, Any], work: Path) -> dict[str, Any]:
    from airflow.providers.openai.hooks.openai import OpenAIHook

    started = time.perf_counter()
    client = OpenAIHook(conn_id=CONN_IDS["official"]).conn  # ours builds its client in the first download
    contents = [client.files.content(job["output_file_id"]).content]
    if job["error_file_id"]:
        contents.append(client.files.content(job["error_file_id"]).content)
    downloaded = time.perf_counter()
    results = naive_results_by_id(content.decode().splitlines() for content in contents)
    target = work / "joined-sdk.jsonl"
    with Path(job["input"]).open() as requests, target.open("w") as out:
        for number, line in enumerate(requests, start=1):
            if not line.strip():
                continue
            custom_id = json.loads(line)["custom_id"]
            row = naive_row(custom_id, number, results.get(custom_id))
            out.write(json.dumps(row) + "\n")
    return {"download": downloaded - started, "join": time.perf_counter() - downloaded, "target": str(target)}


RUNNERS = {"ours": ours, "SDK whole file": sdk_whole_file}


def child(side: str, job: dict[str, Any]) -> None:
    """Run one side once in this fresh process and print its figures as JSON."""
    # The imports and the client's construction are not part of either side's cost.
    from airflow.providers.openai.hooks.openai import OpenAIHook  # noqa: F401

    import airflow_provider_batch.hooks.batch
    import airflow_provider_batch.results  # noqa: F401

    work = Path(tempfile.mkdtemp(dir=job["work"], prefix=side.replace(" ", "-")))
    print_figures(measure_call(lambda: RUNNERS[side](job, work)))


def run_child(side: str, job: dict[str, Any], server: EmulatorProcess) -> dict[str, Any]:
    env = {**os.environ, **connections(server.base_url)}
    figures = run_child_figures(__file__, "--child", side, "--job", json.dumps(job), env=env)
    figures["order"] = joined_order(Path(figures["target"]))
    for leftover in Path(figures["target"]).parent.iterdir():  # 400 MB per run otherwise
        leftover.unlink()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=50_000)
    parser.add_argument("--prompt-chars", type=int, default=3_500)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--child", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--job", type=json.loads, help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.getLogger("httpx2").setLevel(logging.WARNING)  # no line per HTTP call
    if args.child:
        child(args.child, args.job)
        return

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        source = work / "input.jsonl"
        write_requests(source, args.requests, args.prompt_chars)
        input_mb = source.stat().st_size / MB
        runs: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
        with EmulatorProcess(work / "emulator", api_key=API_KEY) as server:
            started = time.perf_counter()
            output_id, error_id = run_batch(server, source)
            batch_seconds = time.perf_counter() - started
            client = server.client()
            sizes = {"output": client.files.retrieve(output_id).bytes}
            sizes["error"] = client.files.retrieve(error_id).bytes if error_id else 0
            job = {"input": str(source), "output_file_id": output_id, "error_file_id": error_id, "work": tmp}
            for _ in range(args.repeat):
                for side in SIDES:
                    runs[side].append(run_child(side, job, server))

    results_mb = (sizes["output"] + sizes["error"]) / MB
    print(
        f"{args.requests:,} requests (input {input_mb:.0f} MB)"
        f" run on the emulator in {batch_seconds:.1f} s: output {sizes['output'] / MB:.1f} MB,"
        f" error {sizes['error'] / MB:.1f} MB, lines out of input order;"
        f" median of {args.repeat} runs, each in a fresh process; MB = 10^6 bytes\n"
    )
    header = f"{'side':<16}{'download s':>12}{'join s':>8}{'total s':>9}{'MB/s':>7}{'RSS growth MB':>15}"
    print(header)
    print("-" * len(header))
    medians: dict[str, dict[str, float]] = {}
    for side in SIDES:
        medians[side] = {
            key: statistics.median(run[key] for run in runs[side])
            for key in ("download", "join", "seconds", "rss")
        }
        m = medians[side]
        print(
            f"{side:<16}{m['download']:>12.2f}{m['join']:>8.2f}{m['seconds']:>9.2f}"
            f"{results_mb / m['seconds']:>7.0f}{m['rss'] / MB:>15.1f}"
        )
    orders = {run["order"] for side in SIDES for run in runs[side]}
    if len(orders) != 1:
        raise SystemExit("the joins disagree on row order")
    ours_m, sdk_m = medians["ours"], medians["SDK whole file"]
    print(
        f"\nBoth sides wrote the same {args.requests:,} rows in input order."
        f" SDK whole file / ours: time x{sdk_m['seconds'] / ours_m['seconds']:.2f},"
        f" memory x{sdk_m['rss'] / max(ours_m['rss'], 1):.1f}"
    )


if __name__ == "__main__":
    main()
