"""``OpenAIBatchLink``: the "OpenAI Batch" button on a task, pointing at the batch it ran.

The URL is computed once, at submit time, and stored in XCom under :data:`BATCH_URL_XCOM_KEY`.
Airflow recomputes links after every worker run, including the run that resumes a deferred task
on a fresh operator instance; reading the stored URL (instead of ``operator.batch_id``) keeps
the link right after a resume and even when the task later fails.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from airflow.providers.common.compat.sdk import XCom
from airflow.sdk import BaseOperatorLink

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import TaskInstanceKey
    from airflow.sdk import BaseOperator, Context

BATCH_URL_XCOM_KEY = "batch_url"


class OpenAIBatchLink(BaseOperatorLink):
    """Link to the batch in the OpenAI dashboard (or the compatible server's batch URL)."""

    name = "OpenAI Batch"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        return XCom.get_value(ti_key=ti_key, key=BATCH_URL_XCOM_KEY) or ""


def reserve_batch_url(context: Context) -> None:
    """Push an empty batch URL first thing, replaced once a batch exists.

    Airflow computes the link after every run, a failed one too, and reading an XCom that was
    never pushed logs an ``XCom not found`` error: a task that failed before submitting (bad
    input, a wrong key) would show that spurious line under its real error.
    """
    context["ti"].xcom_push(key=BATCH_URL_XCOM_KEY, value=None)
