"""``OpenAIBatchTrigger``: waits for a batch in the triggerer, without a worker and without ever
blocking the triggerer's event loop.

Everything it does is awaited: the connection is resolved with Airflow's async API, the client
is the loop's shared ``AsyncOpenAI`` (built once, in a thread), and each observation is asked of
the connection's :class:`~airflow_provider_batch.observer.StatusObserver`, which answers the
triggers of a triggerer together, with a listing page for up to 100 of them. The wait itself
(deadline, failure budget, poll intervals) is :class:`~airflow_provider_batch.status.Wait`, the
same object the operator's synchronous wait drives.

The kwargs are stored in plain text in the metadata database, so they hold a ``conn_id`` and
never a key. The deadline is absolute wall-clock time, so a triggerer restart, a redeploy or a
reassignment re-creates the trigger with the same deadline instead of a fresh 24 hours.

:class:`BatchPollingTrigger` holds what this trigger and the job's round trigger
(:mod:`~airflow_provider_batch.triggers.job`) share: those arguments, the hook built off the
loop, the waiting loop, the deferral timeout and the cancel on kill.
"""

from __future__ import annotations

import asyncio
import importlib
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_batch.events import build_event
from airflow_provider_batch.observer import StatusObserver, observing, patience_for
from airflow_provider_batch.status import (
    DEFER_GRACE,
    Decision,
    PollFailure,
    PollSchedule,
    Wait,
    format_duration,
    format_utc,
)

if TYPE_CHECKING:
    from airflow_provider_batch.hooks.batch import OpenAIBatchHook
    from airflow_provider_batch.watch import Waiter

Observed = TypeVar("Observed")

HOOK_MODULE = "airflow_provider_batch.hooks.batch"

JITTER = random.Random()
"""The poll schedules' jitter, one generator for every trigger of the process: a ``random.Random``
holds 2.5 KB of state, and a thousand waiting triggers need no thousand of them."""

ON_KILL_CANCEL_TIMEOUT = 20.0
"""Seconds allowed for the cancel call in ``on_kill``: below the triggerer's ``on_kill_timeout``
(30 s), so our own timeout, with its log line, fires first."""


