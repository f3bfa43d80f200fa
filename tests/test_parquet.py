"""``airflow_provider_batch.parquet``: landed JSONL rows converted to one fixed Parquet schema.

The rows are written here in the landed shape (issue 14) with ``msgspec``, as the landing code writes
them, and read back with pyarrow alone (pandas is not a dependency of any tier).
"""

from __future__ import annotations

import importlib.util
import io
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import msgspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from airflow.sdk import ObjectStoragePath
from airflow.sdk.io import attach

import airflow_provider_batch.parquet as parquet_module
from airflow_provider_batch.exceptions import OpenAIBatchConfigError
from airflow_provider_batch.parquet import (
    INSTALL_HINT,
    output_format_for,
    parquet_schema,
    require_parquet,
    write_parquet,
)

KEYS = (
    "custom_id",
    "line",
    "ok",
    "status_code",
    "error_code",
    "error_message",
    "text",
    "refusal",
    "finish_reason",
    "tool_calls",
    "parsed",
    "embedding",
    "embeddings",
    "flagged",
    "categories",
    "images",
    "input_tokens",
    "output_tokens",
    "cached_tokens",
    "reasoning_tokens",
    "round",
    "batch_id",
    "request",
    "body",
)
COLUMNS = [key for key in KEYS if key != "body"]


def landed(custom_id: str | None, line: int, **values: Any) -> dict[str, Any]:
    """A landed row with every key present, null unless given; ``body`` a small chat body by default."""
    row: dict[str, Any] = dict.fromkeys(KEYS)
    row.update(custom_id=custom_id, line=line, ok=True, status_code=200, round=1, body={"id": "chatcmpl-x"})
    row.update(values)
    return row


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_bytes(b"".join(msgspec.json.encode(row) + b"\n" for row in rows))
    return path


