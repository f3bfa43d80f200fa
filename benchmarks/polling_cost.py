"""Polling cost: status calls per batch at default settings, this provider against the official one.

Drives the real waiting code of both providers on a simulated clock (no sleeping, no HTTP): their
``sleep`` advances the clock and their status call answers ``in_progress`` with lines done at a steady
rate over the first 90 % of the batch's time, ``finalizing`` for the last 10 %, then ``completed``; the
batch that uses its whole 24 h window stalls at 80 % of its lines and ends ``expired``. The code driven:

* ours, deferrable: ``OpenAIBatchTrigger.run()`` with the operator's defaults (``poll_interval=30``,
  ``max_poll_interval=300``, deadline 25 h after creation); the operator's synchronous wait,
  ``OpenAIBatchHook.wait_for_batch``, with the same schedule;
* official, deferrable: ``OpenAIBatchTrigger.run()`` with ``OpenAITriggerBatchOperator``'s defaults
  (``poll_interval=60``, ``timeout=24 h``);
* official, synchronous (the operator's default mode, as ``[operators] default_deferrable`` is false):
  ``OpenAIHook.wait_for_batch`` with the operator's defaults (``wait_seconds=3``, ``timeout=24 h``).

Figures: status calls during the wait, and how long after the batch ended its end was noticed. Our
intervals have ±10 % jitter, so ours are the median (and the largest) over ``--runs`` simulations.
Goal: at most 300 status calls for a batch that runs its whole 24 h window.

    .venv/bin/python benchmarks/polling_cost.py [--runs 101]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import random
import statistics
from collections.abc import AsyncIterator, Callable, Iterator
from types import SimpleNamespace
from typing import Any
from unittest import mock

from airflow_provider_batch.hooks.batch import OpenAIBatchHook
from airflow_provider_batch.operators.batch import OpenAIBatchOperator
from airflow_provider_batch.status import BatchSnapshot, PollSchedule, Step
from airflow_provider_batch.triggers import batch as our_trigger_module

HOUR = 3600.0
WINDOW = 24 * HOUR
CASES = [("ends after 10 min", 600.0), ("ends after 1 h", HOUR), ("ends after 6 h", 6 * HOUR)]
FULL_WINDOW = ("expires at 24 h", WINDOW)
GOAL = 300
T0 = 1_800_000_000.0  # the simulated wall clock starts here (the batch is created at T0)


class Clock:
    """Simulated time, and a batch whose status depends on it; counts the status calls."""

    def __init__(self, ends_after: float) -> None:
        self.now = T0
        self.ends_at = T0 + ends_after
        self.final = "expired" if ends_after >= WINDOW else "completed"
        self.calls = 0

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)

    async def asleep(self, seconds: float) -> None:
        self.sleep(seconds)

    def status(self) -> tuple[str, int]:
        """The batch's status and the share of its lines done, in percent, at this moment."""
        self.calls += 1
        if self.now >= self.ends_at:
            return self.final, 100 if self.final == "completed" else 80
        share = (self.now - T0) / (0.9 * (self.ends_at - T0))
        if self.final == "expired":
            return "in_progress", min(80, int(100 * share))
        return ("in_progress", int(100 * share)) if share < 1 else ("finalizing", 100)

    @property
    def noticed_after(self) -> float:
        return self.now - self.ends_at


def quiet(*args: Any) -> None:
    """Stands in for ``Step.log_to``: a simulated day of progress lines is noise here."""


def snapshot(clock: Clock) -> BatchSnapshot:
    status, percent = clock.status()
    counts = {"total": 100, "completed": percent, "failed": 0}
    return BatchSnapshot(batch_id="batch_sim", status=status, request_counts=counts)


# This provider ----------------------------------------------------------------------------------------------


def ours_defaults() -> tuple[float, float, float]:
    operator = OpenAIBatchOperator(task_id="sim", endpoint="/v1/chat/completions", input_file_id="file-sim")
    return operator.poll_interval, operator.max_poll_interval, operator.timeout


class FakeHook:
    """Stands in for the trigger's hook: the status call answers from the simulated clock."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    @contextlib.asynccontextmanager
    async def async_client(self) -> AsyncIterator[None]:
        yield None

    async def apoll_batch(self, batch_id: str) -> BatchSnapshot:
        return snapshot(self.clock)


@contextlib.contextmanager
def simulated(module: Any, clock: Clock, **names: Any) -> Iterator[None]:
    """Replace a module's ``time`` (and ``asyncio``) with the simulated clock, and ``names`` with fakes."""
    fake_time = SimpleNamespace(time=clock.time, monotonic=clock.time, sleep=clock.sleep)
    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.object(module, "time", fake_time))
        if hasattr(module, "asyncio"):
            fake_asyncio = SimpleNamespace(sleep=clock.asleep, wait_for=lambda awaitable, timeout: awaitable)
            stack.enter_context(mock.patch.object(module, "asyncio", fake_asyncio))
        for name, value in names.items():
            stack.enter_context(mock.patch.object(module, name, value))
        yield


def ours_deferrable(ends_after: float) -> Clock:
    initial, maximum, timeout = ours_defaults()
    clock = Clock(ends_after)
    trigger = our_trigger_module.OpenAIBatchTrigger(
        conn_id="sim",
        batch_id="batch_sim",
        end_time=T0 + timeout,
        poll_interval=initial,
        max_poll_interval=maximum,
    )
    trigger._hook = FakeHook(clock)  # type: ignore[assignment]

    async def drain() -> None:
        async for _ in trigger.run():
            pass

    with simulated(our_trigger_module, clock), mock.patch.object(Step, "log_to", quiet):
        asyncio.run(drain())
    return clock


