"""Results parsing and the input-ordered join, streamed (``airflow_provider_batch.results``) versus naive.

Generates one batch's files: an input of 50,000 chat requests and about 200 MB of output and error lines in
shuffled order (about 5 % HTTP failures with OpenAI's error envelope, 5 % ``batch_expired`` lines, 0.5 % of
requests with no result line at all). Then times, median of ``--repeat`` runs:

* summary: outcome counts, usage totals and missing ids (``summarize`` with the input file);
* join: one row per input request in input order, written to a local JSONL file (``write_joined``);

each against the naive approach: read whole files, ``json.loads`` every line, join with a dict.

Every run happens in a fresh child process, so one run's heap cannot inflate or hide the next one's memory.
"RSS growth" is the peak resident set size minus the child's size before the run (sampled every 5 ms by a
thread with psutil); "traced peak" is ``tracemalloc``'s peak of Python allocations, measured in a separate,
untimed run because tracing slows allocation-heavy code several times. MB/s counts the bytes of all three
files. Goal for the streamed paths: less than 100 MB of extra memory.

    .venv/bin/python benchmarks/results_join.py [--requests 50000] [--target-mb 200] [--repeat 3]
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
from _measure import (
    joined_order,
    measure_call,
    naive_ok,
    naive_results_by_id,
    naive_row,
    print_figures,
    run_child_figures,
)

CASES = ("summary streamed", "summary naive", "join streamed", "join naive")
WORDS = ("batch", "request", "model", "token", "window", "output", "error", "retry", "airflow", "trigger")


# Data -------------------------------------------------------------------------------------------------------


def generate(directory: Path, requests: int, target_mb: float, seed: int = 7) -> dict[str, Path]:
    """Write input, output and error files like OpenAI's, results shuffled; return their paths."""
    rng = random.Random(seed)
    pool = " ".join(rng.choice(WORDS) for _ in range(400_000))  # ~3 MB of text to slice answers from
    ids = [f"request-{index:06d}" for index in range(requests)]
    kinds = rng.choices(["ok", "http", "expired", "missing"], weights=[89.5, 5, 5, 0.5], k=requests)
    answer_chars = int(target_mb * 1e6 / (requests * 0.895)) - 900  # minus the envelope of a success line

    paths = {name: directory / f"{name}.jsonl" for name in ("input", "output", "error")}
    with paths["input"].open("wb") as out:
        for custom_id in ids:
            messages = [{"role": "user", "content": f"Question {custom_id}?"}]
            body = {"model": "gpt-4o-mini", "messages": messages}
            request = {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}
            out.write(msgspec.json.encode(request) + b"\n")

    order = list(range(requests))
    rng.shuffle(order)
    with paths["output"].open("wb") as ok_file, paths["error"].open("wb") as error_file:
        for index in order:
            kind, custom_id = kinds[index], ids[index]
            if kind == "ok":
                ok_file.write(msgspec.json.encode(success_line(rng, custom_id, pool, answer_chars)) + b"\n")
            elif kind == "http":
                error_file.write(msgspec.json.encode(http_error_line(rng, custom_id)) + b"\n")
            elif kind == "expired":
                error_file.write(msgspec.json.encode(expired_line(custom_id)) + b"\n")
    return paths


