"""The batch lifecycle through the SDK: completed, failed, expired, cancelled; time scale; output order."""

from __future__ import annotations

import httpx
import openai
import pytest

from airflow_provider_batch.emulator.process import EmulatorProcess
from tests.emulator.helpers import (
    CHAT,
    LIFECYCLE,
    MODEL,
    TIMESTAMPS,
    admin_url,
    assert_counts_match_files,
    assert_each_custom_id_once,
    assert_error,
    assert_unrun_line,
    async_create_batch,
    async_sdk,
    async_wait_for_status,
    chat_line,
    chat_lines,
    create_batch,
    read_lines,
    results,
    retrieve_batch,
    retrieve_file,
    run_batch,
    sdk,
    upload,
    wait_for,
    wait_for_status,
    wait_until,
)
from tests.emulator.schemas import assert_schema

DAY = 86_400
EXPIRED_MESSAGE = "This request could not be executed before the completion window expired."
CANCELLED_MESSAGE = "This request was not executed because the batch was cancelled."


def _set(batch: openai.types.Batch) -> set[str]:
    return {name for name in TIMESTAMPS if getattr(batch, name) is not None}


def checked_cancel(client, batch_id: str) -> openai.types.Batch:
    raw = client.batches.with_raw_response.cancel(batch_id)
    assert_schema("Batch", raw.http_response.json())
    return raw.parse()


# completed -------------------------------------------------------------------------------------


def test_create_returns_a_validating_batch(emulator: EmulatorProcess) -> None:
    batch = create_batch(sdk(emulator), chat_lines(2), metadata={"dag": "nightly"})
    assert batch.id.startswith("batch_")
    assert (batch.object, batch.endpoint, batch.completion_window, batch.status) == (
        "batch",
        CHAT,
        "24h",
        "validating",
    )
    assert batch.expires_at == batch.created_at + DAY
    assert _set(batch) == {"created_at"}
    assert (batch.output_file_id, batch.error_file_id, batch.errors) == (None, None, None)
    assert batch.request_counts is not None
    assert batch.request_counts.model_dump() == {"total": 0, "completed": 0, "failed": 0}
    assert batch.metadata == {"dag": "nightly"}


def test_completed_lifecycle(emulator: EmulatorProcess) -> None:
    """validating → in_progress (counts move) → finalizing → completed, files only at the very end."""
    client = sdk(emulator)
    lines = chat_lines(6)
    batch = create_batch(
        client, lines, metadata={"emulator_line_delay": "0.05", "emulator_finalizing_delay": "0.2"}
    )
    seen: list[openai.types.Batch] = []

    def record(b: openai.types.Batch) -> bool:
        seen.append(b)
        return b.status == "completed"

    final = wait_for(client, batch.id, record)
    statuses = [b.status for b in seen]
    # The observed statuses follow the lifecycle order, and the slow phases were seen.
    assert [s for s in LIFECYCLE if s in statuses] == list(dict.fromkeys(statuses))
    assert {"in_progress", "finalizing"} <= set(statuses)
    assert any(0 < b.request_counts.completed < 6 for b in seen if b.request_counts), "counts never moved"
    done = [b.request_counts.completed for b in seen if b.request_counts]
    assert done == sorted(done)
    for b in seen[:-1]:
        assert (b.output_file_id, b.error_file_id) == (None, None), f"file ids before the end: {b}"
        if b.status in ("in_progress", "finalizing"):
            assert b.request_counts.total == 6
    assert "completed_at" not in _set(seen[-2])

    assert _set(final) == {"created_at", "in_progress_at", "finalizing_at", "completed_at"}
    assert final.created_at <= final.in_progress_at <= final.finalizing_at <= final.completed_at
    assert final.model == MODEL
    assert final.request_counts.model_dump() == {"total": 6, "completed": 6, "failed": 0}
    assert final.error_file_id is None  # nothing failed: no error file at all
    output, errors = results(client, final)
    assert errors == []
    assert_each_custom_id_once(output, [line["custom_id"] for line in lines])
    assert_counts_match_files(final, output, errors)


