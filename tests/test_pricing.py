"""Prices and costs: the shipped table, which entry prices a model, overrides, estimates before
upload and actual costs from ``usage``. Plain values in, plain values out."""

from __future__ import annotations

import json
import pickle
from datetime import date
from decimal import Decimal
from importlib import resources
from typing import Any

import pytest

from airflow_provider_batch.pricing import (
    PRICE_FIELDS,
    Cost,
    PriceTable,
    PricingError,
    UnpricedModelError,
    actual_cost,
    default_table,
    estimate_cost,
    format_usd,
    price_for,
    sum_costs,
)

REFERENCE_MODELS = {
    # standard USD per 1M tokens: input, cached input, output (shared/reference/cost-and-quota.md)
    "gpt-4o": ("2.50", "1.25", "10.00"),
    "gpt-4o-mini": ("0.15", "0.075", "0.60"),
    "gpt-4.1": ("2.00", "0.50", "8.00"),
    "gpt-4.1-mini": ("0.40", "0.10", "1.60"),
    "gpt-4.1-nano": ("0.10", "0.025", "0.40"),
    "o3": ("2.00", "0.50", "8.00"),
    "o4-mini": ("1.10", "0.275", "4.40"),
    "gpt-5": ("1.25", "0.125", "10.00"),
    "gpt-5-mini": ("0.25", "0.025", "2.00"),
    "gpt-5-nano": ("0.05", "0.005", "0.40"),
    "text-embedding-3-small": ("0.02", "0.02", "0"),
    "text-embedding-3-large": ("0.13", "0.13", "0"),
    "text-embedding-ada-002": ("0.10", "0.10", "0"),
    "omni-moderation-latest": ("0", "0", "0"),
}

USAGE = {
    # A reasoning model's batch: 600 of the input tokens missed the cache, 400 hit it; 300 of the 500
    # output tokens were reasoning.
    "input_tokens": 1000,
    "input_tokens_details": {"cached_tokens": 400},
    "output_tokens": 500,
    "output_tokens_details": {"reasoning_tokens": 300},
    "total_tokens": 1500,
}


