"""``--upstream``: emulator A forwards every request line to emulator B's synchronous endpoints;
whatever B answers (or fails to) becomes A's result line, and the batch itself never fails."""

from __future__ import annotations

import socket

from tests.emulator.helpers import (
    MODEL,
    assert_counts_match_files,
    chat_line,
    request_line,
    results,
    run_batch,
    sdk,
)

UPSTREAM_KEY = "sk-upstream"


def _closed_port() -> int:
    """A local port that nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_lines_are_answered_by_the_upstream(make_emulator) -> None:
    upstream = make_emulator(api_key=UPSTREAM_KEY)
    front = make_emulator("--upstream", upstream.base_url, "--upstream-api-key", UPSTREAM_KEY)
    lines = [
        *(chat_line(f"r{i}", f"question {i}") for i in range(4)),
        request_line("rejected", {"model": MODEL}),  # no messages: B answers 400
        chat_line("local", emulator={"status_code": 429}),  # the directive is answered by A itself
    ]
    client = sdk(front)
    batch = run_batch(client, lines)
    assert batch.status == "completed"
    assert batch.request_counts.model_dump() == {"total": 6, "completed": 4, "failed": 2}
    output, errors = results(client, batch)
    assert_counts_match_files(batch, output, errors)

    # B saw exactly the forwarded POSTs (every line but the directive), A answered none itself.
    assert upstream.stats()["requests"] == {"POST /v1/chat/completions": 5}
    assert "POST /v1/chat/completions" not in front.stats()["requests"]

    for line in output:
        question = line["custom_id"].replace("r", "question ")
        assert line["response"]["body"]["choices"][0]["message"]["content"] == f"echo: {question}"
    by_id = {line["custom_id"]: line for line in errors}
    rejected = by_id["rejected"]
    assert (rejected["error"], rejected["response"]["status_code"]) == (None, 400)
    assert rejected["response"]["body"]["error"]["message"] == "Missing required parameter: 'messages'."
    assert by_id["local"]["response"]["status_code"] == 429
    assert batch.usage.input_tokens == sum(
        line["response"]["body"]["usage"]["prompt_tokens"] for line in output
    )


def test_upstream_auth_failures_become_error_lines(make_emulator, monkeypatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)  # the fallback key would be sent otherwise
    upstream = make_emulator(api_key=UPSTREAM_KEY)
    front = make_emulator("--upstream", upstream.base_url)  # no key for the upstream
    client = sdk(front)
    batch = run_batch(client, [chat_line("a"), chat_line("b")])
    assert batch.status == "completed"
    assert batch.output_file_id is None
    _, errors = results(client, batch)
    assert [line["response"]["status_code"] for line in errors] == [401, 401]
    assert {line["response"]["body"]["error"]["message"] for line in errors} == {
        "You didn't provide an API key. You need to provide your API key in an Authorization header"
        " using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
    }


def test_unreachable_upstream_gives_502_lines_not_a_failed_batch(make_emulator) -> None:
    front = make_emulator("--upstream", f"http://127.0.0.1:{_closed_port()}/v1")
    client = sdk(front)
    lines = [chat_line(f"r{i}") for i in range(3)]
    batch = run_batch(client, lines)
    assert batch.status == "completed"
    assert batch.request_counts.model_dump() == {"total": 3, "completed": 0, "failed": 3}
    assert batch.output_file_id is None
    assert batch.error_file_id
    output, errors = results(client, batch)
    assert output == []
    assert sorted(line["custom_id"] for line in errors) == ["r0", "r1", "r2"]
    for line in errors:
        assert line["error"] is None
        assert line["response"]["status_code"] == 502
        error = line["response"]["body"]["error"]
        assert error["type"] == "server_error"
        assert error["message"] == "The upstream server could not be reached: ConnectError."
