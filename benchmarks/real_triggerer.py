"""A real triggerer: N deferred tasks per side through ``airflow triggerer``, and its blocked-loop warnings.

``triggerer_scale.py`` runs triggers on a loop of its own making; this script runs the real thing: an
emulator (``--latency 0.1``) and a real Airflow (``scripts/airflow_stack.py``: api-server, scheduler,
dag-processor, triggerer, LocalExecutor, SQLite), all on this machine's two cores. For each side it
creates N batches, triggers ``benchmarks/dags/triggerer_warnings.py`` (one mapped task per batch, each
deferring at once), waits until all N are deferred, lets them poll for ``--busy`` seconds, then ends the
batches together (the emulator's ``expire`` route) and waits until every task has resumed and finished.

Sides, run one after the other on the same triggerer:

* ``baseline``: each task defers on Airflow's own ``DateTimeTrigger``, which sleeps until the moment the
  batches would be released. Whatever warnings it gets are the triggerer's own cost of holding and
  resuming N deferred tasks on this machine, not any trigger's;
* ``ours``: this provider's ``OpenAIBatchTrigger`` (its looks answered by the connection's status observer,
  shared by the triggers on the triggerer), ``poll_interval`` and ``max_poll_interval`` from ``--intervals``;
* ``official``: the official provider's ``OpenAIBatchTrigger``, ``poll_interval`` from ``--intervals``.

Figures per side, from the triggerer's own log lines written while that side ran: how many "Triggerer's
async thread was blocked" warnings (the triggerer logs one when its 0.1 s watchdog sleep lasts over
0.2 s), the longest and the total time blocked, how many were logged while the tasks were deferred and
polling versus while the events fired and the tasks resumed, and how many coincide with a full garbage
collection in the trigger runner (a ``sitecustomize`` put on the triggerer's ``PYTHONPATH`` times every
one); the most triggers the triggerer reported running at once; seconds until all N were deferred, and
from the release until none was deferred.

    .venv/bin/python benchmarks/real_triggerer.py [--tasks 200] [--busy 240] [--intervals 30,300,60]
        [--sides baseline,ours,official] [--keep]

The defaults are the operators' own polling (ours 30 s growing to 300 s, the official deferrable operator
every 60 s) and take about 22 minutes (``make bench`` runs them). ``--busy 60 --intervals 1,2,1`` is the
stress setting of ``triggerer_scale.py``, about 12 minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import re
import shutil
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
from triggerer_scale import API_KEY, WATCHDOG_SLEEP, connections, create_batches, upload_input

from airflow_provider_batch.emulator.process import EmulatorProcess

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from airflow_stack import COMPONENTS, AirflowStack  # noqa: E402

DAG_ID = "triggerer_warnings"
SIDES = ("baseline", "ours", "official")
BLOCKED = re.compile(r"^(\S+) .*async thread was blocked for ([0-9.]+) seconds")
RUNNING = re.compile(r"(\d+) triggers currently running")
ENDED = ("success", "failed")
GC_PROBE = """\
import gc, os, time

_log, _started = os.environ["BENCH_GC_LOG"], [0.0]


def _time_full_collection(phase, info):
    if info["generation"] != 2:
        return
    if phase == "start":
        _started[0] = time.perf_counter()
        return
    with open(_log, "a") as out:
        out.write(f"{os.getpid()} {time.time():.3f} {time.perf_counter() - _started[0]:.4f}\\n")


gc.callbacks.append(_time_full_collection)
"""
"""A ``sitecustomize`` for the triggerer's processes only: it logs every full garbage collection (pid, end
time, seconds), since a full collection of a process with Airflow loaded stalls its event loop by itself."""
HOLD = 3600.0
"""Seconds each batch's line would take: the batches end when this script expires them, not before."""


def count_in_state(stack: AirflowStack, run_id: str, state: str) -> int:
    path = f"dags/{DAG_ID}/dagRuns/{run_id}/taskInstances?task_id=wait&state={state}&limit=1"
    return stack.api("GET", path)["total_entries"]