def test_result_lines_counts_and_usage(emulator: EmulatorProcess) -> None:
    client = sdk(emulator)
    lines = [
        *chat_lines(4),
        chat_line("limited", emulator={"status_code": 429}),
        {**chat_line("no-messages"), "body": {"model": MODEL}},  # the echo engine rejects it
    ]
    batch = run_batch(client, lines)
    assert batch.status == "completed"  # failed lines do not fail the batch
    assert batch.request_counts.model_dump() == {"total": 6, "completed": 4, "failed": 2}
    output, errors = results(client, batch)
    assert_counts_match_files(batch, output, errors)
    assert_each_custom_id_once(output + errors, [line["custom_id"] for line in lines])

    for line in output:
        assert line["id"].startswith("batch_req_")
        assert line["error"] is None
        response = line["response"]
        assert response["status_code"] == 200
        assert response["request_id"].startswith("req_")
        assert response["body"]["object"] == "chat.completion"
        question = line["custom_id"].replace("req-", "question ")
        assert response["body"]["choices"][0]["message"]["content"] == f"echo: {question}"
    by_id = {line["custom_id"]: line for line in errors}
    assert by_id["limited"]["error"] is None
    assert by_id["limited"]["response"]["status_code"] == 429
    assert by_id["limited"]["response"]["body"]["error"]["code"] == "rate_limit_exceeded"
    assert by_id["no-messages"]["response"]["status_code"] == 400
    assert by_id["no-messages"]["error"] is None
    assert by_id["no-messages"]["response"]["body"]["error"]["param"] == "messages"

    # The batch usage is the sum of the successful lines' usage.
    usages = [line["response"]["body"]["usage"] for line in output]
    assert batch.usage is not None
    assert batch.usage.input_tokens == sum(u["prompt_tokens"] for u in usages) > 0
    assert batch.usage.output_tokens == sum(u["completion_tokens"] for u in usages) > 0
    assert batch.usage.total_tokens == batch.usage.input_tokens + batch.usage.output_tokens
    assert batch.usage.input_tokens_details.cached_tokens == 0
    assert batch.usage.output_tokens_details.reasoning_tokens == 0


def test_result_files_honour_output_expires_after(emulator: EmulatorProcess) -> None:
    client = sdk(emulator)
    lines = [*chat_lines(2), chat_line("broken", emulator={"status_code": 500})]
    batch = run_batch(client, lines, output_expires_after={"anchor": "created_at", "seconds": 3600})
    assert batch.output_file_id
    assert batch.error_file_id
    for file_id, kind in ((batch.output_file_id, "output"), (batch.error_file_id, "error")):
        file = retrieve_file(client, file_id)
        assert file.purpose == "batch_output"
        assert file.expires_at == file.created_at + 3600
        assert file.bytes == len(client.files.content(file_id).content)
        assert kind in file.filename


def test_result_files_expire_after_30_days_by_default(emulator: EmulatorProcess) -> None:
    client = sdk(emulator)
    batch = run_batch(client, chat_lines(1))
    file = retrieve_file(client, batch.output_file_id)
    assert file.expires_at == file.created_at + 30 * DAY


async def test_completed_with_the_async_client(emulator: EmulatorProcess) -> None:
    async with async_sdk(emulator) as client:
        batch = await async_create_batch(client, chat_lines(3))
        done = await async_wait_for_status(client, batch.id)
        assert done.status == "completed"
        assert done.request_counts.completed == 3


# failed ----------------------------------------------------------------------------------------


def test_failed_batch_reports_errors_and_no_files(emulator: EmulatorProcess) -> None:
    client = sdk(emulator)
    lines = [chat_line("a"), "{this is not json", chat_line("b"), {**chat_line("c"), "url": "/v1/embeddings"}]
    batch = run_batch(client, lines)
    assert batch.status == "failed"
    assert _set(batch) == {"created_at", "failed_at"}
    assert batch.created_at <= batch.failed_at
    assert (batch.output_file_id, batch.error_file_id) == (None, None)
    assert batch.errors is not None
    assert batch.errors.object == "list"
    assert [e.model_dump() for e in batch.errors.data] == [
        {
            "code": "invalid_json_line",
            "line": 2,
            "message": "This line is not parseable as valid JSON.",
            "param": None,
        },
        {
            "code": "url_mismatch",
            "line": 4,
            "message": f"The url '/v1/embeddings' does not match the batch endpoint '{CHAT}'.",
            "param": "url",
        },
    ]


# expired ---------------------------------------------------------------------------------------


def test_expired_via_metadata(emulator: EmulatorProcess) -> None:
    client = sdk(emulator)
    lines = chat_lines(5)
    batch = run_batch(client, lines, metadata={"emulator_expire_after_lines": "2"})
    assert batch.status == "expired"
    assert _set(batch) == {"created_at", "in_progress_at", "expired_at"}
    assert batch.request_counts.model_dump() == {"total": 5, "completed": 2, "failed": 3}
    output, errors = results(client, batch)
    assert_counts_match_files(batch, output, errors)
    assert_each_custom_id_once(output + errors, [line["custom_id"] for line in lines])
    assert all(line["response"]["status_code"] == 200 for line in output)
    for line in errors:
        assert_unrun_line(line, "batch_expired")
        assert line["error"]["message"] == EXPIRED_MESSAGE


