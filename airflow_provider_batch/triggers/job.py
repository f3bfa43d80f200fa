"""``OpenAIBatchJobTrigger``: waits for a job's round of batches in the triggerer, as one trigger.

A job (issue 12) submits its input as several batches (shards), and the lines left unfinished
again in later rounds. Its task defers once per round, to this trigger, rather than to one
:class:`~airflow_provider_batch.triggers.batch.OpenAIBatchTrigger` per batch:

- status calls: each look asks the connection's status observer
  (:mod:`~airflow_provider_batch.observer`) for the batches not yet seen ended, which reads them
  from the batch listing, up to 100 a page, with the other triggers' batches, instead of N
  retrieves;
- one deadline, one schedule and one failure budget for the round
  (:class:`~airflow_provider_batch.watch.RoundWait`, the object the hook's synchronous
  ``wait_for_batches`` drives too), one trigger row, one event when the last batch ends, with
  every batch's state (:func:`~airflow_provider_batch.events.build_round_event`);
- one progress line per look for the whole job: batches by status, lines done, rate, time left.

Everything else is the single-batch trigger's (:class:`BatchPollingTrigger`): kwargs of plain
JSON with a ``conn_id`` and never a key, an absolute wall-clock deadline that survives triggerer
restarts, no blocking call on the loop, a cancel on kill bounded in time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

from airflow.triggers.base import TriggerEvent

from airflow_provider_batch.events import build_round_event
from airflow_provider_batch.status import BatchSnapshot
from airflow_provider_batch.triggers.batch import BatchPollingTrigger
from airflow_provider_batch.watch import RoundWait


class OpenAIBatchJobTrigger(BatchPollingTrigger):
    """Poll a round of batches until every one ended or ``end_time`` passes, then yield exactly one
    event (``round_ended``, ``timeout`` or ``polling_error``) carrying every batch's last state.

    :param conn_id: the ``openai_batch`` connection.
    :param batch_ids: the round's batches, distinct; the event lists them in this order.
    :param end_time: absolute deadline, unix seconds (wall clock): survives triggerer restarts.
    :param poll_interval: seconds before the second look; intervals then grow 1.5-fold.
    :param max_poll_interval: cap on the interval (the default keeps a 24 h round under ~300 looks).
    :param max_consecutive_failures: failed looks tolerated in a row before giving up (the
        batches are *not* cancelled then: their state is unknown).
    :param cancel_on_kill: cancel the batches not seen ended when a user marks the deferred task
        failed or success, or clears it (Airflow 3.3+ calls ``on_kill``; earlier versions never do).
    :param round_number: the job's round (1 for the first submission), for the log.
    :param created_after: the oldest creation time of the batches (unix seconds, the server's
        ``created_at``), when known: the listing is read no further back than that.
    :param job: the job's state (plain JSON, no secret), handed back unchanged in the event.
    :param wake_at: wait for room under the job's enqueued-token budget instead of for the round: the
        event (``room``) comes as soon as any of ``batch_ids`` (the model's batches in flight, possibly
        none) ends, or at ``wake_at`` (unix seconds) at the latest.
    """

    def __init__(
        self,
        *,
        conn_id: str,
        batch_ids: list[str],
        end_time: float,
        poll_interval: float = 30.0,
        max_poll_interval: float = 300.0,
        max_consecutive_failures: int = 5,
        cancel_on_kill: bool = True,
        round_number: int = 1,
        created_after: float | None = None,
        job: dict[str, Any] | None = None,
        wake_at: float | None = None,
    ) -> None:
        if (
            not isinstance(batch_ids, (list, tuple))
            or not (batch_ids or wake_at is not None)
            or not all(isinstance(batch_id, str) and batch_id for batch_id in batch_ids)
        ):
            raise ValueError("batch_ids must be a non-empty list of non-empty strings")
        if len(set(batch_ids)) != len(batch_ids):
            raise ValueError("batch_ids must be distinct")
        if not isinstance(round_number, int) or isinstance(round_number, bool) or round_number < 1:
            raise ValueError("round_number must be an integer, at least 1")
        if created_after is not None and (
            not isinstance(created_after, (int, float)) or isinstance(created_after, bool)
        ):
            raise TypeError("created_after must be unix seconds (a number) or None")
        super().__init__(
            conn_id=conn_id,
            end_time=end_time,
            poll_interval=poll_interval,
            max_poll_interval=max_poll_interval,
            max_consecutive_failures=max_consecutive_failures,
            cancel_on_kill=cancel_on_kill,
            job=job,
        )
        self.batch_ids = list(batch_ids)
        self.round_number = round_number
        self.created_after = None if created_after is None else float(created_after)
        self.wake_at = None if wake_at is None else float(wake_at)
        self._wait: RoundWait | None = None

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return self._serialized(
            batch_ids=list(self.batch_ids),
            round_number=self.round_number,
            created_after=self.created_after,
            **({"wake_at": self.wake_at} if self.wake_at is not None else {}),
        )

    def deferral_message(self, batch_url: str) -> str:
        """What the task log says as the task defers; ``batch_url`` is the first batch's page."""
        return self._deferral_message(
            f"round {self.round_number}'s {len(self.batch_ids)} batches are",
            f"First batch's page: {batch_url}",
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        wait = self._wait = RoundWait(
            self.batch_ids,
            self.end_time,
            self.schedule(),
            self.max_consecutive_failures,
            round_number=self.round_number,
            until_any=self.wake_at is not None,
            wake_at=self.wake_at,
        )
        decision = await self._watch(
            wait,
            lambda observer, patience: observer.snapshots(
                wait.unfinished(), patience=patience, created_after=self.created_after
            ),
            f"round {self.round_number}: {len(self.batch_ids)} batches",
            self.batch_ids,
        )
        yield self._event(build_round_event(decision, self.batch_ids, wait.last))

    def _batches_to_cancel(self) -> Sequence[str]:
        """The round's batches not seen ended (all of them if this trigger never looked)."""
        if self.wake_at is not None:
            # A wait for room watches the model's batches in flight, other runs' too: never cancel
            # those; cancel what the job itself has running.
            rounds = (self.job or {}).get("rounds") or [{}]
            snapshots = (BatchSnapshot.from_dict(batch["batch"]) for batch in rounds[-1].get("batches", []))
            return [snapshot.batch_id for snapshot in snapshots if not snapshot.is_terminal]
        return self.batch_ids if self._wait is None else self._wait.unfinished()
