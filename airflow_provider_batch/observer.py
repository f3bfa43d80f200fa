"""One status observer per connection per triggerer: many waiting triggers, few status calls.

A triggerer runs up to a thousand triggers on one event loop. Polled one by one, each look at a
batch is one ``GET /v1/batches/{id}``, and at 1,000 triggers polling every 1 to 2 s those calls
need more CPU than the loop's one core has (``docs/benchmarks.md``). The CPU per call cannot go
much lower; the number of calls can: one ``GET /v1/batches`` page shows 100 batches.

So the provider's triggers do not call the API themselves. Each asks the :class:`StatusObserver`
of its connection on its event loop for a snapshot of its batch made *after* it asked
(:meth:`StatusObserver.snapshot`), and says how long it can wait for it (its ``patience``: a
tenth of the pause it just slept, which the schedule's own jitter already allows). Requests that
arrive within each other's patience are answered together by one **sweep**: listing pages for the
batches the listing reaches cheaply, one ``GET`` each for the rest (:func:`plan_sweep`). Each
trigger keeps its own schedule, deadline, failure budget and single event; only the calls are
shared.

Recorded decisions:

- A snapshot always comes from a sweep that started after the request: a trigger never gets an
  older state than polling on its own would have given it.
- A failing listing is a ``PollFailure`` for every batch it was to show, never a state: each
  trigger counts it against its own failure budget, as a failed ``GET`` would be.
- An exception that is not an API answer (the connection cannot be read) reaches every trigger
  of that sweep, which fails as it did polling on its own.
- The observer lives as long as its triggers: the first one in starts its task, the last one
  out stops it and hands the client back; nothing outlives the loop. A trigger cancelled while
  it waits simply stops waiting; a sweep skips requests nobody waits for any more.
- Where a batch sits in the listing is learned from the pages read (:attr:`ListingScan.ranks`),
  for every watched batch a page shows, asked for or not. Batches whose place is not known yet are
  looked for as deep as the watched batches would reach if they were the newest; one the pages did
  not reach is remembered as at least that deep, so it is retrieved on its own until listing that
  deep pays for itself.

The planning rules are pure functions of plain values (:func:`plan_sweep`,
:func:`listing_bound`), tested without I/O; the observer does the calls and the bookkeeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import math
import weakref
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from airflow_provider_batch.status import BatchSnapshot, PollFailure

if TYPE_CHECKING:
    from airflow_provider_batch.hooks.batch import OpenAIBatchHook

HOOK_MODULE = "airflow_provider_batch.hooks.batch"
PAGE_SIZE = 100
"""Batches per listing page (the API's maximum; the hook's ``LIST_PAGE_SIZE``)."""
PAGE_COST = 1.8
"""What a listing page of 100 batches costs, in single ``GET`` calls: the CPU to send it and parse
100 batch objects, measured on one loop with the hook's calls (2.6 against 1.4 ms). A page is
read when it saves more than that many single calls: two batches already pay for one."""
EXPLORE_MARGIN = 2
"""Pages read beyond ``ceil(watched / 100)`` when looking for batches whose place is not known yet:
room for batches other work created after them (the hook's ``EXTRA_LIST_PAGES``)."""
PATIENCE_SHARE = 0.1
"""A trigger waits for a shared sweep at most this share of the pause it just slept: within the
schedule's ±10 % jitter, so its looks come no later than the schedule already lets them."""
MAX_PATIENCE = 15.0
"""Seconds a trigger waits for a shared sweep at most, whatever its pause."""


@dataclass(frozen=True)
class SweepPlan:
    """How one sweep observes its batches: ``pages`` listing pages for ``listed``, one ``GET``
    each for ``direct`` (and for any listed batch the pages did not show after all)."""

    pages: int
    listed: tuple[str, ...]
    direct: tuple[str, ...]


def plan_sweep(
    batch_ids: Sequence[str],
    ranks: Mapping[str, int],
    *,
    explore_pages: int = 1,
    page_size: int = PAGE_SIZE,
    page_cost: float = PAGE_COST,
) -> SweepPlan:
    """Choose how deep to read the listing for ``batch_ids``: the cheapest of reading no page (one
    ``GET`` each) or reading down to some batch's page, counting ``page_cost`` calls per page and
    one call per batch left beyond. Pure.

    :param ranks: where each batch was last seen in the listing (0 is the newest), or how deep the
        listing was read without finding it.
    :param explore_pages: how deep at least to look for batches not in ``ranks``, when there are two
        or more of them (one page already costs more than one call): down to where the watched
        batches would be if they were the newest, ``ceil(watched / 100)`` pages and a margin. Many
        such batches are looked for deeper, as many pages as they would cost retrieved one by one
        (a triggerer that starts with batches created long ago). The listing stops earlier once
        it has shown every batch asked for; a batch it did not show is retrieved, and its rank
        says how deep the listing was read, so it is looked for that way once only.
    """
    known = {batch_id: ranks[batch_id] for batch_id in batch_ids if batch_id in ranks}
    unknown = [batch_id for batch_id in batch_ids if batch_id not in ranks]
    floor = max(explore_pages, int(len(unknown) / page_cost)) if len(unknown) >= 2 else 0

    def cost(pages: int) -> float:
        beyond = sum(1 for rank in known.values() if rank >= pages * page_size)
        return pages * page_cost + beyond + (len(unknown) if pages == 0 else 0)

    best_pages = min(
        sorted({floor} | {rank // page_size + 1 for rank in known.values() if rank // page_size + 1 > floor}),
        key=cost,
    )
    reach = best_pages * page_size

    def is_listed(batch_id: str) -> bool:
        return best_pages > 0 and (batch_id not in known or known[batch_id] < reach)

    listed = tuple(batch_id for batch_id in batch_ids if is_listed(batch_id))
    direct = tuple(batch_id for batch_id in batch_ids if not is_listed(batch_id))
    return SweepPlan(best_pages, listed, direct)


def listing_bound(batch_ids: Collection[str], created: Mapping[str, float]) -> float | None:
    """How far back the listing can stop: the oldest creation time of ``batch_ids`` (server time,
    as the listing's own), or ``None`` when one of them is not known. Pure."""
    if not batch_ids or any(batch_id not in created for batch_id in batch_ids):
        return None
    return min(created[batch_id] for batch_id in batch_ids)


def patience_for(pause: float, time_left: float) -> float:
    """Seconds a trigger that just slept ``pause`` may wait for a shared sweep: a tenth of the pause,
    at most :data:`MAX_PATIENCE`, and never past its deadline (``time_left`` from now). Pure."""
    return max(0.0, min(PATIENCE_SHARE * pause, MAX_PATIENCE, time_left))


Observed = BatchSnapshot | PollFailure


class StatusObserver:
    """The status calls of every trigger of one connection on one event loop (see the module).

    Get one with :func:`observing`, never directly: the registry starts and stops it.
    """

    def __init__(self, conn_id: str) -> None:
        self.conn_id = conn_id
        self.users = 0
        self.sweeps = 0
        """Sweeps done (for tests and benchmarks)."""
        self.calls = 0
        """Status calls made: listing pages and single retrieves."""
        self.answered = 0
        """Requests answered."""
        self._watchers: dict[str, int] = {}
        """Triggers watching each batch: the per-batch memory below is dropped when none is left."""
        self._ranks: dict[str, int] = {}
        self._created: dict[str, float] = {}
        self._last: dict[str, BatchSnapshot] = {}
        """The last snapshot handed out per watched batch (the one its trigger's wait holds)."""
        self._pending: dict[str, list[asyncio.Future[Observed]]] = {}
        self._due = math.inf
        self._timer: asyncio.TimerHandle | None = None
        self._ready = asyncio.Event()
        self._hook: OpenAIBatchHook | None = None
        self._task: asyncio.Task[None] | None = None

    # the triggers' side ----------------------------------------------------------------------------

    async def snapshot(
        self, batch_id: str, *, patience: float = 0.0, created_after: float | None = None
    ) -> Observed:
        """An observation of ``batch_id`` made after this call, by the first sweep due within
        ``patience`` seconds (or earlier, for another trigger). Cancelling the wait is safe.

        :param created_after: a lower bound of the batch's creation time (server clock), when the
            caller knows one and the observer has not seen the batch yet: it bounds the listing.
        """
        if created_after is not None and batch_id in self._watchers:
            self._created.setdefault(batch_id, created_after)
        waiter: asyncio.Future[Observed] = asyncio.get_running_loop().create_future()
        self._pending.setdefault(batch_id, []).append(waiter)
        self._wake_by(asyncio.get_running_loop().time() + patience)
        return await waiter

    async def snapshots(
        self, batch_ids: Sequence[str], *, patience: float = 0.0, created_after: float | None = None
    ) -> dict[str, Observed]:
        """:meth:`snapshot` for several batches at once (a job's round), answered by the same sweep."""
        seen = await asyncio.gather(
            *(
                self.snapshot(batch_id, patience=patience, created_after=created_after)
                for batch_id in batch_ids
            )
        )
        return dict(zip(batch_ids, seen, strict=True))

    def watch(self, batch_ids: Collection[str]) -> None:
        for batch_id in batch_ids:
            self._watchers[batch_id] = self._watchers.get(batch_id, 0) + 1

    def unwatch(self, batch_ids: Collection[str]) -> None:
        for batch_id in batch_ids:
            left = self._watchers.get(batch_id, 0) - 1
            if left > 0:
                self._watchers[batch_id] = left
                continue
            self._watchers.pop(batch_id, None)
            self._ranks.pop(batch_id, None)
            self._created.pop(batch_id, None)
            self._last.pop(batch_id, None)

    @property
    def watched(self) -> int:
        """Batches some trigger watches, whose place in the listing the observer remembers."""
        return len(self._watchers)

    # the sweeps ------------------------------------------------------------------------------------

    def _wake_by(self, due: float) -> None:
        """Make sure a sweep starts by ``due`` (loop time)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"status observer {self.conn_id}"
            )
        if due >= self._due:
            return
        self._due = due
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_at(due, self._ready.set)

    async def _run(self) -> None:
        """Sweep whenever a request is due; requests made during a sweep wait for the next one, so
        the sweeps clock themselves: the busier the loop, the more each one answers."""
        try:
            while True:
                await self._ready.wait()
                self._ready.clear()
                self._timer, self._due = None, math.inf
                pending, self._pending = self._pending, {}
                await self._sweep(pending)
        finally:
            if self._hook is not None:
                await self._release_client()

    async def _sweep(self, pending: dict[str, list[asyncio.Future[Observed]]]) -> None:
        waited = {batch_id: [w for w in waiters if not w.done()] for batch_id, waiters in pending.items()}
        waited = {batch_id: waiters for batch_id, waiters in waited.items() if waiters}
        if not waited:
            return
        try:
            observed = await self._observe(list(waited))
        except Exception as exc:  # not an API answer (e.g. the connection): every trigger sees it
            for waiters in waited.values():
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_exception(exc)
            return
        self.sweeps += 1
        for batch_id, waiters in waited.items():
            seen = observed[batch_id]
            if isinstance(seen, BatchSnapshot) and batch_id in self._watchers:
                seen = self._unchanged(batch_id, seen)
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(seen)
                    self.answered += 1

    def _unchanged(self, batch_id: str, seen: BatchSnapshot) -> BatchSnapshot:
        """The snapshot to hand out: the previous one when the batch has not changed.

        A batch usually looks the same for many looks in a row. Handing back the object its trigger
        already holds lets the new one die young, instead of a thousand triggers promoting a fresh
        snapshot each to the old generation on every look (the full collections that stall the loop).
        """
        last = self._last.get(batch_id)
        if last is not None and last == seen:
            return last
        self._last[batch_id] = seen
        if seen.created_at is not None:
            self._created[batch_id] = seen.created_at
        return seen

    async def _observe(self, batch_ids: list[str]) -> dict[str, Observed]:
        """One sweep's calls: the planned listing pages, then one ``GET`` per batch left."""
        hook = await self._client_hook()
        explore = math.ceil(len(self._watchers) / PAGE_SIZE) + EXPLORE_MARGIN
        plan = plan_sweep(batch_ids, self._ranks, explore_pages=explore)
        scan = await hook.ascan_batches(
            plan.listed,
            created_after=listing_bound(plan.listed, self._created),
            max_pages=plan.pages,
            locate=self._watchers,
        )
        # Where the pages showed any watched batch, requested or not, is where it is now.
        self._ranks.update(
            (batch_id, rank) for batch_id, rank in scan.ranks.items() if batch_id in self._watchers
        )
        if not scan.failed:
            for batch_id in plan.listed:
                if batch_id in self._watchers and batch_id not in scan.ranks:
                    # Listed but not shown: at least as deep as the pages read.
                    self._ranks[batch_id] = max(scan.read, self._ranks.get(batch_id, 0))
        singles = await hook.apoll_each([*plan.direct, *scan.unseen()])
        self.calls += scan.pages + len(singles)
        return {**scan.answer(singles), **{batch_id: singles[batch_id] for batch_id in plan.direct}}

    async def _client_hook(self) -> OpenAIBatchHook:
        """The observer's one hook, holding the loop's shared client while the observer lives.

        The hook module imports ``openai`` (about a second of CPU when cold), so it is imported in a
        thread, and the loop keeps serving the other triggers meanwhile.
        """
        if self._hook is None:
            module = await asyncio.to_thread(importlib.import_module, HOOK_MODULE)
            hook = module.OpenAIBatchHook(conn_id=self.conn_id)
            await module.SHARED_ASYNC_CLIENTS.acquire(await hook.aconfig())
            self._hook = hook
        return self._hook

    async def _release_client(self) -> None:
        module = importlib.import_module(HOOK_MODULE)
        hook, self._hook = self._hook, None
        assert hook is not None
        await module.SHARED_ASYNC_CLIENTS.release(await hook.aconfig())

    async def close(self) -> None:
        """Stop the sweeps (the last trigger left) and hand the client back."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


_OBSERVERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, StatusObserver]] = (
    weakref.WeakKeyDictionary()
)


def observers() -> dict[str, StatusObserver]:
    """The observers alive on the running loop, by connection id."""
    return _OBSERVERS.setdefault(asyncio.get_running_loop(), {})


@contextlib.asynccontextmanager
async def observing(conn_id: str, batch_ids: Collection[str]) -> AsyncIterator[StatusObserver]:
    """The observer of ``conn_id`` on this loop, for a trigger watching ``batch_ids``: made by the
    first trigger in, stopped when the last one leaves, however it leaves (event, cancel, error)."""
    by_conn = observers()
    observer = by_conn.get(conn_id)
    if observer is None:
        observer = by_conn[conn_id] = StatusObserver(conn_id)
    observer.users += 1
    observer.watch(batch_ids)
    try:
        yield observer
    finally:
        observer.unwatch(batch_ids)
        observer.users -= 1
        if observer.users == 0:
            if by_conn.get(conn_id) is observer:
                del by_conn[conn_id]
            await observer.close()