def shipped() -> dict[str, Any]:
    text = resources.files("airflow_provider_batch").joinpath("prices.json").read_text("utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


def test_the_shipped_table_loads_once_and_says_when_and_where_from() -> None:
    table = default_table()
    assert default_table() is table
    assert table.version == "1"
    assert table.taken_on == date(2025, 8, 7)
    assert "openai.com/api/pricing" in table.source
    assert table.batch_multiplier == Decimal("0.5")
    assert table.describe() == "price table version 1 (taken on 2025-08-07)"


def test_the_shipped_table_holds_every_reference_model_with_every_price() -> None:
    data = shipped()
    assert 0 < data["batch_multiplier"] <= 1
    assert set(data["models"]) == set(REFERENCE_MODELS)
    for model, values in data["models"].items():
        assert set(values) == set(PRICE_FIELDS), model
        assert all(isinstance(value, int | float) and value >= 0 for value in values.values()), model
        assert values["cached_input"] <= values["input"], model
    table = default_table()
    for model, (standard_input, cached, output) in REFERENCE_MODELS.items():
        price = table.price_for(model)
        assert price is not None
        assert (price.model, price.source) == (model, "table")
        assert price.standard_input_per_1m == Decimal(standard_input)
        assert price.standard_cached_input_per_1m == Decimal(cached)
        assert price.standard_output_per_1m == Decimal(output)
        assert price.batch_input_per_1m == Decimal(standard_input) / 2
        assert price.batch_output_per_1m == Decimal(output) / 2


@pytest.mark.parametrize(
    ("model", "priced_as"),
    [
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("gpt-4.1-2025-04-14", "gpt-4.1"),
        ("gpt-4.1-nano-2025-04-14", "gpt-4.1-nano"),
        ("o3-2025-04-16", "o3"),
        ("o4-mini-2025-04-16", "o4-mini"),
        ("gpt-5-2025-08-07", "gpt-5"),
        ("gpt-5-mini-2025-08-07", "gpt-5-mini"),
        ("omni-moderation-2024-09-26", "omni-moderation-latest"),  # an alias of the table
    ],
)
def test_a_dated_snapshot_is_priced_as_its_family(model: str, priced_as: str) -> None:
    price = price_for(model)
    assert price is not None
    assert price.model == priced_as


@pytest.mark.parametrize(
    "model",
    [
        "gpt-4o-audio-preview",  # gpt-4o followed by something that is not a date
        "gpt-4o-2024-08",  # not a whole date
        "gpt-4o-2024-08-06-extra",
        "gpt-4o20240806",
        "gpt-4",
        "gpt-4o-mini-tts",
        "ft:gpt-4o-mini-2024-07-18:org::abc",  # fine-tuned models are priced apart
        "GPT-4O",
        "gpt-6",
        "",
        None,
    ],
)
def test_no_loose_prefix_and_no_guess(model: str | None) -> None:
    assert price_for(model) is None


def test_gpt_4o_never_prices_gpt_4o_mini() -> None:
    assert (price := price_for("gpt-4o-mini")) is not None
    assert price.model == "gpt-4o-mini"
    assert price.standard_input_per_1m == Decimal("0.15")
    # Without gpt-4o-mini in the table, its names stay unpriced rather than fall back to gpt-4o.
    data = shipped()
    del data["models"]["gpt-4o-mini"]
    table = PriceTable.from_dict(data)
    assert table.price_for("gpt-4o-mini") is None
    assert table.price_for("gpt-4o-mini-2024-07-18") is None
    assert (gpt_4o := table.price_for("gpt-4o-2024-08-06")) is not None
    assert gpt_4o.model == "gpt-4o"


def test_a_dated_entry_of_its_own_wins_over_its_family() -> None:
    data = shipped()
    data["models"]["gpt-4o-2024-05-13"] = {"input": 5, "cached_input": 5, "output": 15}
    table = PriceTable.from_dict(data)
    assert (older := table.price_for("gpt-4o-2024-05-13")) is not None
    assert older.model == "gpt-4o-2024-05-13"
    assert (newer := table.price_for("gpt-4o-2024-08-06")) is not None
    assert newer.model == "gpt-4o"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"batch_multiplier": 0}, "'batch_multiplier' must be above 0 and at most 1"),
        ({"batch_multiplier": 1.5}, "'batch_multiplier' must be above 0 and at most 1"),
        ({"taken_on": "August 2025"}, "'taken_on' must be a YYYY-MM-DD date"),
        ({"version": ""}, "'version' must be a non-empty string"),
        ({"currency": "EUR"}, "'currency' must be 'USD'"),
        ({"models": {}}, "'models' must be a non-empty object"),
        ({"extra": 1}, "unknown field(s) extra"),
        ({"models": {"m": {"input": 1, "output": 2}}}, "model 'm' lacks cached_input"),
        ({"models": {"m": {"input": 1, "cached_input": 1, "output": -2}}}, "model 'm' field 'output'"),
        ({"models": {"m": {"input": 1, "cached_input": 2, "output": 2}}}, "'cached_input' (2) is above"),
        (
            {"models": {"m": {"input": True, "cached_input": 0, "output": 0}}},
            "field 'input' must be a number",
        ),
        ({"aliases": {"x": "nothing"}}, "'x' → 'nothing', which has no price"),
        ({"aliases": {"gpt-4o": "gpt-4.1"}}, "'gpt-4o' has prices of its own"),
    ],
)
def test_an_invalid_table_is_refused_with_the_field_named(change: dict[str, Any], message: str) -> None:
    with pytest.raises(PricingError, match="price table") as raised:
        PriceTable.from_dict({**shipped(), **change})
    assert message in str(raised.value)


