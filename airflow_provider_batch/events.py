"""The trigger event payload: versioned, allow-listed, built in one place and checked on resume.

An event crosses processes and versions: it is written by whatever provider version the
triggerer runs and read by whatever version the worker runs, possibly after an upgrade. So the
payload is plain JSON, carries a ``schema_version``, and :func:`validate_event` rejects what it
cannot trust (``None``, a newer schema, an unknown status, no ``batch_id``) while ignoring
unknown extra keys, so that adding a field later stays compatible.

A job's round of several batches ends in one event too (:func:`build_round_event`): the same
envelope, with every batch's state in ``batches`` and the reason ``round_ended``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from airflow_provider_batch.exceptions import OpenAIBatchTriggerEventError
from airflow_provider_batch.status import BatchSnapshot, Decision

EVENT_SCHEMA_VERSION = 2
"""2: the batch's state is one nested object, :meth:`BatchSnapshot.to_dict` (1 had a few of its
fields flat, the batch status as ``openai_status``; still read)."""
EVENT_STATUSES = ("success", "failed", "expired", "cancelled", "timeout", "error")
REASON_TO_STATUS = {
    "completed": "success",
    "failed": "failed",
    "expired": "expired",
    "cancelled": "cancelled",
    "timeout": "timeout",
    "polling_error": "error",
    "round_ended": "success",
    "room": "success",
}
"""``round_ended``: every batch of a job's round reached a terminal state (each says which)."""
ROOM_WAIT_ID = "none-in-flight"
"""The ``batch_id`` of a wait for room that watched no batch (nothing of the model was in flight)."""
MAX_EVENT_ERRORS = 20
"""``errors.data`` entries an event carries: a failed batch may list thousands of bad lines, and
the event is stored in the metadata database."""


def build_event(batch_id: str, decision: Decision, snapshot: BatchSnapshot | None) -> dict[str, Any]:
    """The payload for a finished wait; ``snapshot`` is the last good observation, if any."""
    if not decision.done or decision.reason is None:
        raise ValueError("an event is only built for a decision that ends the wait")
    batch = None
    if snapshot is not None:
        batch = snapshot.to_dict()
        batch["errors"] = batch["errors"][:MAX_EVENT_ERRORS]
    return {
        "schema_version": EVENT_SCHEMA_VERSION,
        "status": REASON_TO_STATUS[decision.reason],
        "termination_reason": decision.reason,
        "batch_id": batch_id,
        "message": decision.message,
        "batch": batch,
    }


def build_round_event(
    decision: Decision, batch_ids: Sequence[str], snapshots: Mapping[str, BatchSnapshot]
) -> dict[str, Any]:
    """The payload for a finished wait on a round of batches: every batch's last observation, in
    ``batch_ids`` order (only its id when the wait never saw it). ``batch_id`` names the first batch
    so that the envelope stays the single-batch one."""
    if not decision.done or decision.reason is None:
        raise ValueError("an event is only built for a decision that ends the wait")
    batches = []
    for batch_id in batch_ids:
        snapshot = snapshots.get(batch_id)
        batch = snapshot.to_dict() if snapshot is not None else {"batch_id": batch_id}
        if batch.get("errors"):
            batch["errors"] = batch["errors"][:MAX_EVENT_ERRORS]
        batches.append(batch)
    return {
        "schema_version": EVENT_SCHEMA_VERSION,
        "status": REASON_TO_STATUS[decision.reason],
        "termination_reason": decision.reason,
        "batch_id": batch_ids[0] if batch_ids else ROOM_WAIT_ID,
        "message": decision.message,
        "batch": None,
        "batches": batches,
    }


def snapshots_from_event(event: dict[str, Any]) -> list[BatchSnapshot]:
    """Every batch a round event carries, in the round's order (the one batch of a single-batch event)."""
    if "batches" in event:
        return [BatchSnapshot.from_dict({"status": "", **batch}) for batch in event["batches"]]
    return [snapshot_from_event(event)]


def snapshot_from_event(event: dict[str, Any]) -> BatchSnapshot:
    """The last observation an event carries (only the id when the wait never saw the batch)."""
    if event["schema_version"] == 1:
        return BatchSnapshot.from_dict({**event, "status": event.get("openai_status")})
    return BatchSnapshot.from_dict(event.get("batch") or {"batch_id": event["batch_id"]})


def validate_event(event: Any) -> dict[str, Any]:
    """Return ``event`` if this version can act on it, else raise ``OpenAIBatchTriggerEventError``."""
    if not isinstance(event, dict):
        raise OpenAIBatchTriggerEventError(f"Expected a trigger event dict, got {type(event).__name__}.")
    version = event.get("schema_version")
    if not isinstance(version, int) or version < 1 or version > EVENT_SCHEMA_VERSION:
        raise OpenAIBatchTriggerEventError(
            f"Unsupported trigger event schema_version {version!r} (this worker reads up to"
            f" {EVENT_SCHEMA_VERSION}); upgrade the provider on the workers."
        )
    if event.get("status") not in EVENT_STATUSES:
        raise OpenAIBatchTriggerEventError(f"Unknown trigger event status {event.get('status')!r}.")
    if event.get("termination_reason") not in REASON_TO_STATUS:
        raise OpenAIBatchTriggerEventError(
            f"Unknown trigger event termination_reason {event.get('termination_reason')!r}."
        )
    if not isinstance(event.get("batch_id"), str) or not event["batch_id"]:
        raise OpenAIBatchTriggerEventError("The trigger event has no batch_id.")
    if version >= 2 and not isinstance(event.get("batch"), dict | None):
        raise OpenAIBatchTriggerEventError("The trigger event's batch is not an object.")
    batches = event.get("batches")
    if batches is not None and not (
        isinstance(batches, list) and all(isinstance(b, dict) and b.get("batch_id") for b in batches)
    ):
        raise OpenAIBatchTriggerEventError("The trigger event's batches are not a list of batch objects.")
    if not isinstance(event.get("job"), dict | None):
        raise OpenAIBatchTriggerEventError("The trigger event's job is not an object.")
    return event
