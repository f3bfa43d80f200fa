"""A large job: one input file, more than one batch holds, run as several batches and rounds.

An upstream task writes a catalogue of product descriptions to translate as one JSONL file (under
``BATCH_EXAMPLES_OUTPUT``: local by default, or any object store). The operator validates it in one
streaming pass, cuts it into batches of at most ``max_requests_per_batch`` requests, waits for all
of them with one trigger per round, resubmits only the lines worth another attempt (an expired
batch's unrun lines, 429 and 5xx failures) for up to ``max_rounds`` rounds, and lands one merged
row per input line, in input order. A downstream task reads the manifest: the job's counts, each
round's batches, and where the results are.

The caps here are small so that the emulator shows several batches in seconds; against OpenAI,
leave ``max_requests_per_batch`` unset (OpenAI's 50,000 per batch) or size it to your quota.
See docs/jobs.md.
"""

from __future__ import annotations

import json

import pendulum
from _common import CONN_ID, OUTPUT_ROOT, POLL_INTERVAL
from airflow.sdk import DAG, ObjectStoragePath, task

from airflow_provider_batch.operators.batch import OpenAIBatchOperator

PRODUCTS = 2_400
"""Requests in the input: five batches of at most 500."""
LANGUAGES = ("French", "German", "Spanish")

with DAG(
    dag_id="example_openai_batch_large_job",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["example", "openai-batch"],
) as dag:

    @task
    def write_catalogue(run_id: str | None = None) -> str:
        """Stream the requests into one JSONL file: no list of them is ever held in memory."""
        path = OUTPUT_ROOT / "large_job" / str(run_id) / "catalogue.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w") as out:
            for index in range(PRODUCTS):
                language = LANGUAGES[index % len(LANGUAGES)]
                request = {
                    "custom_id": f"product-{index:05d}",
                    "method": "POST",
                    "url": "/v1/chat/completions",
                    "body": {
                        "model": "gpt-4o-mini",
                        "messages": [
                            {
                                "role": "system",
                                "content": f"Translate the product description into {language}.",
                            },
                            {
                                "role": "user",
                                "content": f"Stainless steel water bottle, model {index}, 750 ml",
                            },
                        ],
                        "max_completion_tokens": 60,
                    },
                }
                out.write(json.dumps(request) + "\n")
        return str(path)

    translate = OpenAIBatchOperator(
        task_id="translate_catalogue",
        endpoint="/v1/chat/completions",
        input_path=write_catalogue(),
        conn_id=CONN_ID,
        max_requests_per_batch=500,  # 2,400 requests: five batches in round 1
        max_rounds=3,  # the default: the first round and two for expired or transiently failed lines
        max_failed_fraction=0.01,  # up to 1% of the lines may fail for good (a 400, say)
        deferrable=True,
        poll_interval=POLL_INTERVAL,
        output_path=OUTPUT_ROOT / "large_job" / "{{ run_id }}" / "translations.jsonl",
    )

    @task
    def report(manifest: dict) -> dict[str, int]:
        """Read the manifest (never the results: they are in ``results_uri``), then stream the rows."""
        counts = manifest["request_counts"]
        print(
            f"{counts['succeeded']:,} of {counts['total']:,} lines succeeded, {counts['failed']:,} failed,"
            f" in {manifest['shards']} batches and {len(manifest['rounds'])} round(s)"
        )
        for job_round in manifest["rounds"]:
            statuses = ", ".join(batch["status"] for batch in job_round["batches"])
            print(f"  round {job_round['round']}: {job_round['requests']:,} requests ({statuses})")
        rows_by_round: dict[str, int] = {}
        with ObjectStoragePath(manifest["results_uri"]).open("rb") as rows:
            for line in rows:
                row = json.loads(line)
                key = f"round {row['round']}, {'ok' if row['ok'] else row['error_code']}"
                rows_by_round[key] = rows_by_round.get(key, 0) + 1
        print(f"Results in {manifest['results_uri']}: {rows_by_round}")
        return rows_by_round

    report(translate.output)
