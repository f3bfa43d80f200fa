"""Waiting for a round of batches: one wait for all the batches a job submitted together.

A job (issue 12) runs one input as several batches (shards) and resubmits the lines left
unfinished in later rounds. Its task waits for a whole round at once: one deadline, one poll
schedule, one budget of failed observations, one event when the last batch ends. Watching the
batches one by one instead would cost one status call per batch per look and one trigger per
batch; a round is observed with ``ceil(N / 100)`` calls to the batch listing
(:meth:`~airflow_provider_batch.hooks.batch.OpenAIBatchHook.poll_batches`).

Like :mod:`~airflow_provider_batch.status`, the module is pure: no I/O, no clock, no SDK or
Airflow import. The job trigger (async, in the triggerer) and the hook's synchronous
``wait_for_batches`` drive the same :class:`RoundWait`, doing only the calls and the sleeping,
so the two paths cannot drift; its tests use plain values.

Recorded decisions:

- The round ends (``round_ended``) when every batch was last seen terminal, whichever terminal
  status each reached: a failed or expired shard is the job's to judge (its lines go to the next
  round), not a reason to stop watching the others. The event carries every batch's state.
- A look at the round in which any batch could not be observed is *one* failed observation: a
  failing listing fails every batch at once, and counting each would spend the failure budget in
  a single look. The budget and its rules are :func:`~airflow_provider_batch.status.decide`'s.
- A non-retryable failure of any batch (a 404: deleted, or in another project) ends the round
  with ``polling_error``: looking again will not tell that batch's state.
- A failed look says nothing about a batch: the last good snapshot of each is kept.
- The deadline ends the round (``timeout``) even if some batch was never seen.
- Pauses follow the schedule alone, with no early look predicted from progress (``Wait`` has
  one): a round's end is its slowest batch's, and at the defaults a 24 h round still costs at
  most ~300 looks, each of ``ceil(N / 100)`` calls.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from airflow_provider_batch.status import (
    BatchSnapshot,
    BatchStatus,
    Decision,
    PollFailure,
    PollSchedule,
    Step,
    decide,
    format_duration,
    format_utc,
    observation_budget,
)

Observed = TypeVar("Observed", contravariant=True)


class Waiter(Protocol[Observed]):
    """What a loop that sleeps and observes drives: :class:`~airflow_provider_batch.status.Wait`
    (one batch) and :class:`RoundWait` (a round). The loops (sync in the hook, async in the
    triggers) are written once against it."""

    def pause(self, now: float) -> float: ...

    def observation_budget(self, now: float) -> float: ...

    def observe(self, observed: Observed | PollFailure, now: float) -> Step: ...


RoundObservation = Mapping[str, BatchSnapshot | PollFailure]
"""One look at a round: what each batch looked like, by id (``poll_batches``'s answer)."""

STATUS_ORDER = (
    BatchStatus.VALIDATING,
    BatchStatus.IN_PROGRESS,
    BatchStatus.FINALIZING,
    BatchStatus.CANCELLING,
    BatchStatus.COMPLETED,
    BatchStatus.FAILED,
    BatchStatus.EXPIRED,
    BatchStatus.CANCELLED,
)
"""The order in which a progress line counts batches by status: unfinished first, then ended."""


@dataclass
class RoundWait:
    """The state of one wait for a round of batches: last good snapshot per batch, consecutive
    failed looks, poll count, and the origin of the round's rate.

    Like ``Wait``, a waiter pauses *before* each look: whoever starts the wait has just submitted
    (or looked at) the batches, and a trigger firing within seconds of its deferral meets a known
    Airflow 3.3 scheduler race (apache/airflow#67287).

    :param batch_ids: the round's batches, distinct, in the order the event lists them.
    :param end_time: absolute deadline, unix seconds.
    :param round_number: the job's round, 1 for the first submission; for the progress line.
    :param until_any: wait for room instead: done (``room``) as soon as any batch is seen ended, or at
        ``wake_at``; the batches are those in flight for the model a job waits to submit to.
    :param wake_at: with ``until_any``, when to stop waiting anyway (unix seconds): room may also free
        up in batches nobody watches. The batch list may then be empty.
    """

    batch_ids: Sequence[str]
    end_time: float
    schedule: PollSchedule = field(default_factory=PollSchedule)
    max_failures: int = 5
    round_number: int = 1
    failures: int = 0
    polls: int = 0
    last: dict[str, BatchSnapshot] = field(default_factory=dict)
    started: float | None = None
    """When the wait began (its first pause)."""
    progress_from: tuple[float, int] | None = None
    """(time, lines done) at the first look that saw the round's request counts: the rate's origin."""
    progress_at: tuple[float, int] | None = None
    """(time, lines done) at the latest look."""
    unknown_reported: set[str] = field(default_factory=set)
    until_any: bool = False
    wake_at: float | None = None

    def __post_init__(self) -> None:
        self.batch_ids = tuple(self.batch_ids)
        if self.until_any != (self.wake_at is not None):
            raise ValueError("a wait for room (until_any) needs wake_at, and only it")
        if not self.batch_ids and not self.until_any:
            raise ValueError("a round needs at least one batch")
        if len(set(self.batch_ids)) != len(self.batch_ids):
            raise ValueError("a round's batch ids must be distinct")

    def unfinished(self) -> list[str]:
        """The batches not yet seen terminal, in round order: the only ones worth looking at again."""
        return [batch_id for batch_id in self.batch_ids if not self._ended(batch_id)]

    def _ended(self, batch_id: str) -> bool:
        snapshot = self.last.get(batch_id)
        return snapshot is not None and snapshot.is_terminal

    def pause(self, now: float) -> float:
        """Seconds to wait before the next look: the schedule's growing interval, never past the
        deadline."""
        if self.started is None:
            self.started = now
        seconds = self.schedule.interval(self.polls)
        self.polls += 1
        if self.wake_at is not None:
            seconds = min(seconds, self.wake_at - now)
        return max(0.0, min(seconds, self.end_time - now))

    def observation_budget(self, now: float) -> float:
        """Seconds the look starting at ``now`` may take: to the deadline and a grace past it
        (:func:`~airflow_provider_batch.status.observation_budget`)."""
        return observation_budget(self.end_time, now)

    def rate(self) -> float | None:
        """Lines done per second since the first look that saw counts, or ``None`` before any progress."""
        if self.progress_from is None or self.progress_at is None:
            return None
        (since, done_then), (seen, done) = self.progress_from, self.progress_at
        if seen <= since or done <= done_then:
            return None
        return (done - done_then) / (seen - since)

    def observe(self, observed: RoundObservation | PollFailure, now: float) -> Step:
        """Take one look at the round: keep each batch's good snapshot, decide, and unless the round
        is over plan the pause before the next look.

        ``observed`` maps batch ids to what the look saw (ids of other batches are ignored, and a
        batch left out is simply not looked at this time); a bare ``PollFailure`` is a look that
        failed as a whole (e.g. it ran out of time).
        """
        if isinstance(observed, PollFailure):
            failed = dict.fromkeys(self.unfinished(), observed)
        else:
            failed = {}
            for batch_id in self.batch_ids:
                seen = observed.get(batch_id)
                if isinstance(seen, BatchSnapshot):
                    self.last[batch_id] = seen
                elif isinstance(seen, PollFailure):
                    failed[batch_id] = seen
        self._remember_progress(now)
        decision = self._decide(failed, now)
        self.failures = decision.failures
        pause = None if decision.done else self.pause(now)
        progress = round_progress(
            self.round_number,
            self.batch_ids,
            self.last,
            now=now,
            end_time=None if decision.reason == "round_ended" else self.end_time,
            rate=self.rate(),
            pause=pause,
        )
        warnings = [] if decision.done else self._unknown_statuses()
        if failed and not decision.done:
            warnings.append(
                f"Round {self.round_number}: {decision.message} ({self.failures}/{self.max_failures});"
                f" next look in {format_duration(pause or 0.0)}"
            )
        return Step(decision, progress, "\n".join(warnings) or None, pause or 0.0)

    def _decide(self, failed: Mapping[str, PollFailure], now: float) -> Decision:
        if self.until_any and self.wake_at is not None:
            ended = [batch_id for batch_id in self.batch_ids if self._ended(batch_id)]
            # A failed look ends a wait for room too: the job looks at the budget again itself.
            if ended or failed or now >= min(self.wake_at, self.end_time):
                why = f"batch {ended[0]} ended" if ended else "time to look again"
                return Decision(True, 0, "room", f"Waiting for room: {why}.")
        elif all(self._ended(batch_id) for batch_id in self.batch_ids):
            return Decision(
                True,
                0,
                "round_ended",
                f"Round {self.round_number}: all {len(self.batch_ids)} batches ended"
                f" ({_by_status(self.batch_ids, self.last)}).",
            )
        if failed:
            # The round's look failed: one failed observation for decide(), named by the batch that
            # failed worst (a non-retryable failure ends the round).
            batch_id, failure = next(
                ((batch_id, failure) for batch_id, failure in failed.items() if not failure.retryable),
                next(iter(failed.items())),
            )
            which = f"batch {batch_id}" + (f" (1 of {len(failed)} not observed)" if len(failed) > 1 else "")
            return decide(
                PollFailure(failure.retryable, f"{which}: {failure.message}", failure.http_status),
                now=now,
                end_time=self.end_time,
                failures=self.failures,
                max_failures=self.max_failures,
            )
        if now >= self.end_time:
            unfinished = self.unfinished()
            return Decision(
                True,
                0,
                "timeout",
                f"Round {self.round_number}: {len(unfinished)} of {len(self.batch_ids)} batches had not"
                f" ended at the deadline ({_by_status(self.batch_ids, self.last)}).",
            )
        return Decision(False, 0)

    def _remember_progress(self, now: float) -> None:
        snapshots = [self.last[batch_id] for batch_id in self.batch_ids if batch_id in self.last]
        if not any(snapshot.lines_total for snapshot in snapshots):
            return
        self.progress_at = (now, sum(snapshot.lines_done for snapshot in snapshots))
        if self.progress_from is None:
            self.progress_from = self.progress_at

    def _unknown_statuses(self) -> list[str]:
        """A warning for each status unknown to this provider, the first time a batch shows it."""
        warnings = []
        for batch_id in self.batch_ids:
            snapshot = self.last.get(batch_id)
            if snapshot is None or snapshot.known_status is not None:
                continue
            if snapshot.status not in self.unknown_reported:
                self.unknown_reported.add(snapshot.status)
                warnings.append(
                    f"Round {self.round_number}: batch {batch_id} has status {snapshot.status!r}, unknown"
                    " to this provider; still waiting until it ends or the deadline passes."
                )
        return warnings


def round_progress(
    round_number: int,
    batch_ids: Sequence[str],
    snapshots: Mapping[str, BatchSnapshot],
    *,
    now: float,
    end_time: float | None = None,
    rate: float | None = None,
    pause: float | None = None,
) -> str:
    """The job's progress line for one look at a round, e.g.

    ``Round 1: 20 batches (15 in_progress, 5 completed): 640,000 of 1,000,000 lines done (64%),
    1,204 failed, 360,000 pending; about 1h56m left at 3,100 lines/min; next look in 4m00s;
    deadline in 70h00m (2026-12-05 10:00:00 UTC)``.

    Lines are summed over the batches' last request counts (done = completed + failed lines);
    ``rate`` (lines per second) gives the time left for the pending lines. ``end_time`` and
    ``pause`` are left out once there is no deadline or next look to tell about.
    """
    line = f"Round {round_number}: {len(batch_ids)} batches ({_by_status(batch_ids, snapshots)})"
    seen = [snapshots[batch_id] for batch_id in batch_ids if batch_id in snapshots]
    total = sum(snapshot.lines_total for snapshot in seen)
    parts = [line]
    if total:
        done = sum(snapshot.lines_done for snapshot in seen)
        failed = sum(snapshot.lines_failed for snapshot in seen)
        pending = max(0, total - done)
        parts[0] += (
            f": {done:,} of {total:,} lines done ({100 * done // total}%), {failed:,} failed,"
            f" {pending:,} pending"
        )
        if rate and pending and end_time is not None:
            per_minute = rate * 60
            shown = f"{per_minute:,.0f}" if per_minute >= 10 else f"{per_minute:.2g}"
            parts.append(f"about {format_duration(pending / rate)} left at {shown} lines/min")
    if pause is not None:
        parts.append(f"next look in {format_duration(pause)}")
    if end_time is not None and end_time != float("inf"):
        parts.append(f"deadline in {format_duration(end_time - now)} ({format_utc(end_time)})")
    return "; ".join(parts)


def _by_status(batch_ids: Iterable[str], snapshots: Mapping[str, BatchSnapshot]) -> str:
    """``15 in_progress, 5 completed``: how many batches are in each status, in lifecycle order;
    unknown statuses after, batches never seen last."""
    counts = Counter(
        snapshots[batch_id].status if batch_id in snapshots else "not seen yet" for batch_id in batch_ids
    )
    order = {status.value: index for index, status in enumerate(STATUS_ORDER)}
    ranked = sorted(
        counts, key=lambda status: (status == "not seen yet", order.get(status, len(order)), status)
    )
    return ", ".join(f"{counts[status]} {status}" for status in ranked)