def success_line(rng: random.Random, custom_id: str, pool: str, chars: int) -> dict[str, Any]:
    start = rng.randrange(len(pool) - 2 * chars)
    answer = pool[start : start + rng.randint(chars // 2, chars * 3 // 2)]
    prompt_tokens, completion_tokens = rng.randint(20, 400), max(1, len(answer) // 4)
    body = {
        "id": f"chatcmpl-{custom_id}",
        "object": "chat.completion",
        "created": 1_760_000_000,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer, "refusal": None, "annotations": []},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": rng.choice([0, 0, 0, 128]), "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
        },
        "service_tier": "default",
        "system_fingerprint": "fp_0123456789",
    }
    return {
        "id": f"batch_req_{custom_id}",
        "custom_id": custom_id,
        "response": {"status_code": 200, "request_id": f"req_{custom_id}", "body": body},
        "error": None,
    }


def http_error_line(rng: random.Random, custom_id: str) -> dict[str, Any]:
    status, kind, code, message = rng.choice(
        [
            (429, "requests", "rate_limit_exceeded", "Rate limit reached for gpt-4o-mini."),
            (500, "server_error", None, "The server had an error while processing your request."),
            (400, "invalid_request_error", "context_length_exceeded", "Maximum context length exceeded."),
        ]
    )
    error = {"message": message, "type": kind, "param": None, "code": code}
    return {
        "id": f"batch_req_{custom_id}",
        "custom_id": custom_id,
        "response": {"status_code": status, "request_id": f"req_{custom_id}", "body": {"error": error}},
        "error": None,
    }


def expired_line(custom_id: str) -> dict[str, Any]:
    message = "This request could not be executed before the completion window expired."
    return {
        "id": f"batch_req_{custom_id}",
        "custom_id": custom_id,
        "response": None,
        "error": {"code": "batch_expired", "message": message},
    }


# The two approaches -----------------------------------------------------------------------------------------


def streamed_summary(paths: dict[str, Path], work: Path) -> dict[str, Any]:
    from airflow_provider_batch.results import summarize

    summary = summarize(output_file=paths["output"], error_file=paths["error"], input_file=paths["input"])
    assert summary.missing is not None
    return {
        "succeeded": summary.succeeded,
        "failed": summary.failed,
        "total_tokens": summary.usage.total_tokens,
        "missing": summary.missing.total,
    }


def streamed_join(paths: dict[str, Path], work: Path) -> dict[str, Any]:
    from airflow_provider_batch.results import write_joined

    target = work / "joined-streamed.jsonl"
    write_joined(
        input_file=paths["input"], destination=target, output_file=paths["output"], error_file=paths["error"]
    )
    return {"target": str(target)}


def naive_load(paths: dict[str, Path]) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """What most batch scripts do: whole files in memory, ``json.loads`` per line, a dict by custom_id."""
    lines = paths["input"].read_text().splitlines()
    inputs = [json.loads(line)["custom_id"] for line in lines if line.strip()]
    results = naive_results_by_id(paths[name].read_text().splitlines() for name in ("output", "error"))
    return inputs, results


def naive_summary(paths: dict[str, Path], work: Path) -> dict[str, Any]:
    inputs, results = naive_load(paths)
    succeeded = total_tokens = 0
    for record in results.values():
        if naive_ok(record):
            succeeded += 1
            total_tokens += record["response"]["body"].get("usage", {}).get("total_tokens", 0)
    return {
        "succeeded": succeeded,
        "failed": len(results) - succeeded,
        "total_tokens": total_tokens,
        "missing": sum(1 for custom_id in inputs if custom_id not in results),
    }


def naive_join(paths: dict[str, Path], work: Path) -> dict[str, Any]:
    inputs, results = naive_load(paths)
    target = work / "joined-naive.jsonl"
    with target.open("w") as out:
        for number, custom_id in enumerate(inputs, start=1):
            row = naive_row(custom_id, number, results.get(custom_id))
            out.write(json.dumps(row) + "\n")
    return {"target": str(target)}


RUNNERS: dict[str, Callable[[dict[str, Path], Path], dict[str, Any]]] = {
    "summary streamed": streamed_summary,
    "summary naive": naive_summary,
    "join streamed": streamed_join,
    "join naive": naive_join,
}


# Measurement ------------------------------------------------------------------------------------------------


def child(case: str, data: Path, trace: bool) -> None:
    """Run one case once in this (fresh) process and print its figures as JSON."""
    import airflow_provider_batch.results  # noqa: F401  (import cost is not part of either approach)

    paths = {name: data / f"{name}.jsonl" for name in ("input", "output", "error")}
    gc.collect()
    if trace:
        tracemalloc.start()
    figures = measure_call(lambda: {"check": RUNNERS[case](paths, data)})
    figures["traced"] = tracemalloc.get_traced_memory()[1] if trace else 0
    print_figures(figures)


def run_child(case: str, data: Path, trace: bool) -> dict[str, Any]:
    arguments = ["--child", case, "--data", str(data)]
    if trace:
        arguments.append("--trace")
    return run_child_figures(__file__, *arguments)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=50_000)
    parser.add_argument("--target-mb", type=float, default=200.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--child", choices=CASES, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.data, args.trace)
        return

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        started = time.perf_counter()
        paths = generate(data, args.requests, args.target_mb)
        sizes = {name: path.stat().st_size / 1e6 for name, path in paths.items()}
        total_mb = sum(sizes.values())
        print(
            f"{args.requests:,} requests: output {sizes['output']:.1f} MB, error {sizes['error']:.1f} MB, "
            f"input {sizes['input']:.1f} MB (generated in {time.perf_counter() - started:.1f} s); "
            f"median of {args.repeat} runs, each in a fresh process\n"
        )
        header = f"{'case':<18}{'time s':>8}{'MB/s':>8}{'RSS growth MB':>15}{'traced peak MB':>16}"
        print(header)
        print("-" * len(header))
        checks: dict[str, Any] = {}
        for case in CASES:
            runs = [run_child(case, data, trace=False) for _ in range(args.repeat)]
            traced = run_child(case, data, trace=True)["traced"]
            seconds = statistics.median(run["seconds"] for run in runs)
            rss = statistics.median(run["rss"] for run in runs)
            check = runs[0]["check"]
            checks[case] = joined_order(Path(check["target"])) if "target" in check else check
            figures = f"{seconds:>8.2f}{total_mb / seconds:>8.0f}{rss / 1e6:>15.1f}{traced / 1e6:>16.1f}"
            print(f"{case:<18}{figures}")
        assert checks["summary streamed"] == checks["summary naive"], checks
        assert checks["join streamed"] == checks["join naive"], "the joins disagree on row order"
        print(f"\nBoth approaches agree: {checks['summary streamed']}, same joined row order.")
        print("Goal: streamed paths under 100 MB of extra memory.")


if __name__ == "__main__":
    main()