def test_a_missing_table_field_is_named() -> None:
    data = shipped()
    del data["source"]
    with pytest.raises(PricingError, match="field 'source' is missing"):
        PriceTable.from_dict(data)


def test_overrides_add_and_replace_standard_prices_and_take_the_table_discount() -> None:
    table = default_table().with_overrides(
        {
            "gpt-4o": {"input": 2, "cached_input": 1, "output": 8},  # negotiated
            "my-llama": {"input": "0.20", "output": 0.8},  # cached input: billed as input
            "azure-east-gpt4o": {"input": 2.5, "cached_input": 1.25, "output": 10, "batch_multiplier": 1},
        }
    )
    assert default_table().prices["gpt-4o"].standard_input_per_1m == Decimal("2.50")  # unchanged
    gpt_4o = table.price_for("gpt-4o-2024-08-06")  # an override prices the snapshots too
    assert gpt_4o is not None
    assert (gpt_4o.source, gpt_4o.batch_input_per_1m, gpt_4o.batch_output_per_1m) == (
        "override",
        Decimal(1),
        Decimal(4),
    )
    llama = table.price_for("my-llama")
    assert llama is not None
    assert llama.standard_cached_input_per_1m == llama.standard_input_per_1m == Decimal("0.20")
    assert llama.batch_multiplier == Decimal("0.5")
    azure = table.price_for("azure-east-gpt4o")
    assert azure is not None
    assert azure.batch_input_per_1m == Decimal("2.5")  # given as already batch prices
    assert table.version == "1"
    assert table.price_for("gpt-4o-mini") == default_table().price_for("gpt-4o-mini")


def test_aliases_price_a_deployment_as_a_known_model() -> None:
    table = default_table().with_overrides(aliases={"prod-mini": "gpt-4o-mini-2024-07-18"})
    price = table.price_for("prod-mini")
    assert price is not None
    assert price.model == "gpt-4o-mini"
    assert actual_cost("gpt-4o-mini", USAGE).total == table.actual_cost("prod-mini", USAGE).total


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"m": {"input": 1}}, "price overrides: model 'm' lacks output"),
        ({"m": {"input": "cheap", "output": 1}}, "model 'm' field 'input' must be a number; got 'cheap'"),
        ({"m": {"input": -1, "output": 1}}, "model 'm' field 'input' must be a finite number of at least 0"),
        ({"m": {"input": float("nan"), "output": 1}}, "model 'm' field 'input' must be a finite number"),
        ({"m": {"input": float("inf"), "output": 1}}, "model 'm' field 'input' must be a finite number"),
        ({"m": {"input": None, "output": 1}}, "model 'm' field 'input' must be a number; got None"),
        ({"m": {"input": 1, "output": 1, "inptu": 2}}, "model 'm' has unknown field(s) inptu"),
        ({"m": {"input": 1, "output": 1, "batch_multiplier": 0}}, "field 'batch_multiplier' must be above 0"),
        ({"m": {"input": 1, "cached_input": 3, "output": 1}}, "model 'm' field 'cached_input' (3) is above"),
        ({"m": [1, 2, 3]}, "the prices of model 'm' must be an object"),
        ({" m": {"input": 1, "output": 1}}, "a model name must be a non-empty string"),
    ],
)
def test_invalid_overrides_name_the_model_and_the_field(overrides: Any, message: str) -> None:
    with pytest.raises(PricingError) as raised:
        default_table().with_overrides(overrides)
    assert message in str(raised.value)


def test_invalid_aliases_are_refused() -> None:
    with pytest.raises(PricingError, match="'dep' → 'gpt-9', which has no price in price table version 1"):
        default_table().with_overrides(aliases={"dep": "gpt-9"})
    with pytest.raises(PricingError, match="must be an object keyed by model"):
        default_table().with_overrides([("m", {})])  # type: ignore[arg-type]


