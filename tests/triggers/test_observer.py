"""The status observer against a real emulator: coalesced requests each answered with their own
batch, a batch the listing does not reach still observed, a failing listing a failed observation
for every trigger it served, and triggers leaving the observer however they end."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from airflow_provider_batch import observer as observer_module
from airflow_provider_batch.emulator.process import EmulatorProcess
from airflow_provider_batch.hooks.batch import SHARED_ASYNC_CLIENTS, OpenAIBatchHook
from airflow_provider_batch.observer import StatusObserver, observers, observing
from airflow_provider_batch.status import BatchSnapshot, PollFailure
from airflow_provider_batch.triggers.batch import OpenAIBatchTrigger
from tests.batch_testing import connection, route_count, wait_for_status
from tests.triggers.test_trigger import collect, submit

CONN_ID = "observer_emulator"
API_KEY = "sk-observer-canary-91ab"
LIST = "GET /v1/batches"
RETRIEVE = "GET /v1/batches/{id}"


@pytest.fixture
def connect(monkeypatch: pytest.MonkeyPatch) -> Callable[[EmulatorProcess], None]:
    def point_at(server: EmulatorProcess) -> None:
        fields = connection(server, "openai", API_KEY, retry_initial_wait=0.01, retry_max_wait=0.05)
        monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", json.dumps(fields))

    return point_at


def create_plain(server: EmulatorProcess, input_file_id: str, count: int) -> list[str]:
    client = server.client()
    return [
        client.batches.create(
            input_file_id=input_file_id, endpoint="/v1/chat/completions", completion_window="24h"
        ).id
        for _ in range(count)
    ]


async def test_coalesced_requests_each_get_their_own_batch_from_one_listing_page(
    make_emulator: Callable[..., EmulatorProcess], connect: Callable, tmp_path: Path
) -> None:
    server = make_emulator()
    connect(server)
    completed = [submit(server, tmp_path, lines=1) for _ in range(3)]
    failed = [
        submit(server, tmp_path, lines=1, emulator_fail_validation="token_limit_exceeded") for _ in range(3)
    ]
    running = [submit(server, tmp_path, lines=1, emulator_validating_delay="30") for _ in range(3)]
    for batch_id in completed:
        wait_for_status(server, batch_id)
    for batch_id in failed:
        wait_for_status(server, batch_id)
    batch_ids = completed + failed + running
    server.reset_stats()

    async with observing(CONN_ID, batch_ids) as observer:
        seen = await asyncio.gather(*(observer.snapshot(batch_id, patience=0.2) for batch_id in batch_ids))

    assert [snapshot.batch_id for snapshot in seen] == batch_ids  # type: ignore[union-attr]
    statuses = [snapshot.status for snapshot in seen]  # type: ignore[union-attr]
    assert statuses == ["completed"] * 3 + ["failed"] * 3 + ["validating"] * 3
    assert (route_count(server, LIST), route_count(server, RETRIEVE)) == (1, 0)
    assert (observer.sweeps, observer.calls, observer.answered) == (1, 1, 9)
    for batch_id in running:
        server.client().batches.cancel(batch_id)


async def test_a_batch_the_listing_does_not_reach_is_still_observed(
    make_emulator: Callable[..., EmulatorProcess],
    connect: Callable,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Four batches never seen are looked for two pages deep (4 / PAGE_COST) with no margin.
    monkeypatch.setattr(observer_module, "EXPLORE_MARGIN", 0)
    server = make_emulator()
    connect(server)
    old = submit(server, tmp_path, lines=1)
    wait_for_status(server, old)
    input_file_id = server.client().batches.retrieve(old).input_file_id
    newer = create_plain(server, input_file_id, 205)  # pushes the old batch to the third page
    watched = [old, *newer[-3:]]
    server.reset_stats()

    async with observing(CONN_ID, watched) as observer:
        first = await observer.snapshots(watched, patience=0.1)
        # The old batch was looked for on the first two pages, then retrieved.
        assert (route_count(server, LIST), route_count(server, RETRIEVE)) == (2, 1)
        assert all(isinstance(first[batch_id], BatchSnapshot) for batch_id in watched)
        assert [first[batch_id].batch_id for batch_id in watched] == watched  # type: ignore[union-attr]

        again = await observer.snapshots(watched, patience=0.1)
        # Now known to lie beyond them, it is retrieved straight away, the others listed.
        assert (route_count(server, LIST), route_count(server, RETRIEVE)) == (3, 2)
        assert again[old] == BatchSnapshot.from_api(server.client().batches.retrieve(old).model_dump())


async def test_a_failing_listing_is_a_failed_observation_for_every_trigger_it_served(
    make_emulator: Callable[..., EmulatorProcess], connect: Callable, tmp_path: Path
) -> None:
    server = make_emulator()
    connect(server)
    batch_ids = [submit(server, tmp_path, lines=1, emulator_validating_delay="30") for _ in range(4)]
    server.configure(faults={"rate": 1.0, "kinds": ["503"], "routes": "^GET /v1/batches$", "count": -1})
    server.reset_stats()

    async with observing(CONN_ID, batch_ids) as observer:
        seen = await asyncio.gather(*(observer.snapshot(batch_id, patience=0.2) for batch_id in batch_ids))

    assert all(isinstance(observed, PollFailure) and observed.retryable for observed in seen), seen
    assert all("503" in observed.message for observed in seen)  # type: ignore[union-attr]
    assert route_count(server, RETRIEVE) == 0, "a failing listing is not followed by N retrieves"
    server.configure(faults={"rate": 0.0, "count": 0})
    for batch_id in batch_ids:
        server.client().batches.cancel(batch_id)


async def test_a_list_error_counts_against_each_triggers_own_failure_budget(
    make_emulator: Callable[..., EmulatorProcess], connect: Callable, tmp_path: Path
) -> None:
    server = make_emulator()
    connect(server)
    batch_ids = [submit(server, tmp_path, lines=1, emulator_validating_delay="30") for _ in range(3)]
    # Listing and retrieves fail alike: once the first trigger has given up, the other two may be
    # observed apart, with single calls.
    server.configure(faults={"rate": 1.0, "kinds": ["503"], "routes": "^GET /v1/batches", "count": -1})
    server.reset_stats()
    triggers = [
        OpenAIBatchTrigger(
            conn_id=CONN_ID,
            batch_id=batch_id,
            end_time=time.time() + 60,
            poll_interval=0.1,
            max_poll_interval=0.1,
            max_consecutive_failures=budget,
        )
        for budget, batch_id in zip((2, 3, 4), batch_ids, strict=True)
    ]
    events = await asyncio.gather(*(collect(trigger) for trigger in triggers))
    assert [len(only) for only in events] == [1, 1, 1]
    assert all(only[0].payload["termination_reason"] == "polling_error" for only in events)
    for budget, only in zip((2, 3, 4), events, strict=True):
        assert f"{budget} times in a row" in only[0].payload["message"]
    assert route_count(server, LIST) >= 6, "the first two looks of all three were one listing each"
    server.configure(faults={"rate": 0.0, "count": 0})
    for batch_id in batch_ids:
        server.client().batches.cancel(batch_id)


async def test_triggers_that_end_or_are_cancelled_leave_the_observer(
    make_emulator: Callable[..., EmulatorProcess], connect: Callable, tmp_path: Path
) -> None:
    server = make_emulator()
    connect(server)
    quick = [submit(server, tmp_path, lines=2, emulator_line_delay="0.5") for _ in range(3)]
    stuck = submit(server, tmp_path, lines=1, emulator_validating_delay="30")
    triggers = [
        OpenAIBatchTrigger(
            conn_id=CONN_ID,
            batch_id=batch_id,
            end_time=time.time() + 60,
            poll_interval=0.1,
            max_poll_interval=0.2,
        )
        for batch_id in [*quick, stuck]
    ]
    runs = [asyncio.ensure_future(anext(trigger.run())) for trigger in triggers]
    await asyncio.sleep(0.5)
    observer = observers()[CONN_ID]
    assert observer.users == 4
    assert observer.watched == 4
    config = await OpenAIBatchHook(conn_id=CONN_ID).aconfig()
    assert SHARED_ASYNC_CLIENTS.users(config) == 1, "one client lease for all, held by the observer"

    events = await asyncio.gather(*runs[:3])
    assert [event.payload["batch"]["batch_id"] for event in events] == quick
    assert observer.users == 1, "the ended triggers left"
    assert observer.watched == 1

    runs[3].cancel()  # as the triggerer cancels a trigger whose task was cleared
    with pytest.raises(asyncio.CancelledError):
        await runs[3]
    assert CONN_ID not in observers(), "the last one out stops the observer"
    assert observer._task is None
    assert SHARED_ASYNC_CLIENTS.users(config) == 0
    server.client().batches.cancel(stuck)


async def test_a_waiter_cancelled_mid_sweep_does_not_disturb_the_others(
    make_emulator: Callable[..., EmulatorProcess], connect: Callable, tmp_path: Path
) -> None:
    server = make_emulator("--latency", "0.2")
    connect(server)
    batch_ids = [submit(server, tmp_path, lines=1) for _ in range(3)]
    async with observing(CONN_ID, batch_ids) as observer:
        waits = [asyncio.ensure_future(observer.snapshot(batch_id)) for batch_id in batch_ids]
        await asyncio.sleep(0.05)  # the sweep is under way
        waits[0].cancel()
        seen = await asyncio.gather(*waits[1:])
        assert [snapshot.batch_id for snapshot in seen] == batch_ids[1:]  # type: ignore[union-attr]
        assert waits[0].cancelled()
        later = await observer.snapshot(batch_ids[0])
        assert isinstance(later, BatchSnapshot)
        assert later.batch_id == batch_ids[0]


async def test_a_connection_that_cannot_be_read_fails_every_waiting_trigger(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", raising=False)
    async with observing(CONN_ID, ["batch_a", "batch_b"]) as observer:
        results = await asyncio.gather(
            observer.snapshot("batch_a"), observer.snapshot("batch_b"), return_exceptions=True
        )
    assert all(isinstance(result, Exception) for result in results), results
    assert isinstance(observer, StatusObserver)
    assert CONN_ID not in observers()
