"""A job: one task's input run as batches (shards), round after round, until every line is answered.

The operator drives a job; this module holds what a job *is* and the rules it follows, as plain values:

* :class:`JobState` is the one definition of a job's progress: its rounds, each round's batches (shard,
  request count, idempotency key, last observed state) and, once a round is closed, what its lines came to.
  It is JSON (:meth:`JobState.to_dict`) because it travels with the deferral: a worker that resumes the task
  is a fresh process that knows nothing else.
* :func:`shard_key` names every batch of a job: the submission's key (task instance and input), the shard
  caps, the round and the shard. A worker killed in the middle of submitting a round is retried, finds the
  batches it created by these keys, and creates only the missing ones: each shard of each round is paid for
  once. The first round of an input that fits one batch keeps the submission key itself, so a job of one
  batch is exactly the single-batch operator of earlier releases.
* A round may miss shards for a while (:attr:`JobRound.needs_submission`): under an enqueued-token budget
  the shards are created while they fit, and a batch the API refused for that limit is submitted again
  (:mod:`~airflow_provider_batch.budget`).
* :func:`stop_reason` says whether a job whose round has ended may run another one; :func:`ending` says how
  a finished job ended for the task (the error, if any); :func:`job_manifest` is the small XCom result.

Which lines a next round resubmits, and how rounds merge into one result file, is
:mod:`~airflow_provider_batch.rounds`; how an input is cut, :mod:`~airflow_provider_batch.shards`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from airflow_provider_batch.budget import refused_for_tokens
from airflow_provider_batch.rounds import RoundPlan, Verdict
from airflow_provider_batch.shards import ShardLimits
from airflow_provider_batch.status import BatchSnapshot, BatchStatus, classify_completion

JOB_STATE_VERSION = 1
"""Version of :meth:`JobState.to_dict`, read back by a worker that may run a newer provider."""


@dataclass(frozen=True)
class JobBatch:
    """One batch of a round: which shard of the round's input it holds, and its last observed state."""

    shard: int
    """1-based, in input order."""
    requests: int | None
    """Requests of the round's input the shard holds; None for an ``input_file_id`` never read."""
    key: str
    """Its idempotency key (:func:`shard_key`), also in the batch's metadata."""
    batch: BatchSnapshot

    def to_dict(self) -> dict[str, Any]:
        return {
            "shard": self.shard,
            "requests": self.requests,
            "key": self.key,
            "batch": self.batch.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JobBatch:
        requests = data.get("requests")
        return cls(
            int(data["shard"]),
            None if requests is None else int(requests),
            str(data["key"]),
            BatchSnapshot.from_dict(data["batch"]),
        )

    @property
    def lines(self) -> int:
        """Requests the shard holds: as planned, else as the batch reports them."""
        return self.requests if self.requests is not None else self.batch.lines_total


@dataclass(frozen=True)
class RoundOutcome:
    """What a closed round's requests came to (the counts of :class:`~.rounds.RoundPlan`, kept small)."""

    succeeded: int
    retry: int
    """Requests worth another attempt: resubmitted if another round runs, else failed for good."""
    final: int
    """Requests failed for good (an error a retry cannot fix, a cancelled or failed batch)."""
    retry_reasons: Mapping[str, int] = field(default_factory=dict)
    """The ``retry`` requests by reason (``batch_expired``, ``http_5xx``, ``missing``...)."""
    final_reasons: Mapping[str, int] = field(default_factory=dict)
    """The ``final`` requests by reason (``http_400``, ``batch_cancelled``...)."""

    @classmethod
    def from_plan(cls, plan: RoundPlan) -> RoundOutcome:
        return cls(
            succeeded=plan.total(Verdict.SUCCEEDED),
            retry=plan.total(Verdict.RETRY),
            final=plan.total(Verdict.FINAL),
            retry_reasons=dict(plan.counts.get(Verdict.RETRY, {})),
            final_reasons=dict(plan.counts.get(Verdict.FINAL, {})),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "succeeded": self.succeeded,
            "retry": self.retry,
            "final": self.final,
            "retry_reasons": dict(sorted(self.retry_reasons.items())),
            "final_reasons": dict(sorted(self.final_reasons.items())),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RoundOutcome:
        return cls(
            int(data["succeeded"]),
            int(data["retry"]),
            int(data["final"]),
            dict(data.get("retry_reasons") or {}),
            dict(data.get("final_reasons") or {}),
        )


@dataclass(frozen=True)
class JobRound:
    """The batches of one round, in input order, and once it is closed, its outcome."""

    number: int
    batches: tuple[JobBatch, ...]
    outcome: RoundOutcome | None = None
    planned: int | None = None
    """Shards the round's input was cut into, when the budget let fewer be submitted so far."""
    checked: bool = False
    """The round's replies are checked against a structured output (a schema its requests or the task
    gave): a line the API counts as completed may be ``invalid_output``, so only its files tell."""

    @property
    def requests(self) -> int:
        return sum(batch.lines for batch in self.batches)

    @property
    def complete(self) -> bool:
        """Every shard of the round has its batch."""
        return self.planned is None or len(self.batches) >= self.planned

    @property
    def needs_submission(self) -> bool:
        """A shard still to submit: not yet (no room under the budget), or again (its batch was refused
        for the model's enqueued-token limit, which bills nothing)."""
        return not self.complete or any(refused_for_tokens(batch.batch) for batch in self.batches)

    @property
    def ended(self) -> bool:
        """Every shard's batch reached a terminal status: the round's lines have their verdicts."""
        return self.complete and all(batch.batch.is_terminal for batch in self.batches)

    def with_status(self, *statuses: BatchStatus) -> list[BatchSnapshot]:
        return [batch.batch for batch in self.batches if batch.batch.known_status in statuses]

    @property
    def all_succeeded(self) -> bool:
        """Every batch completed and reports every line completed, and no reply needs checking: nothing
        to resubmit, nothing to read."""
        return (
            self.ended
            and not self.checked
            and all(
                batch.batch.known_status == BatchStatus.COMPLETED
                and batch.batch.lines_failed == 0
                and (batch.batch.request_counts or {}).get("completed") == batch.lines
                for batch in self.batches
            )
        )

    @property
    def known_outcome(self) -> RoundOutcome | None:
        """The outcome: as closed, or, for a round whose every line succeeded, without reading a file."""
        if self.outcome is None and self.all_succeeded:
            return RoundOutcome(succeeded=self.requests, retry=0, final=0)
        return self.outcome

    def to_dict(self) -> dict[str, Any]:
        return {
            "round": self.number,
            "batches": [batch.to_dict() for batch in self.batches],
            "outcome": self.outcome.to_dict() if self.outcome is not None else None,
            "planned": self.planned,
            "checked": self.checked,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JobRound:
        outcome = data.get("outcome")
        planned = data.get("planned")
        return cls(
            int(data["round"]),
            tuple(JobBatch.from_dict(batch) for batch in data["batches"]),
            RoundOutcome.from_dict(outcome) if outcome else None,
            None if planned is None else int(planned),
            bool(data.get("checked", False)),
        )


@dataclass(frozen=True)
class JobState:
    """A job's progress: everything a resumed worker needs besides the operator's own arguments.

    :param submission_key: the task instance's key for its input (:func:`~.identity.submission_key`).
    :param split: whether the first round's input was cut into shard files (else it is the input itself).
    :param end_time: the job's deadline, unix seconds: the first batch's creation plus the timeout, the same
        for every round.
    """

    submission_key: str
    split: bool
    end_time: float
    rounds: tuple[JobRound, ...] = ()
    cost_estimate: Mapping[str, Any] | None = None
    """The estimate made before upload (:func:`~.cost.checked_estimate`), for the manifest."""
    model: str | None = None
    """The model of the job's requests: whose enqueued tokens its budget counts."""
    lonely_refusals: int = 0
    """Refusals for the token limit in a row while nothing of the model was in flight
    (:data:`~.budget.MAX_LONELY_REFUSALS`)."""

    @property
    def current(self) -> JobRound:
        return self.rounds[-1]

    @property
    def single_batch(self) -> bool:
        """One round of one batch: the job is reported exactly as a single-batch task always was."""
        return len(self.rounds) == 1 and len(self.current.batches) == 1

    @property
    def requests(self) -> int:
        """Requests of the job: those of its first round."""
        return self.rounds[0].requests if self.rounds else 0

    def batches(self) -> Iterator[JobBatch]:
        for job_round in self.rounds:
            yield from job_round.batches

    def with_round(self, job_round: JobRound) -> JobState:
        """This state with ``job_round`` replacing the round of the same number, or appended."""
        kept = tuple(r for r in self.rounds if r.number != job_round.number)
        return replace(self, rounds=tuple(sorted((*kept, job_round), key=lambda r: r.number)))

    def observed(self, snapshots: Sequence[BatchSnapshot]) -> JobState:
        """This state with the current round's batches updated from observations (matched by id)."""
        seen = {snapshot.batch_id: snapshot for snapshot in snapshots if snapshot.status}
        batches = tuple(replace(b, batch=seen.get(b.batch.batch_id, b.batch)) for b in self.current.batches)
        return self.with_round(replace(self.current, batches=batches))

    def totals(self) -> dict[str, int]:
        """Lines of the job by final outcome, from the closed rounds (``pending`` for the rest)."""
        outcomes = [r.known_outcome for r in self.rounds]
        succeeded = sum(outcome.succeeded for outcome in outcomes if outcome is not None)
        failed = sum(outcome.final for outcome in outcomes if outcome is not None)
        last = outcomes[-1] if outcomes else None
        if last is not None:
            failed += last.retry  # retryable, but no round is left to retry them in
        return {
            "total": self.requests,
            "succeeded": succeeded,
            "failed": failed,
            "pending": self.requests - succeeded - failed,
        }

    def failed_by_reason(self) -> dict[str, int]:
        """The job's lines failed for good, by reason: each round's final failures, and the last round's
        retryable ones (no round was left for them)."""
        counts: dict[str, int] = {}
        for job_round in self.rounds:
            outcome = job_round.known_outcome
            if outcome is None:
                continue
            reasons = [outcome.final_reasons]
            if job_round is self.current:
                reasons.append(outcome.retry_reasons)
            for table in reasons:
                for reason, count in table.items():
                    counts[reason] = counts.get(reason, 0) + count
        return dict(sorted(counts.items()))

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": JOB_STATE_VERSION,
            "submission_key": self.submission_key,
            "split": self.split,
            "end_time": self.end_time,
            "rounds": [job_round.to_dict() for job_round in self.rounds],
            "cost_estimate": dict(self.cost_estimate) if self.cost_estimate is not None else None,
            "model": self.model,
            "lonely_refusals": self.lonely_refusals,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JobState:
        version = data.get("version")
        if version != JOB_STATE_VERSION:
            raise ValueError(
                f"Unsupported job state version {version!r} (this worker reads {JOB_STATE_VERSION});"
                " upgrade the provider on the workers."
            )
        return cls(
            str(data["submission_key"]),
            bool(data["split"]),
            float(data["end_time"]),
            tuple(JobRound.from_dict(r) for r in data["rounds"]),
            data.get("cost_estimate"),
            data.get("model"),
            int(data.get("lonely_refusals") or 0),
        )


def shard_key(submission_key: str, limits: ShardLimits, round_number: int, shard: int, *, split: bool) -> str:
    """The idempotency key of one shard of one round.

    The caps are part of it: with other caps, shard 3 holds other lines, and must not be mistaken for the
    shard 3 an earlier try submitted. The first round of an unsplit input keeps ``submission_key``.
    """
    if round_number == 1 and not split:
        return submission_key
    caps = f"{limits.max_requests}:{limits.max_bytes}:{limits.max_embedding_inputs}"
    parts = (submission_key, caps, str(round_number), str(shard))
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:48]


def stop_reason(state: JobState, *, max_rounds: int, now: float) -> str | None:
    """Why a job whose current round has ended runs no further round, or ``None`` when it may.

    A cancelled batch ends the job (someone decided to stop); a failed batch too (its lines would be
    refused again unchanged, and its ``errors.data`` say why). Then the round budget and the deadline. A
    round whose lines all succeeded has nothing to resubmit, which is known without reading a file.
    """
    current = state.current
    if not current.ended:
        raise ValueError(f"Round {current.number} has not ended: its lines have no verdicts yet.")
    if current.with_status(BatchStatus.FAILED):
        return "failed"
    if current.with_status(BatchStatus.CANCELLED):
        return "cancelled"
    if current.all_succeeded:
        return "nothing_to_resubmit"
    if current.number >= max_rounds:
        return "max_rounds"
    if now >= state.end_time:
        return "timeout"
    if current.outcome is not None and current.outcome.retry == 0:
        return "nothing_to_resubmit"
    return None


@dataclass(frozen=True)
class Ending:
    """How a finished job ended, when it did not simply complete: the reason (a ``termination_reason``
    of :func:`~.exceptions.ending_error`) and the batch to name."""

    reason: str
    batch: BatchSnapshot


def ending(state: JobState, *, wait_reason: str | None = None) -> Ending | None:
    """Why a finished job did not complete, or ``None``; then :func:`partial_failure` applies.

    :param wait_reason: how the last wait ended when it did not end with the round (``timeout``,
        ``polling_error``): the round's first unfinished batch is named then.
    """
    current = state.current
    if wait_reason in ("timeout", "polling_error"):
        unfinished = [b.batch for b in current.batches if not b.batch.is_terminal]
        named = unfinished or [b.batch for b in current.batches] or [b.batch for b in state.batches()]
        return Ending(
            wait_reason, named[0] if named else BatchSnapshot(batch_id="(none submitted)", status="")
        )
    for status in (BatchStatus.FAILED, BatchStatus.CANCELLED):
        if matching := current.with_status(status):
            return Ending(str(status), matching[0])
    expired = current.with_status(BatchStatus.EXPIRED)
    if expired and (current.outcome is None or current.outcome.retry):
        return Ending(str(BatchStatus.EXPIRED), expired[0])  # its unrun lines had no round left
    return None


def partial_failure(state: JobState, max_failed_fraction: float, *, tolerated: Iterable[str] = ()) -> bool:
    """Whether more of the job's lines failed for good than the task accepts.

    :param tolerated: reasons whose lines do not count as failed here (``invalid_output`` when the task
        accepts replies that miss their schema); they stay failed in the rows and the counts.
    """
    totals = state.totals()
    reasons = state.failed_by_reason()
    excused = sum(reasons.get(reason, 0) for reason in tolerated)
    counts = {"total": totals["total"], "failed": totals["failed"] + totals["pending"] - excused}
    return classify_completion(counts, max_failed_fraction) == "too_many_failed_lines"


def sum_usage(usages: Sequence[Mapping[str, Any] | None]) -> dict[str, Any] | None:
    """Token usage summed across batches, nested details included (``input_tokens_details``...)."""
    total: dict[str, Any] = {}
    for usage in usages:
        for name, value in (usage or {}).items():
            if isinstance(value, Mapping):
                total[name] = sum_usage([total.get(name), value])
            elif isinstance(value, int | float) and not isinstance(value, bool):
                total[name] = total.get(name, 0) + value
    return total or None


def job_status(state: JobState, wait_reason: str | None = None) -> str:
    """One word for the job: ``in_progress`` while its round runs (a task that does not wait),
    ``completed`` when it ended without an :func:`ending`, else that ending's reason."""
    if wait_reason is None and not state.current.ended:
        return "in_progress"
    ended = ending(state, wait_reason=wait_reason)
    return "completed" if ended is None else ended.reason


def job_manifest(
    state: JobState,
    *,
    max_rounds: int,
    wait_reason: str | None = None,
    landed: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The job's XCom result: totals, then each round's batches (ids, statuses, counts, files), then
    where the merged results landed. Its size grows with the number of batches, never with lines."""
    batches = list(state.batches())
    return {
        "status": job_status(state, wait_reason),
        "batch_ids": [b.batch.batch_id for b in batches],
        "request_counts": state.totals(),
        "usage": sum_usage([b.batch.usage for b in batches]),
        "shards": state.rounds[0].planned or len(state.rounds[0].batches),
        "max_rounds": max_rounds,
        "rounds": [
            {
                "round": job_round.number,
                "requests": job_round.requests,
                "outcome": outcome.to_dict() if (outcome := job_round.known_outcome) is not None else None,
                "batches": [
                    {
                        "shard": b.shard,
                        "requests": b.lines,
                        "batch_id": b.batch.batch_id,
                        "status": b.batch.status,
                        "request_counts": b.batch.request_counts,
                        "input_file_id": b.batch.input_file_id,
                        "output_file_id": b.batch.output_file_id,
                        "error_file_id": b.batch.error_file_id,
                    }
                    for b in job_round.batches
                ],
            }
            for job_round in state.rounds
        ],
        **(landed or {}),
    }
