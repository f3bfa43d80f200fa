"""Shards: the cut rule on plain values, and the splitter on real files, local and in object storage.

The splitter's limits are exercised with small caps (a few requests or bytes per shard), which cross every
boundary with tiny files; the one test at OpenAI's own request limit uses 50,001 lines of about 80 bytes.
"""

from __future__ import annotations

import io
import json
import tracemalloc
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk import ObjectStoragePath

from airflow_provider_batch.limits import MAX_EMBEDDING_INPUTS, MAX_FILE_BYTES, MAX_REQUESTS
from airflow_provider_batch.requests import OpenAIBatchInvalidInput, validate_batch_file
from airflow_provider_batch.shards import (
    ShardLimits,
    ShardPlan,
    ShardSize,
    _IdDigests,
    split_batch_file,
)

CHAT = "/v1/chat/completions"
EMBEDDINGS = "/v1/embeddings"
MODEL = "gpt-4o-mini"


def request(custom_id: str, *, url: str = CHAT, **body: Any) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": {"model": MODEL, **body}}


def line(custom_id: str, *, url: str = CHAT, **body: Any) -> bytes:
    """A request line with its newline, as ``json.dumps`` writes it."""
    return json.dumps(request(custom_id, url=url, **body)).encode() + b"\n"


def lines(count: int, start: int = 1) -> bytes:
    return b"".join(line(f"r{n}") for n in range(start, start + count))


def non_blank(data: bytes) -> bytes:
    """The lines a splitter must write: every non-blank line, newlines kept."""
    return b"".join(piece for piece in data.splitlines(keepends=True) if piece.strip())


def concatenated(plan: ShardPlan) -> bytes:
    return b"".join(Path(str(shard.path)).read_bytes() for shard in plan.shards)


def spans(plan: ShardPlan) -> list[tuple[int, int, int]]:
    return [(shard.first_line, shard.last_line, shard.requests) for shard in plan.shards]


@pytest.fixture
def memory_root() -> Iterator[ObjectStoragePath]:
    """A fresh directory on fsspec's in-memory store (attached as ``memory://`` by ``tests/conftest.py``)."""
    root = ObjectStoragePath(f"memory://test-shards-{uuid.uuid4().hex}")
    yield root
    if root.exists():
        root.fs.rm(root.path, recursive=True)


# The cut rule, on plain values ----------------------------------------------------------------------------

LIMITS = ShardLimits(max_requests=3, max_bytes=100, max_embedding_inputs=10)


@pytest.mark.parametrize(
    ("shard", "line_bytes", "line_inputs", "expected"),
    [
        pytest.param(ShardSize(), 100, 10, False, id="an-empty-shard-takes-a-line-at-every-limit"),
        pytest.param(ShardSize(2, 50, 0), 10, 0, False, id="third-request-fits"),
        pytest.param(ShardSize(3, 50, 0), 10, 0, True, id="fourth-request-cuts"),
        pytest.param(ShardSize(1, 60, 0), 40, 0, False, id="bytes-exactly-at-the-limit"),
        pytest.param(ShardSize(1, 60, 0), 41, 0, True, id="bytes-one-over"),
        pytest.param(ShardSize(1, 0, 6), 1, 4, False, id="embedding-inputs-exactly-at-the-limit"),
        pytest.param(ShardSize(1, 0, 6), 1, 5, True, id="embedding-inputs-one-over"),
    ],
)
def test_starts_new_shard(shard: ShardSize, line_bytes: int, line_inputs: int, expected: bool) -> None:
    assert LIMITS.starts_new_shard(shard, line_bytes, line_inputs) is expected


def test_line_problem() -> None:
    assert LIMITS.line_problem(100, 10) is None
    assert LIMITS.line_problem(101, 0) == (
        None,
        "expected a line of at most 100 bytes (max_bytes_per_batch), got 101 bytes:"
        " a request cannot be split across batches",
    )
    assert LIMITS.line_problem(1, 11) == (
        "body.input",
        "field 'body.input' must hold at most 10 embedding inputs (the limit of one batch), got 11:"
        " a request cannot be split across batches",
    )
    assert ShardLimits().line_problem(MAX_FILE_BYTES + 1, 0) == (
        None,
        "expected a line of at most 209,715,200 bytes (OpenAI's limit of 200 MiB per batch file),"
        " got 209,715,201 bytes: a request cannot be split across batches",
    )


