"""Chat classification: requests built upstream, submitted without waiting, waited on by the
sensor, results joined back to the inputs.

tickets → chat requests → ``OpenAIBatchOperator(wait_for_completion=False)`` → ``OpenAIBatchSensor``
(deferred; lands results in input order) → a task that pairs each ticket with its label.
"""

from __future__ import annotations

import json

import pendulum
from _common import CONN_ID, OUTPUT_ROOT, POLL_INTERVAL
from airflow.sdk import DAG, ObjectStoragePath, task

from airflow_provider_batch.operators.batch import OpenAIBatchOperator
from airflow_provider_batch.sensors.batch import OpenAIBatchSensor

TICKETS = [
    "My invoice shows the wrong amount for October",
    "The app crashes when I upload a photo",
    "How do I change the email address on my account?",
    "I was charged twice for the same order",
    "The export button does nothing in Firefox",
]
LABELS = "billing, bug, account"

with DAG(
    dag_id="example_openai_batch_chat_classification",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["example", "openai-batch"],
) as dag:

    @task
    def build_requests() -> list[dict]:
        return [
            {
                "custom_id": f"ticket-{index}",
                "body": {
                    "model": "gpt-4o-mini",
                    "messages": [
                        {"role": "system", "content": f"Label the support ticket with one of: {LABELS}."},
                        {"role": "user", "content": ticket},
                    ],
                    "max_completion_tokens": 5,
                },
            }
            for index, ticket in enumerate(TICKETS)
        ]

    submit = OpenAIBatchOperator(
        task_id="submit_classification",
        endpoint="/v1/chat/completions",
        requests=build_requests(),
        conn_id=CONN_ID,
        wait_for_completion=False,
    )

    wait = OpenAIBatchSensor(
        task_id="wait_for_classification",
        batch_id=submit.output["batch_id"],
        conn_id=CONN_ID,
        deferrable=True,
        poke_interval=POLL_INTERVAL,
        timeout=25 * 3600,
        output_path=OUTPUT_ROOT / "classification" / "{{ run_id }}.jsonl",
    )

    @task
    def join_labels(manifest: dict) -> list[dict]:
        labelled = []
        with ObjectStoragePath(manifest["results_uri"]).open("rb") as rows:
            for line in rows:
                row = json.loads(line)
                index = int(row["custom_id"].removeprefix("ticket-"))
                label = row["body"]["choices"][0]["message"]["content"] if row["ok"] else None
                labelled.append({"ticket": TICKETS[index], "label": label, "error": row["error_code"]})
        for item in labelled:
            print(f"{item['label']!s:>30}  <- {item['ticket']}")
        return labelled

    join_labels(wait.output)
