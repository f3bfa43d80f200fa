"""Authentication, transient fault injection (and the SDK's own retries against it), latency,
statistics and the settings endpoint. Every test runs a private emulator: they change settings."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from tests.emulator.helpers import CHAT, admin_url, assert_error, chat_lines, checked, jsonl, sdk, upload

KEY = "sk-emulator-secret"


# Authentication --------------------------------------------------------------------------------


def test_api_key_is_required(make_emulator) -> None:
    server = make_emulator(api_key=KEY)
    missing = httpx.get(f"{server.base_url}/batches")
    assert_error(
        missing,
        401,
        message="You didn't provide an API key. You need to provide your API key in an Authorization header"
        " using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
    )

    wrong_key = "sk-wrong-key-0123456789"
    with pytest.raises(openai.AuthenticationError) as caught:
        sdk(server, api_key=wrong_key).batches.list()
    error = assert_error(
        caught.value.response, 401, message="Incorrect API key provided.", code="invalid_api_key"
    )
    assert wrong_key not in caught.value.response.text  # never echoed: error bodies end up in logs
    assert wrong_key not in str(error)

    # The right key works for the SDK and for raw requests.
    client = sdk(server)
    assert checked(client.batches.with_raw_response.list(), "ListBatchesResponse").data == []
    assert upload(client, jsonl(chat_lines(1))).purpose == "batch"
    authorized = httpx.get(f"{server.base_url}/files", headers={"Authorization": f"Bearer {KEY}"})
    assert authorized.status_code == 200


def test_admin_routes_need_the_key_too(make_emulator) -> None:
    server = make_emulator(api_key=KEY)
    http = httpx.Client()
    for method, path in (("GET", "stats"), ("GET", "settings"), ("PATCH", "settings"), ("DELETE", "stats")):
        assert_error(http.request(method, admin_url(server, path), json={}), 401)
        wrong = http.request(
            method, admin_url(server, path), json={}, headers={"Authorization": "Bearer nope"}
        )
        assert_error(wrong, 401, code="invalid_api_key")
    assert_error(http.post(admin_url(server, "batches/batch_x/expire")), 401)
    # The health check stays open (for readiness probes); the admin helper sends the key.
    assert http.get(admin_url(server, "health")).json() == {"status": "ok"}
    assert server.stats()["total_requests"] == 0  # rejected requests are not counted


# Faults through the settings endpoint ----------------------------------------------------------


def test_sdk_retries_recover_from_429_using_retry_after_ms(make_emulator) -> None:
    server = make_emulator()
    server.configure(
        faults={"rate": 1.0, "kinds": ["429"], "count": 2, "routes": "^GET /v1/batches$", "retry_after": 0.05}
    )
    raw = httpx.get(f"{server.base_url}/batches")
    assert_error(raw, 429, type="requests", code="rate_limit_exceeded")
    assert (raw.headers["retry-after-ms"], raw.headers["retry-after"]) == ("50", "1")

    started = time.monotonic()
    page = sdk(server, max_retries=2).batches.list()
    elapsed = time.monotonic() - started
    assert page.data == []
    # The SDK waited the announced 50 ms twice, not its own backoff (at least 0.375 s, then 0.75 s:
    # 1.125 s in all); the margin is for a loaded machine.
    assert elapsed < 1.0, elapsed
    stats = server.stats()
    assert stats["requests"] == {"GET /v1/batches": 3}
    assert stats["faults"] == {"429 GET /v1/batches": 2}
    assert (stats["total_requests"], stats["total_faults"]) == (3, 2)


def test_sdk_retries_recover_from_server_errors_and_drops(make_emulator) -> None:
    server = make_emulator()
    client = sdk(server, max_retries=2)
    file = upload(client, jsonl(chat_lines(1)))
    for kind in ("500", "503", "drop"):
        server.reset_stats()
        server.configure(faults={"rate": 1.0, "kinds": [kind], "count": 1, "routes": "^GET /v1/files/"})
        assert client.files.retrieve(file.id) == file, kind
        stats = server.stats()
        assert stats["requests"] == {"GET /v1/files/{id}": 2}, kind
        assert stats["faults"] == {f"{kind} GET /v1/files/{{id}}": 1}, kind


def test_without_retries_the_fault_surfaces(make_emulator) -> None:
    server = make_emulator()
    client = sdk(server, max_retries=0)
    cases: list[tuple[str, type[openai.OpenAIError], int | None]] = [
        ("429", openai.RateLimitError, 429),
        ("500", openai.InternalServerError, 500),
        ("503", openai.InternalServerError, 503),
        ("drop", openai.APIConnectionError, None),
        ("drop_after", openai.APIConnectionError, None),
    ]
    for kind, error, status in cases:
        server.reset_stats()
        server.configure(faults={"rate": 1.0, "kinds": [kind], "count": 1})
        with pytest.raises(error) as caught:
            client.batches.list()
        if status is not None:
            code = "rate_limit_exceeded" if status == 429 else None
            assert_error(caught.value.response, status, type=None, code=code)  # type: ignore[attr-defined]
        else:
            assert not isinstance(caught.value, openai.APIStatusError), kind
        assert server.stats()["requests"] == {"GET /v1/batches": 1}, kind
        assert client.batches.list().data == [], (
            kind
        )  # the fault count is used up: the next call goes through


def test_drop_after_creates_the_batch_the_client_never_hears_of(make_emulator) -> None:
    server = make_emulator()
    client = sdk(server, max_retries=0)
    file = upload(client, jsonl(chat_lines(1)))
    server.configure(
        faults={"rate": 1.0, "kinds": ["drop_after"], "count": 1, "routes": "^POST /v1/batches$"}
    )
    with pytest.raises(openai.APIConnectionError):
        client.batches.create(
            input_file_id=file.id, endpoint=CHAT, completion_window="24h", metadata={"attempt": "lost"}
        )
    listed = client.batches.list().data
    assert [b.metadata for b in listed] == [{"attempt": "lost"}]
    assert listed[0].input_file_id == file.id


def test_sdk_retry_after_drop_after_duplicates_the_batch(make_emulator) -> None:
    """Why retry-safe submission matters: the SDK's own retry of a lost create makes a second batch."""
    server = make_emulator()
    client = sdk(server, max_retries=2)
    file = upload(client, jsonl(chat_lines(1)))
    server.configure(
        faults={"rate": 1.0, "kinds": ["drop_after"], "count": 1, "routes": "^POST /v1/batches$"}
    )
    batch = client.batches.create(input_file_id=file.id, endpoint=CHAT, completion_window="24h")
    ids = [b.id for b in client.batches.list()]
    assert len(ids) == 2
    assert batch.id in ids


