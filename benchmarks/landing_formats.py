"""Landed results as JSONL and as Parquet (``airflow_provider_batch.parquet``): time, memory, size.

Two modes (``--mode``, default ``all``: both, landing first).

**landing** measures the real landing path end to end, from a batch's three files, as the operator runs it
once the batch has ended (the download aside). It generates ``--rows`` (default 1,000,000) chat
classification requests of about 1 KB whose ``response_format`` is a strict JSON Schema (structured
outputs, what ETL users land), the same requests without ``response_format``, the output file (results in
shuffled order, as OpenAI and the emulator write them: bodies of about 750 bytes whose content is JSON
matching the schema, usage included; 0.1 % of the replies miss the schema) and the error file (1 % of the
requests: 429s, 500s and expired). Each landing then runs once in a fresh child process, whose RSS is
sampled every 5 ms and read from the kernel's high-water mark (``VmHWM``, reset per phase), counted from
the child's size after its imports (pyarrow included for Parquet; "peak" adds that size back); CPU time
from ``getrusage``:

* **floor**: ``write_joined`` of the plain requests with the answer columns left empty (``answer_row``
  stubbed in the child): the join alone, what landing cost before answers were extracted;
* **answers**: ``write_joined`` of the plain requests: answers extracted, nothing to check;
* **answers + schema**: ``write_joined`` of the structured-output requests to JSONL: answers extracted and
  each reply checked against its request's schema;
* **Parquet**: the same landing as Parquet through ``landing._landed_file`` (``write_joined`` to a
  temporary JSONL file, then ``write_parquet``), time and peak split between the join and the conversion
  (the conversion's peak includes what the join's heap kept), and ``write_parquet`` alone on the same
  rows in a child of its own.

Every landing's summary is checked against the generator's counts (requests, succeeded, failed,
``invalid_output``). Then the file sizes, and the per-row cost of each step over the floor. ``--profile``
also runs the Parquet landing under cProfile (use fewer rows) and prints its top entries. Generated files
go to a temporary directory, removed at the end (also on SIGTERM); ``--keep DIR`` writes them to ``DIR``,
keeps them, and reuses the inputs a previous run generated there with the same ``--rows``.

**conversion** measures the JSONL to Parquet conversion alone, on synthetic landed rows:

Generates the landed file of a chat classification job, ``--rows`` rows (default 1,000,000) in the flat
landed shape: a one-word answer in ``text``, a small structured output in ``parsed``, usage, and a raw
chat completion ``body`` of about 1 KB; about 2 % of rows are HTTP failures and 0.5 % expired requests,
and every 50,000 rows share one ``batch_id`` (a job's shards). Then measures:

* writing the JSONL: ``msgspec`` encoding of the rows into 1 MiB writes, as the landing code does (row
  construction timed separately and subtracted);
* converting it to Parquet with ``write_parquet`` at the default settings, in a fresh child process:
  time, peak RSS growth over the call (psutil, sampled every 5 ms) and the file's size;
* reading the Parquet file back (``pyarrow.parquet.read_table``): row count, a token total and the last
  ``custom_id`` checked against the generator's;
* the choice of settings: rows per row group (32 Ki to 256 Ki) and codec (zstd, snappy, none), one
  fresh child each, time, RSS growth and size.

An embeddings variant (``--embedding-rows``, default 100,000, of ``--embedding-dims`` floats, default
256, with the vector also in each row's body as the API returns it) repeats the conversion and size
figures for wide rows.

    .venv/bin/python benchmarks/landing_formats.py [--mode all|landing|conversion] [--rows 1000000]\
        [--keep DIR] [--profile] [--embedding-rows 100000] [--embedding-dims 256]
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import gc
import io
import os
import pstats
import random
import re
import resource
import signal
import sys
import tempfile
import time
from array import array
from pathlib import Path
from typing import Any

import msgspec
import psutil
from _measure import MB, PeakRss, measure_call, print_figures, run_child_figures

from airflow_provider_batch.jsonl import BLOCK_SIZE

ROWS_PER_BATCH = 50_000
LABELS = ("positive", "negative", "neutral", "mixed")
TOPICS = ("shipping", "price", "quality", "support", "packaging", "size", "delivery", "refund")


class Landed(msgspec.Struct):
    """A landed row in the lead's flat shape (issue 14); field order is key order."""

    custom_id: str | None
    line: int
    ok: bool
    status_code: int | None
    error_code: str | None
    error_message: str | None
    text: str | None
    refusal: str | None
    finish_reason: str | None
    tool_calls: Any
    parsed: Any
    embedding: list[float] | None
    embeddings: list[list[float]] | None
    flagged: bool | None
    categories: list[str] | None
    images: list[str] | None
    input_tokens: int | None
    output_tokens: int | None
    cached_tokens: int | None
    reasoning_tokens: int | None
    round: int
    batch_id: str | None
    request: Any
    body: msgspec.Raw


