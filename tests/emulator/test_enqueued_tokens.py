"""The enqueued-token limit: counted with the provider's tokenizer, applied per model across every
batch in flight, atomically; Azure's fail-fast mode applies the same rule at create; and
``GET /_emulator/stats`` reports the tokens in flight and the highest total seen per model.

Everything runs over real HTTP with the official SDK, against private emulators.
"""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest

from airflow_provider_batch.emulator.process import EmulatorProcess
from airflow_provider_batch.tokens import estimate_request
from tests.emulator.helpers import (
    MODEL,
    assert_azure_error,
    assert_error,
    async_create_batch,
    async_sdk,
    async_wait_for_status,
    chat_line,
    create_batch,
    jsonl,
    request_line,
    retrieve_batch,
    run_batch,
    sdk,
    upload,
    wait_for_status,
)

MakeEmulator = Callable[..., EmulatorProcess]
AZURE = ("--dialect", "azure", "--file-processing-delay", "0")
DEPLOYMENT = "my-gpt-4o-mini-batch"
OTHER_MODEL = "gpt-4o"
IN_FLIGHT = ("validating", "in_progress", "finalizing")


def openai_message(model: str, limit: int) -> str:
    return (
        f"Enqueued token limit reached for {model} in organization org-emulator. Limit: {limit:,} enqueued"
        " tokens. Please try again once some in_progress batches have been completed."
    )


def azure_message(deployment: str, limit: int) -> str:
    return (
        f"The number of enqueued tokens has surpassed the configured limit of {limit:,} for the deployment"
        f" '{deployment}'. Please either increase the limit or try again once the current jobs have finished."
    )


def lines_of(count: int, *, model: str = MODEL, prefix: str = "req") -> list[dict[str, Any]]:
    return [
        chat_line(f"{prefix}-{i}", f"question {i}: how many tokens is this?", model=model)
        for i in range(count)
    ]


def tokens_of(lines: list[dict[str, Any]]) -> int:
    """What the provider estimates before submitting: the sum of its per-request input estimates."""
    return sum(estimate_request(line["url"], line["body"]).input for line in lines)


def assert_refused(batch: Any, message: str) -> None:
    assert batch.status == "failed", batch
    assert batch.errors is not None
    assert [error.model_dump() for error in batch.errors.data] == [
        {"code": "token_limit_exceeded", "message": message, "param": None, "line": None}
    ]
    assert not batch.output_file_id  # Azure says "", OpenAI null
    assert not batch.error_file_id


def enqueued(server: EmulatorProcess) -> dict[str, Any]:
    return server.enqueued_tokens()


# the count --------------------------------------------------------------------------------------

EMBEDDINGS = "/v1/embeddings"
RESPONSES = "/v1/responses"
COUNTED = {
    "chat": [
        request_line(
            f"c-{i}",
            {
                "model": MODEL,
                "messages": [
                    {"role": "system", "content": "You summarise."},
                    {"role": "user", "name": "ann", "content": "Summarise: " + "lorem ipsum dolor " * i},
                ],
            },
        )
        for i in range(1, 6)
    ],
    "responses": [
        request_line(
            f"r-{i}",
            {"model": "gpt-4.1-mini", "instructions": "Be brief.", "input": f"Tell me about the number {i}."},
            url=RESPONSES,
        )
        for i in range(5)
    ],
    "embeddings-cl100k": [
        request_line(
            f"e-{i}",
            {"model": "text-embedding-3-small", "input": ["naïve café", f"text {i}" * i]},
            url=EMBEDDINGS,
        )
        for i in range(1, 6)
    ],
}