CHAT = landed(
    "review-1",
    1,
    text='Ünïcödé ✓ 日本語 — "quoted"\nnew line',
    finish_reason="stop",
    parsed={"label": "positive", "score": 0.5, "tags": ["a", "b"], "nested": {"x": None}},
    input_tokens=120,
    output_tokens=7,
    cached_tokens=0,
    reasoning_tokens=0,
    batch_id="batch_1",
    request={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi ✓"}]},
)
TOOLS = landed(
    "review-2",
    2,
    finish_reason="tool_calls",
    tool_calls=[
        {"id": "call_1", "name": "lookup", "arguments": '{"sku": "A-1"}'},
        {"id": None, "name": "noop", "arguments": "{}"},
    ],
    round=2,
    batch_id="batch_2",
)
FAILED = landed(
    "review-3",
    3,
    ok=False,
    status_code=429,
    error_code="rate_limit_exceeded",
    error_message="Rate limit reached.",
    body={"error": {"code": "rate_limit_exceeded"}},
)
EXPIRED = landed("review-4", 4, ok=False, status_code=None, error_code="batch_expired", body=None)
MALFORMED = landed(None, 5, ok=False, status_code=None, error_code="malformed_input", body=None)
EMBEDDING = landed("doc-1", 6, embedding=[0.25, -1.5, 2**-15], input_tokens=9)  # float32-exact values
EMBEDDINGS = landed("doc-2", 7, embeddings=[[1.0, 2.0], [], [0.125]], input_tokens=11)
MODERATION = landed("mod-1", 8, flagged=True, categories=["harassment", "violence"])
IMAGES = landed("img-1", 9, images=["aGVsbG8=", "https://example.test/i.png"], refusal=None)
REFUSAL = landed("review-5", 10, refusal="I can't help with that.", finish_reason="stop")
ROWS = [CHAT, TOOLS, FAILED, EXPIRED, MALFORMED, EMBEDDING, EMBEDDINGS, MODERATION, IMAGES, REFUSAL]


def expected(row: dict[str, Any]) -> dict[str, Any]:
    """What the Parquet row must read back as: no body, JSON values as compact JSON text."""
    out = {key: row[key] for key in COLUMNS}
    for key in ("tool_calls", "parsed", "request"):
        if out[key] is not None:
            out[key] = msgspec.json.encode(out[key]).decode()
    return out


@pytest.fixture(scope="module")
def memory_store() -> Iterator[str]:
    memory = fsspec.filesystem("memory")
    attach(protocol="memory", fs=memory)
    yield "memory://parquet-tests"
    if memory.exists("/parquet-tests"):
        memory.rm("/parquet-tests", recursive=True)


# Conversion -------------------------------------------------------------------------------------------------


def test_rows_and_values_round_trip(tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "landed.jsonl", ROWS)
    assert write_parquet(source, tmp_path / "landed.parquet") == len(ROWS)
    table = pq.read_table(tmp_path / "landed.parquet")
    assert table.column_names == COLUMNS
    assert table.to_pylist() == [expected(row) for row in ROWS]


def test_schema_is_fixed_and_typed(tmp_path: Path) -> None:
    """Types do not depend on the data: an all-null column keeps its type, ints never become floats."""
    source = write_jsonl(tmp_path / "landed.jsonl", [EXPIRED])
    write_parquet(source, tmp_path / "landed.parquet")
    schema = pq.read_schema(tmp_path / "landed.parquet")
    types = {field.name: field.type for field in schema}
    floats = pa.list_(pa.float32())
    assert types == {
        "custom_id": pa.string(),
        "line": pa.int64(),
        "ok": pa.bool_(),
        "status_code": pa.int32(),
        "error_code": pa.string(),
        "error_message": pa.string(),
        "text": pa.string(),
        "refusal": pa.string(),
        "finish_reason": pa.string(),
        "tool_calls": pa.string(),
        "parsed": pa.string(),
        "embedding": floats,
        "embeddings": pa.list_(floats),
        "flagged": pa.bool_(),
        "categories": pa.list_(pa.string()),
        "images": pa.list_(pa.string()),
        "input_tokens": pa.int64(),
        "output_tokens": pa.int64(),
        "cached_tokens": pa.int64(),
        "reasoning_tokens": pa.int64(),
        "round": pa.int32(),
        "batch_id": pa.string(),
        "request": pa.string(),
    }
    assert [name for name in COLUMNS if not schema.field(name).nullable] == ["line", "ok", "round"]
    assert schema.equals(parquet_schema(), check_metadata=False)


def test_embeddings_are_float32(tmp_path: Path) -> None:
    value = 0.1  # not exact in float32: the column holds the float32 nearest to it
    source = write_jsonl(tmp_path / "landed.jsonl", [landed("doc", 1, embedding=[value])])
    write_parquet(source, tmp_path / "landed.parquet")
    column = pq.read_table(tmp_path / "landed.parquet")["embedding"]
    assert column.type == pa.list_(pa.float32())
    assert column.to_pylist() == [[pa.scalar(value, pa.float32()).as_py()]]


def test_json_text_columns_parse_back(tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "landed.jsonl", [CHAT, TOOLS, landed("s", 3, parsed="just a string")])
    write_parquet(source, tmp_path / "landed.parquet")
    table = pq.read_table(tmp_path / "landed.parquet")
    parsed = [None if text is None else msgspec.json.decode(text) for text in table["parsed"].to_pylist()]
    assert parsed == [CHAT["parsed"], None, "just a string"]
    calls = msgspec.json.decode(table["tool_calls"][1].as_py())
    assert calls == TOOLS["tool_calls"]
    assert msgspec.json.decode(table["request"][0].as_py()) == CHAT["request"]


def test_old_rows_without_the_new_keys(tmp_path: Path) -> None:
    """Rows landed before issue 14 (seven keys) still convert; absent keys are null and ``round`` is 1."""
    old = [
        {"custom_id": "a", "line": 1, "ok": True, "status_code": 200, "body": {"x": 1}, "error_code": None,
         "error_message": None},
        {"custom_id": "b", "line": 2, "ok": False, "status_code": None, "body": None,
         "error_code": "missing", "error_message": "No output or error line has this custom_id."},
    ]  # fmt: skip
    merged = {**old[0], "custom_id": "c", "line": 3, "round": 3}  # a merged row of rounds.py
    source = write_jsonl(tmp_path / "old.jsonl", [*old, merged])
    write_parquet(source, tmp_path / "old.parquet")
    rows = pq.read_table(tmp_path / "old.parquet").to_pylist()
    assert [row["round"] for row in rows] == [1, 1, 3]
    assert rows[1]["error_code"] == "missing"
    for row in rows:
        assert all(row[key] is None for key in ("text", "parsed", "embedding", "batch_id", "request"))


def test_row_groups_fill_to_row_group_rows(tmp_path: Path) -> None:
    rows = [landed(f"r-{index}", index + 1, text=f"answer {index}") for index in range(10)]
    source = write_jsonl(tmp_path / "landed.jsonl", rows)
    assert write_parquet(source, tmp_path / "landed.parquet", row_group_rows=4) == 10
    metadata = pq.ParquetFile(tmp_path / "landed.parquet").metadata
    assert [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)] == [4, 4, 2]
    assert pq.read_table(tmp_path / "landed.parquet")["custom_id"].to_pylist() == [
        r["custom_id"] for r in rows
    ]


