"""The enqueued-token budget: how many input tokens of one model may be in flight at once, for every
task that uses a connection, on every worker.

OpenAI counts, per organization and model, the input tokens of the batches that are ``validating``,
``in_progress`` or ``finalizing``; a batch over the limit is accepted and then fails in ``validating``
with ``token_limit_exceeded`` (Azure's "fail fast" regions refuse the create). No API returns the room
left, and workers are distributed, so no file or process may hold the count. The source of truth is
the API itself: every batch the operator creates carries its estimated input tokens and model in its
metadata (:func:`tag`), and the room is what the listing of in-flight batches leaves under the budget
(:func:`enqueued`). Two workers reading the listing at the same moment may both submit; the API's own
refusal then catches the excess, and a refused batch is submitted again once room frees up, under the
same idempotency key: nothing is paid twice, and no task retry is spent.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from airflow_provider_batch.status import BatchSnapshot, BatchStatus

TOKENS_KEY = "airflow_enqueued_tokens"
"""Metadata key of a batch's estimated input tokens and model, ``"<tokens>:<model>"``."""
IN_FLIGHT = frozenset({BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS, BatchStatus.FINALIZING})
"""The statuses whose input tokens count against the limit."""
TOKEN_LIMIT_CODE = "token_limit_exceeded"
ROOM_RECHECK = 300.0
"""Seconds a job waiting for room looks at the budget again at the latest, even when none of the
batches it watches has ended (room also frees up in batches it does not watch)."""


def recheck_delay(poll_interval: float, max_poll_interval: float, draw: float) -> float:
    """Seconds until a job waiting for room looks again at the latest: :data:`ROOM_RECHECK` or the
    task's ``max_poll_interval``, whichever is shorter, spread over its second half by ``draw`` (a
    number in [0, 1)) so that the jobs of a busy model do not all look, and submit, at the same moment;
    never sooner than ``poll_interval``, the first look of any wait (a trigger that fires within seconds
    of its deferral meets a known Airflow scheduler race, apache/airflow#67287)."""
    return max(poll_interval, min(ROOM_RECHECK, max_poll_interval) * (0.5 + draw / 2))


MAX_LONELY_REFUSALS = 5
"""Refusals in a row for the token limit, each seen with nothing of the model in flight, before a job
gives up (it waits :func:`recheck_delay` between them). Batches of other runs may start and end between
two looks, but a shard refused again and again with nothing to wait for is larger than the
organization's limit, or the limit is held by something the listing does not show."""
LOOKBACK = 3 * 24 * 3600.0
"""How far back the listing is read for batches in flight: past the 24 h window and its finalizing."""


Budget = int | Mapping[str, int]
"""``max_enqueued_tokens``: one limit for every model, or a limit per model (others unlimited)."""


def tag(tokens: int, model: str | None) -> str:
    """The metadata value a batch carries: its estimated input tokens and its model."""
    return f"{tokens}:{model or ''}"


def read_tag(metadata: Mapping[str, str] | None) -> tuple[int, str] | None:
    """A batch's ``(tokens, model)`` from its metadata, or ``None`` for a batch without a valid tag."""
    value = (metadata or {}).get(TOKENS_KEY)
    tokens, _, model = (value or "").partition(":")
    return (int(tokens), model) if tokens.isdigit() else None


def limit_for(budget: Budget | None, model: str | None) -> int | None:
    """The limit on ``model``'s enqueued tokens, or ``None`` for none."""
    if budget is None or isinstance(budget, int):
        return budget
    return budget.get(model or "")


def check_budget(budget: object, where: str) -> Budget | None:
    """``budget`` if it is a valid ``max_enqueued_tokens``, else a ``ValueError`` naming ``where``."""
    if budget is None:
        return None
    if isinstance(budget, int) and not isinstance(budget, bool) and budget > 0:
        return budget
    if isinstance(budget, Mapping) and all(
        isinstance(model, str) and isinstance(limit, int) and not isinstance(limit, bool) and limit > 0
        for model, limit in budget.items()
    ):
        return dict(budget)
    raise ValueError(
        f"{where}: max_enqueued_tokens must be a positive whole number of tokens, or an object of them"
        f' per model ({{"gpt-4o-mini": 2000000}}); got {budget!r}'
    )


@dataclass(frozen=True)
class Enqueued:
    """What the listing shows in flight for one model."""

    tokens: int
    """Input tokens of the tagged batches in flight."""
    batch_ids: tuple[str, ...]
    """Every batch in flight for the model (tagged or not): the ones whose end frees room."""
    untagged: int
    """Batches in flight whose tokens are unknown (not created by this provider): not counted."""


def enqueued(batches: Iterable[BatchSnapshot], model: str | None) -> Enqueued:
    """The input tokens in flight for ``model``: a tagged batch counts under its tag's model, another
    batch under the model the API reports (its tokens unknown)."""
    tokens, batch_ids, untagged = 0, [], 0
    for batch in batches:
        if batch.known_status not in IN_FLIGHT:
            continue
        tagged = read_tag(batch.metadata)
        if (tagged[1] if tagged else batch.model) != model:
            continue
        batch_ids.append(batch.batch_id)
        if tagged:
            tokens += tagged[0]
        else:
            untagged += 1
    return Enqueued(tokens, tuple(batch_ids), untagged)


def held_room_when_refused(
    batches: Iterable[BatchSnapshot], refused: BatchSnapshot, model: str | None
) -> bool:
    """Whether another batch of ``model`` held enqueued tokens when ``refused`` was refused for the token
    limit (its ``failed_at``): created by then, not ended before, and not refused itself.

    This, and not what is in flight when the job looks again, tells a refusal caused by other batches
    (room was taken; it frees up) from one of a shard too large for the organization's limit on its own:
    a job looks again only after its poll interval, by which time the batches that took the room may
    all have ended, and a herd of jobs refused together would each take the other's refusal for its own
    shard's size.
    """
    moment = refused.failed_at or refused.created_at
    if moment is None:
        return False
    for batch in batches:
        if batch.batch_id == refused.batch_id or refused_for_tokens(batch) or batch.created_at is None:
            continue
        tagged = read_tag(batch.metadata)
        if (tagged[1] if tagged else batch.model) != model or batch.created_at > moment:
            continue
        ends = [t for t in (batch.completed_at, batch.failed_at, batch.expired_at, batch.cancelled_at) if t]
        if not ends or min(ends) >= moment:
            return True
    return False


def refused_for_tokens(batch: BatchSnapshot) -> bool:
    """A batch that failed because the model's enqueued tokens were over the limit: worth submitting
    again when room frees up (OpenAI did not run it, nor bill it)."""
    return batch.known_status == BatchStatus.FAILED and any(
        error.get("code") == TOKEN_LIMIT_CODE for error in batch.errors
    )
