"""``OpenAIBatchSensor``: wait for a batch that was submitted elsewhere (another task, another
system, ``OpenAIBatchOperator(wait_for_completion=False)``).

It submits nothing and cancels nothing, so it is safe to retry and to clear. Its pokes drive the
same :class:`~airflow_provider_batch.status.Wait` as the trigger and the operator's synchronous
wait, it defers to the same trigger, and it finishes through the same
:func:`~airflow_provider_batch.completion.finish_batch`, so it returns the same manifest and
raises the same errors.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

# conf and the sensor exceptions moved into airflow.sdk after 3.1; the compat layer finds them.
from airflow.providers.common.compat.sdk import AirflowSensorTimeout, AirflowSkipException, conf
from airflow.sdk import BaseSensorOperator, PokeReturnValue

from airflow_provider_batch.answers import UserSchema
from airflow_provider_batch.completion import finish_batch
from airflow_provider_batch.events import build_event, snapshot_from_event, validate_event
from airflow_provider_batch.exceptions import OpenAIBatchError
from airflow_provider_batch.hooks.batch import OpenAIBatchHook
from airflow_provider_batch.landing import check_landing_arguments, require_landing
from airflow_provider_batch.lineage import report_input
from airflow_provider_batch.links.batch import BATCH_URL_XCOM_KEY, OpenAIBatchLink, reserve_batch_url
from airflow_provider_batch.operators.batch import DEFER_METHOD_NAME
from airflow_provider_batch.parquet import output_format_for
from airflow_provider_batch.results import RowOptions
from airflow_provider_batch.status import Wait
from airflow_provider_batch.triggers.batch import OpenAIBatchTrigger

if TYPE_CHECKING:
    from airflow.sdk import Context

STATE_WAIT = "openai_batch_sensor_wait"
"""Task state store key of the wait a ``reschedule``-mode sensor carries from poke to poke."""


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
    :param output_format: ``jsonl`` or ``parquet``, as on the operator (default by ``output_path``'s suffix).
    :param output_schema: a JSON Schema or a Pydantic model class every reply must match, as on the
        operator (instead of the schema each request asked for, which is checked without it); replies
        that miss it are ``invalid_output``.
    :param include_request: each landed row also carries its request's body.
    :param fail_on_invalid_output: whether ``invalid_output`` rows count towards ``max_failed_fraction``
        (default: they do).
    :param max_poll_interval: cap of the growing interval while deferred.
    :param max_consecutive_failures: failed status calls tolerated in a row; in ``reschedule``
        mode they are counted across reschedules (Airflow 3.3+, through the task state store).
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
        output_format: str | None = None,
        output_schema: UserSchema | None = None,
        include_request: bool = False,
        fail_on_invalid_output: bool = True,
        max_poll_interval: float = 300.0,
        max_consecutive_failures: int = 5,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        try:
            check_landing_arguments(output_format, output_schema)
        except ValueError as exc:
            raise ValueError(f"{self.task_id}: {exc}") from None
        self.batch_id = batch_id
        self.conn_id = conn_id
        self.deferrable = deferrable
        self.max_failed_fraction = max_failed_fraction
        self.output_path = output_path
        self.output_format = output_format
        self.output_schema = output_schema
        self.include_request = include_request
        self.fail_on_invalid_output = fail_on_invalid_output
        self.max_poll_interval = max(max_poll_interval, self.poke_interval)
        self.max_consecutive_failures = max_consecutive_failures
        self._poke_wait: Wait | None = None

    @property
    def hook(self) -> OpenAIBatchHook:
        if not hasattr(self, "_hook"):
            self._hook = OpenAIBatchHook(conn_id=self.conn_id)
        return self._hook

    def execute(self, context: Context) -> Any:
        reserve_batch_url(context)
        if self.output_path is not None:
            require_landing(self.output_path, self.output_format)  # before the wait, not after it
        context["ti"].xcom_push(key=BATCH_URL_XCOM_KEY, value=self.hook.batch_url(self.batch_id))
        if not self.deferrable:
            return super().execute(context)
        done = self.poke(context)
        if isinstance(done, PokeReturnValue):
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
        self.log.info(trigger.deferral_message(self.hook.batch_url(self.batch_id)))
        self.defer(trigger=trigger, method_name=DEFER_METHOD_NAME, timeout=trigger.defer_timeout())

    def poke(self, context: Context) -> PokeReturnValue | bool:
        wait = self._wait(context)
        step = wait.observe(self.hook.poll_batch(self.batch_id), now=time.time(), plan=False)
        step.log_to(self.log)
        if not step.decision.done:
            self._keep(context, wait)
            if wait.failures and self.reschedule and self._reschedule_store(context) is None:
                self.log.warning(
                    "Failed pokes are not counted across reschedules before Airflow 3.3 (no task state"
                    " store): max_consecutive_failures cannot end this wait; its timeout will."
                )
            return False
        self._keep(context, None)
        try:
            manifest = self._finish(context, build_event(self.batch_id, step.decision, wait.last))
        except OpenAIBatchError as exc:
            # Airflow applies soft_fail to every error of a resumed (deferred) sensor but only to
            # timeouts in poke mode; skipping here makes both modes treat a bad batch the same.
            if self.soft_fail:
                raise AirflowSkipException(f"Skipped (soft_fail): {exc}") from exc
            raise
        return PokeReturnValue(True, manifest)

    def _wait(self, context: Context) -> Wait:
        """The wait the pokes drive, carried over between pokes so that the failure count and the
        one-time warnings hold across them.

        In ``poke`` mode one instance makes every poke. In ``reschedule`` mode each poke is a new
        process, so the wait is saved in the task state store (Airflow 3.3+) under the try
        number: a new try starts afresh. Before 3.3 there is no store, and failed pokes in
        ``reschedule`` mode are bounded by the sensor's ``timeout`` alone.
        """
        if self._poke_wait is None:
            # The sensor's own timeout bounds the wait in poke and reschedule mode.
            self._poke_wait = Wait(self.batch_id, float("inf"), max_failures=self.max_consecutive_failures)
            store = self._reschedule_store(context)
            saved = store.get(STATE_WAIT) if store is not None else None
            if isinstance(saved, dict) and saved.get("try_number") == context["ti"].try_number:
                self._poke_wait.restore(saved)
        return self._poke_wait

    def _reschedule_store(self, context: Context) -> Any:
        """Where a ``reschedule``-mode sensor keeps its wait: the task state store (Airflow 3.3+);
        ``None`` in the other modes, or before 3.3."""
        return context.get("task_state_store") if self.reschedule else None

    def _keep(self, context: Context, wait: Wait | None) -> None:
        """Save the wait for the next poke of a rescheduled sensor (or drop it when done)."""
        store = self._reschedule_store(context)
        if store is None:
            return
        if wait is None:
            store.delete(STATE_WAIT)
        else:
            store.set(STATE_WAIT, {**wait.saved(), "try_number": context["ti"].try_number})

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None, **_: Any) -> Any:
        event = validate_event(event)
        if event["termination_reason"] == "timeout":
            # Raised as the sensor timeout it is, so ``soft_fail`` skips instead of failing.
            raise AirflowSensorTimeout(f"Batch {event['batch_id']} did not finish: {event.get('message')}")
        return self._finish(context, event)

    def _finish(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        """Finish as the operator does, and report lineage from this, the task's last run (what an
        earlier run reported died with its process): the batch's request file as the input (the
        landed results are reported where they are written)."""
        report_input(self.hook, file_ids=[snapshot_from_event(event).input_file_id])
        return finish_batch(
            context,
            event,
            hook=self.hook,
            max_failed_fraction=self.max_failed_fraction,
            output_path=self.output_path,
            output_format=output_format_for(self.output_path or "", self.output_format),
            rows=RowOptions(output_schema=self.output_schema, include_request=self.include_request),
            fail_on_invalid_output=self.fail_on_invalid_output,
            outlets=self.outlets,
        )