class BatchPollingTrigger(BaseTrigger):
    """What the provider's triggers share: a connection, an absolute deadline, a poll schedule and
    failure budget, the cancel-on-kill switch; the waiting loop, which observes through the
    connection's shared status observer; the deferral timeout and message; the hook built off the
    loop and the cancel on kill. A subclass says what it watches
    (:meth:`_batches_to_cancel`, ``run``, ``serialize``)."""

    def __init__(
        self,
        *,
        conn_id: str,
        end_time: float,
        poll_interval: float,
        max_poll_interval: float,
        max_consecutive_failures: int,
        cancel_on_kill: bool,
        job: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(end_time, (int, float)) or isinstance(end_time, bool):
            raise TypeError("end_time must be unix seconds (a number)")
        if poll_interval <= 0 or max_poll_interval < poll_interval:
            raise ValueError("need 0 < poll_interval <= max_poll_interval")
        if max_consecutive_failures < 1:
            raise ValueError("max_consecutive_failures must be at least 1")
        self.conn_id = conn_id
        self.end_time = float(end_time)
        self.poll_interval = float(poll_interval)
        self.max_poll_interval = float(max_poll_interval)
        self.max_consecutive_failures = int(max_consecutive_failures)
        self.cancel_on_kill = bool(cancel_on_kill)
        if job is not None and not isinstance(job, dict):
            raise TypeError("job must be a JSON object (the job's state) or None")
        self.job = job

    def _serialized(self, **watched: Any) -> tuple[str, dict[str, Any]]:
        """``serialize()``'s answer: the classpath, and exactly the constructor's arguments."""
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "conn_id": self.conn_id,
                **watched,
                "end_time": self.end_time,
                "poll_interval": self.poll_interval,
                "max_poll_interval": self.max_poll_interval,
                "max_consecutive_failures": self.max_consecutive_failures,
                "cancel_on_kill": self.cancel_on_kill,
                **({"job": self.job} if self.job is not None else {}),
            },
        )

    def _event(self, payload: dict[str, Any]) -> TriggerEvent:
        """The trigger's one event; a job's state rides along unchanged, so the resuming worker finds
        it in the event itself (``dag.test()`` resumes with the event alone, without defer kwargs)."""
        return TriggerEvent(payload if self.job is None else {**payload, "job": self.job})

    def schedule(self) -> PollSchedule:
        return PollSchedule(initial=self.poll_interval, maximum=self.max_poll_interval, rng=JITTER)

    def defer_timeout(self) -> timedelta:
        """The ``timeout`` to defer with: past ``end_time`` by the longest pause and a grace, so
        this trigger's own deadline event, which carries the last state seen, always comes first."""
        return timedelta(seconds=max(0.0, self.end_time - time.time()) + self.max_poll_interval + DEFER_GRACE)

    def _deferral_message(self, watched: str, pages: str) -> str:
        """What the task log says as the task defers: the worker is free, and when to expect what."""
        return (
            f"Deferring: {watched} watched in the triggerer, with no worker slot held;"
            f" first look in about {self.poll_interval:g} s, deadline {format_utc(self.end_time)}"
            f" (in {format_duration(self.end_time - time.time())}). {pages}"
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

    async def _watch(
        self,
        wait: Waiter[Observed],
        look: Callable[[StatusObserver, float], Awaitable[Observed]],
        watched: str,
        batch_ids: Sequence[str],
    ) -> Decision:
        """Pause, ``look``, let ``wait`` decide, until it says done; return its last decision.

        ``look`` asks the connection's status observer, shared by every trigger on this loop, and
        is given its patience: how long it may wait for a sweep that answers other triggers too
        (:func:`~airflow_provider_batch.observer.patience_for`). The trigger stays in the observer
        for the whole wait and leaves it however the wait ends. Each look is cut short by the
        wait's budget, so that this trigger's deadline event always comes before Airflow's deferral
        timeout (see ``OBSERVATION_GRACE``).
        """
        async with observing(self.conn_id, batch_ids) as observer:
            pause = wait.pause(time.time())
            self.log.info(
                "Watching %s until %s; first look in %.0f s", watched, format_utc(self.end_time), pause
            )
            while True:
                await asyncio.sleep(pause)
                now = time.time()
                budget = wait.observation_budget(now)
                observed: Observed | PollFailure
                try:
                    # asyncio.timeout, not wait_for: no task per look (a thousand triggers' looks
                    # are the loop's garbage).
                    async with asyncio.timeout(budget):
                        observed = await look(observer, patience_for(pause, self.end_time - now))
                except TimeoutError:
                    observed = PollFailure(
                        retryable=True, message=f"the status call did not finish within {budget:.0f} s"
                    )
                step = wait.observe(observed, now=time.time())
                step.log_to(self.log)
                if step.decision.done:
                    return step.decision
                pause = step.pause
                # Nothing of this look but the wait's last snapshot outlives it: what sleeps across the
                # pause is promoted to the old generation, which full collections walk.
                del step, observed

    def _batches_to_cancel(self) -> Sequence[str]:
        """The batches ``on_kill`` cancels."""
        raise NotImplementedError

    async def on_kill(self) -> None:
        """Cancel the batches this trigger watches that it has not seen end, concurrently, best
        effort, bounded in time as a whole by :data:`ON_KILL_CANCEL_TIMEOUT`.

        Only batches of this trigger's own kwargs are cancelled: after a clear, the next try may
        already be waiting on new batches. ``cleanup()`` never cancels (it also runs on triggerer
        restarts, which must leave batches running).
        """
        batch_ids = list(self._batches_to_cancel())
        if not self.cancel_on_kill:
            self.log.info("Left running, cancel_on_kill is off: batch %s", ", ".join(batch_ids))
            return
        try:
            hook = await self.ahook()
            cancels = asyncio.gather(*(self._cancel(hook, batch_id) for batch_id in batch_ids))
            await asyncio.wait_for(cancels, ON_KILL_CANCEL_TIMEOUT)
        except TimeoutError:
            self.log.warning(
                "Could not cancel batch %s on kill: no answer within %.0f s",
                ", ".join(batch_ids),
                ON_KILL_CANCEL_TIMEOUT,
            )
        except Exception as exc:
            self.log.warning("Could not cancel batch %s on kill: %s", ", ".join(batch_ids), exc)

    async def _cancel(self, hook: OpenAIBatchHook, batch_id: str) -> None:
        try:
            batch = await hook.acancel_batch(batch_id)
        except Exception as exc:
            self.log.warning("Could not cancel batch %s on kill: %s", batch_id, exc)
            return
        self.log.info("Batch %s cancelled on kill (now %s)", batch_id, batch.status)


class OpenAIBatchTrigger(BatchPollingTrigger):
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
    :param job: the state of the job this batch belongs to (plain JSON, no secret), handed back
        unchanged in the event.
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
        job: dict[str, Any] | None = None,
    ) -> None:
        if not isinstance(batch_id, str) or not batch_id:
            raise ValueError("batch_id must be a non-empty string")
        super().__init__(
            conn_id=conn_id,
            end_time=end_time,
            poll_interval=poll_interval,
            max_poll_interval=max_poll_interval,
            max_consecutive_failures=max_consecutive_failures,
            cancel_on_kill=cancel_on_kill,
            job=job,
        )
        self.batch_id = batch_id

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return self._serialized(batch_id=self.batch_id)

    def deferral_message(self, batch_url: str) -> str:
        """What the task log says as the task defers: the worker is free, and when to expect what."""
        return self._deferral_message(f"batch {self.batch_id} is", f"Batch page: {batch_url}")

    async def run(self) -> AsyncIterator[TriggerEvent]:
        wait = Wait(self.batch_id, self.end_time, self.schedule(), self.max_consecutive_failures)
        decision = await self._watch(
            wait,
            lambda observer, patience: observer.snapshot(self.batch_id, patience=patience),
            f"batch {self.batch_id}",
            (self.batch_id,),
        )
        yield self._event(build_event(self.batch_id, decision, wait.last))

    def _batches_to_cancel(self) -> Sequence[str]:
        return [self.batch_id]
