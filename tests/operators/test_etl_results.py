"""Results ready for ETL, end to end on the emulator: the answer in every landed row, structured outputs
parsed and checked (invalid replies resubmitted by the next round), Parquet landing.

The emulator answers a request that asks for a JSON Schema with a valid instance of it, and a per-line
directive (``"emulator": {"output": "invalid_json", "times": 1}``) makes its first reply unusable, so
the ``invalid_output`` path runs for real: the reply is billed, marked, and resubmitted once.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pyarrow.parquet as pq
import pytest
from pydantic import BaseModel, field_validator

from airflow_provider_batch.emulator.process import EmulatorProcess
from airflow_provider_batch.exceptions import OpenAIBatchPartialFailure
from tests.batch_testing import chat_record, make_context, quick_operator, use_emulator

CONN = "batch_etl"
SENTIMENT = {
    "type": "object",
    "properties": {
        "label": {"type": "string", "enum": ["positive", "negative", "neutral"]},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
    },
    "required": ["label", "confidence"],
    "additionalProperties": False,
}
RESPONSE_FORMAT = {
    "type": "json_schema",
    "json_schema": {"name": "sentiment", "schema": SENTIMENT, "strict": True},
}


@pytest.fixture
def server(make_emulator: Callable[..., EmulatorProcess], monkeypatch: pytest.MonkeyPatch) -> EmulatorProcess:
    server = make_emulator()
    use_emulator(monkeypatch, CONN, server)
    return server


def classify(count: int, *, directives: dict[int, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Sentiment requests ``s-0``...; ``directives`` script some replies."""
    records = []
    for i in range(count):
        record = chat_record(f"s-{i}", f"Review {i}: the product is fine.", response_format=RESPONSE_FORMAT)
        if directives and i in directives:
            record["body"]["emulator"] = directives[i]
        records.append(record)
    return records


def rows_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_row_carries_its_parsed_structured_output_and_its_usage(
    server: EmulatorProcess, tmp_path: Path
) -> None:
    target = tmp_path / "rows.jsonl"
    result = quick_operator(
        CONN, "etl", requests=classify(6), output_path=target, include_request=True
    ).execute(make_context())

    rows = rows_of(target)
    assert [row["custom_id"] for row in rows] == [f"s-{i}" for i in range(6)]
    for row in rows:
        assert row["ok"], row
        jsonschema.validate(row["parsed"], SENTIMENT)
        assert json.loads(row["text"]) == row["parsed"]
        assert row["finish_reason"] == "stop"
        assert row["input_tokens"] > 0
        assert row["output_tokens"] > 0
        assert row["batch_id"] == result["batch_id"]
        assert row["round"] == 1
        assert row["request"]["response_format"] == RESPONSE_FORMAT  # what was asked, no join needed
    assert result["results_summary"]["succeeded"] == 6


def test_an_invalid_reply_is_marked_resubmitted_once_and_then_lands_valid(
    server: EmulatorProcess, tmp_path: Path
) -> None:
    """Two lines reply text that does not parse, once: round 1 marks them ``invalid_output``, round 2
    asks again (billed again: the one paid retry) and gets valid replies."""
    target = tmp_path / "rows.jsonl"
    bad = {"output": "invalid_json", "times": 1}
    requests = classify(5, directives={1: bad, 3: {"output": "schema_mismatch", "times": 1}})

    result = quick_operator(CONN, "etl", requests=requests, output_path=target, max_rounds=2).execute(
        make_context()
    )

    rows = rows_of(target)
    assert [row["round"] for row in rows] == [1, 2, 1, 2, 1]
    assert all(row["ok"] for row in rows), rows
    for row in rows:
        jsonschema.validate(row["parsed"], SENTIMENT)
    assert result["request_counts"] == {"total": 5, "succeeded": 5, "failed": 0, "pending": 0}
    first_round = result["rounds"][0]["outcome"]
    assert first_round["retry_reasons"] == {"invalid_output": 2}
    processed = server.lines()["custom_ids"]
    assert processed == {"s-0": 1, "s-1": 2, "s-2": 1, "s-3": 2, "s-4": 1}