def blocked_warnings(log: str) -> list[tuple[float, float]]:
    """(unix time, seconds blocked) of every blocked-loop warning in a slice of the triggerer's log."""
    found = []
    for line in log.splitlines():
        match = BLOCKED.search(line)
        if match:
            stamp = datetime.fromisoformat(match.group(1).replace("Z", "+00:00")).timestamp()
            found.append((stamp, float(match.group(2))))
    return found


def trigger_runner_pid(stack: AirflowStack) -> int:
    """The process whose event loop runs the triggers: the ``airflow triggerer`` process forks it."""
    main = psutil.Process(stack.processes["triggerer"].pid)

    def runner() -> psutil.Process | None:
        return next((child for child in main.children() if child.cmdline() == main.cmdline()), None)

    stack.wait(lambda: runner() is not None, 120, "the trigger runner process")
    return runner().pid  # type: ignore[union-attr]


def full_collections(gc_log: Path, pid: int, start: float, end: float) -> list[tuple[float, float]]:
    """(unix time it ended, seconds) of the trigger runner's full garbage collections between two moments."""
    if not gc_log.exists():
        return []
    found = [line.split() for line in gc_log.read_text().splitlines() if line]
    return [
        (float(ended), float(seconds))
        for who, ended, seconds in found
        if int(who) == pid and start <= float(ended) <= end
    ]


def explained_by_collection(warning: tuple[float, float], collections: list[tuple[float, float]]) -> bool:
    """Whether a full collection ended inside the warning's late sleep and lasted most of its lateness.

    The watchdog sleeps 0.1 s and reports the whole sleep, so a warning at ``t`` of ``blocked`` seconds
    means the loop could not run from ``t - blocked + 0.1`` to ``t``."""
    logged, blocked = warning
    late = blocked - WATCHDOG_SLEEP
    return any(
        logged - blocked <= ended <= logged + 0.05 and seconds >= late / 2 for ended, seconds in collections
    )


def run_side(
    stack: AirflowStack,
    server: EmulatorProcess,
    input_id: str,
    side: str,
    args: argparse.Namespace,
    gc_log: Path,
    runner_pid: int,
) -> dict[str, Any]:
    count = args.tasks
    batch_ids = asyncio.run(create_batches(server, input_id, count, release_at=time.time() + HOLD))
    initial, maximum, official = args.intervals
    # The baseline's timers fire at the release; allow the deferral as long as the slowest side needs.
    planned_release = time.time() + args.defer_allowance + args.busy
    polling = f"{official if side == 'official' else initial},{maximum},{planned_release}"
    log_mark = len(stack.logs("triggerer"))
    started = time.time()
    run_id = stack.trigger(DAG_ID, {"side": side, "batch_ids": batch_ids, "polling": polling})
    stack.wait(
        lambda: count_in_state(stack, run_id, "deferred") >= count,
        args.defer_allowance + 600,
        f"{side}: {count} tasks to be deferred",
        every=2,
    )
    all_deferred = time.time()
    if side == "baseline":
        released = max(planned_release, all_deferred)
    else:
        time.sleep(args.busy)
        released = time.time()
        for batch_id in batch_ids:
            server.admin("POST", f"batches/{batch_id}/expire")
    stack.wait(lambda: count_in_state(stack, run_id, "deferred") == 0, 1800, f"{side}: resumed", every=1)
    none_deferred = time.time()
    stack.wait(lambda: stack.run_state(DAG_ID, run_id) in ENDED, 1800, f"{side}: run to end", every=3)
    state = stack.run_state(DAG_ID, run_id)
    log = stack.logs("triggerer")[log_mark:]
    warnings = blocked_warnings(log)
    collections = full_collections(gc_log, runner_pid, started, time.time())
    return {
        "side": side,
        "tasks": count,
        "run": state,
        "to_defer_all_s": all_deferred - started,
        "release_to_none_deferred_s": none_deferred - released,
        "warnings": len(warnings),
        "warnings_while_polling": sum(1 for stamp, _ in warnings if stamp < released),
        "warnings_while_resuming": sum(1 for stamp, _ in warnings if stamp >= released),
        "max_blocked_s": max((seconds for _, seconds in warnings), default=0.0),
        "total_blocked_s": sum(seconds for _, seconds in warnings),
        "warnings_at_full_collections": sum(explained_by_collection(w, collections) for w in warnings),
        "full_collections": len(collections),
        "longest_full_collection_s": max((seconds for _, seconds in collections), default=0.0),
        "most_running": max((int(n) for n in RUNNING.findall(log)), default=0),
    }


