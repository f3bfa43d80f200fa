"""The status observer's planning rules with plain values: which batches a sweep lists and which it
retrieves one by one, how far back the listing may stop, how long a trigger waits for a sweep."""

from __future__ import annotations

import pytest

from airflow_provider_batch.observer import (
    MAX_PATIENCE,
    SweepPlan,
    listing_bound,
    patience_for,
    plan_sweep,
)


def test_one_batch_is_retrieved_on_its_own() -> None:
    assert plan_sweep(["a"], {}) == SweepPlan(0, (), ("a",))


def test_batches_never_seen_are_looked_for_in_the_listing_together() -> None:
    assert plan_sweep(["a", "b", "c"], {}, explore_pages=4) == SweepPlan(4, ("a", "b", "c"), ())


def test_many_batches_never_seen_are_looked_for_as_deep_as_they_would_cost_alone() -> None:
    unknown = [f"u{n}" for n in range(90)]
    assert plan_sweep(unknown, {}, explore_pages=3).pages == 50  # 90 calls / 1.8 per page


def test_known_batches_deeper_than_the_exploration_make_it_go_deeper() -> None:
    ranks = {f"k{n}": 500 + n for n in range(10)}
    plan = plan_sweep(["u1", "u2", *ranks], ranks, explore_pages=3)
    assert plan.pages == 6
    assert plan.listed == ("u1", "u2", *ranks)


def test_the_listing_goes_as_deep_as_it_pays() -> None:
    # Thirty batches spread over the first three pages: three pages beat thirty retrieves.
    ranks = {f"b{n}": n * 10 for n in range(30)}
    plan = plan_sweep(list(ranks), ranks)
    assert plan.pages == 3
    assert not plan.direct


def test_a_batch_far_down_the_listing_is_retrieved_on_its_own() -> None:
    # One old batch of a busy organization, 5,000 batches down: 50 pages for it would cost more
    # than the one call that retrieves it.
    ranks = {"new1": 0, "new2": 3, "new3": 40, "old": 5_000}
    plan = plan_sweep(list(ranks), ranks, explore_pages=3)
    assert plan == SweepPlan(1, ("new1", "new2", "new3"), ("old",))


def test_a_page_is_read_only_when_it_saves_calls() -> None:
    # Page 1 holds three batches, page 2 only one: the second page is not worth it.
    ranks = {"a": 1, "b": 2, "c": 3, "d": 150}
    assert plan_sweep(list(ranks), ranks).direct == ("d",)
    # With many batches on page 2, it is.
    ranks |= {f"p2_{n}": 100 + n for n in range(5)}
    assert plan_sweep(list(ranks), ranks).pages == 2


def test_every_requested_batch_is_planned_once() -> None:
    ranks = {f"b{n}": n * 37 for n in range(200)}
    plan = plan_sweep(list(ranks), ranks)
    assert sorted(plan.listed + plan.direct) == sorted(ranks)
    assert not set(plan.listed) & set(plan.direct)


def test_the_listing_stops_at_the_oldest_known_creation_time() -> None:
    assert listing_bound(["a", "b"], {"a": 100.0, "b": 50.0}) == 50.0
    assert listing_bound(["a", "b"], {"a": 100.0}) is None, "b may be anywhere"
    assert listing_bound([], {}) is None


@pytest.mark.parametrize(
    ("pause", "time_left", "expected"),
    [
        (1.0, 100.0, 0.1),  # a tenth of the pause: within the schedule's jitter
        (20.0, 100.0, 2.0),
        (300.0, 1_000.0, MAX_PATIENCE),  # capped
        (20.0, 0.5, 0.5),  # never past the deadline
        (20.0, -3.0, 0.0),
    ],
)
def test_patience_is_a_tenth_of_the_pause_capped_and_within_the_deadline(
    pause: float, time_left: float, expected: float
) -> None:
    assert patience_for(pause, time_left) == pytest.approx(expected)