def test_invalid_output_fails_the_task_by_default_and_is_landed_marked(
    server: EmulatorProcess, tmp_path: Path
) -> None:
    target = tmp_path / "rows.jsonl"
    requests = classify(4, directives={2: {"output": "schema_mismatch"}})
    task = quick_operator(CONN, "etl", requests=requests, output_path=target, max_rounds=1)

    with pytest.raises(OpenAIBatchPartialFailure, match="1 more replied invalid output") as raised:
        task.execute(make_context())

    assert raised.value.errors_by_code == {"invalid_output": 1}
    row = rows_of(target)[2]
    assert (row["ok"], row["error_code"], row["status_code"]) == (False, "invalid_output", 200)
    assert row["error_message"].startswith("does not match the schema")
    assert row["text"] is not None, "the bad reply stays readable"


def test_invalid_output_can_be_accepted_and_still_lands_marked(
    server: EmulatorProcess, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    target = tmp_path / "rows.jsonl"
    requests = classify(4, directives={0: {"output": "invalid_json"}})
    task = quick_operator(
        CONN, "etl", requests=requests, output_path=target, max_rounds=1, fail_on_invalid_output=False
    )

    result = task.execute(make_context())

    assert result["results_summary"]["errors_by_code"] == {"invalid_output": 1}
    assert [row["error_code"] for row in rows_of(target)] == ["invalid_output", None, None, None]
    assert "1 of the batch's replies are not the structured output asked for" in caplog.text


class Sentiment(BaseModel):
    label: str
    confidence: float

    @field_validator("label")
    @classmethod
    def known(cls, value: str) -> str:
        if value != "positive":
            raise ValueError("only positive reviews are expected here")
        return value


def test_the_tasks_own_pydantic_schema_checks_every_reply(server: EmulatorProcess, tmp_path: Path) -> None:
    """Scripted answers (``"emulator": {"content": ...}``) meet the task's Pydantic model, whose own
    validator runs: a reply that parses but that the model refuses is invalid output."""
    target = tmp_path / "rows.jsonl"
    requests = [
        chat_record("p-0", "a", emulator={"content": '{"label": "positive", "confidence": 0.9}'}),
        chat_record("p-1", "b", emulator={"content": '{"label": "negative", "confidence": 0.8}'}),
    ]
    task = quick_operator(
        CONN,
        "etl",
        requests=requests,
        output_path=target,
        output_schema=Sentiment,
        max_rounds=1,
        max_failed_fraction=0.5,
    )

    task.execute(make_context())

    first, second = rows_of(target)
    assert first["parsed"] == {"label": "positive", "confidence": 0.9}
    assert second["error_code"] == "invalid_output"
    assert "only positive reviews" in second["error_message"]


def test_results_land_as_parquet_by_suffix(server: EmulatorProcess, tmp_path: Path) -> None:
    target = tmp_path / "rows.parquet"
    result = quick_operator(CONN, "etl", requests=classify(3), output_path=target).execute(make_context())

    table = pq.read_table(target)
    assert table.num_rows == 3
    assert "body" not in table.column_names
    assert table.column("custom_id").to_pylist() == ["s-0", "s-1", "s-2"]
    parsed = [json.loads(text) for text in table.column("parsed").to_pylist()]
    for value in parsed:
        jsonschema.validate(value, SENTIMENT)
    assert result["results_uri"] == str(target)


def test_a_bad_output_schema_or_format_fails_the_dag_import() -> None:
    with pytest.raises(ValueError, match="output_schema"):
        quick_operator(CONN, "etl", requests=classify(1), output_schema={"type": "no-such-type"})
    with pytest.raises(ValueError, match="output_format"):
        quick_operator(CONN, "etl", requests=classify(1), output_format="csv")


def test_a_job_of_several_batches_and_rounds_lands_one_parquet_table(
    server: EmulatorProcess, tmp_path: Path
) -> None:
    target = tmp_path / "rows.parquet"
    requests = classify(6, directives={4: {"output": "invalid_json", "times": 1}})

    result = quick_operator(
        CONN, "etl", requests=requests, output_path=target, max_requests_per_batch=2
    ).execute(make_context())

    table = pq.read_table(target).to_pylist()
    assert [row["custom_id"] for row in table] == [f"s-{i}" for i in range(6)]
    assert [row["round"] for row in table] == [1, 1, 1, 1, 2, 1]
    assert all(row["ok"] for row in table)
    assert len({row["batch_id"] for row in table}) == 4, "three shards, then one batch in round 2"
    assert result["request_counts"]["succeeded"] == 6