def print_table(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    initial, maximum, official = args.intervals
    print(
        f"\n{args.tasks} deferred tasks per side on a real triggerer; ours polls every {initial:g} to "
        f"{maximum:g} s, the official trigger every {official:g} s; {args.busy:g} s of polling with all "
        "deferred, then every batch ends at once.\n"
    )
    print(
        "| Side | Blocked warnings | while polling | while resuming | at a full GC | Longest block s "
        "| Total blocked s | Full GCs | Longest full GC s | Most running | s to defer all "
        "| s from release to none deferred | Run |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for row in rows:
        cells = [
            row["side"],
            row["warnings"],
            row["warnings_while_polling"],
            row["warnings_while_resuming"],
            row["warnings_at_full_collections"],
            f"{row['max_blocked_s']:.2f}",
            f"{row['total_blocked_s']:.1f}",
            row["full_collections"],
            f"{row['longest_full_collection_s']:.2f}",
            row["most_running"] or "",
            f"{row['to_defer_all_s']:.0f}",
            f"{row['release_to_none_deferred_s']:.0f}",
            row["run"],
        ]
        print("| " + " | ".join(str(cell) for cell in cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=200, help="deferred tasks per side")
    parser.add_argument("--busy", type=float, default=240.0, help="seconds of polling once all are deferred")
    parser.add_argument(
        "--intervals",
        default="30,300,60",
        help="ours poll_interval,max_poll_interval and the official poll_interval, seconds",
    )
    parser.add_argument("--defer-allowance", type=float, default=150.0, help="seconds allowed to defer all")
    parser.add_argument("--sides", default=",".join(SIDES))
    parser.add_argument("--keep", action="store_true", help="keep AIRFLOW_HOME and logs; print where")
    args = parser.parse_args()
    logging.getLogger("httpx2").setLevel(logging.WARNING)  # one line per API call otherwise
    args.intervals = [float(value) for value in args.intervals.split(",")]
    sides = [side for side in args.sides.split(",") if side]
    if unknown := set(sides) - set(SIDES):
        raise SystemExit(f"unknown sides: {sorted(unknown)}")

    work = Path(tempfile.mkdtemp(prefix="bench-real-triggerer-"))
    rows = []
    try:
        with EmulatorProcess(work / "emulator", "--latency", "0.1", api_key=API_KEY) as server:
            input_id = upload_input(server, work)
            env = {
                **connections(server.base_url),
                # Enough worker slots and task concurrency that N tasks defer within a minute or two.
                "AIRFLOW__CORE__PARALLELISM": "8",
                "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": "64",
            }
            with AirflowStack(work / "airflow", Path(__file__).parent / "dags", env=env) as stack:
                stack.migrate()
                stack.start(tuple(name for name in COMPONENTS if name != "triggerer"))
                probe = work / "gc-probe"
                probe.mkdir()
                (probe / "sitecustomize.py").write_text(GC_PROBE)
                gc_log = work / "triggerer-gc.log"
                stack.env = {**stack.env, "PYTHONPATH": str(probe), "BENCH_GC_LOG": str(gc_log)}
                stack.start_component("triggerer")
                runner_pid = trigger_runner_pid(stack)
                stack.wait_for_dag(DAG_ID, timeout=300)
                for side in sides:
                    row = run_side(stack, server, input_id, side, args, gc_log, runner_pid)
                    print(json.dumps(row), flush=True)
                    rows.append(row)
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print_table(rows, args)


if __name__ == "__main__":
    main()
