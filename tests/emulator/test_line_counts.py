"""Lines processed (``GET /_emulator/lines``, ``EmulatorProcess.lines()``) and the directive's
``times``: what tests of resubmitting jobs rely on to prove that no line ran twice, and to make a
line fail only on its first attempts.

The counts are global to a server, so these tests share one module server, reset before each
test (which also proves that ``DELETE /_emulator/stats`` resets them), or start their own.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from airflow_provider_batch.emulator.process import EmulatorProcess
from tests.emulator.helpers import (
    MODEL,
    admin_url,
    assert_error,
    chat_line,
    chat_lines,
    create_batch,
    results,
    run_batch,
    sdk,
    wait_for,
    wait_for_status,
)

NOTHING = {"processed": 0, "custom_ids": {}}


@pytest.fixture(scope="module")
def module_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorProcess]:
    with EmulatorProcess(tmp_path_factory.mktemp("line-counts")) as server:
        yield server


@pytest.fixture
def server(module_server: EmulatorProcess) -> EmulatorProcess:
    module_server.reset_stats()
    assert module_server.lines() == NOTHING
    return module_server


def ran(output: list[dict[str, Any]], errors: list[dict[str, Any]]) -> Counter[str]:
    """The custom_ids of the result lines that carry a response (the lines that ran)."""
    return Counter(line["custom_id"] for line in output + errors if line["response"] is not None)


def status_of(client: Any, batch: Any) -> dict[str, int]:
    """custom_id → HTTP status of its response, over both result files of a finished batch."""
    output, errors = results(client, batch)
    return {line["custom_id"]: line["response"]["status_code"] for line in output + errors}


# Lines processed -------------------------------------------------------------------------------


def test_every_line_that_gets_a_result_is_counted_per_custom_id(server: EmulatorProcess) -> None:
    client = sdk(server)
    first = run_batch(
        client,
        [
            *chat_lines(3, prefix="a"),
            chat_line("failed", emulator={"status_code": 500}),  # an error result is billed too
            {
                "custom_id": "bad-body",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": MODEL},
            },
        ],
    )
    assert first.request_counts.model_dump() == {"total": 5, "completed": 3, "failed": 2}
    once = dict.fromkeys(["a-0", "a-1", "a-2", "failed", "bad-body"], 1)
    assert server.lines() == {"processed": 5, "custom_ids": once}

    # A second batch with two of the same custom_ids and a new one: counted by custom_id across batches.
    run_batch(client, [chat_line("a-0"), chat_line("failed"), chat_line("new")])
    assert server.lines() == {
        "processed": 8,
        "custom_ids": {**once, "a-0": 2, "failed": 2, "new": 1},
    }
    # The route itself, as any HTTP client sees it.
    raw = httpx.get(admin_url(server, "lines"))
    assert raw.status_code == 200
    assert raw.json() == server.lines()


def test_lines_that_never_ran_are_not_counted(server: EmulatorProcess) -> None:
    client = sdk(server)
    expired = run_batch(client, chat_lines(5, prefix="x"), metadata={"emulator_expire_after_lines": "2"})
    assert expired.status == "expired"
    output, errors = results(client, expired)
    assert len(errors) == 3  # written as batch_expired, never run
    assert sum(ran(output, errors).values()) == 2
    assert server.lines() == {"processed": 2, "custom_ids": dict(ran(output, errors))}


def test_a_line_answered_while_its_batch_is_cancelled_is_not_counted(server: EmulatorProcess) -> None:
    """The engine answers the first line, then the hour-long line delay holds its result back; the
    cancel drops that answer unwritten (the line is reported as not run), so it must not count."""
    client = sdk(server)
    batch = create_batch(client, chat_lines(3, prefix="c"), metadata={"emulator_line_delay": "3600"})
    wait_for(client, batch.id, lambda b: b.status == "in_progress", what="in progress")
    client.batches.cancel(batch.id)
    batch = wait_for_status(client, batch.id, timeout=5)
    assert batch.status == "cancelled"
    output, errors = results(client, batch)
    assert ran(output, errors) == Counter()
    assert server.lines() == NOTHING


def test_reset_clears_the_counts(server: EmulatorProcess) -> None:
    run_batch(sdk(server), chat_lines(2, prefix="r"))
    assert server.lines()["processed"] == 2
    raw = httpx.delete(admin_url(server, "stats"))
    assert raw.status_code == 200
    assert server.lines() == NOTHING


def test_the_lines_route_needs_the_key(make_emulator) -> None:
    server = make_emulator(api_key="sk-lines")
    assert_error(httpx.get(admin_url(server, "lines")), 401)
    assert server.lines() == NOTHING  # the helper sends the key


# The directive's times -------------------------------------------------------------------------


def test_times_fails_only_the_first_runs_of_a_custom_id_across_batches(server: EmulatorProcess) -> None:
    client = sdk(server)
    lines = [
        chat_line("flaky", "question", emulator={"status_code": 500, "times": 2}),
        chat_line("broken", emulator={"status_code": 503}),  # without times: always
        chat_line("fine"),
    ]
    rounds = [status_of(client, run_batch(client, lines)) for _ in range(4)]
    assert [r["flaky"] for r in rounds] == [500, 500, 200, 200]
    assert [r["broken"] for r in rounds] == [503] * 4
    assert [r["fine"] for r in rounds] == [200] * 4
    assert server.lines()["custom_ids"] == {"flaky": 4, "broken": 4, "fine": 4}

    # Once spent, the line runs as if it had no directive at all.
    batch = run_batch(client, [lines[0]])
    output, _ = results(client, batch)
    assert output[0]["response"]["body"]["choices"][0]["message"]["content"] == "echo: question"

    # The reset restarts the count: the directive fails the line again.
    server.reset_stats()
    assert status_of(client, run_batch(client, [lines[0]])) == {"flaky": 500}


def test_times_counts_only_runs_of_that_custom_id(server: EmulatorProcess) -> None:
    client = sdk(server)
    # Other ids processed before do not spend it; a run that never happened does not either.
    run_batch(client, chat_lines(3, prefix="other"))
    cancelled = create_batch(
        client,
        [chat_line("once", emulator={"status_code": 429, "times": 1})],
        metadata={"emulator_validating_delay": "3600"},
    )
    client.batches.cancel(cancelled.id)
    assert wait_for_status(client, cancelled.id, timeout=5).status == "cancelled"
    line = chat_line("once", emulator={"status_code": 429, "times": 1})
    assert status_of(client, run_batch(client, [line])) == {"once": 429}
    assert status_of(client, run_batch(client, [line])) == {"once": 200}


@pytest.mark.parametrize(
    ("times", "shown"), [(0, "0"), (-1, "-1"), ("2", '"2"'), (1.5, "1.5"), (True, "true"), (None, "null")]
)
def test_times_must_be_a_positive_integer(server: EmulatorProcess, times: Any, shown: str) -> None:
    client = sdk(server)
    line = chat_line("typo", emulator={"status_code": 500, "times": times})
    batch = run_batch(client, [line])
    _, errors = results(client, batch)
    assert errors[0]["response"]["status_code"] == 400
    assert errors[0]["response"]["body"] == {
        "error": {
            "message": f"Invalid 'emulator.times': expected a positive integer, got {shown}.",
            "type": "invalid_request_error",
            "param": "emulator.times",
            "code": None,
        }
    }
    # The rejection is not spent by runs: the line keeps being refused.
    assert status_of(client, run_batch(client, [line])) == {"typo": 400}


def test_times_on_the_synchronous_endpoint(server: EmulatorProcess) -> None:
    """No custom_id there, so nothing to count: a valid times always fails, an invalid one is a 400."""
    client = sdk(server, max_retries=0)
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "hi"}],
                extra_body={"emulator": {"status_code": 500, "times": 1}},
            )
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "hi"}],
            extra_body={"emulator": {"status_code": 500, "times": 0}},
        )
    assert_error(
        caught.value.response,
        400,
        message="Invalid 'emulator.times': expected a positive integer, got 0.",
        param="emulator.times",
    )
    assert server.lines() == NOTHING  # synchronous requests are not batch lines


def test_times_with_the_upstream_engine(make_emulator) -> None:
    """The spent directive is removed before the engine sees the line, so an upstream server gets
    the plain body once the failures are spent, and never sees the first attempts."""
    upstream = make_emulator()
    front = make_emulator("--upstream", upstream.base_url)
    client = sdk(front)
    line = chat_line("flaky", emulator={"status_code": 500, "times": 1})
    assert status_of(client, run_batch(client, [line])) == {"flaky": 500}
    assert upstream.stats()["requests"] == {}
    assert status_of(client, run_batch(client, [line])) == {"flaky": 200}
    assert upstream.stats()["requests"] == {"POST /v1/chat/completions": 1}
    assert front.lines() == {"processed": 2, "custom_ids": {"flaky": 2}}
