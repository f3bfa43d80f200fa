"""Who a submission is: the lower bound of the look-up that finds an earlier try's batches."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any, cast

from airflow_provider_batch.identity import run_started

RUN_AFTER = datetime(2026, 12, 1, 6, 0, tzinfo=UTC)


def context(**dag_run: Any) -> Any:
    return cast("Any", {"dag_run": SimpleNamespace(**dag_run)})


def test_a_cleared_run_still_reaches_back_to_its_first_attempt() -> None:
    """Clearing a finished run gives it a new start date; run_after stays, and bounds the look-up."""
    restarted = context(start_date=RUN_AFTER + timedelta(days=1), run_after=RUN_AFTER)
    assert run_started(restarted) == RUN_AFTER.timestamp() - 300


def test_a_run_that_started_before_its_run_after_reaches_back_to_its_start() -> None:
    early = context(start_date=RUN_AFTER - timedelta(minutes=1), run_after=RUN_AFTER)
    assert run_started(early) == RUN_AFTER.timestamp() - 60 - 300


def test_without_dates_the_look_up_is_unbounded() -> None:
    assert run_started(context(start_date=None, run_after=None)) is None
    assert run_started(cast("Any", {})) is None
