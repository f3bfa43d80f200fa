"""Pagination of ``GET /batches`` and ``GET /files``: limits, exclusive ``after`` cursors, order,
``has_more``/``first_id``/``last_id``, and the SDK's auto-pagination built on them.

Each fixture starts its own emulator, shared by the module's read-only tests, so that the tests
know every object on the server.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from airflow_provider_batch.emulator.process import EmulatorProcess
from tests.emulator.helpers import CHAT, assert_error, async_sdk, chat_lines, checked, jsonl, sdk, upload

BATCHES = 45  # three pages of the default 20


@pytest.fixture(scope="module")
def batches(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EmulatorProcess, list[str]]]:
    """A fresh server with 45 batches; yields it and the batch ids newest first."""
    with EmulatorProcess(tmp_path_factory.mktemp("pagination-batches")) as server:
        client = sdk(server)
        file = upload(client, jsonl(chat_lines(1)))
        created = [
            client.batches.create(input_file_id=file.id, endpoint=CHAT, completion_window="24h").id
            for _ in range(BATCHES)
        ]
        yield server, created[::-1]


def _batch_page(server: EmulatorProcess, **query: Any) -> Any:
    return checked(sdk(server).batches.with_raw_response.list(**query), "ListBatchesResponse")


def test_batches_default_page_is_20_newest_first(batches: tuple[EmulatorProcess, list[str]]) -> None:
    server, newest_first = batches
    page = _batch_page(server)
    assert [b.id for b in page.data] == newest_first[:20]
    assert page.has_more is True
    assert (page.first_id, page.last_id) == (newest_first[0], newest_first[19])


def test_batches_after_cursor_is_exclusive(batches: tuple[EmulatorProcess, list[str]]) -> None:
    server, newest_first = batches
    second = _batch_page(server, after=newest_first[19])
    assert [b.id for b in second.data] == newest_first[20:40]
    assert second.has_more is True
    third = _batch_page(server, after=second.last_id)
    assert [b.id for b in third.data] == newest_first[40:]
    assert (third.has_more, third.first_id, third.last_id) == (False, newest_first[40], newest_first[-1])
    assert [b.id for b in _batch_page(server, after=newest_first[5], limit=3).data] == newest_first[6:9]
    empty = _batch_page(server, after=newest_first[-1])
    assert (empty.data, empty.has_more) == ([], False)


@pytest.mark.parametrize(
    ("limit", "size", "has_more"), [(1, 1, True), (44, 44, True), (45, 45, False), (100, 45, False)]
)
def test_batches_limit(
    batches: tuple[EmulatorProcess, list[str]], limit: int, size: int, has_more: bool
) -> None:
    server, newest_first = batches
    page = _batch_page(server, limit=limit)
    assert [b.id for b in page.data] == newest_first[:size]
    assert page.has_more is has_more


@pytest.mark.parametrize("limit", ["0", "101", "-1", "abc", "1.5", ""])
def test_batches_limit_out_of_range(emulator: EmulatorProcess, limit: str) -> None:
    assert_error(httpx.get(f"{emulator.base_url}/batches", params={"limit": limit}), 400, param="limit")


def test_sdk_auto_pagination_yields_every_batch_once(batches: tuple[EmulatorProcess, list[str]]) -> None:
    server, newest_first = batches
    server.reset_stats()
    seen = [batch.id for batch in sdk(server).batches.list()]
    assert seen == newest_first
    # Three pages of 20, 20 and 5: the SDK stopped when has_more turned false.
    assert server.stats()["requests"]["GET /v1/batches"] == 3


async def test_async_auto_pagination(batches: tuple[EmulatorProcess, list[str]]) -> None:
    server, newest_first = batches
    server.reset_stats()
    async with async_sdk(server) as client:
        seen = [batch.id async for batch in client.batches.list(limit=7)]
    assert seen == newest_first
    assert server.stats()["requests"]["GET /v1/batches"] == 7  # ceil(45 / 7)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EmulatorProcess, list[Any]]]:
    """A fresh server with seven files of three purposes; yields it and the files oldest first."""
    with EmulatorProcess(tmp_path_factory.mktemp("pagination-files")) as server:
        client = sdk(server)
        purposes = ["batch", "user_data", "batch", "vision", "batch", "user_data", "batch"]
        uploaded = [
            upload(client, jsonl(chat_lines(1, prefix=str(i))), filename=f"f{i}.jsonl", purpose=p)
            for i, p in enumerate(purposes)
        ]
        yield server, uploaded


def _file_page(server: EmulatorProcess, **query: Any) -> Any:
    return checked(sdk(server).files.with_raw_response.list(**query), "ListFilesResponse")


def test_files_newest_first_by_default(files: tuple[EmulatorProcess, list[Any]]) -> None:
    server, uploaded = files
    page = _file_page(server)
    ids = [f.id for f in uploaded]
    assert [f.id for f in page.data] == ids[::-1]
    assert (page.first_id, page.last_id, page.has_more) == (ids[-1], ids[0], False)
    assert page.data[-1] == uploaded[0]


def test_files_order_limit_and_after(files: tuple[EmulatorProcess, list[Any]]) -> None:
    server, uploaded = files
    ids = [f.id for f in uploaded]
    ascending = _file_page(server, order="asc", limit=3)
    assert [f.id for f in ascending.data] == ids[:3]
    assert (ascending.has_more, ascending.first_id, ascending.last_id) == (True, ids[0], ids[2])
    rest = _file_page(server, order="asc", after=ascending.last_id)
    assert [f.id for f in rest.data] == ids[3:]
    assert rest.has_more is False
    descending = _file_page(server, order="desc", after=ids[4], limit=2)
    assert [f.id for f in descending.data] == [ids[3], ids[2]]
    assert descending.has_more is True


def test_files_purpose_filter(files: tuple[EmulatorProcess, list[Any]]) -> None:
    server, uploaded = files
    for purpose in ("batch", "user_data", "vision"):
        page = _file_page(server, purpose=purpose, order="asc")
        assert [f.id for f in page.data] == [f.id for f in uploaded if f.purpose == purpose]
    empty = _file_page(server, purpose="fine-tune")
    # An empty page has no first or last id (the documented relaxation of ListFilesResponse).
    assert (empty.data, empty.first_id, empty.last_id, empty.has_more) == ([], None, None, False)
    batch_files = _file_page(server, purpose="batch", order="asc", limit=2)
    after = _file_page(server, purpose="batch", order="asc", after=batch_files.last_id)
    assert [f.id for f in batch_files.data + after.data] == [f.id for f in uploaded if f.purpose == "batch"]


def test_sdk_auto_pagination_over_files(files: tuple[EmulatorProcess, list[Any]]) -> None:
    server, uploaded = files
    assert [f.id for f in sdk(server).files.list(limit=2, order="asc")] == [f.id for f in uploaded]


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "10001"}, "limit"),
        ({"limit": "abc"}, "limit"),
        ({"order": "sideways"}, "order"),
    ],
)
def test_files_bad_query(emulator: EmulatorProcess, query: dict[str, str], param: str) -> None:
    assert_error(httpx.get(f"{emulator.base_url}/files", params=query), 400, param=param)