# Data -------------------------------------------------------------------------------------------------------


def chat_pool(rng: random.Random, size: int = 997) -> list[tuple[str, dict[str, Any], msgspec.Raw, int, int]]:
    """Distinct successful answers to cycle through: (label, parsed, body, input tokens, output tokens)."""
    pool = []
    for index in range(size):
        label = rng.choice(LABELS)
        parsed = {
            "label": label,
            "confidence": round(rng.random(), 3),
            "topics": rng.sample(TOPICS, rng.randint(0, 3)),
        }
        content = msgspec.json.encode(parsed).decode()
        input_tokens, output_tokens = rng.randint(120, 420), rng.randint(14, 30)
        body = {
            "id": f"chatcmpl-{index:08d}{rng.getrandbits(64):016x}",
            "object": "chat.completion",
            "created": 1_760_000_000 + index,
            "model": "gpt-4o-mini-2024-07-18",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content, "refusal": None, "annotations": []},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": input_tokens,
                "completion_tokens": output_tokens,
                "total_tokens": input_tokens + output_tokens,
                "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                "completion_tokens_details": {
                    "reasoning_tokens": 0,
                    "audio_tokens": 0,
                    "accepted_prediction_tokens": 0,
                    "rejected_prediction_tokens": 0,
                },
            },
            "service_tier": "default",
            "system_fingerprint": "fp_560af6e559",
        }
        # Pad the body to about 1 KB, as a real one with a longer id, metadata and annotations is.
        body["choices"][0]["message"]["annotations"] = [{"type": "note", "text": "x" * 330}]
        pool.append((label, parsed, msgspec.Raw(msgspec.json.encode(body)), input_tokens, output_tokens))
    return pool


def chat_rows(count: int, seed: int = 14) -> Any:
    """Yield ``count`` landed rows of a chat classification job, in input order."""
    rng = random.Random(seed)
    pool = chat_pool(rng)
    rate_limited = msgspec.Raw(
        b'{"error":{"message":"Rate limit reached for gpt-4o-mini.","type":"requests",'
        b'"param":null,"code":"rate_limit_exceeded"}}'
    )
    for index in range(count):
        custom_id = f"review-{index:07d}"
        batch_id = f"batch_{index // ROWS_PER_BATCH:04d}{'f' * 24}"
        kind = rng.random()
        if kind < 0.02:
            message = "Rate limit reached for gpt-4o-mini."
            yield Landed(custom_id, index + 1, False, 429, "rate_limit_exceeded", message, None, None, None,
                         None, None, None, None, None, None, None, None, None, None, None, 1, batch_id, None,
                         rate_limited)  # fmt: skip
        elif kind < 0.025:
            yield Landed(custom_id, index + 1, False, None, "batch_expired",
                         "This request could not be executed before the completion window expired.",
                         None, None, None, None, None, None, None, None, None, None, None, None, None, None,
                         1, batch_id, None, msgspec.Raw(b"null"))  # fmt: skip
        else:
            label, _, body, _, _ = pool[index % len(pool)]
            # Per-row values where real rows differ: the scores, topics and token counts.
            parsed = {"label": label, "confidence": round(rng.random(), 3), "topics": rng.sample(TOPICS, 2)}
            input_tokens, output_tokens = 120 + (index * 7919) % 300, 14 + index % 17
            cached = 128 if index % 4 == 0 else 0
            yield Landed(custom_id, index + 1, True, 200, None, None, label, None, "stop", None, parsed, None,
                         None, None, None, None, input_tokens, output_tokens, cached, 0, 1, batch_id, None,
                         body)  # fmt: skip


