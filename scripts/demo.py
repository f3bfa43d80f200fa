"""`make demo`: one batch through the local emulator with the official openai SDK.

Starts the emulator, uploads a small chat-completions JSONL, creates the batch, follows it to a
terminal state, streams the result files down and prints a readable summary. No key, no cost.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from airflow_provider_batch.emulator.process import EmulatorProcess

QUESTIONS = [
    "What is the capital of France?",
    "Name a prime number larger than 100.",
    "Summarise the plot of Hamlet in one line.",
    "Translate 'good morning' into Spanish.",
    "What does JSONL stand for?",
    "Give one use of a message queue.",
    "Why do batch APIs cost less?",
    "What is an Airflow trigger?",
]


def build_input(path: Path) -> None:
    with path.open("w") as out:
        for index, question in enumerate(QUESTIONS):
            body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": question}]}
            if index == 5:  # one line fails the way a rate-limited request does
                body["emulator"] = {"status_code": 429, "message": "Rate limit reached for requests."}
            request = {"custom_id": f"question-{index}", "method": "POST", "url": "/v1/chat/completions"}
            out.write(json.dumps({**request, "body": body}) + "\n")


def download_lines(client, file_id: str | None) -> list[dict]:
    if not file_id:
        return []
    with client.files.with_streaming_response.content(file_id) as response:
        return [json.loads(line) for line in response.iter_lines() if line.strip()]


def main() -> None:
    with (
        tempfile.TemporaryDirectory() as tmp,
        EmulatorProcess(Path(tmp) / "data", "--line-delay", "0.15") as server,
    ):
        print(f"Emulator listening at {server.base_url}\n")
        client = server.client()
        source = Path(tmp) / "questions.jsonl"
        build_input(source)
        uploaded = client.files.create(file=source, purpose="batch")
        print(f"uploaded   {uploaded.id}  ({uploaded.bytes} bytes, {len(QUESTIONS)} requests)")
        batch = client.batches.create(
            input_file_id=uploaded.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata={"demo": "make-demo"},
        )
        print(f"created    {batch.id}  status={batch.status}")
        seen = None
        while batch.status not in {"completed", "failed", "expired", "cancelled"}:
            counts = batch.request_counts
            progress = (batch.status, counts.completed, counts.failed) if counts else (batch.status,)
            if progress != seen:
                done = f"{counts.completed} ok, {counts.failed} failed of {counts.total}" if counts else ""
                print(f"polling    status={batch.status:<11} {done}")
                seen = progress
            time.sleep(0.2)
            batch = client.batches.retrieve(batch.id)

        outputs = download_lines(client, batch.output_file_id)
        errors = download_lines(client, batch.error_file_id)
        by_id = {line["custom_id"]: line for line in outputs + errors}
        usage = batch.usage
        print(f"\nBatch {batch.id} finished: {batch.status}")
        print(
            f"  requests   {batch.request_counts.completed} succeeded, {batch.request_counts.failed} failed"
        )
        print(
            f"  usage      {usage.input_tokens} input + {usage.output_tokens} output"
            f" = {usage.total_tokens} tokens"
        )
        print(f"  files      output={batch.output_file_id} error={batch.error_file_id}")
        print("\nResults joined back to the questions (the emulator shuffles output order, as OpenAI may):")
        for index, question in enumerate(QUESTIONS):
            line = by_id[f"question-{index}"]
            response = line["response"]
            if response and 200 <= response["status_code"] < 300:
                answer = response["body"]["choices"][0]["message"]["content"]
                print(f"  ok   {question:<45} -> {answer[:60]}")
            else:
                reason = (response or {}).get("body", {}).get("error", {}).get("message") or line["error"]
                print(f"  FAIL {question:<45} -> {response['status_code'] if response else ''} {reason}")
        print(
            "\nNext: `python -m airflow_provider_batch.emulator --port 8000` serves your own clients."
        )


if __name__ == "__main__":
    main()