def test_row_groups_close_early_on_bytes(tmp_path: Path) -> None:
    """Wide rows end a row group by size before it has ``row_group_rows`` rows; the body does not count."""
    wide = [landed(f"d-{index}", index + 1, embedding=[0.5] * 100, body="x" * 10_000) for index in range(6)]
    source = write_jsonl(tmp_path / "landed.jsonl", wide)
    kept = len(msgspec.json.encode(wide[0])) - len(msgspec.json.encode(wide[0]["body"]))  # per row
    write_parquet(source, tmp_path / "landed.parquet", row_group_rows=1000, row_group_bytes=2 * kept)
    metadata = pq.ParquetFile(tmp_path / "landed.parquet").metadata
    assert [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)] == [2, 2, 2]


def test_many_rows_span_batches_and_groups(tmp_path: Path) -> None:
    """More rows than one internal batch (8,192) and a group size that is not a multiple of it."""
    rows = [landed(f"r-{index}", index + 1, input_tokens=index) for index in range(20_000)]
    source = write_jsonl(tmp_path / "landed.jsonl", rows)
    assert write_parquet(source, tmp_path / "landed.parquet", row_group_rows=9_000) == 20_000
    parquet = pq.ParquetFile(tmp_path / "landed.parquet")
    sizes = [parquet.metadata.row_group(i).num_rows for i in range(parquet.metadata.num_row_groups)]
    assert sizes == [9_000, 9_000, 2_000]
    table = parquet.read(columns=["line", "input_tokens"])
    assert table["line"].to_pylist() == list(range(1, 20_001))
    assert table["input_tokens"].to_pylist() == list(range(20_000))


def test_compression_and_encodings(tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "landed.jsonl", ROWS)
    write_parquet(source, tmp_path / "landed.parquet")
    group = pq.ParquetFile(tmp_path / "landed.parquet").metadata.row_group(0)
    chunks = {group.column(i).path_in_schema: group.column(i) for i in range(group.num_columns)}
    assert {chunk.compression for chunk in chunks.values()} == {"ZSTD"}
    assert "BYTE_STREAM_SPLIT" in chunks["embedding.list.element"].encodings
    assert chunks["finish_reason"].has_dictionary_page
    assert not chunks["custom_id"].has_dictionary_page
    write_parquet(source, tmp_path / "snappy.parquet", compression="snappy")
    assert pq.ParquetFile(tmp_path / "snappy.parquet").metadata.row_group(0).column(0).compression == "SNAPPY"


def test_empty_source_writes_the_schema(tmp_path: Path) -> None:
    source = tmp_path / "empty.jsonl"
    source.write_bytes(b"\n")
    assert write_parquet(source, tmp_path / "empty.parquet") == 0
    table = pq.read_table(tmp_path / "empty.parquet")
    assert table.num_rows == 0
    assert table.column_names == COLUMNS


def test_file_object_source(tmp_path: Path) -> None:
    data = b"".join(msgspec.json.encode(row) + b"\n" for row in ROWS)
    stream = io.BytesIO(b"skip me\n" + data)
    stream.seek(len(b"skip me\n"))
    assert write_parquet(stream, tmp_path / "landed.parquet") == len(ROWS)
    assert not stream.closed  # the caller's stream stays open
    assert pq.read_table(tmp_path / "landed.parquet").to_pylist() == [expected(row) for row in ROWS]


@pytest.mark.parametrize("scheme", ["file", "memory"])
def test_object_storage_paths(tmp_path: Path, memory_store: str, scheme: str) -> None:
    root = ObjectStoragePath(f"file://{tmp_path}/store" if scheme == "file" else f"{memory_store}/{scheme}")
    source = root / "in" / "landed.jsonl"
    source.parent.mkdir(parents=True, exist_ok=True)
    source.write_bytes(b"".join(msgspec.json.encode(row) + b"\n" for row in ROWS))
    destination = root / "out" / "landed.parquet"
    destination.parent.mkdir(parents=True, exist_ok=True)
    assert write_parquet(source, destination, row_group_rows=3) == len(ROWS)
    with destination.open("rb") as stream:
        table = pq.read_table(io.BytesIO(stream.read()))
    assert table.to_pylist() == [expected(row) for row in ROWS]


def test_a_bad_line_fails_and_leaves_no_file(tmp_path: Path) -> None:
    """The error names the line; nothing that reads as a complete (truncated) table is left behind."""
    rows = [landed(f"r-{index}", index + 1) for index in range(5)]
    source = tmp_path / "landed.jsonl"
    source.write_bytes(
        b"".join(msgspec.json.encode(row) + b"\n" for row in rows[:3])
        + b'{"custom_id": "x", "response": {}}\n'  # an OpenAI output line, not a landed row
        + b"".join(msgspec.json.encode(row) + b"\n" for row in rows[3:])
    )
    destination = tmp_path / "landed.parquet"
    with pytest.raises(ValueError, match=r"landed\.jsonl line 4 is not a landed result row"):
        write_parquet(source, destination, row_group_rows=2)  # a row group was written before line 4
    assert not destination.exists()


