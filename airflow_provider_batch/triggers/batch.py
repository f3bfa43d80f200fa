"""``OpenAIBatchTrigger``: waits for a batch in the triggerer, without a worker and without ever
blocking the triggerer's event loop.

Everything it does is awaited: the connection is resolved with Airflow's async API, the client
is the loop's shared ``AsyncOpenAI`` (built once, in a thread), and each observation is one
async HTTP call. The wait itself (deadline, failure budget, poll intervals) is
:class:`~airflow_provider_batch.status.Wait`, the same object the operator's synchronous wait
drives.

The kwargs are stored in plain text in the metadata database, so they hold a ``conn_id`` and
never a key. The deadline is absolute wall-clock time, so a triggerer restart, a redeploy or a
reassignment re-creates the trigger with the same deadline instead of a fresh 24 hours.
"""

from __future__ import annotations

import asyncio
import importlib
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_batch.events import build_event
from airflow_provider_batch.status import (
    DEFER_GRACE,
    BatchSnapshot,
    PollFailure,
    PollSchedule,
    Wait,
    format_duration,
    format_utc,
)

if TYPE_CHECKING:
    from airflow_provider_batch.hooks.batch import OpenAIBatchHook

HOOK_MODULE = "airflow_provider_batch.hooks.batch"

ON_KILL_CANCEL_TIMEOUT = 20.0
"""Seconds allowed for the cancel call in ``on_kill``: below the triggerer's ``on_kill_timeout``
(30 s), so our own timeout, with its log line, fires first."""


class OpenAIBatchTrigger(BaseTrigger):
    """Poll a batch until it ends or ``end_time`` passes, then yield exactly one event.

    :param conn_id: the ``openai_batch`` connection.
    :param batch_id: the batch to watch.
    :param end_time: absolute deadline, unix seconds (wall clock): survives triggerer restarts.
    :param poll_interval: seconds before the second observation; intervals then grow 1.5-fold.
    :param max_poll_interval: cap on the interval (the default keeps a 24 h batch under ~300 calls).
    :param max_consecutive_failures: failed observations tolerated in a row before giving up
        (the batch is *not* cancelled then: its state is unknown).
    :param cancel_on_kill: cancel the batch when a user marks the deferred task failed or success,
        or clears it (Airflow 3.3+ calls ``on_kill``; earlier versions never do).
    """

    def __init__(
        self,
        *,
        conn_id: str,
        batch_id: str,
        end_time: float,
        poll_interval: float = 30.0,
        max_poll_interval: float = 300.0,
        max_consecutive_failures: int = 5,
        cancel_on_kill: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(batch_id, str) or not batch_id:
            raise ValueError("batch_id must be a non-empty string")
        if not isinstance(end_time, (int, float)) or isinstance(end_time, bool):
            raise TypeError("end_time must be unix seconds (a number)")
        if poll_interval <= 0 or max_poll_interval < poll_interval:
            raise ValueError("need 0 < poll_interval <= max_poll_interval")
        if max_consecutive_failures < 1:
            raise ValueError("max_consecutive_failures must be at least 1")
        self.conn_id = conn_id
        self.batch_id = batch_id
        self.end_time = float(end_time)
        self.poll_interval = float(poll_interval)
        self.max_poll_interval = float(max_poll_interval)
        self.max_consecutive_failures = int(max_consecutive_failures)
        self.cancel_on_kill = bool(cancel_on_kill)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "conn_id": self.conn_id,
                "batch_id": self.batch_id,
                "end_time": self.end_time,
                "poll_interval": self.poll_interval,
                "max_poll_interval": self.max_poll_interval,
                "max_consecutive_failures": self.max_consecutive_failures,
                "cancel_on_kill": self.cancel_on_kill,
            },
        )

    def defer_timeout(self) -> timedelta:
        """The ``timeout`` to defer with: past ``end_time`` by the longest pause and a grace, so
        this trigger's own deadline event, which carries the batch's last state, always comes first."""
        return timedelta(seconds=max(0.0, self.end_time - time.time()) + self.max_poll_interval + DEFER_GRACE)

    def deferral_message(self, batch_url: str) -> str:
        """What the task log says as the task defers: the worker is free, and when to expect what."""
        return (
            f"Deferring: batch {self.batch_id} is watched in the triggerer, with no worker slot held;"
            f" first look in about {self.poll_interval:g} s, deadline {format_utc(self.end_time)}"
            f" (in {format_duration(self.end_time - time.time())}). Batch page: {batch_url}"
        )

    async def ahook(self) -> OpenAIBatchHook:
        """The hook, built on first use (never in ``__init__``).

        The hook module imports ``openai``, about a second of CPU on a cold process. The triggerer
        imports this module on its event loop, so the hook module is imported here instead, in a
        thread, and the loop keeps serving the other triggers meanwhile.
        """
        if not hasattr(self, "_hook"):
            module = await asyncio.to_thread(importlib.import_module, HOOK_MODULE)
            self._hook = module.OpenAIBatchHook(conn_id=self.conn_id)
        return self._hook

    async def run(self) -> AsyncIterator[TriggerEvent]:
        wait = Wait(
            self.batch_id,
            self.end_time,
            PollSchedule(initial=self.poll_interval, maximum=self.max_poll_interval),
            self.max_consecutive_failures,
        )
        hook = await self.ahook()
        # Hold the loop's shared client for the whole wait; it is handed back however run() ends.
        async with hook.async_client():
            pause = wait.pause(time.time())
            self.log.info(
                "Watching batch %s until %s; first look in %.0f s",
                self.batch_id,
                format_utc(self.end_time),
                pause,
            )
            while True:
                await asyncio.sleep(pause)
                step = wait.observe(await self._observe(hook, wait), now=time.time())
                step.log_to(self.log)
                if step.decision.done:
                    yield TriggerEvent(build_event(self.batch_id, step.decision, wait.last))
                    return
                pause = step.pause

    async def _observe(self, hook: OpenAIBatchHook, wait: Wait) -> BatchSnapshot | PollFailure:
        """One observation, cut short by the wait's budget so that this trigger's deadline event
        always comes before Airflow's deferral timeout (see ``OBSERVATION_GRACE``)."""
        budget = wait.observation_budget(time.time())
        try:
            return await asyncio.wait_for(hook.apoll_batch(self.batch_id), budget)
        except TimeoutError:
            return PollFailure(
                retryable=True, message=f"the status call did not finish within {budget:.0f} s"
            )

    async def on_kill(self) -> None:
        """Cancel the batch this trigger watches, once, best effort, bounded in time.

        Only the ``batch_id`` of this trigger's own kwargs is cancelled: after a clear, the next
        try may already be waiting on a new batch. ``cleanup()`` never cancels (it also runs on
        triggerer restarts, which must leave batches running).
        """
        if not self.cancel_on_kill:
            self.log.info("Batch %s left running: cancel_on_kill is off", self.batch_id)
            return
        try:
            hook = await self.ahook()
            batch = await asyncio.wait_for(hook.acancel_batch(self.batch_id), ON_KILL_CANCEL_TIMEOUT)
        except Exception as exc:
            self.log.warning("Could not cancel batch %s on kill: %s", self.batch_id, exc)
            return
        self.log.info("Batch %s cancelled on kill (now %s)", self.batch_id, batch.status)
