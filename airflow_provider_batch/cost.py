"""What a job costs: the estimate before anything is uploaded, the cap on it, and the actual cost after.

The estimate comes from the validation pass itself: the shard splitter counts every request's tokens with
the offline tokenizer (:class:`~airflow_provider_batch.tokens.TokenTally`) while it checks the line, so a
job's cost is known before its first byte leaves the worker, and ``max_cost`` can refuse it then. The
actual cost comes from each batch's ``usage`` (cached input at the cached price, reasoning tokens once, as
output), summed across shards and rounds. Both are priced at the shipped table
(:mod:`~airflow_provider_batch.pricing`), with the connection's ``prices`` and then the task's on top, for
negotiated prices, Azure deployments and compatible servers.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

from airflow_provider_batch.exceptions import OpenAIBatchConfigError
from airflow_provider_batch.pricing import (
    Cost,
    CostEstimate,
    PriceTable,
    PricingError,
    UnpricedModelError,
    default_table,
    format_usd,
    sum_costs,
)
from airflow_provider_batch.status import BatchSnapshot
from airflow_provider_batch.tokens import ModelTokens, TokenTally

log = logging.getLogger(__name__)

EXACT_COUNT_BYTES = 32 * 2**20
"""Inputs up to this size have every request's tokens counted; larger ones one line in
:data:`SAMPLE_EVERY`, extrapolated by size (within 0.1 % on the benchmark's files), so that counting keeps
up with validation (``benchmarks/token_counting.py``)."""
SAMPLE_EVERY = 50


class OpenAIBatchCostLimitExceeded(OpenAIBatchConfigError):
    """The job's estimated cost is above ``max_cost`` (or cannot be priced): nothing was uploaded."""


def token_tally(endpoint: str, input_bytes: int | None) -> TokenTally:
    """The tally for a validation pass over an input of ``input_bytes`` (exact for small inputs)."""
    exact = input_bytes is not None and input_bytes <= EXACT_COUNT_BYTES
    return TokenTally(endpoint, sample_every=1 if exact else SAMPLE_EVERY)


def price_table(*overrides: Mapping[str, Any] | None) -> PriceTable:
    """The shipped table with each set of overrides applied in turn (the connection's, then the task's).

    :raises OpenAIBatchConfigError: naming the model and the field of a bad price (not retried: a retry
        would meet the same setting).
    """
    table = default_table()
    for prices in overrides:
        if prices:
            try:
                table = table.with_overrides(prices)
            except PricingError as error:
                raise OpenAIBatchConfigError(f"prices: {error}") from None
    return table


def estimate(tokens: Mapping[str | None, ModelTokens], table: PriceTable) -> CostEstimate | None:
    """The cost of requests counted per model, at ``table``'s batch prices (``None`` for none).

    :raises UnpricedModelError: for a model without a price.
    """
    total: CostEstimate | None = None
    for model, counted in tokens.items():
        one = table.estimate_cost(
            model, counted.input, counted.max_output, uncapped_requests=counted.uncapped
        )
        total = one if total is None else total + one
    return total


def checked_estimate(
    tokens: Mapping[str | None, ModelTokens],
    table: PriceTable,
    *,
    max_cost: float | None,
    allow_unpriced: bool,
) -> CostEstimate | None:
    """Estimate, log, and apply ``max_cost`` before anything is uploaded.

    :return: the estimate, or ``None`` when a model has no price and that is allowed.
    :raises OpenAIBatchCostLimitExceeded: when the estimate's bounded part is above ``max_cost``, or a model
        has no price while ``max_cost`` is set and ``allow_unpriced`` is not.
    """
    try:
        result = estimate(tokens, table)
    except UnpricedModelError as error:
        if max_cost is not None and not allow_unpriced:
            raise OpenAIBatchCostLimitExceeded(
                f"{error}. Nothing was uploaded or submitted: max_cost={max_cost} cannot be checked."
            ) from None
        log.warning("No cost estimate: %s", error)
        return None
    if result is None:
        return None
    log.info("Before upload: %s", result.describe())
    if max_cost is not None and result.exceeds(max_cost):
        raise OpenAIBatchCostLimitExceeded(
            f"The estimated cost, {format_usd(result.bounded_total)}, is above max_cost ="
            f" {format_usd(Decimal(str(max_cost)))}: nothing was uploaded or submitted. {result.describe()}."
            " Raise max_cost, cap the output (max_completion_tokens, max_tokens or max_output_tokens),"
            " or send fewer requests."
        )
    return result


def actual(batches: Iterable[BatchSnapshot], table: PriceTable) -> Cost | None:
    """What the batches cost, from their ``usage``; ``None`` when none reports usage or a model has no
    price (logged: the batches have run, so a missing price is no reason to fail the task)."""
    costs = []
    for batch in batches:
        if not batch.usage:
            continue
        try:
            costs.append(table.actual_cost(batch.model, batch.usage))
        except UnpricedModelError as error:
            log.warning(
                "No actual cost for batch %s: model %r has no price (give prices=...)",
                batch.batch_id,
                error.model,
            )
            return None
        except ValueError as error:
            log.warning("No actual cost for batch %s: %s", batch.batch_id, error)
            return None
    return sum_costs(costs)


def cost_fields(estimated: Mapping[str, Any] | None, spent: Cost | None) -> dict[str, Any]:
    """The manifest's cost keys: ``cost_estimate`` (before upload) and ``cost`` (from usage)."""
    return {"cost_estimate": estimated, "cost": spent.to_dict() if spent is not None else None}
