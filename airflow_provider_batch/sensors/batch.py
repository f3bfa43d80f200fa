"""``OpenAIBatchSensor``: wait for a batch that was submitted elsewhere (another task, another
system, ``OpenAIBatchOperator(wait_for_completion=False)``).

It submits nothing and cancels nothing, so it is safe to retry and to clear. It observes and
decides exactly as the operator does (:func:`~airflow_provider_batch.status.decide`), defers to
the same trigger, and finishes through the same :func:`finish_batch`, so it returns the same
manifest and raises the same errors.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

# conf and the sensor exceptions moved into airflow.sdk after 3.1; the compat layer finds them.
from airflow.providers.common.compat.sdk import AirflowSensorTimeout, AirflowSkipException, conf
from airflow.sdk import BaseSensorOperator, PokeReturnValue

from airflow_provider_batch.events import build_event, validate_event
from airflow_provider_batch.exceptions import OpenAIBatchError
from airflow_provider_batch.hooks.batch import OpenAIBatchHook
from airflow_provider_batch.links.batch import BATCH_URL_XCOM_KEY, OpenAIBatchLink
from airflow_provider_batch.operators.batch import DEFER_METHOD_NAME, finish_batch
from airflow_provider_batch.status import PollFailure, decide
from airflow_provider_batch.triggers.batch import OpenAIBatchTrigger

if TYPE_CHECKING:
    from airflow.sdk import Context


class OpenAIBatchSensor(BaseSensorOperator):
    """Wait until a batch ends; return its manifest, or raise the operator's error for the outcome.

    :param batch_id: the batch to wait for (templated, e.g. from the operator's XCom).
    :param conn_id: an ``openai_batch`` (or ``openai``) connection.
    :param deferrable: wait in the triggerer (default from ``[operators] default_deferrable``);
        otherwise poke in ``mode="poke"`` or ``"reschedule"`` as usual. ``poke_interval`` and
        ``timeout`` are yours in both modes.
    :param max_failed_fraction: as on the operator: the share of failed lines a completed batch may
        have.
    :param output_path: land the results joined in input order there, as the operator does.
    :param max_poll_interval: cap of the growing interval while deferred.
    :param max_consecutive_failures: failed status calls tolerated in a row.
    """

    template_fields: Sequence[str] = ("batch_id", "conn_id", "output_path")
    operator_extra_links = (OpenAIBatchLink(),)

    def __init__(
        self,
        *,
        batch_id: str,
        conn_id: str = OpenAIBatchHook.default_conn_name,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        max_failed_fraction: float = 0.0,
        output_path: Any = None,
        max_poll_interval: float = 300.0,
        max_consecutive_failures: int = 5,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.batch_id = batch_id
        self.conn_id = conn_id
        self.deferrable = deferrable
        self.max_failed_fraction = max_failed_fraction
        self.output_path = output_path
        self.max_poll_interval = max(max_poll_interval, self.poke_interval)
        self.max_consecutive_failures = max_consecutive_failures
        self._failures = 0

    @property
    def hook(self) -> OpenAIBatchHook:
        if not hasattr(self, "_hook"):
            self._hook = OpenAIBatchHook(conn_id=self.conn_id)
        return self._hook

    def execute(self, context: Context) -> Any:
        context["ti"].xcom_push(key=BATCH_URL_XCOM_KEY, value=self.hook.batch_url(self.batch_id))
        if not self.deferrable:
            return super().execute(context)
        done = self.poke(context)
        if done:
            return done.xcom_value
        trigger = OpenAIBatchTrigger(
            conn_id=self.conn_id,
            batch_id=self.batch_id,
            end_time=time.time() + self.timeout,
            poll_interval=self.poke_interval,
            max_poll_interval=self.max_poll_interval,
            max_consecutive_failures=self.max_consecutive_failures,
            cancel_on_kill=False,  # not our batch: waiting on it gives no right to cancel it
        )
        self.defer(trigger=trigger, method_name=DEFER_METHOD_NAME, timeout=trigger.defer_timeout())

    def poke(self, context: Context) -> PokeReturnValue | bool:
        observed = self.hook.poll_batch(self.batch_id)
        decision = decide(
            observed,
            now=time.time(),
            end_time=float("inf"),  # the sensor's own timeout bounds the wait in poke mode
            failures=self._failures,
            max_failures=self.max_consecutive_failures,
        )
        self._failures = decision.failures
        if not decision.done:
            if isinstance(observed, PollFailure):
                self.log.warning("Batch %s: %s", self.batch_id, decision.message)
            else:
                self.log.info("Batch %s %s", self.batch_id, observed.progress())
            return False
        snapshot = None if isinstance(observed, PollFailure) else observed
        try:
            manifest = self._finish(context, build_event(self.batch_id, decision, snapshot))
        except OpenAIBatchError as exc:
            # Airflow applies soft_fail to every error of a resumed (deferred) sensor but only to
            # timeouts in poke mode; skipping here makes both modes treat a bad batch the same.
            if self.soft_fail:
                raise AirflowSkipException(f"Skipped (soft_fail): {exc}") from exc
            raise
        return PokeReturnValue(True, manifest)

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None, **_: Any) -> Any:
        event = validate_event(event)
        if event["termination_reason"] == "timeout":
            # Raised as the sensor timeout it is, so ``soft_fail`` skips instead of failing.
            raise AirflowSensorTimeout(f"Batch {event['batch_id']} did not finish: {event.get('message')}")
        return self._finish(context, event)

    def _finish(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        return finish_batch(
            context,
            event,
            hook=self.hook,
            max_failed_fraction=self.max_failed_fraction,
            output_path=self.output_path,
            outlets=self.outlets,
        )
