"""``OpenAIBatchOperator``: run an input of any size as OpenAI batches (retry-safe), wait for them
without a worker, resubmit what did not finish, and hand a small manifest downstream.

The operator only orchestrates; each concept has its module: how an input is cut into batches
(:mod:`~airflow_provider_batch.shards`), what a job and its rounds are (:mod:`~airflow_provider_batch.job`),
which lines a round resubmits and how rounds merge (:mod:`~airflow_provider_batch.rounds`), who a
submission is (:mod:`~airflow_provider_batch.identity`), what the end of a wait means for the task
(:mod:`~airflow_provider_batch.completion`), and where results land (:mod:`~airflow_provider_batch.landing`).
The order of :meth:`OpenAIBatchOperator.execute` is the design:

0. **Check** what can be checked before paying: the endpoint, the caps, ``output_path``.
1. **Validate and cut** the input in one streaming pass (nothing is uploaded when a line is wrong): an
   input within one batch's limits stays one batch, exactly as a single-batch task always ran; a larger
   one becomes shards. An ``input_file_id`` is never cut.
2. **Identify** every batch: the task instance's identity (never the try number), a fingerprint of the
   input, and for a shard the caps, the round and the shard (:func:`~.job.shard_key`).
3. **Re-attach** to what an earlier try already created under those keys (the task state store, then
   the keys in the batches' metadata, one listing for a whole round); create only what is missing.
   A batch that ``failed`` (which OpenAI does not bill) is submitted anew.
4. **Wait**: defer to one trigger per round (:class:`~.triggers.batch.OpenAIBatchTrigger` for one batch,
   :class:`~.triggers.job.OpenAIBatchJobTrigger` for several), or poll on the worker. The job's state
   travels with the deferral, so the resuming worker, a fresh process, knows every round.
5. **Close the round**: unless every line succeeded, read the round's files back from the API, classify
   each line, and when lines worth another attempt remain (an expired batch's unrun lines, 429 and 5xx
   failures) and rounds and time are left, submit them, and only them, as the next round; back to 4.
6. **Finish**: land the results (one row per input line, in input order, across rounds), push the
   manifest, and raise the typed error of the ending. A job of one batch in one round finishes through
   :func:`~airflow_provider_batch.completion.finish_batch`, with the manifest it always had.

Cancellation policy: on our own timeout (``cancel_on_timeout``) and on a user kill
(``cancel_on_kill``: ``on_kill`` on the worker, the trigger's ``on_kill`` while deferred); never on a
polling error, because the batches' state is then unknown and a cancel cannot be undone. A cancelled
batch ends the job: no further round.
"""

from __future__ import annotations

import os
import random
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import conf  # airflow.sdk.conf only exists from 3.2
from airflow.sdk import Asset, BaseOperator, ObjectStoragePath

from airflow_provider_batch import budget, cost
from airflow_provider_batch import requests as batch_requests
from airflow_provider_batch.answers import INVALID_OUTPUT, UserSchema
from airflow_provider_batch.completion import (
    XCOM_BATCH_ID,
    XCOM_RETURN_KEY,
    cancel_quietly,
    finish_batch,
    manifest,
)
from airflow_provider_batch.events import build_event, build_round_event, snapshots_from_event, validate_event
from airflow_provider_batch.exceptions import (
    OpenAIBatchAPIError,
    OpenAIBatchConfigError,
    OpenAIBatchPartialFailure,
    ending_error,
)
from airflow_provider_batch.hooks.batch import IDEMPOTENCY_KEY, OpenAIBatchHook, snapshot_of
from airflow_provider_batch.identity import (
    AIRFLOW_METADATA_KEYS,
    STATE_BATCH_ID,
    STATE_SUBMISSION_KEY,
    identity_tags,
    input_fingerprint,
    remember,
    run_started,
    submission_key,
)
from airflow_provider_batch.job import (
    JobBatch,
    JobRound,
    JobState,
    RoundOutcome,
    ending,
    job_manifest,
    partial_failure,
    shard_key,
    stop_reason,
)
from airflow_provider_batch.landing import as_path, check_landing_arguments, land_job_results, require_landing
from airflow_provider_batch.limits import MAX_METADATA_PAIRS, endpoint_problem
from airflow_provider_batch.lineage import report_input, report_output
from airflow_provider_batch.links.batch import BATCH_URL_XCOM_KEY, OpenAIBatchLink, reserve_batch_url
from airflow_provider_batch.parquet import output_format_for
from airflow_provider_batch.pricing import PriceTable
from airflow_provider_batch.results import RowOptions
from airflow_provider_batch.round_files import fetch_round
from airflow_provider_batch.rounds import close_round
from airflow_provider_batch.shards import ShardLimits, ShardPlan, split_batch_file
from airflow_provider_batch.status import (
    BatchSnapshot,
    BatchStatus,
    Decision,
    PollSchedule,
    decide,
    format_utc,
)
from airflow_provider_batch.triggers.batch import OpenAIBatchTrigger
from airflow_provider_batch.triggers.job import OpenAIBatchJobTrigger

if TYPE_CHECKING:
    from airflow.sdk import Context

DEFER_METHOD_NAME = "execute_complete"
USER_METADATA_PAIRS = MAX_METADATA_PAIRS - len(AIRFLOW_METADATA_KEYS) - 2  # the key and the tokens
ROUND_TIMEOUT = timedelta(hours=25)
"""The 24 h window plus finalizing time, so OpenAI's own ``expired`` (with partial output) normally
arrives before our timeout does; the default timeout is this much per allowed round."""
DEFAULT_MAX_ROUNDS = 3
"""Rounds a job runs by default: the first, and two for lines that expired or failed transiently."""
XCOM_BATCH_IDS = "batch_ids"
WAIT_ENDINGS = ("timeout", "polling_error")
"""A wait's endings that leave the round unfinished: the job ends with them."""


