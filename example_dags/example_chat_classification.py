"""Chat classification with a structured output, landed as Parquet and summarised by pyarrow.

tickets → chat requests asking for a JSON Schema answer → ``OpenAIBatchOperator(wait_for_completion=False)``
→ ``OpenAIBatchSensor`` (deferred; lands one Parquet row per ticket, in input order, each reply checked
by the Pydantic model) → a task that reads the file with pyarrow and prints, per label, how many
tickets got it and their mean confidence.

What it shows:

* one Pydantic model is both the request's ``response_format`` and the sensor's ``output_schema``, so the
  schema sent and the check applied cannot drift, and the model's own validation judges every reply;
* submitting and waiting are separate tasks: the operator returns once the batch exists, the sensor
  waits in the triggerer and is safe to retry (it submits nothing);
* the landed columns (``ok``, ``error_code``, ``parsed``) are all a downstream task needs: no response
  bodies to dig through, and replies that missed the schema are rows marked ``invalid_output``, counted
  in the summary instead of failing the run.

On the emulator every reply is a valid instance of the schema, its label drawn from the enum by a hash
of the prompt, so the summary is deterministic.
"""

from __future__ import annotations

import json
from typing import Literal

import pendulum
from _common import CONN_ID, OUTPUT_ROOT, POLL_INTERVAL
from airflow.sdk import DAG, ObjectStoragePath, task
from pydantic import BaseModel, ConfigDict, Field

from airflow_provider_batch.answers import INVALID_OUTPUT
from airflow_provider_batch.operators.batch import OpenAIBatchOperator
from airflow_provider_batch.sensors.batch import OpenAIBatchSensor

TICKETS = [
    "My invoice shows the wrong amount for October",
    "The app crashes when I upload a photo",
    "How do I change the email address on my account?",
    "I was charged twice for the same order",
    "The export button does nothing in Firefox",
    "I can't log in since I reset my password",
]


class TicketLabel(BaseModel):
    """The answer every request asks for.

    Flat, every field required and no extra keys (``extra="forbid"``): then Pydantic's own
    ``model_json_schema()`` is already a strict Structured Outputs schema. The openai SDK's converter
    (``openai.lib.type_to_response_format_param``, needed for nested or optional fields) is exported
    only by recent SDKs, and this provider supports openai 3.0.
    """

    model_config = ConfigDict(extra="forbid")

    label: Literal["billing", "bug", "account"]
    confidence: float = Field(ge=0, le=1)


RESPONSE_FORMAT = {
    "type": "json_schema",
    "json_schema": {"name": "ticket_label", "strict": True, "schema": TicketLabel.model_json_schema()},
}

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
                        {"role": "system", "content": "Label the support ticket and say how sure you are."},
                        {"role": "user", "content": ticket},
                    ],
                    "response_format": RESPONSE_FORMAT,
                    # Room for the JSON object: a reply cut short would not parse.
                    "max_completion_tokens": 50,
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
        output_path=OUTPUT_ROOT / "classification" / "{{ run_id }}.parquet",  # Parquet by the suffix
        output_schema=TicketLabel,
        # Land off-schema replies as marked rows and let the summary count them, rather than fail the run.
        fail_on_invalid_output=False,
    )

    @task
    def summarize_labels(manifest: dict) -> list[dict]:
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        path = ObjectStoragePath(manifest["results_uri"])
        # The path's fsspec filesystem brings the store's Airflow connection; only these columns are fetched.
        rows = pq.read_table(path.path, filesystem=path.fs, columns=["ok", "error_code", "parsed"])
        answered = rows.filter(pc.field("ok"))
        # ``parsed`` is JSON text, since its shape is each request's own; give it columns here.
        answers = pa.Table.from_pylist(
            [json.loads(text) for text in answered["parsed"].to_pylist()],
            schema=pa.schema([("label", pa.string()), ("confidence", pa.float64())]),
        )
        summary = (
            answers.group_by("label")
            .aggregate([("label", "count"), ("confidence", "mean")])
            .sort_by("label")
            .select(["label", "label_count", "confidence_mean"])
            .rename_columns(["label", "tickets", "mean_confidence"])
        )
        invalid = pc.sum(pc.equal(rows["error_code"], INVALID_OUTPUT)).as_py() or 0
        print(f"{'label':<10}{'tickets':>8}{'mean confidence':>17}")
        for item in summary.to_pylist():
            print(f"{item['label']:<10}{item['tickets']:>8}{item['mean_confidence']:>17.2f}")
        print(f"{answered.num_rows} of {rows.num_rows} tickets labelled, {invalid} off the schema")
        return summary.to_pylist()

    summarize_labels(wait.output)
