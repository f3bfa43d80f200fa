"""CPU per status call: what one poll costs the triggerer's event loop, and where the floor is.

A triggerer's loop is one thread, so the calls a second its triggers make, times the CPU each call costs,
must stay well under one second per second or every trigger's stall grows (``triggerer_scale.py``). This
script measures that cost on one event loop with ``--concurrency`` calls in flight, for 200 in-progress
batches on an emulator that adds 0.1 s per call (so connections stay busy, as in a triggerer):

* ``hook.apoll_batch``: what our trigger calls (the retry policy, the shared client, the raw JSON read
  into a snapshot), with the hook's connection pool of ``--pools`` connections (default 50, and the SDK's
  own 1,000);
* the SDK's ``batches.retrieve`` turned into the same snapshot (a pydantic ``Batch``, then ``model_dump``):
  what the hook did before it read the raw JSON;
* a bare ``httpx2`` GET and ``msgspec`` decode, with no SDK: the HTTP stack's own floor.

Each variant is measured ``--repeat`` times, interleaved; the table shows medians of process CPU time per
call (user + system, so the HTTP stack's system calls count).

    .venv/bin/python benchmarks/status_call_cost.py [--pools 50,1000] [--concurrency 100] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import resource
import statistics
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx2
import msgspec
from triggerer_scale import API_KEY, upload_input

from airflow_provider_batch.emulator.process import EmulatorProcess

BATCHES = 200
ROUNDS = 5
"""Each measurement polls every batch this many times."""
Call = Callable[[str], Awaitable[object]]


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def cpu_per_call(call: Call, batch_ids: list[str], concurrency: int) -> float:
    limit = asyncio.Semaphore(concurrency)

    async def one(batch_id: str) -> None:
        async with limit:
            await call(batch_id)

    await asyncio.gather(*(one(batch_id) for batch_id in batch_ids[:50]))  # connections open, caches warm
    started = cpu_seconds()
    for _ in range(ROUNDS):
        await asyncio.gather(*(one(batch_id) for batch_id in batch_ids))
    return (cpu_seconds() - started) / (ROUNDS * len(batch_ids))


async def measure(
    server: EmulatorProcess, batch_ids: list[str], args: argparse.Namespace
) -> dict[str, list[float]]:
    from airflow_provider_batch.hooks.batch import OpenAIBatchHook, snapshot_of

    figures: dict[str, list[float]] = {}
    hooks = {}
    for pool in args.pools:
        conn_id = f"bench_pool_{pool}"
        connection = {"conn_type": "openai_batch", "host": server.base_url, "password": API_KEY}
        connection["extra"] = {"max_connections": pool}
        os.environ[f"AIRFLOW_CONN_{conn_id.upper()}"] = json.dumps(connection)
        hooks[pool] = OpenAIBatchHook(conn_id=conn_id)
    bare = httpx2.AsyncClient(
        base_url=f"{server.base_url}/",
        headers={"Authorization": f"Bearer {API_KEY}"},
        limits=httpx2.Limits(max_connections=args.pools[0], max_keepalive_connections=args.pools[0]),
    )

    async def bare_call(batch_id: str) -> object:
        response = await bare.get(f"batches/{batch_id}")
        return msgspec.json.decode(response.content)

    variants: dict[str, Call] = {}
    for pool, hook in hooks.items():
        variants[f"hook.apoll_batch, pool of {pool}"] = hook.apoll_batch
    first = hooks[args.pools[0]]

    async def sdk_model(batch_id: str) -> object:
        return snapshot_of(await first.aget_batch(batch_id))

    variants[f"SDK Batch model + model_dump, pool of {args.pools[0]}"] = sdk_model
    variants[f"bare httpx2 + msgspec, pool of {args.pools[0]}"] = bare_call
    async with contextlib.AsyncExitStack() as held:
        held.push_async_callback(bare.aclose)
        for hook in hooks.values():  # as a trigger does: hold the shared client for the whole wait
            await held.enter_async_context(hook.async_client())
        for _ in range(args.repeat):
            for name, call in variants.items():
                figures.setdefault(name, []).append(await cpu_per_call(call, batch_ids, args.concurrency))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pools", default="50,1000", help="connection pool sizes for the hook")
    parser.add_argument("--concurrency", type=int, default=100, help="calls in flight at once")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    args.pools = [int(value) for value in args.pools.split(",")]
    logging.getLogger("httpx2").setLevel(logging.WARNING)  # one line per call otherwise

    with (
        tempfile.TemporaryDirectory(prefix="bench-status-call-") as work,
        EmulatorProcess(Path(work) / "emulator", "--latency", "0.1", api_key=API_KEY) as server,
    ):
        input_id = upload_input(server, Path(work))
        client = server.client()
        batch_ids = [
            client.batches.create(
                input_file_id=input_id,
                endpoint="/v1/chat/completions",
                completion_window="24h",
                metadata={"emulator_line_delay": "3600"},  # in progress for the whole run
            ).id
            for _ in range(BATCHES)
        ]
        figures = asyncio.run(measure(server, batch_ids, args))

    print(
        f"\nCPU per status call, {BATCHES} batches x {ROUNDS} rounds, {args.concurrency} calls in flight, "
        f"0.1 s emulator latency; median of {args.repeat}\n"
    )
    floor = statistics.median(figures[next(name for name in figures if name.startswith("bare"))])
    print(f"{'variant':<48}{'CPU ms per call':>16}{'x bare httpx2':>15}")
    for name, values in figures.items():
        value = statistics.median(values)
        print(f"{name:<48}{value * 1000:>16.2f}{value / floor:>15.2f}")


if __name__ == "__main__":
    main()
