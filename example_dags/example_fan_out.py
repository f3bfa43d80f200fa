"""Fan-out: one batch per input file with dynamic task mapping.

An upstream task writes several JSONL files (one per customer segment, say); the operator is
mapped over them, so each file becomes its own batch, deferred independently, retried
independently (each mapped task has its own identity, so a retry re-attaches to its own batch).
"""

from __future__ import annotations

import json

import pendulum
from _common import CONN_ID, OUTPUT_ROOT, POLL_INTERVAL
from airflow.sdk import DAG, task

from airflow_provider_batch.operators.batch import OpenAIBatchOperator

SEGMENTS = {"retail": 4, "wholesale": 3, "online": 5}

with DAG(
    dag_id="example_openai_batch_fan_out",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["example", "openai-batch"],
) as dag:

    @task
    def write_input_files(run_id: str | None = None) -> list[str]:
        folder = OUTPUT_ROOT / "fan_out" / str(run_id) / "inputs"
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for segment, size in SEGMENTS.items():
            path = folder / f"{segment}.jsonl"
            with path.open("w") as out:
                for index in range(size):
                    request = {
                        "custom_id": f"{segment}-{index}",
                        "method": "POST",
                        "url": "/v1/chat/completions",
                        "body": {
                            "model": "gpt-4o-mini",
                            "messages": [
                                {"role": "user", "content": f"Write a tagline for {segment} #{index}"}
                            ],
                        },
                    }
                    out.write(json.dumps(request) + "\n")
            paths.append(str(path))
        return paths

    batches = OpenAIBatchOperator.partial(
        task_id="batch_per_file",
        endpoint="/v1/chat/completions",
        conn_id=CONN_ID,
        deferrable=True,
        poll_interval=POLL_INTERVAL,
    ).expand(input_path=write_input_files())

    @task
    def report(manifests: list[dict]) -> int:
        total = 0
        for manifest in manifests:
            counts = manifest["request_counts"]
            total += counts["completed"]
            print(f"{manifest['batch_id']}: {counts['completed']}/{counts['total']} completed")
        return total

    report(batches.output)