def ours_synchronous(ends_after: float) -> Clock:
    from airflow_provider_batch.hooks import batch as hook_module

    initial, maximum, timeout = ours_defaults()
    clock = Clock(ends_after)
    hook = OpenAIBatchHook(conn_id="sim")
    with (
        simulated(hook_module, clock),
        mock.patch.object(Step, "log_to", quiet),
        mock.patch.object(hook, "poll_batch", side_effect=lambda _: snapshot(clock)),
    ):
        hook.wait_for_batch(
            "batch_sim", end_time=T0 + timeout, schedule=PollSchedule(initial=initial, maximum=maximum)
        )
    return clock


# The official provider --------------------------------------------------------------------------------------


def official_defaults() -> tuple[float, float, float]:
    from airflow.providers.openai.operators.openai import OpenAITriggerBatchOperator

    operator = OpenAITriggerBatchOperator(task_id="sim", file_id="file-sim", endpoint="/v1/chat/completions")
    return operator.poll_interval, operator.wait_seconds, operator.timeout


def fake_official_hook(clock: Clock) -> Callable[..., Any]:
    def build(*args: Any, **kwargs: Any) -> Any:
        return SimpleNamespace(
            get_batch=lambda batch_id: SimpleNamespace(id=batch_id, status=clock.status()[0]),
            cancel_batch=lambda batch_id: None,
        )

    return build


def official_deferrable(ends_after: float) -> Clock:
    from airflow.providers.openai.triggers import openai as their_trigger_module

    poll_interval, _, timeout = official_defaults()
    clock = Clock(ends_after)
    trigger = their_trigger_module.OpenAIBatchTrigger(
        conn_id="sim", batch_id="batch_sim", poll_interval=poll_interval, timeout=timeout
    )

    async def drain() -> None:
        async for _ in trigger.run():
            pass

    with simulated(their_trigger_module, clock, OpenAIHook=fake_official_hook(clock)):
        asyncio.run(drain())
    return clock


def official_synchronous(ends_after: float) -> Clock:
    from airflow.providers.openai.hooks import openai as their_hook_module

    _, wait_seconds, timeout = official_defaults()
    clock = Clock(ends_after)
    hook = their_hook_module.OpenAIHook(conn_id="sim")
    fake = fake_official_hook(clock)()
    with (
        simulated(their_hook_module, clock),
        mock.patch.object(hook, "get_batch", fake.get_batch),
        mock.patch.object(hook, "cancel_batch", fake.cancel_batch),
        contextlib.suppress(Exception),  # an expired batch ends the wait with an exception
    ):
        hook.wait_for_batch("batch_sim", wait_seconds=wait_seconds, timeout=timeout)
    return clock


WAITERS: dict[str, Callable[[float], Clock]] = {
    "ours, deferrable": ours_deferrable,
    "ours, synchronous": ours_synchronous,
    "official, deferrable": official_deferrable,
    "official, synchronous": official_synchronous,
}


def main() -> None:
    logging.getLogger("airflow_provider_batch").setLevel(logging.WARNING)  # a simulated day of log lines
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=21, help="simulations per case (random end moments)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    initial, maximum, timeout = ours_defaults()
    poll_interval, wait_seconds, their_timeout = official_defaults()
    print(
        f"Defaults: ours poll {initial:g} s growing 1.5x to {maximum:g} s (±10 % jitter), deadline"
        f" {timeout / HOUR:g} h after creation; official deferrable every {poll_interval:g} s, synchronous"
        f" every {wait_seconds:g} s, timeout {their_timeout / HOUR:g} h."
    )
    print(
        f"Simulated clock, {args.runs} runs per case, each batch ending at a random moment in the 5 minutes"
        " after the time named (the full-window batch expires at exactly 24 h).\n"
        "Cells: status calls, median (max) / seconds from the batch's end to the wait's end, median (max)\n"
    )
    rng = random.Random(args.seed)
    ends = {label: [base + rng.uniform(0, 300) for _ in range(args.runs)] for label, base in CASES}
    ends[FULL_WINDOW[0]] = [FULL_WINDOW[1]] * args.runs
    header = f"{'waiter':<23}" + "".join(f"{label:>26}" for label in ends)
    print(header)
    print("-" * len(header))
    full: dict[str, int] = {}
    for name, waiter in WAITERS.items():
        cells = []
        for moments in ends.values():
            runs = [waiter(ends_after) for ends_after in moments]
            calls = [clock.calls for clock in runs]
            noticed = [clock.noticed_after for clock in runs]
            cell = (
                f"{statistics.median(calls):,.0f} ({max(calls):,}) / "
                f"{statistics.median(noticed):,.0f} ({max(noticed):,.0f})"
            )
            cells.append(f"{cell:>26}")
            full[name] = max(calls)
        print(f"{name:<23}" + "".join(cells))
    ours, deferred, synchronous = (
        full["ours, deferrable"],
        full["official, deferrable"],
        full["official, synchronous"],
    )
    print(
        f"\nFull 24 h window: ours {ours} calls at most (goal <= {GOAL}); official {deferred:,} deferrable"
        f" (x{deferred / ours:.1f}) and {synchronous:,} synchronous (x{synchronous / ours:.0f}, in a worker)"
    )


if __name__ == "__main__":
    main()