def test_expired_via_admin_route_while_running(emulator: EmulatorProcess) -> None:
    client = sdk(emulator)
    lines = chat_lines(12)
    batch = create_batch(client, lines, metadata={"emulator_line_delay": "0.05"})
    wait_for(client, batch.id, lambda b: b.request_counts.completed >= 2, what="two lines done")
    expiring = emulator.admin("POST", f"batches/{batch.id}/expire")
    assert_schema("Batch", expiring)
    assert expiring["status"] == "in_progress"

    batch = wait_for_status(client, batch.id)
    assert batch.status == "expired"
    assert batch.expired_at is not None
    assert batch.completed_at is None
    output, errors = results(client, batch)
    assert 2 <= len(output) < 12  # partial output kept
    assert_counts_match_files(batch, output, errors)
    assert_each_custom_id_once(output + errors, [line["custom_id"] for line in lines])
    for line in errors:
        assert_unrun_line(line, "batch_expired")

    # A terminal batch cannot be expired again.
    again = httpx.post(admin_url(emulator, f"batches/{batch.id}/expire"))
    assert_error(again, 400, message="Cannot expire a batch with status 'expired'.", param="batch_id")


@pytest.mark.parametrize("end", ["expire", "cancel"])
def test_a_long_line_delay_does_not_hold_up_an_expiry_or_a_cancel(
    emulator: EmulatorProcess, end: str
) -> None:
    """A batch held in progress by an hour-long line (how benchmarks keep triggers polling) ends as
    soon as it is expired or cancelled, with its lines reported as not run."""
    client = sdk(emulator)
    lines = chat_lines(3)
    batch = create_batch(client, lines, metadata={"emulator_line_delay": "3600"})
    wait_for(client, batch.id, lambda b: b.status == "in_progress", what="in progress")
    if end == "expire":
        emulator.admin("POST", f"batches/{batch.id}/expire")
    else:
        checked_cancel(client, batch.id)

    batch = wait_for_status(client, batch.id, timeout=5)
    assert batch.status == ("expired" if end == "expire" else "cancelled")
    output, errors = results(client, batch)
    assert output == []
    assert_counts_match_files(batch, output, errors)
    assert_each_custom_id_once(errors, [line["custom_id"] for line in lines])
    for line in errors:
        assert_unrun_line(line, "batch_expired" if end == "expire" else "batch_cancelled")


def test_time_scale_shrinks_the_window_and_a_slow_batch_expires(make_emulator) -> None:
    server = make_emulator("--time-scale", "20000")  # 24 h become 4.32 s
    client = sdk(server)
    lines = chat_lines(40)
    batch = create_batch(client, lines, metadata={"emulator_line_delay": "0.2"})  # would need 8 s
    assert 4 <= batch.expires_at - batch.created_at <= 5
    # Files expire on the same clock: one hour is 0.18 s here (at least a second), then the file is gone.
    short = upload(
        client,
        b"x",
        filename="x.txt",
        purpose="user_data",
        expires_after={"anchor": "created_at", "seconds": 3600},
    )
    assert short.expires_at == short.created_at + 1

    def gone() -> bool:
        try:
            client.files.retrieve(short.id)
        except openai.NotFoundError:
            return short.id not in [f.id for f in client.files.list()]
        return False

    wait_until(gone, timeout=5, what="the short-lived file to expire")

    batch = wait_for_status(client, batch.id, timeout=15)
    assert batch.status == "expired"
    assert batch.expired_at - batch.created_at >= 4
    output, errors = results(client, batch)
    assert 0 < len(output) < 40
    assert_each_custom_id_once(output + errors, [line["custom_id"] for line in lines])
    for line in errors:
        assert_unrun_line(line, "batch_expired")


# cancelled -------------------------------------------------------------------------------------


def test_cancel_while_running(emulator: EmulatorProcess) -> None:
    client = sdk(emulator)
    lines = chat_lines(12)
    batch = create_batch(client, lines, metadata={"emulator_line_delay": "0.05"})
    wait_for(client, batch.id, lambda b: b.request_counts.completed >= 2, what="two lines done")
    cancelling = checked_cancel(client, batch.id)
    assert cancelling.status == "cancelling"
    assert cancelling.cancelling_at is not None

    batch = wait_for_status(client, batch.id)
    assert batch.status == "cancelled"
    assert _set(batch) == {"created_at", "in_progress_at", "cancelling_at", "cancelled_at"}
    assert batch.in_progress_at <= batch.cancelling_at <= batch.cancelled_at
    output, errors = results(client, batch)
    assert 2 <= len(output) < 12
    assert all(line["response"]["status_code"] == 200 for line in output)
    assert_counts_match_files(batch, output, errors)
    assert_each_custom_id_once(output + errors, [line["custom_id"] for line in lines])
    for line in errors:
        assert_unrun_line(line, "batch_cancelled")
        assert line["error"]["message"] == CANCELLED_MESSAGE