def test_fault_routes_limit_where_faults_happen(make_emulator) -> None:
    server = make_emulator()
    server.configure(faults={"rate": 1.0, "kinds": ["500"], "routes": "^POST /v1/batches/\\{id\\}/cancel$"})
    client = sdk(server, max_retries=0)
    file = upload(client, jsonl(chat_lines(1)))
    batch = client.batches.create(
        input_file_id=file.id, endpoint=CHAT, completion_window="24h", metadata={"emulator_line_delay": "1"}
    )
    assert client.batches.retrieve(batch.id).id == batch.id
    with pytest.raises(openai.InternalServerError):
        client.batches.cancel(batch.id)
    # Admin routes never get faults, even with an unrestricted fault setting.
    server.configure(faults={"routes": "", "count": -1})
    assert server.stats()["faults"] == {"500 POST /v1/batches/{id}/cancel": 1}
    assert server.admin("GET", "health") == {"status": "ok"}


def test_latency_delays_api_requests_only(make_emulator) -> None:
    server = make_emulator()
    client = sdk(server)
    client.batches.list()  # warm the connection up
    server.configure(faults={"latency": 0.3})
    started = time.monotonic()
    client.batches.list()
    assert time.monotonic() - started >= 0.3
    started = time.monotonic()
    server.stats()
    assert time.monotonic() - started < 0.3


def test_fault_seed_makes_faults_reproducible(make_emulator) -> None:
    server = make_emulator()
    client = sdk(server, max_retries=0)

    def outcomes() -> list[str]:
        result = []
        for _ in range(16):
            try:
                client.batches.list()
                result.append("ok")
            except openai.APIStatusError as exc:
                result.append(str(exc.status_code))
        return result

    server.configure(faults={"rate": 0.5, "kinds": ["429", "500"], "seed": 7})
    first = outcomes()
    server.configure(faults={"seed": 7})  # setting the seed again replays the same faults
    assert outcomes() == first
    server.configure(faults={"seed": 8})
    assert outcomes() != first
    assert {"ok", "429", "500"} <= set(first)  # a fair mix, not all or nothing


