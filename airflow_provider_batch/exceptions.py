"""The provider's errors: one base class and one subclass per way a batch can end badly.

Callers catch :class:`OpenAIBatchError` for everything, or a subclass to treat one outcome
differently. :data:`REASON_TO_EXCEPTION` is the only table from a trigger event's
``termination_reason`` to an exception, so the operator and the sensor raise the same thing for
the same outcome. Messages carry the batch's ``errors.data`` (code, line, message), so the task
log says *why* a batch failed, not just which one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

# Through the compat layer: the exceptions moved into airflow.sdk after Airflow 3.1.
from airflow.providers.common.compat.sdk import AirflowException, AirflowFailException

if TYPE_CHECKING:
    from airflow_provider_batch.status import BatchSnapshot


class OpenAIBatchError(AirflowException):
    """Base class of every error this provider raises about a batch."""

    def __init__(self, message: str, *, batch_id: str | None = None) -> None:
        super().__init__(message)
        self.batch_id = batch_id


class OpenAIBatchFailed(OpenAIBatchError):
    """The batch ended ``failed``: usually validation (bad lines) or quota (``token_limit_exceeded``)."""

    def __init__(
        self, message: str, *, batch_id: str | None = None, errors: Sequence[dict[str, Any]] = ()
    ) -> None:
        super().__init__(_with_errors(message, errors), batch_id=batch_id)
        self.errors = list(errors)


class OpenAIBatchExpired(OpenAIBatchError):
    """The 24 h window closed first. Finished lines are in ``output_file_id`` and were landed."""

    def __init__(
        self, message: str, *, batch_id: str | None = None, output_file_id: str | None = None
    ) -> None:
        super().__init__(message, batch_id=batch_id)
        self.output_file_id = output_file_id


class OpenAIBatchCancelled(OpenAIBatchError):
    """Someone cancelled the batch: a decision, not a failure of the service."""


class OpenAIBatchTimeout(OpenAIBatchError):
    """Our own deadline passed while the batch was still running."""


class OpenAIBatchPartialFailure(OpenAIBatchError):
    """The batch completed, but more of its lines failed than ``max_failed_fraction`` allows.

    The message and the attributes say what failed and where to look, so that the first look at
    the task log is enough to decide between a fix and a rerun.

    :param errors_by_code: failed lines by error code (``rate_limit_exceeded``, ``http_400``...).
    :param failed_ids: the first failed ``custom_id`` values, in file order.
    :param results_uri: where the results were landed (``output_path``), if they were.
    :param error_file_id: OpenAI's error file.
    """

    SHOWN_IDS = 10

    def __init__(
        self,
        message: str,
        *,
        batch_id: str | None = None,
        errors_by_code: dict[str, int] | None = None,
        failed_ids: Sequence[str] = (),
        results_uri: str | None = None,
        error_file_id: str | None = None,
    ) -> None:
        self.errors_by_code = dict(errors_by_code or {})
        self.failed_ids = list(failed_ids)
        self.results_uri = results_uri
        self.error_file_id = error_file_id
        lines = [message]
        if self.errors_by_code:
            ranked = sorted(self.errors_by_code.items(), key=lambda item: (-item[1], item[0]))
            counted = ", ".join(f"{code} ({count:,})" for code, count in ranked)
            lines.append(f"Failed lines by error: {counted}")
        if self.failed_ids:
            shown = ", ".join(self.failed_ids[: self.SHOWN_IDS])
            lines.append(f"First failed custom_ids: {shown}")
        if results_uri:
            lines.append(f"Every request's outcome, in input order: {results_uri}")
        if error_file_id:
            lines.append(f"OpenAI's error file: {error_file_id}")
        super().__init__("\n".join(lines), batch_id=batch_id)


class OpenAIBatchPollingError(OpenAIBatchError):
    """The batch could not be observed (the API kept failing). Its state is unknown, so it was
    not cancelled."""


class OpenAIBatchInvalidInput(OpenAIBatchError, AirflowFailException, ValueError):
    """A batch input file or record breaks OpenAI's rules; raised before anything is uploaded or
    submitted, so nothing is billed. The task fails without retrying (an ``AirflowFailException``):
    the input is wrong and a retry cannot help.

    :param errors: the problems found, in line order (``requests.LineError``: line, field, message).
    :param unreported: how many more problems were found after ``errors`` reached its cap.
    """

    def __init__(self, errors: Sequence[Any], unreported: int = 0) -> None:
        self.errors = list(errors)
        self.unreported = unreported
        total = len(self.errors) + unreported
        lines = [f"invalid batch input, {total} error{'s' if total != 1 else ''}:"]
        lines += [f"  {error}" for error in self.errors]
        if unreported:
            lines.append(f"  and {unreported} more error{'s' if unreported != 1 else ''} not reported")
        super().__init__("\n".join(lines))

    def __reduce__(self) -> tuple[type[OpenAIBatchInvalidInput], tuple[list[Any], int]]:
        """Rebuild from the errors, not the message, when pickled (exceptions cross processes)."""
        return type(self), (self.errors, self.unreported)


class OpenAIBatchAPIError(OpenAIBatchError):
    """A call to the API failed for good: the retry policy gave up on a transient failure, or the
    server gave an answer that a retry cannot change. The message names the connection, its base
    URL (never the key), what was being done, and what to check.

    :param code: the server's error code, when it gave one (``token_limit_exceeded``...).
    """

    def __init__(self, message: str, *, batch_id: str | None = None, code: str | None = None) -> None:
        super().__init__(message, batch_id=batch_id)
        self.code = code


class OpenAIBatchConfigError(OpenAIBatchError, AirflowFailException, ValueError):
    """A setting cannot work (the endpoint, ``output_path``, the connection's key). Not retried: a
    retry would meet the same setting. The endpoint and ``output_path`` are checked before anything
    is uploaded or submitted, and the key is used first by a read-only look-up, so nothing is billed."""


class OpenAIBatchLandingError(OpenAIBatchError):
    """The batch ran, but its results could not be written to ``output_path``. They are safe in
    OpenAI's files, and a rerun re-attaches to the same batch instead of paying for a new one."""


class OpenAIBatchTriggerEventError(OpenAIBatchError):
    """A trigger event that this version cannot trust (missing, malformed or from the future)."""


REASON_TO_EXCEPTION: dict[str, type[OpenAIBatchError]] = {
    "failed": OpenAIBatchFailed,
    "expired": OpenAIBatchExpired,
    "cancelled": OpenAIBatchCancelled,
    "timeout": OpenAIBatchTimeout,
    "polling_error": OpenAIBatchPollingError,
}


def ending_error(reason: str, batch: BatchSnapshot, *, detail: str, where: str) -> OpenAIBatchError:
    """The error of a wait that ended without a completed batch, worded for the person reading the
    task log: what happened, how far the batch got, where its results are, what to do next.

    :param reason: the event's ``termination_reason`` (not ``completed``).
    :param batch: the batch's last observed state (only its id when it was never observed).
    :param detail: the wait's own account (the deadline, the last polling error).
    :param where: the connection and base URL the batch was followed on.
    """
    batch_id = batch.batch_id
    progress = f"{batch.lines_done:,} of {batch.lines_total:,} lines done"
    finished_lines = f"output file {batch.output_file_id}" if batch.output_file_id else "no output file"
    if reason == "failed":
        return OpenAIBatchFailed(
            f"Batch {batch_id} failed: the API rejected it before running it, so nothing was billed."
            " Fix what the errors below name, then run the task again.",
            batch_id=batch_id,
            errors=batch.errors,
        )
    if reason == "expired":
        return OpenAIBatchExpired(
            f"Batch {batch_id} expired: the 24 h completion window closed with {progress}. The finished"
            f" lines are billed and in {finished_lines} (and landed, with output_path); resubmit the rest.",
            batch_id=batch_id,
            output_file_id=batch.output_file_id,
        )
    if reason == "cancelled":
        return OpenAIBatchCancelled(
            f"Batch {batch_id} was cancelled with {progress}. The finished lines are billed and in"
            f" {finished_lines}.",
            batch_id=batch_id,
        )
    if reason == "timeout":
        state = f"it was {batch.status}" if batch.status else "it was never observed"
        message = f"Batch {batch_id} did not end within the task's timeout: {state}, with {progress}."
        return OpenAIBatchTimeout(f"{message} {detail}".strip(), batch_id=batch_id)
    return OpenAIBatchPollingError(
        f"Could not follow batch {batch_id} on {where}: {detail} Its state is unknown, so it was not"
        " cancelled. Check the batch id, and that the connection's key and base URL belong to the"
        " project that created it.",
        batch_id=batch_id,
    )


def _with_errors(message: str, errors: Sequence[dict[str, Any]], shown: int = 5) -> str:
    if not errors:
        return message
    lines = [message, "Errors reported by the API:"]
    for error in errors[:shown]:
        where = f"line {error['line']}: " if error.get("line") else ""
        param = f" (param {error['param']})" if error.get("param") else ""
        lines.append(f"  - {where}[{error.get('code')}] {error.get('message')}{param}")
    if len(errors) > shown:
        lines.append(f"  ... and {len(errors) - shown} more")
    return "\n".join(lines)
