"""Batch statuses and the poll decision: the one place that says when waiting is over.

The trigger (async, in the triggerer), the operator's synchronous wait and the sensor's poke all
observe a batch and ask :func:`decide` what to do next, so they cannot disagree about what is
terminal, how many failed polls are tolerated, or when the deadline has passed. The module is
pure: no I/O, no clock, no SDK or Airflow import, so it is tested with plain values.

Recorded decisions:

- ``cancelling`` is *in progress*: the output and error files of a cancelled batch only appear
  once it reaches ``cancelled``, and the partial results are worth waiting for.
- An unknown status keeps polling (bounded by the deadline) and is reported once: OpenAI may add
  a status, and that must not fail every running task.
- Statuses are compared lower-cased (some compatible servers use upper case).
- Completed is not success on its own: :func:`classify_completion` applies the failed-line policy.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal


class BatchStatus(StrEnum):
    VALIDATING = "validating"
    FAILED = "failed"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    EXPIRED = "expired"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"


IN_PROGRESS = frozenset(
    {BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS, BatchStatus.FINALIZING, BatchStatus.CANCELLING}
)
TERMINAL = frozenset({BatchStatus.COMPLETED, BatchStatus.FAILED, BatchStatus.EXPIRED, BatchStatus.CANCELLED})

Reason = Literal[
    "completed", "failed", "expired", "cancelled", "timeout", "polling_error", "round_ended", "room"
]
"""Why a wait ended. ``round_ended`` ends the wait for a job's round of batches
(:mod:`~airflow_provider_batch.watch`): each batch ended, each for its own terminal reason. ``room``
ends a job's wait for room under its enqueued-token budget: a batch in flight ended, or it is time to
look again."""
TERMINAL_REASON: dict[BatchStatus, Reason] = {
    BatchStatus.COMPLETED: "completed",
    BatchStatus.FAILED: "failed",
    BatchStatus.EXPIRED: "expired",
    BatchStatus.CANCELLED: "cancelled",
}


def parse_status(raw: str | None) -> BatchStatus | None:
    """The status as an enum member, or ``None`` when it is one we do not know."""
    try:
        return BatchStatus(str(raw).lower())
    except ValueError:
        return None


TIMESTAMPS = (
    "created_at",
    "in_progress_at",
    "finalizing_at",
    "completed_at",
    "failed_at",
    "expired_at",
    "cancelling_at",
    "cancelled_at",
    "expires_at",
)
"""The Batch object's timestamps (unix seconds): users measure queue and run time from them."""
ERROR_FIELDS = ("code", "message", "line", "param")