class OpenAIBatchOperator(BaseOperator):
    """Run requests as OpenAI batches, as many as the input needs, and return a manifest of them.

    Give exactly one input:

    :param input_file_id: a file already uploaded with purpose ``batch`` (run as one batch, never cut).
    :param input_path: a JSONL file, local or any ``ObjectStoragePath`` (``s3://``, ``gs://``...);
        validated in one streaming pass, cut into shards if it exceeds one batch, uploaded streamed.
    :param requests: records ``{"custom_id": ..., "body": {...}}`` (for example an upstream XCom);
        written to a JSONL file, then as ``input_path``. The field is templated so that an XCom can
        feed it: records written literally in the DAG file are rendered by Jinja, so a prompt
        containing ``{{`` must come from an upstream task or be wrapped in ``literal()``.

    :param endpoint: the batch endpoint, e.g. ``/v1/chat/completions`` or ``/v1/embeddings``.
    :param conn_id: an ``openai_batch`` (or ``openai``) connection.
    :param completion_window: only ``24h`` is accepted by OpenAI today.
    :param metadata: up to 10 pairs of your own; the operator adds the task identity, the idempotency
        key and the estimated input tokens (16 pairs in all).
    :param input_expires_after: seconds after which an input file uploaded by the operator expires
        (keep it longer than the job when ``max_rounds`` > 1: closing a round reads the input back).
    :param output_expires_after: seconds after which the output and error files expire.
    :param max_requests_per_batch: cut the input into batches of at most this many requests
        (default and maximum: OpenAI's 50,000).
    :param max_bytes_per_batch: and of at most this many bytes (default and maximum: 200 MiB).
    :param max_cost: refuse the job, before anything is uploaded, when its estimated cost in USD is above
        this (input tokens counted offline, plus the output caps of the requests that set one; a model
        without a price refuses too unless ``allow_unpriced``). The estimate and, at the end, the actual
        cost from the batches' ``usage`` are logged and in the manifest (``cost_estimate``, ``cost``).
    :param prices: price overrides, ``{model: {"input": ..., "cached_input": ..., "output": ...}}`` in
        standard USD per 1M tokens (the batch multiplier, 0.5, is applied; give ``"batch_multiplier": 1``
        for prices that are batch prices already), on top of the shipped table and the connection's
        extra ``prices``: negotiated prices, Azure deployment names, compatible servers.
    :param allow_unpriced: with ``max_cost``, run a model that has no price instead of refusing it.
    :param max_enqueued_tokens: the most input tokens of one model in flight at once (batches
        validating, in progress or finalizing), for every task that uses the connection, on every
        worker: a number for every model, or ``{model: tokens}``. Default: the connection's extra
        ``max_enqueued_tokens``, else none. A shard that does not fit waits, deferred, until room frees
        up; a shard larger than the budget is refused before upload. Whatever the budget, a batch the
        API refuses with ``token_limit_exceeded`` is submitted again once room frees up, before the
        deadline, without a task retry.
    :param max_rounds: rounds of batches a job may run. After a round, the lines without a success that
        another attempt can fix (lines an expired batch never ran, 429 and 5xx failures) are submitted
        again, and only those; a success or a 4xx failure is never paid for twice. ``1`` runs the input
        once, as single-batch releases did. Default 3.
    :param deferrable: wait in the triggerer instead of a worker slot (default from
        ``[operators] default_deferrable``).
    :param wait_for_completion: ``False`` returns right after submitting the first round (wait for a
        single batch with ``OpenAIBatchSensor``; no further round runs then).
    :param poll_interval: seconds before the second status call; intervals grow 1.5-fold to
        ``max_poll_interval``. Both modes use the same schedule.
    :param timeout: how long the whole job may take, counted from its first batch's creation (so a
        re-attached retry keeps the original deadline, and later rounds share it). Defaults to 25 hours
        per round: ``max_rounds`` x 25 h.
    :param cancel_on_timeout: cancel the unfinished batches when ``timeout`` passes.
    :param cancel_on_kill: cancel the unfinished batches when the task is killed (marked failed/success
        or cleared); while deferred this needs Airflow 3.3+.
    :param max_failed_fraction: the share of the job's lines that may fail for good before the task
        fails (0.0: any failed line fails the task; 1.0: never). A job whose lines all failed fails the
        task unless this is 1.0.
    :param output_path: land the results joined back into input order (one row per request, across
        batches and rounds: its outcome, its answer in flat columns, its usage) at this local path or
        ``ObjectStoragePath``; the manifest then carries ``results_uri`` and a summary. Without it,
        results stay in OpenAI's files (ids in the manifest).
    :param output_format: ``jsonl`` (every row with its raw response body) or ``parquet`` (typed columns
        for ETL, no body; needs the ``parquet`` extra). Default: ``parquet`` when ``output_path`` ends in
        ``.parquet``, else ``jsonl``.
    :param output_schema: a JSON Schema (dict) or a Pydantic model class every reply must match, checked
        instead of the schema each request asks for itself (``response_format`` / ``text.format``, which
        are checked without it). A reply that does not parse or match is ``invalid_output``: a failed row
        with the reason, resubmitted by the next round (the one retry that is paid again), counted failed
        in the summary.
    :param include_request: each landed row also carries its request's body (``request``).
    :param fail_on_invalid_output: whether ``invalid_output`` rows count towards ``max_failed_fraction``
        (default: they do, since a row the next task cannot parse is a failure of the pipeline even when
        the API call succeeded; set ``False`` to land them, marked, and let the task succeed).
    :param max_consecutive_failures: failed status calls tolerated in a row while waiting.
    """

    template_fields: Sequence[str] = (
        "input_file_id",
        "input_path",
        "requests",
        "endpoint",
        "metadata",
        "conn_id",
        "output_path",
    )
    template_fields_renderers = {"metadata": "json", "requests": "json"}
    operator_extra_links = (OpenAIBatchLink(),)
    ui_color = "#d4f1e8"

    def __init__(
        self,
        *,
        endpoint: str,
        input_file_id: str | None = None,
        input_path: str | os.PathLike[str] | ObjectStoragePath | None = None,
        requests: Iterable[dict[str, Any]] | None = None,
        conn_id: str = OpenAIBatchHook.default_conn_name,
        completion_window: str = "24h",
        metadata: dict[str, str] | None = None,
        input_expires_after: int | None = None,
        output_expires_after: int | None = None,
        max_requests_per_batch: int | None = None,
        max_bytes_per_batch: int | None = None,
        max_rounds: int = DEFAULT_MAX_ROUNDS,
        max_cost: float | None = None,
        prices: dict[str, dict[str, Any]] | None = None,
        allow_unpriced: bool = False,
        max_enqueued_tokens: int | dict[str, int] | None = None,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        wait_for_completion: bool = True,
        poll_interval: float = 30.0,
        max_poll_interval: float = 300.0,
        timeout: timedelta | float | None = None,
        cancel_on_timeout: bool = True,
        cancel_on_kill: bool = True,
        max_failed_fraction: float = 0.0,
        output_path: str | os.PathLike[str] | ObjectStoragePath | None = None,
        output_format: str | None = None,
        output_schema: UserSchema | None = None,
        include_request: bool = False,
        fail_on_invalid_output: bool = True,
        max_consecutive_failures: int = 5,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        given = [
            name
            for name, value in (
                ("input_file_id", input_file_id),
                ("input_path", input_path),
                ("requests", requests),
            )
            if value is not None
        ]
        if len(given) != 1:
            raise ValueError(
                f"{self.task_id}: give exactly one of input_file_id, input_path or requests (got"
                f" {', '.join(given) or 'none'})"
            )
        if metadata and len(metadata) > USER_METADATA_PAIRS:
            raise ValueError(
                f"{self.task_id}: metadata may hold at most {USER_METADATA_PAIRS} pairs; the operator adds"
                f" {MAX_METADATA_PAIRS - USER_METADATA_PAIRS} of its own, {MAX_METADATA_PAIRS} in all"
            )
        if not 0.0 <= max_failed_fraction <= 1.0:
            raise ValueError(f"{self.task_id}: max_failed_fraction must be between 0 and 1")
        if isinstance(max_rounds, bool) or not isinstance(max_rounds, int) or max_rounds < 1:
            raise ValueError(
                f"{self.task_id}: max_rounds must be an integer of at least 1, got {max_rounds!r}"
            )
        try:
            ShardLimits.from_batch_caps(max_requests_per_batch, max_bytes_per_batch)
        except ValueError as exc:
            raise ValueError(f"{self.task_id}: {exc}") from None
        if max_cost is not None and (isinstance(max_cost, bool) or not max_cost >= 0):
            raise ValueError(
                f"{self.task_id}: max_cost must be a number of USD, at least 0; got {max_cost!r}"
            )
        if max_cost is not None and input_file_id is not None:
            raise ValueError(
                f"{self.task_id}: max_cost needs the requests (input_path or requests) to count their"
                " tokens; an input_file_id is not read before it is submitted"
            )
        cost.price_table(prices)  # a typo in a price fails the DAG's import, not a run
        budget.check_budget(max_enqueued_tokens, self.task_id)
        try:
            check_landing_arguments(output_format, output_schema)
        except ValueError as exc:
            raise ValueError(f"{self.task_id}: {exc}") from None
        if isinstance(endpoint, str) and "{{" not in endpoint and (problem := endpoint_problem(endpoint)):
            raise ValueError(f"{self.task_id}: {problem}")  # a literal typo fails the DAG's import
        self.endpoint = endpoint
        self.input_file_id = input_file_id
        self.input_path = input_path
        self.requests = requests
        self.conn_id = conn_id
        self.completion_window = completion_window
        self.metadata = metadata
        self.input_expires_after = input_expires_after
        self.output_expires_after = output_expires_after
        self.max_requests_per_batch = max_requests_per_batch
        self.max_bytes_per_batch = max_bytes_per_batch
        self.max_rounds = max_rounds
        self.max_cost = max_cost
        self.prices = prices
        self.allow_unpriced = allow_unpriced
        self.max_enqueued_tokens = max_enqueued_tokens
        self.deferrable = deferrable
        self.wait_for_completion = wait_for_completion
        self.poll_interval = poll_interval
        self.max_poll_interval = max(max_poll_interval, poll_interval)
        if timeout is None:
            timeout = ROUND_TIMEOUT * max_rounds
        self.timeout = timeout.total_seconds() if isinstance(timeout, timedelta) else float(timeout)
        self.cancel_on_timeout = cancel_on_timeout
        self.cancel_on_kill = cancel_on_kill
        self.max_failed_fraction = max_failed_fraction
        self.output_path = output_path
        self.output_format = output_format
        self.output_schema = output_schema
        self.include_request = include_request
        self.fail_on_invalid_output = fail_on_invalid_output
        self.max_consecutive_failures = max_consecutive_failures
        self.batch_id: str | None = None
        self.watched_batch_ids: list[str] = []
        """The batches this worker waits on (the synchronous wait): what ``on_kill`` cancels."""

    @property
    def hook(self) -> OpenAIBatchHook:
        if not hasattr(self, "_hook"):
            self._hook = OpenAIBatchHook(conn_id=self.conn_id)
        return self._hook

    @property
    def price_table(self) -> PriceTable:
        """The shipped prices, with the connection's extra ``prices`` and then the task's on top."""
        if not hasattr(self, "_price_table"):
            self._price_table = cost.price_table(self.hook.connection_extra("prices"), self.prices)
        return self._price_table

    @property
    def token_budget(self) -> budget.Budget | None:
        """The enqueued-token budget: the task's ``max_enqueued_tokens``, else the connection's (read
        once per task run, not once per round)."""
        if not hasattr(self, "_token_budget"):
            if self.max_enqueued_tokens is not None:
                self._token_budget = budget.check_budget(self.max_enqueued_tokens, self.task_id)
            else:
                try:
                    extra = self.hook.connection_extra("max_enqueued_tokens")
                    self._token_budget = budget.check_budget(extra, self.conn_id)
                except ValueError as error:
                    raise OpenAIBatchConfigError(f"connection {error}") from None
        return self._token_budget

    def _recent_batches(self) -> list[BatchSnapshot]:
        """The listing's batches of the last days, of every worker and run: what holds the model's room."""
        with self.hook.explaining("Reading the batches in flight"):
            return self.hook.recent_batches(created_after=time.time() - budget.LOOKBACK)

    def _in_flight(self, model: str | None) -> budget.Enqueued:
        """What the listing shows in flight for ``model``, on every worker and run."""
        return budget.enqueued(self._recent_batches(), model)

    @property
    def rows(self) -> RowOptions:
        """What the landed rows carry, and the schema every reply is checked against."""
        return RowOptions(output_schema=self.output_schema, include_request=self.include_request)

    @property
    def landing_format(self) -> str:
        """``jsonl`` or ``parquet``: the explicit ``output_format``, else by ``output_path``'s suffix."""
        return output_format_for(self.output_path or "", self.output_format)

    def _checks_replies(self, plan: ShardPlan | None) -> bool:
        """Whether a round's replies are checked against a structured output, so that only its files
        (not the API's counts) tell which lines succeeded."""
        return self.output_schema is not None or (plan is not None and plan.structured)

    def _tolerated(self) -> tuple[str, ...]:
        """Failure reasons that do not count towards ``max_failed_fraction``."""
        return () if self.fail_on_invalid_output else (INVALID_OUTPUT,)

    @property
    def limits(self) -> ShardLimits:
        return ShardLimits.from_batch_caps(self.max_requests_per_batch, self.max_bytes_per_batch)

    # execute -----------------------------------------------------------------------------------

    def execute(self, context: Context) -> dict[str, Any]:
        reserve_batch_url(context)
        if problem := endpoint_problem(self.endpoint):  # templated: known only now
            raise OpenAIBatchConfigError(f"{self.task_id}: {problem}")
        if self.output_path is not None:
            require_landing(self.output_path, self.output_format)
        prices = self.price_table  # a bad price in the connection's extra fails here, before anything is sent
        with tempfile.TemporaryDirectory(prefix="openai-batch-") as workdir:
            source = self._input_source(Path(workdir))
            key = submission_key(context, self.endpoint, input_fingerprint(source, self.input_file_id))
            plan = self._plan(source, Path(workdir)) if source is not None else None
            estimate = self._estimate(plan, prices) if plan is not None else None
            if plan is None or not (plan.split or budget.limit_for(self.token_budget, plan.model)):
                try:
                    state = replace(self._start_single(context, key, source, plan), cost_estimate=estimate)
                except OpenAIBatchAPIError as error:
                    if error.code != budget.TOKEN_LIMIT_CODE:
                        raise
                    # Refused at create (Azure's "fail fast"): nothing exists; wait for room, then submit.
                    self.log.info("The batch was refused for the enqueued-token limit; waiting for room")
                    waiting = JobRound(1, (), planned=1, checked=self._checks_replies(plan))
                    state = JobState(
                        key,
                        False,
                        time.time() + self.timeout,
                        (waiting,),
                        estimate,
                        plan.model if plan else None,
                    )
            else:  # several shards, or one under a budget: submitted as a job's round
                started = JobState(key, split=plan.split, end_time=0.0, cost_estimate=estimate)
                state = self._submit_round(context, started, 1, plan)
        return self._advance(context, state)

    def execute_complete(
        self, context: Context, event: dict[str, Any] | None = None, **_: Any
    ) -> dict[str, Any]:
        """Resume after a trigger: a fresh operator instance, so everything comes from the event, which
        carries the job's state (the event of a deferral by an earlier release carries one batch)."""
        event = validate_event(event)
        job = event.get("job")
        state = JobState.from_dict(job) if job else self._single_state(snapshots_from_event(event)[0])
        state = state.observed(snapshots_from_event(event))
        self.batch_id = event["batch_id"]
        return self._advance(context, state, wait_event=event)

    def on_kill(self) -> None:
        """Cancel the batches this worker waits on when the task is killed (best effort)."""
        if self.cancel_on_kill:
            for batch_id in self.watched_batch_ids or ([self.batch_id] if self.batch_id else []):
                cancel_quietly(self.hook, batch_id, self.log)

    # the job's loop --------------------------------------------------------------------------------

    def _advance(
        self, context: Context, state: JobState, wait_event: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Wait for the current round, close it, submit the next one, until the job ends; while the
        round misses shards (no room under the enqueued-token budget, or refused by the API for it),
        wait for room and submit them first."""
        while True:
            current = state.current
            if current.needs_submission and self.wait_for_completion:
                reason = wait_event["termination_reason"] if wait_event else None
                if reason in WAIT_ENDINGS:
                    return self._finish(context, state, wait_event)
                if time.time() >= state.end_time and not current.ended:
                    late = Decision(True, 0, "timeout", "The deadline passed before every shard had room.")
                    ids = [b.batch.batch_id for b in current.batches]
                    event = build_round_event(late, ids, {b.batch.batch_id: b.batch for b in current.batches})
                    return self._finish(context, state, event)
                if time.time() < state.end_time:
                    if reason != "room":
                        recent = self._recent_batches()
                        in_flight = budget.enqueued(recent, state.model)
                        # Refused with nothing to wait for now, and nothing else holding room then either.
                        lonely = (
                            current.complete
                            and not in_flight.batch_ids
                            and not any(
                                budget.held_room_when_refused(recent, job_batch.batch, state.model)
                                for job_batch in current.batches
                                if budget.refused_for_tokens(job_batch.batch)
                            )
                        )
                        if lonely and state.lonely_refusals + 1 >= budget.MAX_LONELY_REFUSALS:
                            self.log.warning(
                                "Refused for the enqueued-token limit %d times in a row with nothing else"
                                " of %s in flight: the shard does not fit the organization's limit",
                                state.lonely_refusals + 1,
                                state.model,
                            )
                            return self._finish(context, state, None)
                        if in_flight.batch_ids or lonely:
                            state = replace(state, lonely_refusals=state.lonely_refusals + 1 if lonely else 0)
                            wait_event = self._wait_for_room(state, in_flight)  # defers, or waits here
                            continue
                    state, wait_event = self._refill(context, state), None
                    continue
            if wait_event is not None and wait_event["termination_reason"] == "room":
                wait_event = None
            if wait_event is None and not state.current.ended:
                if not self.wait_for_completion:
                    return self._submitted(state)
                wait_event = self._wait(state)  # defers, or polls here
                state = state.observed(snapshots_from_event(wait_event))
                continue  # a batch refused for the token limit sends the job back to submitting
            if wait_event is not None and wait_event["termination_reason"] in WAIT_ENDINGS:
                return self._finish(context, state, wait_event)
            wait_event = None
            stop = stop_reason(state, max_rounds=self.max_rounds, now=time.time())
            # A job's totals need every round's outcome, the last one's too; a single batch that runs
            # no further round is reported from its own counts, as it always was.
            if stop is None or (state.current.known_outcome is None and not state.single_batch):
                with tempfile.TemporaryDirectory(prefix="openai-batch-round-") as workdir:
                    state, next_input = self._close_round(state, Path(workdir))
                    stop = stop_reason(state, max_rounds=self.max_rounds, now=time.time())
                    if stop is None:
                        plan = self._plan(next_input, Path(workdir))
                        state = self._submit_round(context, state, state.current.number + 1, plan)
                        continue
            self.log.info("The job runs no further round: %s", str(stop).replace("_", " "))
            return self._finish(context, state, None)

    def _start_single(self, context: Context, key: str, source: Any, plan: ShardPlan | None) -> JobState:
        """The first round of an input that fits one batch: the single-batch path, state store included."""
        batch = self._reattach(context, key) or self._create(context, source, key, self.input_file_id)
        self.batch_id = batch.batch_id
        remember(context, batch.batch_id, key)
        ti = context["ti"]
        ti.xcom_push(key=XCOM_BATCH_ID, value=batch.batch_id)
        ti.xcom_push(key=BATCH_URL_XCOM_KEY, value=self.hook.batch_url(batch.batch_id))
        state = self._single_state(batch, key, plan)
        if plan is not None:  # the request count is known from the validation pass
            only = replace(state.current.batches[0], requests=plan.requests)
            state = state.with_round(replace(state.current, batches=(only,)))
        return state

    def _single_state(
        self, batch: BatchSnapshot, key: str | None = None, plan: ShardPlan | None = None
    ) -> JobState:
        key = key or (batch.metadata or {}).get(IDEMPOTENCY_KEY, "")
        end_time = (batch.created_at or time.time()) + self.timeout
        only = JobRound(1, (JobBatch(1, None, key, batch),), checked=self._checks_replies(plan))
        return JobState(key, False, end_time, (only,))

    def _wait(self, state: JobState) -> dict[str, Any]:
        """Wait for the current round's unfinished batches: defer (this raises), or poll on the worker.
        Either way the wait ends in the same event payload."""
        unfinished = [b.batch for b in state.current.batches if not b.batch.is_terminal]
        ids = [batch.batch_id for batch in unfinished]
        schedule = PollSchedule(initial=self.poll_interval, maximum=self.max_poll_interval)
        created_after = min((batch.created_at or 0) for batch in unfinished) or None
        if self.deferrable:
            trigger: OpenAIBatchTrigger | OpenAIBatchJobTrigger
            common = self._trigger_arguments(state)
            if len(ids) == 1:
                trigger = OpenAIBatchTrigger(batch_id=ids[0], **common)
            else:
                trigger = OpenAIBatchJobTrigger(
                    batch_ids=ids, round_number=state.current.number, created_after=created_after, **common
                )
            self.log.info(trigger.deferral_message(self.hook.batch_url(ids[0])))
            self.defer(trigger=trigger, method_name=DEFER_METHOD_NAME, timeout=trigger.defer_timeout())
        self.watched_batch_ids = ids
        if len(ids) == 1:
            return self.hook.wait_for_batch(
                ids[0],
                end_time=state.end_time,
                schedule=schedule,
                max_consecutive_failures=self.max_consecutive_failures,
            )
        return self.hook.wait_for_batches(
            ids,
            end_time=state.end_time,
            schedule=schedule,
            max_consecutive_failures=self.max_consecutive_failures,
            round_number=state.current.number,
            created_after=created_after,
        )

    def _trigger_arguments(self, state: JobState) -> dict[str, Any]:
        """What every trigger of the job is given: plain JSON, a ``conn_id`` and never a key."""
        return {
            "conn_id": self.conn_id,
            "end_time": state.end_time,
            "poll_interval": self.poll_interval,
            "max_poll_interval": self.max_poll_interval,
            "max_consecutive_failures": self.max_consecutive_failures,
            "cancel_on_kill": self.cancel_on_kill,
            "job": state.to_dict(),
        }

    def _wait_for_room(self, state: JobState, in_flight: budget.Enqueued) -> dict[str, Any]:
        """Wait until a batch of the model in flight ends (room may have freed up under the enqueued
        tokens), or a while at most: defer (this raises), or wait on the worker. The ``room`` event
        sends the job back to submitting what is missing."""
        wake_at = min(
            time.time() + budget.recheck_delay(self.poll_interval, self.max_poll_interval, random.random()),
            state.end_time,
        )
        self.log.info(
            "Waiting for room under the enqueued tokens of %s: %s tokens in flight in %d batch(es) (%d of"
            " them of unknown size); looking again when one ends, or at %s",
            state.model,
            f"{in_flight.tokens:,}",
            len(in_flight.batch_ids),
            in_flight.untagged,
            format_utc(wake_at),
        )
        ids = list(in_flight.batch_ids)
        if self.deferrable:
            trigger = OpenAIBatchJobTrigger(
                batch_ids=ids,
                wake_at=wake_at,
                round_number=state.current.number,
                **self._trigger_arguments(state),
            )
            self.defer(trigger=trigger, method_name=DEFER_METHOD_NAME, timeout=trigger.defer_timeout())
        return self.hook.wait_for_batches(
            ids,
            end_time=state.end_time,
            schedule=PollSchedule(initial=self.poll_interval, maximum=self.max_poll_interval),
            max_consecutive_failures=self.max_consecutive_failures,
            round_number=state.current.number,
            wake_at=wake_at,
        )

    def _refill(self, context: Context, state: JobState) -> JobState:
        """Submit what the current round misses (no room before, or refused for the model's enqueued
        tokens): its shards are cut again, the same way, and :meth:`_submit_round` re-attaches what
        exists and creates the rest."""
        number = state.current.number
        with tempfile.TemporaryDirectory(prefix="openai-batch-refill-") as workdir:
            if number > 1:
                _, resubmit = self._close(state.rounds[-2], Path(workdir))
                plan = self._plan(resubmit, Path(workdir))
            elif (source := self._input_source(Path(workdir))) is not None:
                plan = self._plan(source, Path(workdir))
            else:  # an input_file_id: its one batch, created again
                try:
                    batch = self._create(context, None, state.submission_key, self.input_file_id)
                except OpenAIBatchAPIError as error:
                    if error.code != budget.TOKEN_LIMIT_CODE:
                        raise
                    return state  # refused at create again: still waiting for room
                only = JobBatch(1, None, state.submission_key, batch)
                return state.with_round(JobRound(1, (only,), checked=self._checks_replies(None)))
            return self._submit_round(context, state, number, plan)

    def _close_round(self, state: JobState, workdir: Path) -> tuple[JobState, Path]:
        """Classify the ended round's lines from its files, and write the lines to resubmit."""
        outcome, next_input = self._close(state.current, workdir)
        return state.with_round(replace(state.current, outcome=outcome)), next_input

    def _close(self, job_round: JobRound, workdir: Path) -> tuple[RoundOutcome, Path]:
        """A round's verdicts, from its files, and the file of its lines to resubmit."""
        self.log.info(
            "Round %d has ended; reading its results to find the lines to resubmit", job_round.number
        )
        next_input = workdir / f"resubmit-{job_round.number:03d}.jsonl"
        with self.hook.explaining(f"Reading the files of round {job_round.number}"):
            input_file, batches = fetch_round(self.hook, job_round, workdir)
        plan = close_round(
            round_number=job_round.number,
            input_file=input_file,
            batches=batches,
            next_input=next_input,
            options=self.rows,
        )
        outcome = RoundOutcome.from_plan(plan)
        self.log.info(
            "Round %d: %s succeeded, %s worth another attempt %s, %s failed for good %s",
            job_round.number,
            f"{outcome.succeeded:,}",
            f"{outcome.retry:,}",
            dict(outcome.retry_reasons),
            f"{outcome.final:,}",
            dict(outcome.final_reasons),
        )
        return outcome, next_input

    def _submit_round(self, context: Context, state: JobState, number: int, plan: ShardPlan) -> JobState:
        """Create the round's batches, one per shard, each once: those an earlier try created under the
        same keys (found in one listing) are re-attached, a failed one (not billed) is created anew.

        Under an enqueued-token budget, shards are created in order while the model's tokens in flight
        leave room; the round is then left incomplete (:attr:`~.job.JobRound.planned`), and the job waits
        for room and comes back here, where what exists is re-attached and the next shards created.
        """
        keys = [
            shard_key(state.submission_key, self.limits, number, s.index, split=state.split)
            for s in plan.shards
        ]
        limit = budget.limit_for(self.token_budget, plan.model)
        if limit is not None and (too_big := [s for s in plan.shards if s.input_tokens > limit]):
            raise OpenAIBatchConfigError(
                f"Shard {too_big[0].index} of round {number} holds about {too_big[0].input_tokens:,} input"
                f" tokens, more than max_enqueued_tokens={limit:,} for {plan.model}: it could never run."
                " Nothing more was submitted. Lower max_requests_per_batch or max_bytes_per_batch."
            )
        with self.hook.explaining(f"Looking for the batches of round {number} that an earlier try submitted"):
            found = self.hook.find_batches_by_metadata(
                IDEMPOTENCY_KEY, keys, created_after=run_started(context)
            )
        self.log.info("Round %d: %s requests in %d batch(es)", number, f"{plan.requests:,}", len(plan.shards))
        in_flight: int | None = None
        batches = []
        for shard, key in zip(plan.shards, keys, strict=True):
            existing = found.get(key)
            if existing is not None and existing.known_status != BatchStatus.FAILED:
                self.log.info(
                    "Round %d, shard %d: re-attaching to batch %s (%s) created by an earlier try",
                    number, shard.index, existing.batch_id, existing.status,
                )  # fmt: skip
                batches.append(JobBatch(shard.index, shard.requests, key, existing))
                continue
            if limit is not None:
                if in_flight is None:
                    in_flight = self._in_flight(plan.model).tokens
                if in_flight + shard.input_tokens > limit:
                    self.log.info(
                        "Round %d, shard %d: no room for its %s tokens (%s of %s tokens of %s in flight)",
                        number,
                        shard.index,
                        f"{shard.input_tokens:,}",
                        f"{in_flight:,}",
                        f"{limit:,}",
                        plan.model,
                    )
                    break
                in_flight += shard.input_tokens
            tokens = budget.tag(shard.input_tokens, plan.model) if plan.tokens else None
            try:
                batch = self._create(context, shard.path, key, None, tokens)
            except OpenAIBatchAPIError as error:
                if error.code != budget.TOKEN_LIMIT_CODE:
                    raise
                # Azure's "fail fast": refused at create, nothing created; the job waits for room.
                self.log.info("Round %d, shard %d: refused for the enqueued-token limit", number, shard.index)
                break
            self.log.info("Round %d, shard %d: batch %s created", number, shard.index, batch.batch_id)
            batches.append(JobBatch(shard.index, shard.requests, key, batch))
        planned = len(plan.shards) if len(batches) < len(plan.shards) else None
        job_round = JobRound(number, tuple(batches), planned=planned, checked=self._checks_replies(plan))
        if number == 1 and not state.rounds:
            created = [b.batch.created_at for b in batches if b.batch.created_at]
            state = replace(state, end_time=(min(created) if created else time.time()) + self.timeout)
        state = replace(state, model=plan.model).with_round(job_round)
        ti = context["ti"]
        ti.xcom_push(key=XCOM_BATCH_IDS, value=[b.batch.batch_id for b in state.batches()])
        if batches:
            ti.xcom_push(key=BATCH_URL_XCOM_KEY, value=self.hook.batch_url(batches[0].batch.batch_id))
        return state

    # steps ---------------------------------------------------------------------------------------

    def _input_source(self, workdir: Path) -> str | os.PathLike[str] | ObjectStoragePath | None:
        """The JSONL to upload (``None`` for an already uploaded ``input_file_id``)."""
        if self.requests is not None:
            target = workdir / "requests.jsonl"
            batch_requests.write_batch_file(self.requests, target, endpoint=self.endpoint)
            return target
        if self.input_path is not None:
            return as_path(self.input_path)
        return None

    def _plan(self, source: Any, workdir: Path) -> ShardPlan:
        """Validate the input and cut it into shards, counting its tokens, in one streaming pass.

        :raises OpenAIBatchInvalidInput: naming every bad line: nothing is uploaded, nothing billed.
        """
        plan = split_batch_file(
            source,
            workdir / "shards",
            endpoint=self.endpoint,
            limits=self.limits,
            tokens=cost.token_tally(self.endpoint, _size_of(source)),
        )
        if plan.split:
            self.log.info(
                "Validated %s requests (%s bytes); cut into %d batches of at most %s requests and %s bytes",
                f"{plan.requests:,}",
                f"{plan.bytes:,}",
                len(plan.shards),
                f"{self.limits.max_requests:,}",
                f"{self.limits.max_bytes:,}",
            )
        else:
            self.log.info("Validated %d requests (%d bytes); they fit one batch", plan.requests, plan.bytes)
        return plan

    def _estimate(self, plan: ShardPlan, prices: PriceTable) -> dict[str, Any] | None:
        """The cost estimate before upload, for the manifest; raises above ``max_cost``."""
        estimated = cost.checked_estimate(
            plan.tokens, prices, max_cost=self.max_cost, allow_unpriced=self.allow_unpriced
        )
        return estimated.to_dict() if estimated is not None else None

    def _reattach(self, context: Context, key: str) -> BatchSnapshot | None:
        """The batch an earlier try of this task created for the same input, if it is worth keeping."""
        store = context.get("task_state_store")
        stored_id = store.get(STATE_BATCH_ID) if store is not None else None
        snapshot = None
        if store is not None and isinstance(stored_id, str) and store.get(STATE_SUBMISSION_KEY) == key:
            observed = self.hook.poll_batch(stored_id)
            # A stored batch that is gone (deleted, another project) is no reason to fail every retry.
            snapshot = observed if isinstance(observed, BatchSnapshot) else None
        if snapshot is None:
            # The first call of a task: it also proves the connection's URL and key, read-only.
            with self.hook.explaining("Looking for a batch that an earlier try submitted"):
                found = self.hook.find_batch_by_metadata(
                    IDEMPOTENCY_KEY, key, created_after=run_started(context)
                )
            snapshot = snapshot_of(found) if found is not None else None
        if snapshot is None:
            return None
        if snapshot.known_status == BatchStatus.FAILED:
            self.log.info(
                "Batch %s of an earlier try failed (not billed); submitting a new one", snapshot.batch_id
            )
            return None
        self.log.info(
            "Re-attaching to batch %s (%s) created by an earlier try", snapshot.batch_id, snapshot.status
        )
        return snapshot

    def _create(
        self, context: Context, source: Any, key: str, input_file_id: str | None, tokens: str | None = None
    ) -> BatchSnapshot:
        """Upload ``source`` (a validated JSONL file) unless ``input_file_id`` is given, and create
        its batch under ``key`` (the hook never replays a create blindly)."""
        if source is not None:
            with self.hook.explaining(f"Uploading {_jsonl_name(source)}"):
                uploaded = self.hook.upload_file(
                    source, filename=_jsonl_name(source), expires_after_seconds=self.input_expires_after
                )
            input_file_id = uploaded.id
        with self.hook.explaining(f"Creating the batch on file {input_file_id}"):
            batch = self.hook.create_batch(
                str(input_file_id),
                self.endpoint,
                completion_window=self.completion_window,
                metadata={
                    **(self.metadata or {}),
                    **identity_tags(context),
                    **({budget.TOKENS_KEY: tokens} if tokens else {}),
                },
                output_expires_after_seconds=self.output_expires_after,
                idempotency_key=key,
            )
        return snapshot_of(batch)

    def _submitted(self, state: JobState) -> dict[str, Any]:
        """The manifest of a task that does not wait (``wait_for_completion=False``)."""
        self.log.info("Submitted; not waiting (wait_for_completion=False)")
        costs = cost.cost_fields(state.cost_estimate, None)
        if state.single_batch:
            return {**manifest(state.current.batches[0].batch), **costs}
        return {**job_manifest(state, max_rounds=self.max_rounds), **costs}

    # finishing ------------------------------------------------------------------------------------

    def _finish(self, context: Context, state: JobState, wait_event: dict[str, Any] | None) -> dict[str, Any]:
        wait_reason = wait_event["termination_reason"] if wait_event else None
        if wait_reason == "timeout" and self.cancel_on_timeout:
            for job_batch in state.current.batches:
                if not job_batch.batch.is_terminal:
                    cancel_quietly(self.hook, job_batch.batch.batch_id, self.log)
        # Lineage from the run that finishes the task: what a run before a deferral reported died with it.
        first_round = [job_batch.batch.input_file_id for job_batch in state.rounds[0].batches]
        report_input(self.hook, path=self.input_path, file_ids=[self.input_file_id, *first_round])
        if state.single_batch:
            batch = state.current.batches[0].batch
            self.batch_id = batch.batch_id
            event = wait_event if wait_event is not None else self._terminal_event(batch, state.end_time)
            outcome = state.current.outcome
            return finish_batch(
                context,
                event,
                hook=self.hook,
                max_failed_fraction=self.max_failed_fraction,
                output_path=self.output_path,
                output_format=self.landing_format,
                rows=self.rows,
                invalid_outputs=state.failed_by_reason().get(INVALID_OUTPUT, 0) if outcome else None,
                fail_on_invalid_output=self.fail_on_invalid_output,
                outlets=self.outlets,
                extra=self._costs(state),
            )
        return self._finish_job(context, state, wait_event)

    def _costs(self, state: JobState) -> dict[str, Any]:
        """The manifest's cost keys: the estimate made before upload, and the actual cost now. The
        batches have run: a price that cannot be read now only leaves the cost out, with a warning."""
        try:
            spent = cost.actual((b.batch for b in state.batches()), self.price_table)
        except Exception as error:  # the connection's prices cannot be read now: report, do not fail
            self.log.warning("No actual cost: %s", error)
            spent = None
        if spent is not None:
            self.log.info("After the job: %s", spent.describe())
        return cost.cost_fields(state.cost_estimate, spent)

    @staticmethod
    def _terminal_event(batch: BatchSnapshot, end_time: float) -> dict[str, Any]:
        decision = decide(batch, now=time.time(), end_time=end_time, failures=0, max_failures=1)
        return build_event(batch.batch_id, decision, batch)

    def _finish_job(
        self, context: Context, state: JobState, wait_event: dict[str, Any] | None
    ) -> dict[str, Any]:
        """Land the merged results, push the job's manifest, raise the error of its ending."""
        wait_reason = wait_event["termination_reason"] if wait_event else None
        landed = None
        if self.output_path is not None and state.current.ended:
            landed = land_job_results(
                self.hook, state, self.output_path, output_format=self.landing_format, rows=self.rows
            )
            report_output(self.hook, landed["results_uri"])
        result = job_manifest(state, max_rounds=self.max_rounds, wait_reason=wait_reason, landed=landed)
        result.update(self._costs(state))
        ti = context["ti"]
        ti.xcom_push(key=XCOM_BATCH_IDS, value=result["batch_ids"])
        ended = ending(state, wait_reason=wait_reason)
        too_many_failed = ended is None and partial_failure(
            state, self.max_failed_fraction, tolerated=self._tolerated()
        )
        if ended is not None or too_many_failed:
            # As for one batch: the manifest reaches downstream tasks that run anyway (all_done).
            ti.xcom_push(key=XCOM_RETURN_KEY, value=result)
        if ended is not None:
            detail = (wait_event.get("message") or "") if wait_event else ""
            raise ending_error(ended.reason, ended.batch, detail=detail, where=self.hook.server)
        if too_many_failed:
            totals = result["request_counts"]
            summary = landed["results_summary"] if landed else None
            raise OpenAIBatchPartialFailure(
                f"The job ran {totals['total']:,} lines in {len(state.rounds)} round(s) of batches, but"
                f" {totals['failed']:,} failed for good"
                f" (more than max_failed_fraction={self.max_failed_fraction}).",
                batch_id=state.rounds[0].batches[0].batch.batch_id,
                errors_by_code=summary["errors_by_code"] if summary else state.failed_by_reason(),
                failed_ids=summary["failed_ids"]["ids"] if summary else (),
                results_uri=landed["results_uri"] if landed else None,
            )
        for outlet in self.outlets:
            if isinstance(outlet, Asset):
                context["outlet_events"][outlet].extra.update({"batch_ids": result["batch_ids"]})
        return result


def _size_of(source: Any) -> int | None:
    """The input's size in bytes, or None when it cannot be known without reading it."""
    try:
        if isinstance(source, ObjectStoragePath):
            return int(source.stat()["size"])
        return os.path.getsize(source)
    except (OSError, KeyError, TypeError, ValueError):
        return None


def _jsonl_name(source: Any) -> str:
    name = Path(str(getattr(source, "name", source))).name
    return name if name.endswith(".jsonl") else f"{name}.jsonl"