def test_limits_default_to_openai_and_take_the_operator_caps() -> None:
    assert ShardLimits() == ShardLimits.from_batch_caps() == ShardLimits(50_000, 209_715_200, 50_000)
    assert ShardLimits.from_batch_caps(max_requests_per_batch=10) == ShardLimits(max_requests=10)
    assert ShardLimits.from_batch_caps(max_bytes_per_batch=MAX_FILE_BYTES) == ShardLimits()
    assert ShardLimits.from_batch_caps(MAX_REQUESTS, 1) == ShardLimits(max_bytes=1)


@pytest.mark.parametrize(
    ("caps", "shown"),
    [
        ({"max_requests_per_batch": 0}, "0"),
        ({"max_requests_per_batch": 50_001}, "50001"),
        ({"max_requests_per_batch": True}, "True"),
        ({"max_requests_per_batch": "100"}, "'100'"),
        ({"max_bytes_per_batch": -1}, "-1"),
        ({"max_bytes_per_batch": MAX_FILE_BYTES + 1}, "209715201"),
        ({"max_bytes_per_batch": 1.5}, "1.5"),
    ],
)
def test_invalid_caps_are_refused_by_their_name(caps: dict[str, Any], shown: str) -> None:
    ((name, _),) = caps.items()
    limit = (
        "50,000 (OpenAI's limit of requests" if "requests" in name else "209,715,200 (OpenAI's limit of bytes"
    )

    with pytest.raises(ValueError, match=name) as raised:
        ShardLimits.from_batch_caps(**caps)

    assert str(raised.value) == (
        f"{name} must be an integer from 1 to {limit} per batch), or None for that limit; got {shown}"
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_requests", 0),
        ("max_bytes", MAX_FILE_BYTES + 1),
        ("max_embedding_inputs", MAX_EMBEDDING_INPUTS + 1),
    ],
)
def test_invalid_limits_are_refused_by_their_name(field: str, value: int) -> None:
    with pytest.raises(ValueError, match=f"^{field} must be an integer from 1 to "):
        ShardLimits(**{field: value})


def test_id_digests_name_the_first_line_across_growth() -> None:
    ids = _IdDigests(slots=4)  # grows many times over 10,000 ids

    assert [ids.first_line_of(f"r{n}", n) for n in range(1, 10_001)] == list(range(1, 10_001))
    assert [ids.first_line_of(f"r{n}", 20_000 + n) for n in (1, 4_096, 10_000)] == [1, 4_096, 10_000]
    assert ids.first_line_of("new", 30_000) == 30_000


# The splitter, on real files ------------------------------------------------------------------------------


def tiny_lines(count: int) -> bytes:
    return b"".join(
        b'{"custom_id":"%d","method":"POST","url":"/v1/embeddings","body":{"model":"m"}}\n' % n
        for n in range(count)
    )


@pytest.mark.parametrize(
    ("count", "expected"),
    [(MAX_REQUESTS, [(2, 50_001, 50_000)]), (MAX_REQUESTS + 1, [(2, 50_001, 50_000), (50_002, 50_002, 1)])],
)
def test_openai_request_limit(tmp_path: Path, count: int, expected: list[tuple[int, int, int]]) -> None:
    source = tmp_path / "input.jsonl"
    data = b"\n" + tiny_lines(count)  # the blank first line shifts line numbers by one
    source.write_bytes(data)

    plan = split_batch_file(source, tmp_path / "shards", endpoint=EMBEDDINGS)

    assert spans(plan) == expected
    assert plan.requests == count
    if count == MAX_REQUESTS:
        assert not plan.split
        assert plan.shards[0].path == source
        assert plan.shards[0].bytes == len(data)
        assert not (tmp_path / "shards").exists()
    else:
        assert plan.split
        assert [shard.path for shard in plan.shards] == [
            tmp_path / "shards" / "shard-00001.jsonl",
            tmp_path / "shards" / "shard-00002.jsonl",
        ]
        assert concatenated(plan) == non_blank(data)
        assert [shard.bytes for shard in plan.shards] == [
            Path(shard.path).stat().st_size for shard in plan.shards
        ]