@dataclass(frozen=True)
class BatchSnapshot:
    """What one observation of a batch tells us: the one definition of a batch's state that the
    trigger event, the manifest and the sensor's saved wait are all made of (:meth:`to_dict`).

    File ids are normalised to ``None`` when falsy (Azure and some compatible servers send
    ``""``); timestamps are unix seconds as the API gives them, ``None`` until the step happens.
    """

    batch_id: str
    status: str
    endpoint: str | None = None
    model: str | None = None
    input_file_id: str | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    request_counts: dict[str, int] | None = None
    usage: dict[str, Any] | None = None
    errors: tuple[dict[str, Any], ...] = ()
    metadata: dict[str, str] | None = None
    created_at: int | None = None
    in_progress_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    expires_at: int | None = None

    @classmethod
    def from_api(cls, batch: dict[str, Any]) -> BatchSnapshot:
        """Build from a Batch object as JSON (``batch.model_dump()`` or a raw response)."""
        errors = (batch.get("errors") or {}).get("data") or ()
        return cls(
            batch_id=batch["id"],
            status=str(batch.get("status") or "").lower(),
            endpoint=batch.get("endpoint") or None,
            model=batch.get("model") or None,
            input_file_id=batch.get("input_file_id") or None,
            output_file_id=batch.get("output_file_id") or None,
            error_file_id=batch.get("error_file_id") or None,
            request_counts=batch.get("request_counts") or None,
            usage=batch.get("usage") or None,
            errors=tuple({key: error.get(key) for key in ERROR_FIELDS} for error in errors),
            metadata=batch.get("metadata") or None,
            **{name: batch.get(name) for name in TIMESTAMPS},
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON, keyed by field name: what events, manifests and saved waits carry."""
        data = {item.name: getattr(self, item.name) for item in fields(self)}
        data["errors"] = [dict(error) for error in self.errors]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BatchSnapshot:
        """The inverse of :meth:`to_dict`; keys this version does not know are ignored, so a
        payload written by a newer version (one more field) still reads."""
        known = {item.name for item in fields(cls)} & data.keys()
        values = {name: data[name] for name in known}
        values["errors"] = tuple(dict(error) for error in data.get("errors") or ())
        values["status"] = str(data.get("status") or "")
        return cls(**values)

    @property
    def known_status(self) -> BatchStatus | None:
        return parse_status(self.status)

    @property
    def lines_total(self) -> int:
        return (self.request_counts or {}).get("total") or 0

    @property
    def lines_failed(self) -> int:
        return (self.request_counts or {}).get("failed") or 0

    @property
    def lines_done(self) -> int:
        """Lines that ran, whether they succeeded or failed."""
        return ((self.request_counts or {}).get("completed") or 0) + self.lines_failed

    @property
    def is_terminal(self) -> bool:
        return self.known_status in TERMINAL


@dataclass(frozen=True)
class PollFailure:
    """An observation that failed; ``retryable`` says whether polling again may help."""

    retryable: bool
    message: str
    http_status: int | None = None


@dataclass(frozen=True)
class Decision:
    """What to do after an observation: keep waiting, or stop for ``reason``."""

    done: bool
    failures: int
    """Consecutive failed observations so far (0 after a good one)."""
    reason: Reason | None = None
    message: str = ""
    unknown_status: str | None = None
    """Set when the batch reported a status this module does not know (keep polling, warn)."""


def decide(
    observed: BatchSnapshot | PollFailure,
    *,
    now: float,
    end_time: float,
    failures: int,
    max_failures: int,
) -> Decision:
    """Decide after one observation. Pure: the caller supplies the clock and the failure count.

    A terminal status ends the wait whatever the time; otherwise the wall-clock ``end_time``
    does. Failed observations are tolerated up to ``max_failures`` in a row, because a poll
    error says nothing about the batch: it is neither a reason to fail the task nor to cancel.
    """
    if isinstance(observed, PollFailure):
        failures += 1
        if not observed.retryable:
            return Decision(True, failures, "polling_error", f"Polling failed: {observed.message}")
        if failures >= max_failures:
            return Decision(
                True,
                failures,
                "polling_error",
                f"Polling failed {failures} times in a row; last error: {observed.message}",
            )
        if now >= end_time:
            return Decision(True, failures, "timeout", "The wait timed out while the API was failing.")
        return Decision(False, failures, message=f"Poll failed ({observed.message}); will retry.")

    status = observed.known_status
    if status in TERMINAL:
        return Decision(True, 0, TERMINAL_REASON[status], f"Batch {observed.batch_id} is {observed.status}.")
    if now >= end_time:
        return Decision(
            True, 0, "timeout", f"Batch {observed.batch_id} is still {observed.status} at the deadline."
        )
    return Decision(False, 0, unknown_status=observed.status if status is None else None)


@dataclass(frozen=True)
class PollSchedule:
    """Adaptive poll intervals: short at first, growing 1.5-fold to a cap, with ±10 % jitter.

    At the defaults (30 s growing to 300 s) a batch that runs the whole 24 h window costs
    about 295 status calls, while one that finishes in minutes is seen finishing quickly.
    """

    initial: float = 30.0
    maximum: float = 300.0
    growth: float = 1.5
    jitter: float = 0.1
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def interval(self, poll: int) -> float:
        """Seconds to wait after poll number ``poll`` (0-based), jittered."""
        base = min(self.maximum, self.initial * self.growth**poll)
        return base * self.rng.uniform(1 - self.jitter, 1 + self.jitter)


@dataclass(frozen=True)
class Step:
    """What one observation means for a waiter."""

    decision: Decision
    progress: str | None = None
    """The progress line of this observation: counts, percent, elapsed time, next look, deadline."""
    warning: str | None = None
    pause: float = 0.0
    """Seconds to wait before the next observation (0 when the wait is over, or not planned)."""

    def log_to(self, logger: Any) -> None:
        """Log the progress line (info) and the warning, whichever this step has."""
        if self.progress:
            logger.info(self.progress)
        if self.warning:
            logger.warning(self.warning)


EARLY_LOOKS = 8
"""Pauses per wait that a prediction may shorten: a look at the predicted end of the lines, then
some while the batch finalizes. A batch that runs its whole window still costs at most 300 status
calls (``benchmarks/polling_cost.py``; a test simulates the shapes of progress that tempt it)."""
OBSERVATION_GRACE = 30.0
"""Seconds an observation may run past the deadline before it counts as failed.

Unbounded, an observation that starts near the deadline could last the connection's HTTP timeout
plus the retry policy's total (15 minutes at the defaults), and Airflow's generic deferral
timeout, set :data:`DEFER_GRACE` past the deadline, would fire first: the task would lose the
batch's last state and never cancel it on timeout."""
DEFER_GRACE = 60.0
"""Seconds the Airflow deferral timeout exceeds the trigger's deadline (beyond the longest pause),
so that the trigger's own ``timeout`` event, which carries the batch's last state, always wins.
Larger than :data:`OBSERVATION_GRACE` by design."""


def observation_budget(end_time: float, now: float) -> float:
    """Seconds an observation starting at ``now`` may take: as long as it needs well before the
    deadline ``end_time``, but never more than :data:`OBSERVATION_GRACE` past it. Shared by the
    wait for one batch and the wait for a round, whose triggers both cut their calls short by it."""
    return max(0.0, end_time - now) + OBSERVATION_GRACE


@dataclass
class Wait:
    """The state of one wait for a batch: poll count, consecutive failures, last good snapshot.

    The trigger (async), the hook's synchronous wait and the sensor's pokes drive the same object,
    doing only the I/O and the sleeping themselves, so the paths cannot drift. A waiter pauses
    *before* each observation: whoever starts a wait has just looked at the batch (the operator
    and the sensor check once before deferring), so looking again at once would only cost a call,
    and a trigger that fires within seconds of the deferral meets a known Airflow 3.3 scheduler
    race (apache/airflow#67287) that fails the task.

    A wait that outlives its process (a sensor in ``reschedule`` mode pokes from a new process
    each time) carries itself over with :meth:`saved` and :meth:`restore`.
    """

    batch_id: str
    end_time: float
    schedule: PollSchedule = field(default_factory=PollSchedule)
    max_failures: int = 5
    failures: int = 0
    polls: int = 0
    last: BatchSnapshot | None = None
    unknown_reported: bool = False
    started: float | None = None
    """When the wait began (its first pause): elapsed time when the batch's creation is unknown."""
    progress_from: tuple[float, int] | None = None
    """(time, lines done) at the first observation of the batch running: the origin of its rate."""
    seen_at: float | None = None
    """When :attr:`last` was observed."""
    lines_done_at: float | None = None
    """When every line was first seen done: the batch is finalizing from then on."""
    early_looks: int = 0
    """Pauses shortened by a prediction so far (at most :data:`EARLY_LOOKS`)."""

    def pause(self, now: float) -> float:
        """Seconds to wait before the next observation: the schedule's growing interval, shortened
        to when the observed progress says the batch will end, and never past the deadline."""
        if self.started is None:
            self.started = now
        seconds = self.schedule.interval(self.polls)
        predicted = self.predicted_end(now)
        if predicted is not None and predicted < seconds and self.early_looks < EARLY_LOOKS:
            # Looking more often than the schedule costs calls: not sooner than a third of the
            # first interval, and only a few times per wait, so the call budget holds.
            self.early_looks += 1
            seconds = max(predicted, min(seconds, self.schedule.initial / 3))
        self.polls += 1
        return max(0.0, min(seconds, self.end_time - now))

    def predicted_end(self, now: float) -> float | None:
        """Seconds from ``now`` until the batch is expected to end, from its observed progress, or
        ``None`` when nothing can be predicted (no counts yet, no progress, not running).

        While lines run, the average rate since the first observation of the batch running gives
        the time its remaining lines need. Once every line is done the batch is finalizing, for a
        time nothing announces: the prediction is then half as long as it has been finalizing, so
        looks come soon after a short finalization and back off during a long one.
        """
        last = self.last
        if last is None or self.seen_at is None or not last.lines_total or last.is_terminal:
            return None
        done, total = last.lines_done, last.lines_total
        if done >= total or last.known_status == BatchStatus.FINALIZING:
            if self.lines_done_at is None:
                return None
            return max(0.0, (now - self.lines_done_at) / 2)
        if self.progress_from is None or last.known_status != BatchStatus.IN_PROGRESS:
            return None
        since, done_then = self.progress_from
        if self.seen_at <= since or done <= done_then:
            return None
        rate = (done - done_then) / (self.seen_at - since)
        return max(0.0, (total - done) / rate - (now - self.seen_at))

    def _remember_progress(self, snapshot: BatchSnapshot, now: float) -> None:
        done, total = snapshot.lines_done, snapshot.lines_total
        if self.progress_from is None and snapshot.known_status == BatchStatus.IN_PROGRESS:
            self.progress_from = (now, done)
        finalizing = snapshot.known_status == BatchStatus.FINALIZING
        if self.lines_done_at is None and ((total and done >= total) or finalizing):
            self.lines_done_at = now
        self.seen_at = now

    def observation_budget(self, now: float) -> float:
        """Seconds the observation starting at ``now`` may take (:func:`observation_budget`)."""
        return observation_budget(self.end_time, now)

    def observe(self, observed: BatchSnapshot | PollFailure, now: float, *, plan: bool = True) -> Step:
        """Take one observation: decide, and unless the wait is over (or ``plan`` is off, for a
        sensor whose pokes Airflow times) plan the pause before the next one."""
        warning = None
        if isinstance(observed, BatchSnapshot):
            self._remember_progress(observed, now)
            self.last = observed
        decision = decide(
            observed, now=now, end_time=self.end_time, failures=self.failures, max_failures=self.max_failures
        )
        self.failures = decision.failures
        pause = self.pause(now) if plan and not decision.done else 0.0
        progress = None
        if isinstance(observed, BatchSnapshot):
            progress = self._progress_line(observed, now, pause if plan and not decision.done else None)
        if decision.done:
            return Step(decision, progress)
        if decision.unknown_status and not self.unknown_reported:
            self.unknown_reported = True
            warning = (
                f"Batch {self.batch_id} has status {decision.unknown_status!r}, unknown to this provider;"
                " still waiting until it ends or the deadline passes."
            )
        elif isinstance(observed, PollFailure):
            warning = f"Batch {self.batch_id}: {decision.message} ({self.failures}/{self.max_failures})"
            if plan:
                warning += f"; next look in {format_duration(pause)}"
        return Step(decision, progress, warning, pause)

    def _progress_line(self, snapshot: BatchSnapshot, now: float, pause: float | None) -> str:
        """``Batch b in_progress: 780 of 1,000 lines done (78%), 3 failed; 12m30s since created;
        next look in 45s; deadline in 23h47m (2026-12-03 10:00:00 UTC)``."""
        done, failed, total = snapshot.lines_done, snapshot.lines_failed, snapshot.lines_total
        parts = [f"Batch {self.batch_id} {snapshot.status}"]
        if total:
            parts[0] += f": {done:,} of {total:,} lines done ({100 * done // total}%), {failed:,} failed"
        if snapshot.created_at:
            parts.append(f"{format_duration(now - snapshot.created_at)} since created")
        elif self.started is not None:
            parts.append(f"{format_duration(now - self.started)} waited")
        if pause is not None and not snapshot.is_terminal:
            parts.append(f"next look in {format_duration(pause)}")
        if self.end_time != float("inf") and not snapshot.is_terminal:
            parts.append(f"deadline in {format_duration(self.end_time - now)} ({format_utc(self.end_time)})")
        return "; ".join(parts)

    def saved(self) -> dict[str, Any]:
        """The part of the wait that must survive a new process: JSON for a state store."""
        return {
            "batch_id": self.batch_id,
            "failures": self.failures,
            "polls": self.polls,
            "unknown_reported": self.unknown_reported,
            "last": self.last.to_dict() if self.last else None,
        }

    def restore(self, saved: dict[str, Any] | None) -> None:
        """Continue a wait from :meth:`saved`; a record of another batch (or none) starts afresh."""
        if not saved or saved.get("batch_id") != self.batch_id:
            return
        self.failures = int(saved.get("failures") or 0)
        self.polls = int(saved.get("polls") or 0)
        self.unknown_reported = bool(saved.get("unknown_reported"))
        self.last = BatchSnapshot.from_dict(saved["last"]) if saved.get("last") else None


Outcome = Literal["success", "too_many_failed_lines"]


def classify_completion(request_counts: dict[str, int] | None, max_failed_fraction: float) -> Outcome:
    """Apply the failed-line policy to a completed batch.

    A ``completed`` batch whose lines all failed is the classic silent failure (the official
    provider reports it as success). ``max_failed_fraction`` is the share of failed lines the user
    accepts: 0.0 fails on any failed line, 1.0 never fails on lines.
    """
    counts = request_counts or {}
    total = counts.get("total") or 0
    failed = counts.get("failed") or 0
    if total == 0:
        return "success"
    return "too_many_failed_lines" if failed / total > max_failed_fraction else "success"


def format_duration(seconds: float) -> str:
    """``45s``, ``12m30s``, ``23h47m``: how long, at the precision a log reader wants."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def format_utc(moment: float) -> str:
    """A wall-clock time in UTC, as Airflow shows times."""
    return datetime.fromtimestamp(moment, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