def test_a_failure_keeps_the_footer_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """When the partial file cannot be removed, it still has no footer, so readers refuse it."""
    monkeypatch.setattr("airflow_provider_batch.parquet._discard", lambda destination: None)
    source = write_jsonl(tmp_path / "landed.jsonl", [*ROWS, {"line": "not an int"}])
    destination = tmp_path / "landed.parquet"
    with pytest.raises(ValueError, match="line 11"):
        write_parquet(source, destination, row_group_rows=2)
    assert destination.exists()
    with pytest.raises(pa.ArrowInvalid):
        pq.read_table(destination)


def test_a_missing_source_leaves_an_existing_destination(tmp_path: Path) -> None:
    destination = tmp_path / "landed.parquet"
    destination.write_bytes(b"previous")
    with pytest.raises(FileNotFoundError):
        write_parquet(tmp_path / "absent.jsonl", destination)
    assert destination.read_bytes() == b"previous"


def test_row_group_limits_are_validated(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        write_parquet(tmp_path / "x.jsonl", tmp_path / "x.parquet", row_group_rows=0)


# pyarrow is optional ----------------------------------------------------------------------------------------


@pytest.fixture
def no_pyarrow(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``import pyarrow`` fail as it does where the extra is not installed."""
    for name in list(sys.modules):
        if name == "pyarrow" or name.startswith("pyarrow."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "pyarrow", None)


@pytest.mark.usefixtures("no_pyarrow")
def test_require_parquet_without_pyarrow(tmp_path: Path) -> None:
    with pytest.raises(OpenAIBatchConfigError, match=r"pip install 'airflow-provider-batch\[parquet\]'"):
        require_parquet()
    source = write_jsonl(tmp_path / "landed.jsonl", ROWS)
    with pytest.raises(OpenAIBatchConfigError, match="needs pyarrow"):
        write_parquet(source, tmp_path / "landed.parquet")
    assert not (tmp_path / "landed.parquet").exists()  # refused before anything is opened


def test_require_parquet_with_pyarrow() -> None:
    require_parquet()
    assert INSTALL_HINT == "pip install 'airflow-provider-batch[parquet]'"


@pytest.mark.usefixtures("no_pyarrow")
def test_module_imports_without_pyarrow(monkeypatch: pytest.MonkeyPatch) -> None:
    """The module itself never imports pyarrow, so the provider loads where the extra is absent. A copy
    is loaded under another name, so the module the other tests use stays the one they imported."""
    spec = importlib.util.spec_from_file_location("parquet_without_pyarrow", parquet_module.__file__)
    assert spec is not None
    assert spec.loader is not None
    copy = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, copy)  # msgspec resolves the structs' annotations there
    spec.loader.exec_module(copy)
    assert copy.output_format_for("out.parquet", None) == "parquet"
    with pytest.raises(OpenAIBatchConfigError):
        copy.require_parquet()


# output_format_for ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("output_path", "output_format", "chosen"),
    [
        ("results.jsonl", None, "jsonl"),
        ("results", None, "jsonl"),
        ("results.parquet", None, "parquet"),
        ("RESULTS.PARQUET", None, "parquet"),
        ("s3://bucket/run=1/results.parquet", None, "parquet"),
        ("s3://bucket/results.parquet/", None, "parquet"),
        ("s3://bucket/parquet/results.json", None, "jsonl"),
        ("results.parquet.jsonl", None, "jsonl"),
        (Path("/data/results.parquet"), None, "parquet"),
        (ObjectStoragePath("file:///data/results.parquet"), None, "parquet"),
        ("results.parquet", "jsonl", "jsonl"),
        ("results.jsonl", "parquet", "parquet"),
        ("results", "parquet", "parquet"),
    ],
)
def test_output_format_for(output_path: Any, output_format: str | None, chosen: str) -> None:
    assert output_format_for(output_path, output_format) == chosen


@pytest.mark.parametrize("output_format", ["csv", "Parquet", "", " jsonl", "json"])
def test_output_format_for_rejects_unknown_formats(output_format: str) -> None:
    with pytest.raises(ValueError, match=r"'jsonl' or 'parquet'") as raised:
        output_format_for("results.parquet", output_format)
    assert isinstance(raised.value, OpenAIBatchConfigError)


def test_the_reader_of_landed_rows_knows_every_column_the_writer_writes() -> None:
    """parquet.py reads landed rows with its own struct (the JSON columns kept raw), so the two shapes
    are checked against each other here: a column added to the landed row must reach the table."""
    from airflow_provider_batch.parquet import _LandedRow
    from airflow_provider_batch.results import _Row

    assert _LandedRow.__struct_fields__ == _Row.__struct_fields__