def test_request_cap_many_shards_with_blank_lines(tmp_path: Path) -> None:
    source = tmp_path / "input.jsonl"
    data = lines(3) + b"\n  \r\n" + lines(4, start=4) + b"\n"
    source.write_bytes(data)

    plan = split_batch_file(source, tmp_path / "out", endpoint=CHAT, limits=ShardLimits(max_requests=3))

    assert spans(plan) == [(1, 3, 3), (6, 8, 3), (9, 9, 1)]
    assert [Path(str(shard.path)).read_bytes() for shard in plan.shards] == [
        lines(3),
        lines(3, start=4),
        lines(1, start=7),
    ]
    assert (plan.requests, plan.bytes, plan.model, plan.split) == (7, len(data), MODEL, True)
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == [
        "shard-00001.jsonl",
        "shard-00002.jsonl",
        "shard-00003.jsonl",
    ]


@pytest.mark.parametrize(
    ("max_bytes", "expected"),
    [
        pytest.param(4, [(1, 4, 4)], id="all-four-fit-exactly"),
        pytest.param(3, [(1, 3, 3), (4, 4, 1)], id="one-byte-short"),
        pytest.param(2, [(1, 2, 2), (3, 4, 2)], id="two-per-shard"),
    ],
)
def test_byte_cap(tmp_path: Path, max_bytes: int, expected: list[tuple[int, int, int]]) -> None:
    source = tmp_path / "input.jsonl"
    data = lines(4)
    size = len(line("r1"))
    assert {len(line(f"r{n}")) for n in range(1, 5)} == {size}
    source.write_bytes(data)

    plan = split_batch_file(
        source,
        tmp_path / "out",
        endpoint=CHAT,
        limits=ShardLimits.from_batch_caps(max_bytes_per_batch=max_bytes * size),
    )

    assert spans(plan) == expected
    assert plan.split is (len(expected) > 1)
    if plan.split:
        assert concatenated(plan) == data
        assert all(shard.bytes <= max_bytes * size for shard in plan.shards)


def test_an_unterminated_last_line_is_copied_without_a_newline(tmp_path: Path) -> None:
    source = tmp_path / "input.jsonl"
    data = lines(2) + line("r3").rstrip(b"\n")
    source.write_bytes(data)
    size = len(line("r1"))

    # Two full lines and the last one without its newline: exactly 3 * size - 1 bytes, one shard.
    fits = split_batch_file(source, tmp_path / "a", endpoint=CHAT, limits=ShardLimits(max_bytes=3 * size - 1))
    cut = split_batch_file(source, tmp_path / "b", endpoint=CHAT, limits=ShardLimits(max_bytes=2 * size))

    assert (fits.split, spans(fits)) == (False, [(1, 3, 3)])
    assert spans(cut) == [(1, 2, 2), (3, 3, 1)]
    assert cut.shards[1].bytes == size - 1
    assert concatenated(cut) == data


def test_blank_lines_that_make_the_source_too_large_are_dropped_into_one_shard(tmp_path: Path) -> None:
    source = tmp_path / "input.jsonl"
    data = lines(2) + b"\n" * 10
    source.write_bytes(data)

    plan = split_batch_file(
        source, tmp_path / "out", endpoint=CHAT, limits=ShardLimits(max_bytes=len(data) - 1)
    )

    assert (plan.split, spans(plan)) == (True, [(1, 2, 2)])
    assert concatenated(plan) == lines(2)