def embedding_rows(count: int, dims: int, seed: int = 15) -> Any:
    """Yield ``count`` landed rows of an embeddings job; each vector also in its body, as the API returns.

    Every vector is distinct (a base vector scaled by a per-row factor, so every mantissa differs) and
    float32-exact, printed as the API prints them (``-0.006929283495992422``): a pool of repeated vectors
    would let zstd find whole rows again and flatter the Parquet size.
    """
    rng = random.Random(seed)
    bases = []
    for _ in range(64):
        vector = [rng.gauss(0.0, 1.0) for _ in range(dims)]
        norm = sum(value * value for value in vector) ** 0.5
        bases.append([value / norm for value in vector])
    for index in range(count):
        scale = 1.0 + rng.random() * 1e-3
        vector = array("f", [value * scale for value in bases[index % len(bases)]]).tolist()
        tokens = 40 + index % 200
        body = {
            "object": "list",
            "data": [{"object": "embedding", "index": 0, "embedding": vector}],
            "model": "text-embedding-3-small",
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        yield Landed(f"doc-{index:07d}", index + 1, True, 200, None, None, None, None, None, None, None,
                     vector, None, None, None, None, tokens, None, None, None, 1,
                     f"batch_{index // ROWS_PER_BATCH:04d}", None,
                     msgspec.Raw(msgspec.json.encode(body)))  # fmt: skip


def write_jsonl(rows: Any, path: Path) -> None:
    """Encode rows into one buffer written in ~1 MiB pieces, as the landing code writes its file."""
    encoder = msgspec.json.Encoder()
    buffer = bytearray()
    with path.open("wb") as out:
        for row in rows:
            encoder.encode_into(row, buffer, -1)
            buffer += b"\n"
            if len(buffer) >= BLOCK_SIZE:
                out.write(bytes(buffer))
                buffer.clear()
        out.write(bytes(buffer))


def expected(rows: Any) -> dict[str, Any]:
    """What the read-back must find: row count, input token total, last custom_id."""
    count = tokens = 0
    last = None
    for row in rows:
        count += 1
        tokens += row.input_tokens or 0
        last = row.custom_id
    return {"rows": count, "input_tokens": tokens, "last": last}


# Child runs -------------------------------------------------------------------------------------------------


def convert(source: Path, target: Path, row_group_rows: int | None, compression: str) -> None:
    """Convert once in this (fresh) process and print time, RSS growth, size and row groups as JSON."""
    import pyarrow.parquet as pq

    from airflow_provider_batch.parquet import DEFAULT_ROW_GROUP_ROWS, write_parquet

    rows = row_group_rows or DEFAULT_ROW_GROUP_ROWS
    gc.collect()
    figures = measure_call(
        lambda: {"rows": write_parquet(source, target, row_group_rows=rows, compression=compression)}
    )
    figures["size"] = target.stat().st_size
    figures["row_groups"] = pq.ParquetFile(target).metadata.num_row_groups
    print_figures(figures)


def read_back(target: Path) -> None:
    """Read the whole table once in this (fresh) process; print time, RSS growth and the checked values."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    def run() -> dict[str, Any]:
        table = pq.read_table(target)
        return {
            "rows": table.num_rows,
            "input_tokens": pc.sum(table["input_tokens"]).as_py() or 0,
            "last": table["custom_id"][-1].as_py() if table.num_rows else None,
        }

    gc.collect()
    print_figures(measure_call(run))


def run_convert(source: Path, target: Path, row_group_rows: int | None, compression: str) -> dict[str, Any]:
    arguments = ["--child", "convert", "--source", str(source), "--target", str(target)]
    arguments += ["--compression", compression]
    if row_group_rows:
        arguments += ["--row-group-rows", str(row_group_rows)]
    return run_child_figures(__file__, *arguments)


def run_read(target: Path) -> dict[str, Any]:
    return run_child_figures(__file__, "--child", "read", "--target", str(target))


# The landing path end to end: a batch's files in, a landed JSONL or Parquet file out -----------------------

SCHEMA_NAME = "review_classification"
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "label": {"type": "string", "enum": list(LABELS)},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "topics": {"type": "array", "items": {"type": "string", "enum": list(TOPICS)}},
        "reason": {"type": "string"},
    },
    "required": ["label", "confidence", "topics", "reason"],
    "additionalProperties": False,
}
SYSTEM_PROMPT = (
    "You label customer reviews of an online shop. Give the review's overall sentiment, your confidence"
    " between 0 and 1, the topics it mentions (only from the allowed list) and one short reason."
)
REVIEW_TEXT = (
    "the parcel arrived late but the jacket fits well and the colour is exactly as shown on the site "
    "support answered quickly refund took two weeks price was fair for the quality packaging was damaged "
    "would buy again size runs small delivery driver was friendly the zip broke after a month"
)
WORDS = tuple(REVIEW_TEXT.split())
REASONS = tuple(
    f"The review {verb} {topic} and {tone}."
    for verb in ("praises", "complains about", "mentions", "questions")
    for topic in TOPICS
    for tone in ("sounds satisfied overall", "sounds annoyed", "is mostly neutral")
)
FAIL_RATE, EXPIRE_RATE, SERVER_RATE, INVALID_RATE = 0.006, 0.001, 0.003, 0.001
"""Shares of all requests: 429s, expired, 500s (1 % in the error file); replies that miss the schema."""
_OK, _INVALID, _RATE_LIMITED, _SERVER_ERROR, _EXPIRED = range(5)
STAMP = "landing-inputs.json"


def request_body(review: str, schema: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": review}],
        "temperature": 0,
        "max_completion_tokens": 120,
    }
    if schema:
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": SCHEMA_NAME, "strict": True, "schema": SCHEMA},
        }
    return body


def reply_body(index: int, rng: random.Random, kind: int) -> dict[str, Any]:
    """A chat completion whose content is the structured output (or, for ``_INVALID``, one that misses it:
    a label outside the enum, or JSON cut at the token limit)."""
    answer = {
        "label": rng.choice(LABELS),
        "confidence": round(rng.random(), 3),
        "topics": rng.sample(TOPICS, rng.randint(0, 3)),
        "reason": rng.choice(REASONS),
    }
    finish = "stop"
    content = msgspec.json.encode(answer).decode()
    if kind == _INVALID:
        if index % 2:
            content = msgspec.json.encode({**answer, "label": "unsure"}).decode()
        else:
            content, finish = content[: len(content) // 2], "length"
    input_tokens, output_tokens = 180 + (index * 7919) % 240, 24 + index % 30
    return {
        "id": f"chatcmpl-B{index:09d}{rng.getrandbits(64):016x}",
        "object": "chat.completion",
        "created": 1_760_000_000 + index // 100,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": None, "annotations": []},
                "logprobs": None,
                "finish_reason": finish,
            }
        ],
        "usage": {
            "prompt_tokens": input_tokens,
            "completion_tokens": output_tokens,
            "total_tokens": input_tokens + output_tokens,
            "prompt_tokens_details": {"cached_tokens": 128 if index % 4 == 0 else 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        },
        "service_tier": "default",
        "system_fingerprint": "fp_560af6e559",
    }


def error_line(custom_id: str, rng: random.Random, kind: int) -> dict[str, Any]:
    """An error file line: an HTTP failure inside ``response`` (``error: null``), or an expired request."""
    line_id = f"batch_req_{rng.getrandbits(96):024x}"
    if kind == _EXPIRED:
        error = {"code": "batch_expired", "message": "This request could not be executed before the"
                 " completion window expired."}  # fmt: skip
        return {"id": line_id, "custom_id": custom_id, "response": None, "error": error}
    status, code, kind_name, message = (
        (429, "rate_limit_exceeded", "requests", "Rate limit reached for gpt-4o-mini.")
        if kind == _RATE_LIMITED
        else (500, None, "server_error", "The server had an error while processing your request.")
    )
    body = {"error": {"message": message, "type": kind_name, "param": None, "code": code}}
    response = {"status_code": status, "request_id": f"{rng.getrandbits(128):032x}", "body": body}
    return {"id": line_id, "custom_id": custom_id, "response": response, "error": None}


def write_batch_files(work: Path, count: int, seed: int = 14) -> dict[str, Any]:
    """Write ``input.jsonl`` (structured outputs), ``input-plain.jsonl`` (the same requests without
    ``response_format``), ``output.jsonl`` and ``error.jsonl`` in ``work``; return the counts the landing's
    summary must show. Result lines are written in a shuffled order."""
    rng = random.Random(seed)
    reviews = [" ".join(rng.choices(WORDS, k=rng.randint(30, 45))) for _ in range(997)]
    kinds = bytearray(count)
    for index in range(count):
        draw = rng.random()
        kinds[index] = (
            _RATE_LIMITED if draw < FAIL_RATE
            else _SERVER_ERROR if draw < FAIL_RATE + SERVER_RATE
            else _EXPIRED if draw < FAIL_RATE + SERVER_RATE + EXPIRE_RATE
            else _INVALID if draw < FAIL_RATE + SERVER_RATE + EXPIRE_RATE + INVALID_RATE
            else _OK
        )  # fmt: skip
    encoder = msgspec.json.Encoder()
    with (
        (work / "input.jsonl").open("wb", buffering=BLOCK_SIZE) as structured,
        (work / "input-plain.jsonl").open("wb", buffering=BLOCK_SIZE) as plain,
    ):
        for index in range(count):
            review = f"Order {index}: {reviews[index % len(reviews)]}"
            line = {"custom_id": f"review-{index:07d}", "method": "POST", "url": "/v1/chat/completions"}
            structured.write(encoder.encode({**line, "body": request_body(review, True)}) + b"\n")
            plain.write(encoder.encode({**line, "body": request_body(review, False)}) + b"\n")
    order = list(range(count))
    rng.shuffle(order)
    with (
        (work / "output.jsonl").open("wb", buffering=BLOCK_SIZE) as output,
        (work / "error.jsonl").open("wb", buffering=BLOCK_SIZE) as errors,
    ):
        for index in order:
            custom_id = f"review-{index:07d}"
            kind = kinds[index]
            if kind in (_OK, _INVALID):
                response = {
                    "status_code": 200,
                    "request_id": f"{rng.getrandbits(128):032x}",
                    "body": reply_body(index, rng, kind),
                }
                line = {"id": f"batch_req_{rng.getrandbits(96):024x}", "custom_id": custom_id,
                        "response": response, "error": None}  # fmt: skip
                output.write(encoder.encode(line) + b"\n")
            else:
                errors.write(encoder.encode(error_line(custom_id, rng, kind)) + b"\n")
    failed = sum(1 for kind in kinds if kind not in (_OK, _INVALID))
    invalid = kinds.count(_INVALID)
    return {"rows": count, "seed": seed, "failed": failed, "invalid": invalid}


def batch_files(work: Path, count: int) -> dict[str, Any]:
    """The batch files in ``work``: generated, or reused when a previous run made them for ``count`` rows."""
    stamp = work / STAMP
    if stamp.exists():
        want = msgspec.json.decode(stamp.read_bytes())
        if want.get("rows") == count:
            print(f"Reusing the batch files in {work}.")
            return dict(want)
    started = time.perf_counter()
    want = write_batch_files(work, count)
    stamp.write_bytes(msgspec.json.encode(want))
    print(f"Generated the batch files in {time.perf_counter() - started:.0f} s.")
    return want


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def rss_now() -> int:
    return int(psutil.Process().memory_info().rss)


def land(work: Path, variant: str, profile: bool) -> None:
    """Land the batch's files once in this (fresh) process; print figures as JSON.

    ``floor`` and ``answers`` join ``input-plain.jsonl``, ``schema`` and ``parquet`` join ``input.jsonl``;
    ``floor`` stubs ``answer_row`` out, so its rows carry no answer columns.
    """
    from airflow_provider_batch import landing, results
    from airflow_provider_batch.answers import Answer

    if variant == "parquet":
        import pyarrow.parquet  # noqa: F401  # imported before the baseline: the landing's memory, not the import's
    if variant == "floor":
        results.answer_row = lambda request, ok, body, *, user_schema=None: (Answer(), None)  # type: ignore[assignment]
    plain = variant in ("floor", "answers")
    suffix = "parquet" if variant == "parquet" else "jsonl"
    target = work / f"landed-{variant}.{suffix}"
    kernel = KernelPeak()
    profiler = cProfile.Profile() if profile else None
    figures: dict[str, Any] = {}

    def join(destination: Any) -> Any:
        return results.write_joined(
            input_file=work / ("input-plain.jsonl" if plain else "input.jsonl"),
            destination=destination,
            output_file=work / "output.jsonl",
            error_file=work / "error.jsonl",
            batch_id="batch_bench",
        )

    gc.collect()
    baseline = rss_now()
    kernel.reset()
    with PeakRss() as sampled:
        if profiler is not None:
            profiler.enable()
        started, cpu = time.perf_counter(), cpu_seconds()
        if variant == "parquet":
            with landing._landed_file(target, "parquet") as rows_file:
                summary = join(rows_file)
                figures["join_seconds"] = time.perf_counter() - started
                figures["join_cpu"] = cpu_seconds() - cpu
                figures["join_rss"] = (kernel.read() or 0) - baseline
                figures["rows_file_size"] = Path(rows_file).stat().st_size
                kernel.reset()
        else:
            summary = join(target)
        figures["seconds"] = time.perf_counter() - started
        figures["cpu"] = cpu_seconds() - cpu
        if profiler is not None:
            profiler.disable()
    peak = kernel.read() or 0
    if variant == "parquet":
        figures["convert_rss"] = peak - baseline
        peak = max(peak, figures["join_rss"] + baseline)
    figures["rss"] = max(peak - baseline, sampled.peak - baseline)
    figures["baseline"] = baseline
    figures["max_rss"] = baseline + figures["rss"]  # not ru_maxrss: resetting VmHWM resets it too
    figures["size"] = target.stat().st_size
    figures["summary"] = {
        "requests": summary.requests,
        "succeeded": summary.succeeded,
        "failed": summary.failed,
        "invalid": summary.other_errors.get("invalid_output", 0),
        "missing": summary.missing.total if summary.missing else None,
    }
    if profiler is not None:
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(20)
        (work / f"profile-{variant}.txt").write_text(text.getvalue())
    print_figures(figures)


class KernelPeak:
    """This process's peak RSS as the kernel keeps it (``VmHWM``), reset to the current RSS by writing
    ``5`` to ``/proc/self/clear_refs`` (as ``job_run.py`` reads it); None off Linux."""

    def reset(self) -> None:
        with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")

    def read(self) -> int | None:
        try:
            status = Path("/proc/self/status").read_text()
        except OSError:
            return None
        match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
        return int(match.group(1)) * 1024 if match else None


LANDINGS = (
    ("floor", "join, answer columns empty (plain requests)"),
    ("answers", "join + answers, no schema (plain requests)"),
    ("schema", "join + answers + schema check, JSONL"),
    ("parquet", "the same, as Parquet (join + conversion)"),
)


def measure_landing(work: Path, count: int, profile: bool) -> None:
    """Generate (or reuse) the batch files, land them each way in a fresh child, print the table."""
    want = batch_files(work, count)
    succeeded = count - want["failed"] - want["invalid"]
    figures: dict[str, dict[str, Any]] = {}
    for variant, _ in LANDINGS:
        arguments = ["--child", "land", "--work", str(work), "--variant", variant]
        figures[variant] = run_child_figures(__file__, *arguments, *(["--profile"] if profile else []))
        got = figures[variant]["summary"]
        invalid = 0 if variant in ("floor", "answers") else want["invalid"]
        expect = {"requests": count, "succeeded": succeeded + want["invalid"] - invalid,
                  "failed": want["failed"] + invalid, "invalid": invalid, "missing": 0}  # fmt: skip
        assert got == expect, (variant, got, expect)

    print(f"\nLanding {count:,} requests ({want['failed']:,} failed, {want['invalid']:,} replies missing the"
          " schema), one fresh child each; RSS growth over the child's size after imports")  # fmt: skip
    header = (
        f"  {'landing':<46}{'wall s':>8}{'CPU s':>8}{'k rows/s':>10}{'µs/row':>8}{'RSS MB':>8}{'peak MB':>9}"
    )
    print(f"{header}\n  {'-' * (len(header) - 2)}")
    for variant, label in LANDINGS:
        row = figures[variant]
        print(
            f"  {label:<46}{row['seconds']:>8.2f}{row['cpu']:>8.2f}{count / row['seconds'] / 1e3:>10.0f}"
            f"{row['seconds'] / count * 1e6:>8.1f}{row['rss'] / MB:>8.1f}{row['max_rss'] / MB:>9.1f}"
        )
        if variant == "parquet":
            join_s, join_cpu = row["join_seconds"], row["join_cpu"]
            convert_s, convert_cpu = row["seconds"] - join_s, row["cpu"] - join_cpu
            parts = (
                ("join to temporary JSONL", join_s, join_cpu, row["join_rss"]),
                ("write_parquet", convert_s, convert_cpu, row["convert_rss"]),
            )
            for part, seconds, cpu, rss in parts:
                print(
                    f"    {part:<44}{seconds:>8.2f}{cpu:>8.2f}{count / seconds / 1e3:>10.0f}"
                    f"{seconds / count * 1e6:>8.1f}{rss / MB:>8.1f}"
                )

    alone = run_convert(work / "landed-schema.jsonl", work / "converted-alone.parquet", None, "zstd")
    print(
        f"  {'write_parquet alone (fresh child, same rows)':<46}{alone['seconds']:>8.2f}{'':>8}"
        f"{count / alone['seconds'] / 1e3:>10.0f}{alone['seconds'] / count * 1e6:>8.1f}"
        f"{alone['rss'] / MB:>8.1f}"
    )

    floor, answers, schema = (figures[name] for name in ("floor", "answers", "schema"))
    print("\n  Per-row cost over the floor (wall / CPU µs):")
    for label, high, low in (("answer extraction", answers, floor), ("schema read + check", schema, answers),
                             ("both", schema, floor)):  # fmt: skip
        wall = (high["seconds"] - low["seconds"]) / count * 1e6
        cpu = (high["cpu"] - low["cpu"]) / count * 1e6
        print(f"    {label:<22}{wall:>7.1f} / {cpu:.1f}")

    sizes = [("input, structured outputs", (work / "input.jsonl").stat().st_size),
             ("input, plain", (work / "input-plain.jsonl").stat().st_size),
             ("output", (work / "output.jsonl").stat().st_size),
             ("error", (work / "error.jsonl").stat().st_size),
             ("landed JSONL", schema["size"]),
             ("landed Parquet", figures["parquet"]["size"])]  # fmt: skip
    print("\n  Sizes: " + ", ".join(f"{name} {size / MB:,.1f} MB" for name, size in sizes))
    print(
        f"  Landed JSONL / Parquet: x{schema['size'] / figures['parquet']['size']:.0f} (Parquet has no body)"
    )
    if profile:
        for variant, _ in LANDINGS:
            print(f"\n  cProfile, {variant}:\n" + (work / f"profile-{variant}.txt").read_text())


# Report -----------------------------------------------------------------------------------------------------


def measure_variant(name: str, rows: Any, count: int, work: Path) -> tuple[Path, dict[str, Any]]:
    """Write the JSONL (timed), convert it at the defaults, read it back; print and return the figures."""
    stem = name.split()[0]
    source = work / f"{stem}.jsonl"
    started = time.perf_counter()
    for _ in rows(count):
        pass
    construct = time.perf_counter() - started
    started = time.perf_counter()
    write_jsonl(rows(count), source)
    encode = time.perf_counter() - started - construct
    want = expected(rows(count))

    target = work / f"{stem}.parquet"
    converted = run_convert(source, target, None, "zstd")
    read = run_read(target)
    got = {key: read[key] for key in ("rows", "input_tokens", "last")}
    assert converted["rows"] == want["rows"], (converted, want)
    assert got == want, (got, want)

    jsonl_mb, parquet_mb = source.stat().st_size / MB, converted["size"] / MB
    print(f"\n{name}: {count:,} rows")
    print(f"  JSONL written (encode + write)  {encode:7.2f} s   {count / encode / 1e3:7.0f} k rows/s")
    print(
        f"  Parquet converted               {converted['seconds']:7.2f} s   "
        f"{count / converted['seconds'] / 1e3:7.0f} k rows/s   RSS growth {converted['rss'] / MB:.1f} MB   "
        f"{converted['row_groups']} row groups"
    )
    print(
        f"  size: JSONL {jsonl_mb:.1f} MB, Parquet {parquet_mb:.1f} MB (x{jsonl_mb / parquet_mb:.0f} smaller;"
        " Parquet has no body column)"
    )
    print(
        f"  read back (pyarrow read_table)  {read['seconds']:7.2f} s   RSS growth {read['rss'] / MB:.1f} MB"
        f"   {got['rows']:,} rows, input_tokens {got['input_tokens']:,}, last {got['last']}: as generated"
    )
    return source, converted


def sweep(source: Path, work: Path, default: dict[str, Any]) -> None:
    """Rows per row group and codec, one fresh child each, beside the default run's figures."""
    from airflow_provider_batch.parquet import DEFAULT_ROW_GROUP_ROWS

    header = f"  {'row group rows':>14}{'codec':>8}{'groups':>8}{'time s':>8}{'RSS MB':>8}{'size MB':>9}"
    print(f"\n{header}\n  {'-' * (len(header) - 2)}")
    settings = [(rows, "zstd") for rows in (32_768, 65_536, DEFAULT_ROW_GROUP_ROWS, 262_144)]
    settings += [(DEFAULT_ROW_GROUP_ROWS, "snappy"), (DEFAULT_ROW_GROUP_ROWS, "none")]
    for rows, codec in settings:
        is_default = rows == DEFAULT_ROW_GROUP_ROWS and codec == "zstd"
        figures = default if is_default else run_convert(source, work / "sweep.parquet", rows, codec)
        mark = "  (default)" if is_default else ""
        print(
            f"  {rows:>14,}{codec:>8}{figures['row_groups']:>8}{figures['seconds']:>8.2f}"
            f"{figures['rss'] / MB:>8.1f}{figures['size'] / MB:>9.1f}{mark}"
        )


def measure_conversion(args: argparse.Namespace, work: Path) -> None:
    """The conversion alone, on synthetic landed rows: chat rows with the settings sweep, then embeddings."""
    print(
        "\nConversion alone. Each conversion and read runs once in a fresh child process; RSS growth is its"
        " peak over the call."
    )
    source, default = measure_variant("chat", chat_rows, args.rows, work)
    sweep(source, work, default)
    source.unlink()
    dims = args.embedding_dims

    def embeddings(count: int) -> Any:
        return embedding_rows(count, dims)

    source, _ = measure_variant(f"embeddings ({dims} dims)", embeddings, args.embedding_rows, work)
    source.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("all", "landing", "conversion"), default="all")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--keep", type=Path, metavar="DIR", help="write the files to DIR and keep them")
    parser.add_argument("--profile", action="store_true", help="run the landings under cProfile")
    parser.add_argument("--embedding-rows", type=int, default=100_000)
    parser.add_argument("--embedding-dims", type=int, default=256)
    parser.add_argument("--child", choices=("convert", "read", "land"), help=argparse.SUPPRESS)
    parser.add_argument("--source", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--target", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--row-group-rows", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--compression", default="zstd", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "convert":
        convert(args.source, args.target, args.row_group_rows, args.compression)
        return
    if args.child == "read":
        read_back(args.target)
        return
    if args.child == "land":
        land(args.work, args.variant, args.profile)
        return

    # A SIGTERM unwinds like a Ctrl-C, so the temporary files go too; the children are guarded (_measure).
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    load = os.getloadavg()
    print(f"Load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} ({os.cpu_count()} CPUs)")
    with contextlib.ExitStack() as stack:
        if args.keep is not None:
            args.keep.mkdir(parents=True, exist_ok=True)
            work = args.keep
        else:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="landing-formats-")))
        if args.mode in ("all", "landing"):
            measure_landing(work, args.rows, args.profile)
        if args.mode in ("all", "conversion"):
            measure_conversion(args, work)
    load = os.getloadavg()
    print(f"\nLoad average at end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
