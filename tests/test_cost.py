"""Cost before and after: the estimate from a validation pass, the cap, the actual cost from usage.

The rules with plain values first, then the operator against the emulator: a job above ``max_cost`` is
refused with nothing uploaded, and a job that runs reports its estimate next to its actual cost.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_batch import cost
from airflow_provider_batch.emulator.process import EmulatorProcess
from airflow_provider_batch.exceptions import OpenAIBatchConfigError
from airflow_provider_batch.operators.batch import OpenAIBatchOperator
from airflow_provider_batch.status import BatchSnapshot
from airflow_provider_batch.tokens import ModelTokens
from tests.batch_testing import CHAT, chat_record, make_context, quick_operator, route_count, use_emulator

CONN = "batch_cost"


# rules -------------------------------------------------------------------------------------------------


def test_small_inputs_are_counted_exactly_and_large_ones_sampled() -> None:
    assert cost.token_tally(CHAT, 1_000).sample_every == 1
    assert cost.token_tally(CHAT, cost.EXACT_COUNT_BYTES + 1).sample_every == cost.SAMPLE_EVERY
    assert cost.token_tally(CHAT, None).sample_every == cost.SAMPLE_EVERY


def test_the_estimate_adds_up_models_and_is_half_the_standard_price() -> None:
    table = cost.price_table()
    tokens = {
        "gpt-4o-mini": ModelTokens(requests=10, input=1_000_000, max_output=1_000_000),
        "gpt-4o": ModelTokens(requests=1, input=1_000_000, max_output=0, uncapped=1),
    }
    estimate = cost.estimate(tokens, table)
    assert estimate is not None
    # Batch prices: gpt-4o-mini 0.075 in, 0.30 out; gpt-4o 1.25 in (output unbounded: uncapped).
    assert float(estimate.bounded_total) == pytest.approx(0.075 + 0.30 + 1.25)
    assert estimate.output_unbounded
    assert cost.estimate({}, table) is None


def test_the_cap_refuses_above_it_and_an_unpriced_model_only_when_it_cannot_be_checked() -> None:
    table = cost.price_table()
    tokens = {"gpt-4o-mini": ModelTokens(requests=1, input=2_000_000, max_output=0)}
    assert cost.checked_estimate(tokens, table, max_cost=1.0, allow_unpriced=False) is not None
    with pytest.raises(cost.OpenAIBatchCostLimitExceeded, match=r"above max_cost = \$0\.10"):
        cost.checked_estimate(tokens, table, max_cost=0.1, allow_unpriced=False)

    unpriced = {"my-model": ModelTokens(requests=1, input=10)}
    with pytest.raises(cost.OpenAIBatchCostLimitExceeded, match=r"my-model.*allow_unpriced=True"):
        cost.checked_estimate(unpriced, table, max_cost=1.0, allow_unpriced=False)
    assert cost.checked_estimate(unpriced, table, max_cost=1.0, allow_unpriced=True) is None
    assert cost.checked_estimate(unpriced, table, max_cost=None, allow_unpriced=False) is None
    priced = cost.price_table({"my-model": {"input": 1, "output": 2}})
    assert cost.checked_estimate(unpriced, priced, max_cost=1.0, allow_unpriced=False) is not None


def test_the_actual_cost_sums_every_batch_that_reports_usage() -> None:
    usage = {
        "input_tokens": 1_000_000,
        "input_tokens_details": {"cached_tokens": 400_000},
        "output_tokens": 100_000,
        "output_tokens_details": {"reasoning_tokens": 50_000},
    }
    batches = [
        BatchSnapshot(batch_id=f"b{i}", status="completed", model="gpt-4o-mini", usage=usage)
        for i in range(2)
    ]
    batches.append(BatchSnapshot(batch_id="old", status="completed", model="gpt-4o-mini"))
    spent = cost.actual(batches, cost.price_table())
    assert spent is not None
    # Per batch: 600k uncached x 0.075 + 400k cached x 0.0375 + 100k output x 0.30 (per 1M), twice.
    assert float(spent.total) == pytest.approx(2 * (0.045 + 0.015 + 0.03))
    assert cost.actual([batches[2]], cost.price_table()) is None
    unpriced = BatchSnapshot(batch_id="x", status="completed", model="my-model", usage=usage)
    assert cost.actual([*batches, unpriced], cost.price_table()) is None


# the operator ----------------------------------------------------------------------------------------


@pytest.fixture
def server(make_emulator: Callable[..., EmulatorProcess], monkeypatch: pytest.MonkeyPatch) -> EmulatorProcess:
    server = make_emulator()
    use_emulator(monkeypatch, CONN, server)
    return server


def operator(**kwargs: Any) -> OpenAIBatchOperator:
    return quick_operator(CONN, "cost_task", **kwargs)


def requests(count: int, **body: Any) -> list[dict[str, Any]]:
    return [
        chat_record(f"c-{i}", f"Summarize item number {i} in one sentence.", **body) for i in range(count)
    ]


def test_a_job_above_max_cost_is_refused_with_nothing_uploaded(server: EmulatorProcess) -> None:
    with pytest.raises(cost.OpenAIBatchCostLimitExceeded, match="nothing was uploaded"):
        operator(requests=requests(20, max_tokens=100_000), max_cost=0.01).execute(make_context())
    assert route_count(server, "POST /v1/files") == 0
    assert route_count(server, "POST /v1/batches") == 0


def test_the_manifest_has_the_estimate_before_and_the_actual_cost_after(
    server: EmulatorProcess, tmp_path: Path
) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text(
        "".join(json.dumps({"method": "POST", "url": CHAT, **r}) + "\n" for r in requests(30, max_tokens=50))
    )
    single = operator(input_path=source, max_cost=1.0).execute(make_context())
    job = operator(input_path=source, max_cost=1.0, max_requests_per_batch=10).execute(make_context())

    for result in (single, job):
        estimate, spent = result["cost_estimate"], result["cost"]
        assert estimate["currency"] == spent["currency"] == "USD"
        assert 0 < spent["total"] <= estimate["bounded_total"]
        assert estimate["tokens"]["input"] >= spent["tokens"]["input"] * 0.5 > 0
    assert job["cost"]["total"] == pytest.approx(single["cost"]["total"])
    assert job["cost_estimate"] == single["cost_estimate"]


def test_prices_from_the_connection_and_the_task_are_used(
    server: EmulatorProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_emulator(monkeypatch, CONN, server, prices={"gpt-4o-mini": {"input": 1000, "output": 1000}})
    with pytest.raises(cost.OpenAIBatchCostLimitExceeded):
        operator(requests=requests(3), max_cost=0.01).execute(make_context())
    task_prices = {"gpt-4o-mini": {"input": 0.001, "output": 0.001}}
    result = operator(requests=requests(3), max_cost=0.01, prices=task_prices).execute(make_context())
    assert result["cost"]["prices"]["models"]["gpt-4o-mini"]["source"] == "override"


def test_bad_cost_settings_fail_the_dag_import() -> None:
    with pytest.raises(ValueError, match="max_cost"):
        operator(requests=requests(1), max_cost=-1)
    with pytest.raises(ValueError, match="input_file_id"):
        operator(input_file_id="file-1", max_cost=1.0)
    with pytest.raises(ValueError, match="gpt-4o"):
        operator(requests=requests(1), prices={"gpt-4o": {"input": -1, "output": 1}})


def test_a_bad_price_on_the_connection_fails_before_anything_is_sent_and_is_not_retried(
    server: EmulatorProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_emulator(monkeypatch, CONN, server, prices={"gpt-4o-mini": {"input": "cheap", "output": 1}})
    for inputs in ({"requests": requests(2)}, {"input_file_id": "file-never-read"}):
        with pytest.raises(OpenAIBatchConfigError, match="gpt-4o-mini"):
            operator(**inputs).execute(make_context())
    assert route_count(server, "POST /v1/files") == 0
    assert route_count(server, "POST /v1/batches") == 0