def test_embedding_inputs_cut_shards(tmp_path: Path) -> None:
    source = tmp_path / "input.jsonl"
    inputs = [20_000, 20_000, 10_000, 1, ["one", "two"], "x"]
    data = b"".join(
        line(f"e{n}", url=EMBEDDINGS, input=["x"] * i if isinstance(i, int) else i)
        for n, i in enumerate(inputs)
    )
    source.write_bytes(data)

    plan = split_batch_file(source, tmp_path / "out", endpoint=EMBEDDINGS)

    assert spans(plan) == [(1, 3, 3), (4, 6, 3)]
    assert [shard.embedding_inputs for shard in plan.shards] == [50_000, 4]
    assert plan.embedding_inputs == 50_004
    assert concatenated(plan) == data


def test_inputs_of_other_endpoints_are_not_embedding_inputs(tmp_path: Path) -> None:
    source = tmp_path / "input.jsonl"
    source.write_bytes(line("a", url="/v1/moderations", input=["x"] * 60_000))

    plan = split_batch_file(source, tmp_path / "out", endpoint="/v1/moderations")

    assert (plan.split, plan.embedding_inputs) == (False, 0)


# The splitter: errors ---------------------------------------------------------------------------------------


def test_a_line_that_fits_no_shard_is_an_error(tmp_path: Path) -> None:
    source = tmp_path / "input.jsonl"
    big = line("big", messages=[{"role": "user", "content": "x" * 200}])
    huge = line("many", url=EMBEDDINGS, input=["x"] * (MAX_EMBEDDING_INPUTS + 1))
    source.write_bytes(lines(2) + big + lines(2, start=3))
    embeddings = tmp_path / "embeddings.jsonl"
    embeddings.write_bytes(line("one", url=EMBEDDINGS, input="x") + huge)

    with pytest.raises(OpenAIBatchInvalidInput) as raised:
        split_batch_file(
            source, tmp_path / "out", endpoint=CHAT, limits=ShardLimits(max_bytes=200, max_requests=1)
        )
    with pytest.raises(OpenAIBatchInvalidInput) as embedding_raised:
        split_batch_file(embeddings, tmp_path / "out", endpoint=EMBEDDINGS)

    assert str(raised.value) == (
        "invalid batch input, 1 error:\n"
        "  line 3 (custom_id 'big'): expected a line of at most 200 bytes (max_bytes_per_batch),"
        f" got {len(big)} bytes: a request cannot be split across batches"
    )
    assert [str(error) for error in embedding_raised.value.errors] == [
        "line 2 (custom_id 'many'): field 'body.input' must hold at most 50,000 embedding inputs"
        " (the limit of one batch), got 50,001: a request cannot be split across batches"
    ]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_duplicate_ids_across_shards_name_both_lines_and_leave_no_files(tmp_path: Path) -> None:
    source = tmp_path / "input.jsonl"
    source.write_bytes(lines(5) + b"\n" + line("r2") + lines(3, start=6))

    with pytest.raises(OpenAIBatchInvalidInput) as raised:
        split_batch_file(source, tmp_path / "out", endpoint=CHAT, limits=ShardLimits(max_requests=2))

    assert [str(error) for error in raised.value.errors] == [
        "line 7 (custom_id 'r2'): field 'custom_id' must be unique, got 'r2' already used on line 2"
    ]
    assert list((tmp_path / "out").iterdir()) == []  # shards 1 to 3 had been written


def test_every_bad_line_is_reported_up_to_the_cap(tmp_path: Path) -> None:
    source = tmp_path / "input.jsonl"
    bad = [line(f"bad{n}", url="/v1/x") for n in range(25)]
    source.write_bytes(lines(3) + b"".join(bad) + line("r1") + line("r9", model="other"))

    with pytest.raises(OpenAIBatchInvalidInput) as raised:
        split_batch_file(
            source, tmp_path / "out", endpoint=CHAT, limits=ShardLimits(max_requests=2), max_errors=22
        )

    errors = raised.value.errors
    assert [(error.line, error.custom_id, error.field) for error in errors] == [
        (4 + n, f"bad{n}", "url") for n in range(22)
    ]
    assert str(errors[0]) == (
        "line 4 (custom_id 'bad0'): field 'url' must equal the batch endpoint '/v1/chat/completions',"
        " got '/v1/x'"
    )
    assert raised.value.unreported == 3 + 2  # three more bad urls, the duplicate r1 and the second model
    assert list((tmp_path / "out").iterdir()) == []


