"""Assets: a batch task that updates an Asset, and a second DAG scheduled on that Asset.

The producer's asset event carries ``batch_id`` and ``output_file_id`` as extra, so the
consumer knows exactly which results to read without any XCom across DAGs.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pendulum
from _common import CONN_ID, POLL_INTERVAL
from airflow.sdk import DAG, Asset, task

from airflow_provider_batch.hooks.batch import OpenAIBatchHook
from airflow_provider_batch.operators.batch import OpenAIBatchOperator
from airflow_provider_batch.results import iter_results

SUMMARIES = Asset(name="openai_batch_summaries", uri="file:///tmp/airflow-provider-batch-examples/summaries")

with DAG(
    dag_id="example_openai_batch_asset_producer",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["example", "openai-batch"],
) as producer:
    OpenAIBatchOperator(
        task_id="summarise",
        endpoint="/v1/responses",
        requests=[
            {"custom_id": f"article-{n}", "body": {"model": "gpt-4o-mini", "input": f"Summarise article {n}"}}
            for n in range(3)
        ],
        conn_id=CONN_ID,
        deferrable=True,
        poll_interval=POLL_INTERVAL,
        outlets=[SUMMARIES],
    )

with DAG(
    dag_id="example_openai_batch_asset_consumer",
    schedule=[SUMMARIES],
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["example", "openai-batch"],
) as consumer:

    @task
    def read_summaries(triggering_asset_events=None) -> int:
        succeeded = 0
        for event in triggering_asset_events[SUMMARIES]:
            output_file_id = event.extra["output_file_id"]
            print(f"batch {event.extra['batch_id']} produced {output_file_id}")
            with tempfile.TemporaryDirectory() as workdir:
                local = Path(workdir) / "output.jsonl"
                OpenAIBatchHook(conn_id=CONN_ID).download_file(output_file_id, local)
                succeeded += sum(1 for result in iter_results(local) if getattr(result, "ok", False))
        print(f"{succeeded} summaries ready")
        return succeeded

    read_summaries()