# Faults from the command line ------------------------------------------------------------------


def test_fault_flags_on_the_command_line(make_emulator) -> None:
    server = make_emulator(
        "--fault-rate", "1", "--fault-kinds", "429", "--fault-count", "2",
        "--fault-routes", "^POST /v1/files$", "--retry-after", "0.01",
    )  # fmt: skip
    settings = server.admin("GET", "settings")["faults"]
    assert settings | {"seed": None} == {
        "rate": 1.0,
        "kinds": ["429"],
        "routes": "^POST /v1/files$",
        "count": 2,
        "latency": 0.0,
        "retry_after": 0.01,
        "seed": None,
    }
    client = sdk(server, max_retries=2)
    assert client.batches.list().data == []  # another route: no fault
    file = upload(client, jsonl(chat_lines(1)))
    assert file.purpose == "batch"
    stats = server.stats()
    assert stats["requests"] == {"GET /v1/batches": 1, "POST /v1/files": 3}
    assert stats["faults"] == {"429 POST /v1/files": 2}
    assert server.admin("GET", "settings")["faults"]["count"] == 0  # used up
    assert upload(client, jsonl(chat_lines(1))).purpose == "batch"
    assert server.stats()["total_faults"] == 2


def test_fault_kinds_mix_from_the_command_line(make_emulator) -> None:
    server = make_emulator("--fault-rate", "1", "--fault-kinds", "500,503", "--fault-seed", "1")
    client = sdk(server, max_retries=0)
    statuses = []
    for _ in range(20):
        with pytest.raises(openai.InternalServerError) as caught:
            client.batches.list()
        statuses.append(caught.value.status_code)
    assert set(statuses) == {500, 503}  # both kinds drawn (seeded, so always the same mix)
    assert server.stats()["faults"] == {
        "500 GET /v1/batches": statuses.count(500),
        "503 GET /v1/batches": statuses.count(503),
    }


# Statistics and settings -----------------------------------------------------------------------


def test_stats_count_per_route_and_reset(make_emulator) -> None:
    server = make_emulator()
    client = sdk(server)
    file = upload(client, jsonl(chat_lines(1)))
    client.files.retrieve(file.id)
    client.files.retrieve(file.id)
    httpx.get(f"{server.base_url}/nowhere")
    stats = server.stats()
    assert stats["requests"] == {"POST /v1/files": 1, "GET /v1/files/{id}": 2, "GET /v1/nowhere": 1}
    assert stats["total_requests"] == 4
    cleared = server.reset_stats()
    assert cleared == {
        "requests": {},
        "faults": {},
        "total_requests": 0,
        "total_faults": 0,
        "enqueued_tokens": {"current": {}, "peak": {}, "refused": {}},
    }


def test_bad_settings_are_rejected_and_nothing_changes(make_emulator) -> None:
    server = make_emulator()
    before = server.admin("GET", "settings")
    bad: list[object] = [
        {"faults": {"rate": 1.5}},
        {"faults": {"kinds": ["429", "teapot"]}},
        {"faults": {"kinds": []}},
        {"faults": {"routes": "("}},
        {"faults": {"count": -2}},
        {"time_scale": 2, "line_delay": "slow"},  # the valid half is not applied either
        {"shuffle_output": "maybe"},
        {"no_such_setting": 1},
        {"faults": 3},
        [1, 2],
    ]
    with httpx.Client() as http:
        for changes in bad:
            assert_error(http.patch(admin_url(server, "settings"), json=changes), 400)
            assert server.admin("GET", "settings") == before, changes


def test_settings_change_live(make_emulator) -> None:
    server = make_emulator()
    changed = server.configure(
        line_delay=0.01, shuffle_output="false", faults={"latency": 0.0, "kinds": "429,drop"}
    )
    assert (changed["line_delay"], changed["shuffle_output"], changed["faults"]["kinds"]) == (
        0.01,
        False,
        ["429", "drop"],
    )
    assert server.admin("GET", "settings") == changed
