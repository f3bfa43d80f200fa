"""The trigger event payload: versioned, allow-listed, built in one place and checked on resume.

An event crosses processes and versions: it is written by whatever provider version the
triggerer runs and read by whatever version the worker runs, possibly after an upgrade. So the
payload is plain JSON, carries a ``schema_version``, and :func:`validate_event` rejects what it
cannot trust (``None``, a newer schema, an unknown status, no ``batch_id``) while ignoring
unknown extra keys, so that adding a field later stays compatible.
"""

from __future__ import annotations

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
}
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
    return event
