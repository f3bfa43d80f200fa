"""The DAG ``benchmarks/real_triggerer.py`` triggers: one mapped task per batch, each deferring on
the trigger named by ``dag_run.conf["side"]``, then finishing with the event it got."""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import DAG, BaseOperator, task


class DeferOnBatch(BaseOperator):
    """Defer on one batch: ours, the official provider's trigger, or a plain timer ("baseline",
    the triggerer's own cost of running and resuming the same number of deferred tasks)."""

    template_fields = ("side", "polling")

    def __init__(self, *, side: str, polling: str, batch_id: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.side = side
        self.polling = polling
        self.batch_id = batch_id

    def execute(self, context: Any) -> None:
        initial, maximum, release_at = (float(value) for value in self.polling.split(","))
        if self.side == "ours":
            from airflow_provider_batch.triggers.batch import OpenAIBatchTrigger

            trigger: Any = OpenAIBatchTrigger(
                conn_id="bench_ours",
                batch_id=self.batch_id,
                end_time=time.time() + 3600,
                poll_interval=initial,
                max_poll_interval=maximum,
            )
        elif self.side == "official":
            from airflow.providers.openai.triggers.openai import OpenAIBatchTrigger as OfficialTrigger

            trigger = OfficialTrigger(
                conn_id="bench_official", batch_id=self.batch_id, poll_interval=initial, timeout=3600
            )
        else:
            from airflow.providers.standard.triggers.temporal import DateTimeTrigger

            trigger = DateTimeTrigger(moment=datetime.fromtimestamp(release_at).astimezone())
        self.defer(trigger=trigger, method_name="resume", timeout=timedelta(hours=1))

    def resume(self, context: Any, event: Any = None) -> None:
        return None


with DAG("triggerer_warnings", schedule=None, start_date=datetime(2026, 1, 1), catchup=False):

    @task
    def batch_ids(**context: Any) -> list[str]:
        return context["dag_run"].conf["batch_ids"]

    DeferOnBatch.partial(
        task_id="wait",
        side="{{ dag_run.conf['side'] }}",
        polling="{{ dag_run.conf['polling'] }}",
    ).expand(batch_id=batch_ids())
