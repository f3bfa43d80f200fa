"""Landed results as JSONL and as Parquet (``airflow_provider_batch.parquet``): time, memory, size.

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

    .venv/bin/python benchmarks/landing_formats.py [--rows 1000000] [--embedding-rows 100000]\
        [--embedding-dims 256]
"""

from __future__ import annotations

import argparse
import gc
import random
import tempfile
import time
from array import array
from pathlib import Path
from typing import Any

import msgspec
from _measure import MB, measure_call, print_figures, run_child_figures

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--embedding-rows", type=int, default=100_000)
    parser.add_argument("--embedding-dims", type=int, default=256)
    parser.add_argument("--child", choices=("convert", "read"), help=argparse.SUPPRESS)
    parser.add_argument("--source", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--target", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--row-group-rows", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--compression", default="zstd", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "convert":
        convert(args.source, args.target, args.row_group_rows, args.compression)
        return
    if args.child == "read":
        read_back(args.target)
        return

    print(
        "Each conversion and read runs once in a fresh child process; RSS growth is its peak over the call."
    )
    with tempfile.TemporaryDirectory(prefix="landing-formats-") as tmp:
        work = Path(tmp)
        source, default = measure_variant("chat", chat_rows, args.rows, work)
        sweep(source, work, default)
        source.unlink()
        dims = args.embedding_dims

        def embeddings(count: int) -> Any:
            return embedding_rows(count, dims)

        source, default = measure_variant(f"embeddings ({dims} dims)", embeddings, args.embedding_rows, work)


if __name__ == "__main__":
    main()