def test_same_messages_as_the_validator(tmp_path: Path) -> None:
    """The splitter checks lines through the validator's checker: same input, same words."""
    source = tmp_path / "input.jsonl"
    source.write_bytes(
        lines(2) + b'{"custom_id": "r3",\n' + line("r4", stream=True) + line("r5", model="gpt-4o") + b"[1]\n"
    )

    with pytest.raises(OpenAIBatchInvalidInput) as raised:
        split_batch_file(source, tmp_path / "out", endpoint=CHAT, limits=ShardLimits(max_requests=1))

    assert raised.value.errors == list(validate_batch_file(source, endpoint=CHAT).errors)
    assert len(raised.value.errors) == 4


@pytest.mark.parametrize("content", [b"", b"\n \n"], ids=["empty", "blank-lines-only"])
def test_an_input_without_requests(tmp_path: Path, content: bytes) -> None:
    source = tmp_path / "input.jsonl"
    source.write_bytes(content)

    with pytest.raises(OpenAIBatchInvalidInput, match="file: expected at least one request, got none"):
        split_batch_file(source, tmp_path / "out", endpoint=CHAT)
    assert not (tmp_path / "out").exists()


def test_bad_endpoint(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="Did you mean '/v1/chat/completions'"):
        split_batch_file(io.BytesIO(lines(1)), tmp_path, endpoint="/v1/chat")


# The splitter: sources, destinations, memory ---------------------------------------------------------------


def test_object_storage_source_and_directory(memory_root: ObjectStoragePath) -> None:
    source = memory_root / "input.jsonl"
    data = lines(5)
    source.write_bytes(data)

    plan = split_batch_file(source, memory_root / "shards", endpoint=CHAT, limits=ShardLimits(max_requests=2))

    assert [str(shard.path) for shard in plan.shards] == [
        f"{memory_root}/shards/shard-0000{n}.jsonl" for n in (1, 2, 3)
    ]
    assert b"".join(shard.path.read_bytes() for shard in plan.shards) == data  # type: ignore[union-attr]

    single = split_batch_file(source, memory_root / "single", endpoint=CHAT)
    assert single.shards[0].path is source
    assert not (memory_root / "single").exists()

    source.write_bytes(data + line("r1"))
    with pytest.raises(OpenAIBatchInvalidInput):
        split_batch_file(source, memory_root / "bad", endpoint=CHAT, limits=ShardLimits(max_requests=2))
    assert list((memory_root / "bad").iterdir()) == []


def test_file_object_source(tmp_path: Path) -> None:
    stream = io.BytesIO(b"head\n" + lines(3))
    stream.seek(5)

    plan = split_batch_file(stream, tmp_path, endpoint=CHAT, limits=ShardLimits(max_requests=2))

    assert not stream.closed
    assert spans(plan) == [(1, 2, 2), (3, 3, 1)]
    assert concatenated(plan) == lines(3)


def test_memory_stays_flat(tmp_path: Path) -> None:
    """A 20 MB input in 10 KB lines is copied into shards without holding it: a few 1 MiB blocks (reading,
    splitting, buffered writing), whatever the input's size."""
    source = tmp_path / "input.jsonl"
    pad = "x" * 10_000
    with source.open("wb") as out:
        for n in range(2_000):
            out.write(line(f"r{n}", pad=pad))

    tracemalloc.start()
    try:
        plan = split_batch_file(source, tmp_path / "out", endpoint=CHAT, limits=ShardLimits(max_requests=100))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert len(plan.shards) == 20
    assert source.stat().st_size > 20_000_000
    assert peak < 10_000_000