def test_estimate_with_every_output_capped_has_an_upper_bound() -> None:
    estimate = estimate_cost("gpt-4o-mini", 2_000_000, 500_000)
    # batch prices: 0.075 per 1M input, 0.30 per 1M output
    assert estimate.input == Decimal("0.15")
    assert estimate.output_bound == Decimal("0.15")
    assert estimate.bounded_total == estimate.upper_bound == Decimal("0.30")
    assert estimate.exceeds(0.29)
    assert not estimate.exceeds("0.30")
    assert estimate.to_dict() == {
        "currency": "USD",
        "input": 0.15,
        "output_bound": 0.15,
        "bounded_total": 0.3,
        "upper_bound": 0.3,
        "output_bounded": True,
        "uncapped_requests": 0,
        "tokens": {"input": 2_000_000, "max_output": 500_000},
        "prices": {
            "table_version": "1",
            "taken_on": "2025-08-07",
            "models": {
                "gpt-4o-mini": {
                    "priced_as": "gpt-4o-mini",
                    "source": "table",
                    "batch_multiplier": 0.5,
                    "standard_per_1m": {"input": 0.15, "cached_input": 0.075, "output": 0.6},
                    "batch_per_1m": {"input": 0.075, "cached_input": 0.0375, "output": 0.3},
                }
            },
        },
    }
    assert json.loads(json.dumps(estimate.to_dict())) == estimate.to_dict()
    assert estimate.describe() == (
        "estimated cost $0.30: input $0.15 (2,000,000 tokens), output at most $0.15 (500,000 tokens); "
        "batch prices of gpt-4o-mini, price table version 1 (taken on 2025-08-07)"
    )


def test_estimate_with_uncapped_requests_has_no_upper_bound_but_a_bounded_part() -> None:
    estimate = estimate_cost("gpt-5", 1_000_000, 100_000, uncapped_requests=3)
    assert estimate.input == Decimal("0.625")
    assert estimate.output_bound == Decimal("0.5")
    assert estimate.bounded_total == Decimal("1.125")
    assert estimate.upper_bound is None
    assert estimate.exceeds(1)  # max_cost compares the bounded part
    assert estimate.to_dict()["output_bounded"] is False
    assert estimate.to_dict()["upper_bound"] is None
    assert "plus 3 request(s) without an output cap, not bounded" in estimate.describe()


def test_estimate_of_a_single_uncapped_request() -> None:
    estimate = estimate_cost("gpt-4.1", 1_000, None)
    assert estimate.output_bound == 0
    assert estimate.upper_bound is None
    assert estimate.bounded_total == Decimal("0.001")
    assert "plus output without a cap, not bounded" in estimate.describe()