@pytest.mark.parametrize("case", sorted(COUNTED))
def test_the_count_is_the_providers_estimate_to_the_token(make_emulator: MakeEmulator, case: str) -> None:
    """A batch of exactly the limit is admitted and one token less refuses it: the emulator counts
    what ``airflow_provider_batch.tokens`` estimates (per endpoint, per model's encoding)."""
    lines = COUNTED[case]
    model, endpoint, tokens = lines[0]["body"]["model"], lines[0]["url"], tokens_of(lines)
    assert tokens != sum(len(jsonl([line])) // 4 for line in lines)  # not a size heuristic
    server = make_emulator("--enqueued-token-limits", f"{model}={tokens - 1}")
    client = sdk(server)

    assert_refused(run_batch(client, lines, endpoint=endpoint), openai_message(model, tokens - 1))
    server.configure(enqueued_token_limits={model: tokens})
    assert run_batch(client, lines, endpoint=endpoint).status == "completed"
    assert enqueued(server) == {"current": {}, "peak": {model: tokens}, "refused": {model: 1}}


def test_nothing_is_counted_without_a_limit(make_emulator: MakeEmulator) -> None:
    server = make_emulator()
    client = sdk(server)
    slow = create_batch(client, lines_of(2), metadata={"emulator_line_delay": "30"})
    wait_for_status(client, slow.id, "in_progress")
    assert enqueued(server) == {"current": {}, "peak": {}, "refused": {}}
    client.batches.cancel(slow.id)


# across batches of one model, and between models ------------------------------------------------


def test_a_batch_waits_for_room_that_the_in_flight_batches_of_its_model_hold(
    make_emulator: MakeEmulator,
) -> None:
    """Over the limit while the first batch is ``in_progress`` and while it is ``finalizing``; admitted
    once it completed."""
    lines = lines_of(2)
    tokens = tokens_of(lines)
    limit = tokens + tokens // 2  # one batch fits, two do not
    server = make_emulator("--enqueued-token-limit", str(limit))
    client = sdk(server)
    first = create_batch(
        client, lines, metadata={"emulator_line_delay": "1", "emulator_finalizing_delay": "2"}
    )
    wait_for_status(client, first.id, "in_progress")
    assert enqueued(server)["current"] == {MODEL: tokens}

    assert_refused(run_batch(client, lines_of(2, prefix="second")), openai_message(MODEL, limit))
    assert retrieve_batch(client, first.id).status in IN_FLIGHT  # the refusal was the first batch's doing
    wait_for_status(client, first.id, "finalizing")
    assert_refused(run_batch(client, lines_of(2, prefix="third")), openai_message(MODEL, limit))
    assert retrieve_batch(client, first.id).status == "finalizing"

    assert wait_for_status(client, first.id).status == "completed"
    assert enqueued(server)["current"] == {}
    assert run_batch(client, lines_of(2, prefix="fourth")).status == "completed"
    assert enqueued(server) == {"current": {}, "peak": {MODEL: tokens}, "refused": {MODEL: 2}}


def test_a_cancelling_batch_holds_nothing(make_emulator: MakeEmulator) -> None:
    lines = lines_of(2)
    tokens = tokens_of(lines)
    server = make_emulator("--enqueued-token-limit", str(tokens), "--cancelling-delay", "5")
    client = sdk(server)
    first = create_batch(client, lines, metadata={"emulator_line_delay": "30"})
    wait_for_status(client, first.id, "in_progress")
    assert_refused(run_batch(client, lines), openai_message(MODEL, tokens))

    client.batches.cancel(first.id)
    assert retrieve_batch(client, first.id).status == "cancelling"  # no longer in flight
    assert run_batch(client, lines).status == "completed"
    assert enqueued(server) == {"current": {}, "peak": {MODEL: tokens}, "refused": {MODEL: 1}}


def test_models_do_not_share_a_limit(make_emulator: MakeEmulator) -> None:
    mini, other = lines_of(2), lines_of(2, model=OTHER_MODEL)
    limit = max(tokens_of(mini), tokens_of(other))
    server = make_emulator("--enqueued-token-limit", str(limit))
    client = sdk(server)
    slow = {"emulator_line_delay": "30"}
    held = [create_batch(client, mini, metadata=slow), create_batch(client, other, metadata=slow)]
    for batch in held:
        wait_for_status(client, batch.id, "in_progress")  # both admitted, though each fills its model's limit
    assert enqueued(server)["current"] == {MODEL: tokens_of(mini), OTHER_MODEL: tokens_of(other)}

    assert_refused(run_batch(client, mini), openai_message(MODEL, limit))
    assert_refused(run_batch(client, other), openai_message(OTHER_MODEL, limit))
    assert enqueued(server)["refused"] == {MODEL: 1, OTHER_MODEL: 1}
    for batch in held:
        client.batches.cancel(batch.id)


def test_a_limit_per_model_overrides_the_global_one(make_emulator: MakeEmulator) -> None:
    lines, other = lines_of(2), lines_of(2, model=OTHER_MODEL)
    server = make_emulator("--enqueued-token-limit", "1000000", "--enqueued-token-limits", f"{OTHER_MODEL}=5")
    assert server.admin("GET", "settings")["enqueued_token_limits"] == {OTHER_MODEL: 5}
    client = sdk(server)
    assert run_batch(client, lines).status == "completed"
    assert_refused(run_batch(client, other), openai_message(OTHER_MODEL, 5))

    # 0 lifts the model's limit; a per-model limit alone is enough to count tokens.
    server.configure(enqueued_token_limit=0, enqueued_token_limits={OTHER_MODEL: 0, MODEL: 3})
    assert run_batch(client, other).status == "completed"
    assert_refused(run_batch(client, lines), openai_message(MODEL, 3))
    assert enqueued(server)["refused"] == {OTHER_MODEL: 1, MODEL: 1}


@pytest.mark.parametrize(
    "value", [{MODEL: -1}, {MODEL: "many"}, {MODEL: 1.5}, ["gpt-4o"], "gpt-4o", "=5", {MODEL: True}]
)
def test_a_bad_limit_map_is_refused_whole(make_emulator: MakeEmulator, value: Any) -> None:
    server = make_emulator("--enqueued-token-limits", f"{MODEL}=7")
    response = httpx.patch(
        f"{server.root_url}/_emulator/settings", json={"enqueued_token_limits": value}, timeout=10
    )
    assert_error(response, 400)
    assert "enqueued_token_limits" in response.json()["error"]["message"]
    assert server.admin("GET", "settings")["enqueued_token_limits"] == {MODEL: 7}


def test_a_bad_limit_flag_is_a_usage_error(make_emulator: MakeEmulator) -> None:
    with pytest.raises(RuntimeError, match="did not start"):
        make_emulator("--enqueued-token-limits", "gpt-4o")


# concurrency --------------------------------------------------------------------------------------


async def test_batches_validated_at_once_never_overfill_the_limit(make_emulator: MakeEmulator) -> None:
    """Six batches created together and validated at the same moment: two fit, and exactly two are
    admitted; the peak stays within the limit."""
    lines = lines_of(2)
    tokens = tokens_of(lines)
    limit = 2 * tokens + tokens // 2
    server = make_emulator("--enqueued-token-limit", str(limit))
    together = {"emulator_validating_delay": "0.5", "emulator_line_delay": "1.5"}
    async with async_sdk(server) as client:
        batches = await asyncio.gather(
            *(async_create_batch(client, lines, metadata=together) for _ in range(6))
        )
        done = await asyncio.gather(*(async_wait_for_status(client, batch.id) for batch in batches))
    statuses = Counter(batch.status for batch in done)
    assert statuses == {"completed": 2, "failed": 4}, statuses
    for batch in done:
        if batch.status == "failed":
            assert_refused(batch, openai_message(MODEL, limit))
    assert enqueued(server) == {"current": {}, "peak": {MODEL: 2 * tokens}, "refused": {MODEL: 4}}


async def test_fail_fast_creates_at_once_never_overfill_the_limit(make_emulator: MakeEmulator) -> None:
    """Azure's fail-fast mode: of six creates at once, two fit and two are created; the other four are
    400s. Admitted batches hold their tokens from ``validating`` on."""
    lines = lines_of(2, model=DEPLOYMENT)
    tokens = tokens_of(lines)
    limit = 2 * tokens + tokens // 2
    server = make_emulator(*AZURE, "--enqueued-token-limit", str(limit), "--token-limit-fail-fast")
    held = {"emulator_validating_delay": "30"}
    async with async_sdk(server) as client:
        outcomes = await asyncio.gather(
            *(async_create_batch(client, lines, metadata=held) for _ in range(6)), return_exceptions=True
        )
        created = [outcome for outcome in outcomes if not isinstance(outcome, BaseException)]
        refused = [outcome for outcome in outcomes if isinstance(outcome, openai.BadRequestError)]
        assert (len(created), len(refused)) == (2, 4), outcomes
        for error in refused:
            assert_azure_error(error.response, 400, "token_limit_exceeded", azure_message(DEPLOYMENT, limit))
        listed = [batch.id async for batch in client.batches.list()]
        assert sorted(listed) == sorted(batch.id for batch in created)  # nothing else was created
        assert all(batch.status == "validating" for batch in created)
        assert enqueued(server) == {
            "current": {DEPLOYMENT: 2 * tokens},
            "peak": {DEPLOYMENT: 2 * tokens},
            "refused": {DEPLOYMENT: 4},
        }
        for batch in created:
            await client.batches.cancel(batch.id)


# Azure's fail-fast mode ---------------------------------------------------------------------------


@pytest.mark.parametrize("fail_fast", [True, False], ids=["fail-fast", "in-validating"])
def test_fail_fast_and_validating_apply_the_same_rule(make_emulator: MakeEmulator, fail_fast: bool) -> None:
    """At the limit a batch is admitted; one token under it, refused: at create (a 400, nothing
    created) with fail-fast, or in ``validating`` without, with the same message."""
    lines = lines_of(3, model=DEPLOYMENT)
    tokens = tokens_of(lines)
    flags = ("--token-limit-fail-fast",) if fail_fast else ()
    server = make_emulator(*AZURE, "--enqueued-token-limits", f"{DEPLOYMENT}={tokens - 1}", *flags)
    client = sdk(server)
    file = upload(client, jsonl(lines))
    message = azure_message(DEPLOYMENT, tokens - 1)
    if fail_fast:
        with pytest.raises(openai.BadRequestError) as refused:
            client.batches.create(
                input_file_id=file.id, endpoint="/chat/completions", completion_window="24h"
            )
        assert_azure_error(refused.value.response, 400, "token_limit_exceeded", message)
        assert list(client.batches.list()) == []
    else:
        batch = client.batches.create(
            input_file_id=file.id, endpoint="/chat/completions", completion_window="24h"
        )
        failed = wait_for_status(client, batch.id)
        assert failed.status == "failed"
        assert [(e.code, e.message) for e in failed.errors.data] == [("token_limit_exceeded", message)]

    server.configure(enqueued_token_limits={DEPLOYMENT: tokens})
    batch = client.batches.create(
        input_file_id=file.id, endpoint="/chat/completions", completion_window="24h"
    )
    assert wait_for_status(client, batch.id).status == "completed"
    assert enqueued(server) == {"current": {}, "peak": {DEPLOYMENT: tokens}, "refused": {DEPLOYMENT: 1}}


def test_fail_fast_counts_validating_batches_until_they_leave_flight(make_emulator: MakeEmulator) -> None:
    lines = lines_of(2, model=DEPLOYMENT)
    tokens = tokens_of(lines)
    server = make_emulator(*AZURE, "--enqueued-token-limit", str(tokens), "--token-limit-fail-fast")
    client = sdk(server)
    first = create_batch(client, lines, metadata={"emulator_validating_delay": "30"})
    assert first.status == "validating"
    assert enqueued(server)["current"] == {DEPLOYMENT: tokens}

    file = upload(client, jsonl(lines))
    with pytest.raises(openai.BadRequestError) as refused:
        client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert_azure_error(refused.value.response, 400, "token_limit_exceeded", azure_message(DEPLOYMENT, tokens))

    # Without fail-fast, a batch validated while the first one still validates is refused then.
    server.configure(azure={"token_limit_fail_fast": False})
    second = wait_for_status(client, create_batch(client, lines_of(1, model=DEPLOYMENT)).id)
    assert_refused(second, azure_message(DEPLOYMENT, tokens))
    assert retrieve_batch(client, first.id).status == "validating"
    client.batches.cancel(first.id)
    wait_for_status(client, first.id, "cancelled")
    assert enqueued(server)["current"] == {}
    batch = client.batches.create(
        input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert wait_for_status(client, batch.id).status == "completed"


def test_a_batch_admitted_at_create_runs_through_validation(make_emulator: MakeEmulator) -> None:
    """Admission at create is final: the batch is not counted twice nor refused when it is validated,
    even if the limit shrank meanwhile."""
    lines = lines_of(2, model=DEPLOYMENT)
    tokens = tokens_of(lines)
    server = make_emulator(*AZURE, "--enqueued-token-limit", str(tokens), "--token-limit-fail-fast")
    client = sdk(server)
    batch = create_batch(client, lines, metadata={"emulator_validating_delay": "1"})
    server.configure(enqueued_token_limit=1)
    assert wait_for_status(client, batch.id).status == "completed"
    assert enqueued(server) == {"current": {}, "peak": {DEPLOYMENT: tokens}, "refused": {}}


# statistics -------------------------------------------------------------------------------------


def test_a_reset_starts_the_peak_from_what_is_in_flight(make_emulator: MakeEmulator) -> None:
    big, small = lines_of(4), lines_of(1, prefix="small")
    server = make_emulator("--enqueued-token-limit", "1000000")
    client = sdk(server)
    assert run_batch(client, big).status == "completed"
    held = create_batch(client, small, metadata={"emulator_line_delay": "30"})
    wait_for_status(client, held.id, "in_progress")
    assert enqueued(server)["peak"] == {MODEL: tokens_of(big)}

    after = server.reset_stats()["enqueued_tokens"]
    assert after == {"current": {MODEL: tokens_of(small)}, "peak": {MODEL: tokens_of(small)}, "refused": {}}
    assert server.stats()["enqueued_tokens"] == after
    client.batches.cancel(held.id)


def test_tokens_in_flight_survive_a_restart(make_emulator: MakeEmulator) -> None:
    lines = lines_of(2)
    tokens = tokens_of(lines)
    server = make_emulator("--enqueued-token-limit", str(tokens))
    client = sdk(server)
    held = create_batch(client, lines, metadata={"emulator_line_delay": "30"})
    wait_for_status(client, held.id, "in_progress")

    restarted = server.restart(signal.SIGKILL)
    try:
        client = sdk(restarted)
        assert enqueued(restarted) == {"current": {MODEL: tokens}, "peak": {MODEL: tokens}, "refused": {}}
        assert_refused(run_batch(client, lines), openai_message(MODEL, tokens))
        client.batches.cancel(held.id)
    finally:
        restarted.stop()
