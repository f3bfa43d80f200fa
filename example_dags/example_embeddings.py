"""Embeddings: embed a small document set in one batch, then answer nearest-neighbour queries
from the landed results.

upstream documents → one ``/v1/embeddings`` batch (deferred, results landed in input order)
→ a task that reads the vectors and prints each document's nearest neighbour.
"""

from __future__ import annotations

import json
import math

import pendulum
from _common import CONN_ID, OUTPUT_ROOT, POLL_INTERVAL
from airflow.sdk import DAG, ObjectStoragePath, task

from airflow_provider_batch.operators.batch import OpenAIBatchOperator

DOCUMENTS = {
    "doc-airflow": "Apache Airflow schedules and monitors data pipelines as Python DAGs",
    "doc-scheduler": "The Airflow scheduler triggers tasks when their dependencies are met",
    "doc-pasta": "Boil the pasta in salted water and finish it in the sauce",
    "doc-sauce": "A tomato sauce needs garlic olive oil and a little salt",
    "doc-batch": "The OpenAI Batch API runs requests asynchronously at half the price",
    "doc-jsonl": "Batch requests are uploaded as a JSONL file with one request per line",
}

with DAG(
    dag_id="example_openai_batch_embeddings",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["example", "openai-batch"],
) as dag:

    @task
    def build_requests() -> list[dict]:
        return [
            {
                "custom_id": doc_id,
                "body": {"model": "text-embedding-3-small", "input": text, "dimensions": 256},
            }
            for doc_id, text in DOCUMENTS.items()
        ]

    embed = OpenAIBatchOperator(
        task_id="embed_documents",
        endpoint="/v1/embeddings",
        requests=build_requests(),
        conn_id=CONN_ID,
        deferrable=True,
        poll_interval=POLL_INTERVAL,
        output_path=OUTPUT_ROOT / "embeddings" / "{{ run_id }}.jsonl",
    )

    @task
    def nearest_neighbours(manifest: dict) -> dict[str, str]:
        vectors: dict[str, list[float]] = {}
        with ObjectStoragePath(manifest["results_uri"]).open("rb") as rows:
            for line in rows:
                row = json.loads(line)
                if row["ok"]:
                    vectors[row["custom_id"]] = row["body"]["data"][0]["embedding"]

        def cosine(a: list[float], b: list[float]) -> float:
            dot = sum(x * y for x, y in zip(a, b, strict=True))
            return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)) or 1.0)

        answer = {
            doc: max(
                (other for other in vectors if other != doc), key=lambda o: cosine(vectors[doc], vectors[o])
            )
            for doc in vectors
        }
        for doc, neighbour in answer.items():
            print(f"{doc:>14} is closest to {neighbour}")
        return answer

    nearest_neighbours(embed.output)