def test_cancelling_is_observable_and_a_second_cancel_changes_nothing(emulator: EmulatorProcess) -> None:
    client = sdk(emulator)
    batch = create_batch(
        client, chat_lines(10), metadata={"emulator_line_delay": "0.05", "emulator_cancelling_delay": "0.4"}
    )
    wait_for_status(client, batch.id, "in_progress")
    first = checked_cancel(client, batch.id)
    assert first.status == "cancelling"
    still = retrieve_batch(client, batch.id)
    assert still.status == "cancelling"
    assert (still.output_file_id, still.error_file_id) == (None, None)  # files appear only at `cancelled`
    second = checked_cancel(client, batch.id)
    assert (second.status, second.cancelling_at) == ("cancelling", first.cancelling_at)

    done = wait_for_status(client, batch.id)
    assert done.status == "cancelled"
    assert done.cancelling_at == first.cancelling_at
    assert done.cancelled_at >= done.cancelling_at


def test_cancel_while_validating(emulator: EmulatorProcess) -> None:
    client = sdk(emulator)
    batch = create_batch(client, chat_lines(3), metadata={"emulator_validating_delay": "0.3"})
    assert checked_cancel(client, batch.id).status == "cancelling"
    done = wait_for_status(client, batch.id)
    assert done.status == "cancelled"
    assert done.in_progress_at is None
    assert (done.output_file_id, done.error_file_id) == (None, None)


@pytest.mark.parametrize("delay", ["emulator_validating_delay", "emulator_finalizing_delay"])
def test_a_cancel_does_not_wait_out_a_long_phase_delay(emulator: EmulatorProcess, delay: str) -> None:
    client = sdk(emulator)
    batch = create_batch(client, chat_lines(2), metadata={delay: "3600"})
    phase = "validating" if delay == "emulator_validating_delay" else "finalizing"
    wait_for_status(client, batch.id, phase)
    assert checked_cancel(client, batch.id).status == "cancelling"
    assert wait_for_status(client, batch.id, timeout=5).status == "cancelled"


@pytest.mark.parametrize("lines", [chat_lines(1), ["not json"]], ids=["completed", "failed"])
def test_cancel_a_terminal_batch_is_a_400(emulator: EmulatorProcess, lines: list) -> None:
    client = sdk(emulator)
    batch = run_batch(client, lines)
    with pytest.raises(openai.BadRequestError) as caught:
        client.with_options(max_retries=0).batches.cancel(batch.id)
    assert_error(
        caught.value.response,
        400,
        message=f"Cannot cancel a batch with status '{batch.status}'.",
        param="batch_id",
    )
    assert retrieve_batch(client, batch.id) == batch


# output order ----------------------------------------------------------------------------------


def test_output_is_shuffled_by_default(emulator: EmulatorProcess) -> None:
    client = sdk(emulator)
    lines = chat_lines(30)
    output, _ = results(client, run_batch(client, lines))
    order = [line["custom_id"] for line in output]
    expected = [line["custom_id"] for line in lines]
    assert sorted(order) == sorted(expected)
    assert order != expected  # 1 in 30! that a shuffle leaves the order unchanged


def test_no_shuffle_output_keeps_input_order(make_emulator) -> None:
    client = sdk(make_emulator("--no-shuffle-output"))
    lines = [
        chat_line(f"r{i}", emulator={"status_code": 500}) if i % 3 == 0 else chat_line(f"r{i}")
        for i in range(30)
    ]
    output, errors = results(client, run_batch(client, lines))
    expected = [line["custom_id"] for line in lines]
    assert [line["custom_id"] for line in output] == [c for c in expected if int(c[1:]) % 3]
    assert [line["custom_id"] for line in errors] == [c for c in expected if int(c[1:]) % 3 == 0]


def test_input_file_is_left_alone(emulator: EmulatorProcess) -> None:
    client = sdk(emulator)
    batch = run_batch(client, chat_lines(2))
    assert retrieve_file(client, batch.input_file_id).purpose == "batch"
    assert len(read_lines(client, batch.input_file_id)) == 2
