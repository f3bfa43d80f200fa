"""Observing many batches at once (a job's round) against a real emulator: calls counted by the
emulator's statistics, the listing's stopping rules, the one-by-one fallback, failures, and the
one-walk metadata lookup."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_batch.emulator.process import EmulatorProcess
from airflow_provider_batch.hooks.batch import OpenAIBatchHook
from airflow_provider_batch.status import BatchSnapshot, PollFailure
from tests.batch_testing import DIALECTS, connection, route_count

FAST_RETRIES = {"max_retries": 2, "retry_initial_wait": 0.01, "retry_max_wait": 0.05, "retry_max_total": 10}
CONN_ID = "poll_many"
LIST = "GET /v1/batches"
RETRIEVE = "GET /v1/batches/{id}"
SHARDS = 50
MODES = ("sync", "async")


def create_batches(
    server: EmulatorProcess,
    tmp_path: Path,
    count: int,
    metadata: Callable[[int], dict[str, str]] | None = None,
) -> list[Any]:
    """``count`` one-line chat batches on one input file, oldest first; batch ``n`` gets the
    metadata ``metadata(n)``."""
    client = server.client()
    endpoint = "/chat/completions" if server.dialect == "azure" else "/v1/chat/completions"
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    line = {"custom_id": "r0", "method": "POST", "url": endpoint, "body": body}
    path = tmp_path / "requests.jsonl"
    path.write_text(json.dumps(line) + "\n")
    uploaded = client.files.create(file=path, purpose="batch")
    while uploaded.status != "processed":
        time.sleep(0.05)
        uploaded = client.files.retrieve(uploaded.id)
    return [
        client.batches.create(
            input_file_id=uploaded.id,
            endpoint=endpoint,  # type: ignore[arg-type]
            completion_window="24h",
            metadata=metadata(n) if metadata else None,
        )
        for n in range(count)
    ]


@pytest.fixture(scope="module")
def listed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EmulatorProcess, list[Any]]]:
    """An emulator of this module alone holding 151 batches: an old one, then 150 whose metadata
    ``shard`` cycles through 50 values (``n % 50``)."""
    with EmulatorProcess(tmp_path_factory.mktemp("poll-many")) as server:
        tmp_path = tmp_path_factory.mktemp("poll-many-input")
        old = create_batches(server, tmp_path, 1, lambda n: {"shard": "old"})
        batches = create_batches(server, tmp_path, 150, lambda n: {"shard": str(n % SHARDS)})
        yield server, old + batches


@pytest.fixture
def hook_for(monkeypatch: pytest.MonkeyPatch, dialect: str) -> Callable[..., OpenAIBatchHook]:
    def make(server: EmulatorProcess, password: str | None = None) -> OpenAIBatchHook:
        fields = connection(server, dialect, password or server.api_key or "sk-emulator", **FAST_RETRIES)
        monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", json.dumps(fields))
        return OpenAIBatchHook(conn_id=CONN_ID)

    return make


def poll(
    hook: OpenAIBatchHook, mode: str, batch_ids: Sequence[str], **kwargs: Any
) -> dict[str, BatchSnapshot | PollFailure]:
    if mode == "sync":
        return hook.poll_batches(batch_ids, **kwargs)
    return asyncio.run(hook.apoll_batches(batch_ids, **kwargs))


# the listing ------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_150_batches_are_observed_in_two_list_calls(
    listed: tuple[EmulatorProcess, list[Any]], hook_for: Callable[..., OpenAIBatchHook], mode: str
) -> None:
    server, batches = listed
    wanted = [batch.id for batch in batches[1:]]
    random.Random(5).shuffle(wanted)
    server.reset_stats()

    observed = poll(hook_for(server), mode, wanted)

    assert list(observed) == wanted, "every id, in the caller's order"
    assert all(isinstance(seen, BatchSnapshot) for seen in observed.values())
    assert {seen.batch_id for seen in observed.values() if isinstance(seen, BatchSnapshot)} == set(wanted)
    expected = {batch.id: batch.metadata["shard"] for batch in batches[1:]}
    assert {
        batch_id: (seen.metadata or {}).get("shard")
        for batch_id, seen in observed.items()
        if isinstance(seen, BatchSnapshot)
    } == expected
    assert route_count(server, LIST) == 2
    assert route_count(server, RETRIEVE) == 0


@pytest.mark.parametrize("mode", MODES)
def test_the_listing_stops_once_every_batch_was_seen(
    listed: tuple[EmulatorProcess, list[Any]], hook_for: Callable[..., OpenAIBatchHook], mode: str
) -> None:
    server, batches = listed
    server.reset_stats()
    observed = poll(hook_for(server), mode, [batch.id for batch in batches[-3:]])
    assert all(isinstance(seen, BatchSnapshot) for seen in observed.values())
    assert route_count(server, LIST) == 1  # the newest page already held them
    assert poll(hook_for(server), mode, []) == {}
    assert route_count(server, LIST) == 1  # nothing wanted, nothing called


@pytest.mark.parametrize("mode", MODES)
def test_ids_missing_from_the_listing_are_retrieved_one_by_one(
    listed: tuple[EmulatorProcess, list[Any]], hook_for: Callable[..., OpenAIBatchHook], mode: str
) -> None:
    server, batches = listed
    hook = hook_for(server)
    old, newest = batches[0], batches[-1]

    # A created_after later than the old batch (a wrong hint) stops the listing after its first
    # page, whose oldest batch is older than the hint; the old batch is then retrieved on its own.
    server.reset_stats()
    observed = poll(hook, mode, [old.id, newest.id], created_after=newest.created_at + 3600)
    assert [type(seen) for seen in observed.values()] == [BatchSnapshot, BatchSnapshot]
    assert observed[old.id].batch_id == old.id  # type: ignore[union-attr]
    assert (route_count(server, LIST), route_count(server, RETRIEVE)) == (1, 1)

    # An id the server does not know: the whole listing (two pages), then a 404 of its own.
    server.reset_stats()
    observed = poll(hook, mode, [newest.id, "batch_does_not_exist"])
    assert isinstance(observed[newest.id], BatchSnapshot)
    missing = observed["batch_does_not_exist"]
    assert isinstance(missing, PollFailure)
    assert (missing.retryable, missing.http_status) == (False, 404)
    assert (route_count(server, LIST), route_count(server, RETRIEVE)) == (2, 1)


def test_the_page_cap_hands_the_rest_to_single_retrieves(
    make_emulator: Callable[..., EmulatorProcess],
    hook_for: Callable[..., OpenAIBatchHook],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from airflow_provider_batch.hooks import batch as hook_module

    monkeypatch.setattr(hook_module, "LIST_PAGE_SIZE", 2)  # 100 in production; the rule is the same
    server = make_emulator()
    batches = create_batches(server, tmp_path, 9)
    server.reset_stats()
    observed = hook_for(server).poll_batches([batches[0].id])  # the oldest of 9: on page 5 of 2
    assert isinstance(observed[batches[0].id], BatchSnapshot)
    assert (route_count(server, LIST), route_count(server, RETRIEVE)) == (3, 1)  # ceil(1/2) + 2 pages


@pytest.mark.parametrize("dialect", DIALECTS)
def test_azure_lists_as_openai_does(
    make_emulator: Callable[..., EmulatorProcess], hook_for: Callable[..., OpenAIBatchHook], tmp_path: Path
) -> None:
    server = make_emulator()
    batches = create_batches(server, tmp_path, 3)
    server.reset_stats()
    observed = hook_for(server).poll_batches([batch.id for batch in batches])
    assert [seen.batch_id for seen in observed.values() if isinstance(seen, BatchSnapshot)] == [
        batch.id for batch in batches
    ]
    assert sum(count for route, count in server.stats()["requests"].items() if route.startswith("GET")) == 1


# failures ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_a_failing_listing_is_a_poll_failure_for_every_batch(
    make_emulator: Callable[..., EmulatorProcess], hook_for: Callable[..., OpenAIBatchHook], mode: str
) -> None:
    server = make_emulator()
    hook = hook_for(server)
    server.configure(faults={"rate": 1.0, "kinds": ["503"], "routes": "^GET /v1/batches$"})
    observed = poll(hook, mode, ["batch_a", "batch_b", "batch_c"])
    assert list(observed) == ["batch_a", "batch_b", "batch_c"]
    failures = set(observed.values())
    assert len(failures) == 1, "one failure, the listing's, for every batch"
    (failure,) = failures
    assert isinstance(failure, PollFailure)
    assert (failure.retryable, failure.http_status) == (True, 503)
    assert route_count(server, LIST) == 1 + FAST_RETRIES["max_retries"]  # retried, then given up
    assert route_count(server, RETRIEVE) == 0, "no retrieve storm while the API is failing"


@pytest.mark.parametrize("mode", MODES)
def test_a_refused_key_is_a_final_failure_for_every_batch(
    make_emulator: Callable[..., EmulatorProcess], hook_for: Callable[..., OpenAIBatchHook], mode: str
) -> None:
    server = make_emulator(api_key="sk-the-right-key")
    observed = poll(hook_for(server, password="sk-a-wrong-key"), mode, ["batch_a", "batch_b"])
    assert {(seen.retryable, seen.http_status) for seen in observed.values()} == {(False, 401)}  # type: ignore[union-attr]
    assert "sk-a-wrong-key" not in repr(observed)


# one walk for many metadata values --------------------------------------------------------------


def test_find_batches_by_metadata_returns_the_newest_per_value_in_one_walk(
    listed: tuple[EmulatorProcess, list[Any]], hook_for: Callable[..., OpenAIBatchHook]
) -> None:
    server, batches = listed
    hook = hook_for(server)
    newest = {batch.metadata["shard"]: batch.id for batch in batches}  # later batches overwrite
    values = [str(n) for n in range(SHARDS)]
    server.reset_stats()

    found = hook.find_batches_by_metadata("shard", values)

    assert {value: snapshot.batch_id for value, snapshot in found.items()} == {
        value: newest[value] for value in values
    }
    assert all(isinstance(snapshot, BatchSnapshot) for snapshot in found.values())
    # The 50 values are all among the 50 newest batches: one page, not fifty walks.
    assert route_count(server, LIST) == 1


def test_find_batches_by_metadata_stops_at_created_after_and_max_batches(
    listed: tuple[EmulatorProcess, list[Any]], hook_for: Callable[..., OpenAIBatchHook]
) -> None:
    server, batches = listed
    hook = hook_for(server)

    server.reset_stats()
    found = hook.find_batches_by_metadata("shard", ["old", "7", "not-there"])
    assert {value: snapshot.batch_id for value, snapshot in found.items()} == {
        "old": batches[0].id,
        "7": batches[1 + 107].id,
    }
    assert route_count(server, LIST) == 2  # a value never found walks the whole (short) history

    assert hook.find_batches_by_metadata("shard", ["old"], created_after=batches[-1].created_at + 3600) == {}
    assert set(hook.find_batches_by_metadata("shard", ["old", "49", "48"], max_batches=2)) == {"49", "48"}
    assert hook.find_batches_by_metadata("shard", []) == {}


def test_find_batch_by_metadata_still_returns_the_sdk_batch(
    listed: tuple[EmulatorProcess, list[Any]], hook_for: Callable[..., OpenAIBatchHook]
) -> None:
    server, batches = listed
    hook = hook_for(server)
    found = hook.find_batch_by_metadata("shard", "7")
    assert found is not None
    assert (type(found).__name__, found.id) == ("Batch", batches[1 + 107].id)
    assert hook.find_batch_by_metadata("shard", "old", max_batches=10) is None