def test_estimates_add_up() -> None:
    total = estimate_cost("gpt-4o-mini", 1_000_000, 0) + estimate_cost("gpt-4o-mini-2024-07-18", 0, 1_000_000)
    assert total.bounded_total == Decimal("0.375")
    assert total.upper_bound == Decimal("0.375")
    assert set(total.prices) == {"gpt-4o-mini", "gpt-4o-mini-2024-07-18"}
    assert (total + estimate_cost("gpt-4o-mini", 0, None)).upper_bound is None


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ((-1, 0), "input_tokens must be a whole number"),
        ((1, -1), "max_output_tokens must be a whole number"),
        ((1.5, 0), "input_tokens must be a whole number"),
    ],
)
def test_estimate_refuses_impossible_counts(arguments: tuple[Any, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        estimate_cost("gpt-4o", *arguments)


def test_actual_cost_bills_cached_tokens_at_the_cached_price_and_reasoning_once() -> None:
    cost = actual_cost("o4-mini-2025-04-16", USAGE)
    # o4-mini batch prices per 1M: input 0.55, cached 0.1375, output 2.20
    assert cost.input == Decimal("600") * Decimal("0.55") / 1_000_000
    assert cost.cached_input == Decimal("400") * Decimal("0.1375") / 1_000_000
    assert cost.output == Decimal("500") * Decimal("2.20") / 1_000_000  # reasoning inside, not added
    assert cost.total == Decimal("0.001485")
    assert (cost.input_tokens, cost.cached_tokens, cost.output_tokens, cost.reasoning_tokens) == (
        1000,
        400,
        500,
        300,
    )
    data = cost.to_dict()
    assert {key: data[key] for key in ("currency", "input", "cached_input", "output", "total")} == {
        "currency": "USD",
        "input": 0.00033,
        "cached_input": 0.000055,
        "output": 0.0011,
        "total": 0.001485,
    }
    assert data["tokens"] == {"input": 1000, "cached_input": 400, "output": 500, "reasoning": 300}
    assert data["prices"]["table_version"] == "1"
    assert data["prices"]["models"]["o4-mini-2025-04-16"]["priced_as"] == "o4-mini"
    assert json.loads(json.dumps(data)) == data
    assert cost.describe() == (
        "actual cost $0.0015: input $0.00033 (600 tokens), cached input $0.000055 (400 tokens), "
        "output $0.0011 (500 tokens, 300 of them reasoning); batch prices of o4-mini-2025-04-16 as "
        "o4-mini, price table version 1 (taken on 2025-08-07)"
    )


def test_actual_cost_of_a_large_realistic_batch() -> None:
    usage = {
        "input_tokens": 41_250_000,
        "input_tokens_details": {"cached_tokens": 12_000_000},
        "output_tokens": 8_400_000,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 49_650_000,
    }
    cost = actual_cost("gpt-4.1-mini-2025-04-14", usage)
    # 29.25M at 0.20 + 12M at 0.05 + 8.4M at 0.80
    assert cost.total == Decimal("5.85") + Decimal("0.6") + Decimal("6.72")
    assert format_usd(cost.total) == "$13.17"


def test_actual_cost_reads_an_output_lines_chat_usage() -> None:
    chat = {
        "prompt_tokens": 1000,
        "prompt_tokens_details": {"cached_tokens": 400},
        "completion_tokens": 500,
        "completion_tokens_details": {"reasoning_tokens": 300},
        "total_tokens": 1500,
    }
    assert actual_cost("o4-mini", chat) == actual_cost("o4-mini", USAGE)


def test_embeddings_bill_input_only_and_moderations_are_free() -> None:
    embeddings = actual_cost(
        "text-embedding-3-small", {"prompt_tokens": 5_000_000, "total_tokens": 5_000_000}
    )
    assert embeddings.total == embeddings.input == Decimal("0.05")
    moderation = actual_cost("omni-moderation-latest", USAGE)
    assert moderation.total == 0
    assert estimate_cost("omni-moderation-2024-09-26", 10**9, 0).upper_bound == 0


def test_costs_sum_across_shards_and_rounds() -> None:
    shards = [actual_cost("gpt-4o-mini-2024-07-18", USAGE) for _ in range(3)]
    retried = actual_cost("gpt-4o-mini-2024-07-18", {"input_tokens": 100, "output_tokens": 10})
    total = sum_costs([*shards, retried])
    assert total is not None
    assert total.input_tokens == 3100
    assert total.cached_tokens == 1200
    assert total.reasoning_tokens == 900
    assert total.total == sum((cost.total for cost in [*shards, retried]), Decimal(0))
    assert list(total.prices) == ["gpt-4o-mini-2024-07-18"]
    assert sum_costs([]) is None


def test_costs_of_different_models_keep_each_price() -> None:
    total = actual_cost("gpt-4o", USAGE) + actual_cost("gpt-4o-mini", USAGE)
    assert isinstance(total, Cost)
    assert set(total.to_dict()["prices"]["models"]) == {"gpt-4o", "gpt-4o-mini"}


def test_costs_priced_differently_do_not_add_up() -> None:
    negotiated = default_table().with_overrides({"gpt-4o": {"input": 1, "output": 1}})
    with pytest.raises(ValueError, match="priced differently for model 'gpt-4o'"):
        actual_cost("gpt-4o", USAGE) + negotiated.actual_cost("gpt-4o", USAGE)
    other = PriceTable.from_dict({**shipped(), "version": "2"})
    with pytest.raises(ValueError, match=r"price table version 1 .* and price table version 2"):
        actual_cost("gpt-4o", USAGE) + other.actual_cost("gpt-4o", USAGE)


def test_an_overridden_price_says_so() -> None:
    table = default_table().with_overrides({"gpt-4o": {"input": 2, "cached_input": 1, "output": 8}})
    cost = table.actual_cost("gpt-4o", USAGE)
    assert cost.to_dict()["prices"]["models"]["gpt-4o"]["source"] == "override"
    assert "batch prices of gpt-4o (overridden)" in cost.describe()


@pytest.mark.parametrize(
    ("usage", "message"),
    [
        ({"input_tokens": -1}, "usage field 'input_tokens' must be a whole number"),
        ({"input_tokens": "12"}, "usage field 'input_tokens' must be a whole number"),
        ({"input_tokens": 1, "input_tokens_details": 5}, "'input_tokens_details' must be an object"),
        ({"input_tokens": 1, "input_tokens_details": {"cached_tokens": 2}}, r"cached_tokens \(2\) exceed"),
        ({"output_tokens": 1, "output_tokens_details": {"reasoning_tokens": 2}}, r"reasoning_tokens \(2\)"),
    ],
)
def test_a_malformed_usage_is_refused(usage: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        actual_cost("gpt-4o", usage)


def test_missing_counts_are_zero() -> None:
    assert actual_cost("gpt-4o", {}).total == 0


@pytest.mark.parametrize("model", ["gpt-6", "my-azure-deployment", None])
def test_an_unpriced_model_raises_a_typed_error_that_says_what_to_give(model: str | None) -> None:
    with pytest.raises(UnpricedModelError) as raised:
        estimate_cost(model, 1, 1)
    error = raised.value
    assert (error.model, error.table_version, error.taken_on) == (model, "1", date(2025, 8, 7))
    assert "has no price in price table version 1 (taken on 2025-08-07)" in str(error)
    assert "or allow_unpriced=True" in str(error)
    with pytest.raises(UnpricedModelError):
        actual_cost(model, USAGE)
    assert price_for(model) is None


def test_the_unpriced_message() -> None:
    with pytest.raises(UnpricedModelError) as raised:
        default_table().require("gpt-6")
    assert str(raised.value) == (
        "model 'gpt-6' has no price in price table version 1 (taken on 2025-08-07); give its prices "
        "(prices={'gpt-6': {'input': ..., 'cached_input': ..., 'output': ...}}, standard USD per 1M "
        "tokens) or allow_unpriced=True"
    )
    copy = pickle.loads(pickle.dumps(raised.value))
    assert (str(copy), copy.model, copy.taken_on) == (str(raised.value), "gpt-6", date(2025, 8, 7))
    custom = UnpricedModelError("gpt-6", default_table(), hint="set the connection's extra 'prices'")
    assert str(custom).endswith("(taken on 2025-08-07); set the connection's extra 'prices'")


@pytest.mark.parametrize(
    ("amount", "shown"),
    [
        (Decimal(0), "$0.00"),
        (Decimal("1234.567"), "$1,234.57"),
        (Decimal("0.01"), "$0.01"),
        (Decimal("0.000421"), "$0.00042"),
        (Decimal("0.0099"), "$0.0099"),
    ],
)
def test_format_usd_rounds_for_display_only(amount: Decimal, shown: str) -> None:
    assert format_usd(amount) == shown
