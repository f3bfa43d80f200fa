"""`make demo`: the main job on a real Airflow.

Starts the emulator and a real Airflow (api-server, scheduler, dag-processor, triggerer;
LocalExecutor; SQLite under ``.demo/``), triggers the embeddings example, shows the task
deferring and completing, prints a summary, and stops everything it started.

Against OpenAI (or any compatible server) instead of the emulator::

    OPENAI_API_KEY=sk-... make demo                                  # api.openai.com
    DEMO_BASE_URL=https://my-gateway/v1 OPENAI_API_KEY=... make demo # another base URL

``DEMO_DIALECT=azure make demo`` runs the emulator as Azure OpenAI (``--dialect azure``) and gives
Airflow an Azure connection (``api_type: azure``, ``azure_endpoint``, ``api_version``).

``DEMO_KEEP=1`` leaves Airflow running at the end so you can look around in the UI.

Everything it starts is guarded (``airflow_provider_batch/emulator/guardian.py``): stopping the demo
by any means, even ``kill -9``, stops Airflow and the emulator with it; ``DEMO_KEEP=1`` releases them.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from airflow_stack import AirflowStack

from airflow_provider_batch.emulator.guardian import release
from airflow_provider_batch.emulator.process import EmulatorProcess

ROOT = Path(__file__).resolve().parent.parent
DEMO_DIR = ROOT / ".demo"
DAG_ID = "example_openai_batch_embeddings"
TASK_ID = "embed_documents"


def main() -> None:
    shutil.rmtree(DEMO_DIR, ignore_errors=True)
    DEMO_DIR.mkdir()
    api_key = os.environ.get("OPENAI_API_KEY")
    dialect = os.environ.get("DEMO_DIALECT", "openai")
    if dialect not in ("openai", "azure"):
        raise SystemExit(f"DEMO_DIALECT must be 'openai' or 'azure', not {dialect!r}")
    emulator = None
    if api_key:
        base_url = os.environ.get("DEMO_BASE_URL", "https://api.openai.com/v1")
        print(f"Using {base_url} with your API key (real batches, real cost).")
        connection: dict = {"conn_type": "openai_batch", "host": base_url, "password": api_key}
    else:
        # Lines take 1.5 s each, so the batch runs ~10 s: long enough to see the task deferred.
        flags = ("--dialect", dialect, "--line-delay", "1.5", "--validating-delay", "1")
        emulator = EmulatorProcess(DEMO_DIR / "emulator", *flags)
        connection = emulator_connection(emulator)
        print(f"Emulator ({dialect} dialect) at {emulator.root_url} (no key, no cost).")

    stack = AirflowStack(
        DEMO_DIR / "airflow",
        ROOT / "example_dags",
        env={
            "AIRFLOW_CONN_OPENAI_DEFAULT": json.dumps(connection),
            "BATCH_EXAMPLES_OUTPUT": f"file://{DEMO_DIR / 'results'}",
            "BATCH_EXAMPLES_POLL_INTERVAL": "3",
        },
    )
    try:
        print("Migrating the metadata database (SQLite) ...")
        stack.migrate()
        print("Starting api-server, scheduler, dag-processor and triggerer ...")
        stack.start()
        stack.wait_for_dag(DAG_ID)
        run_id = stack.trigger(DAG_ID)
        print(f"Triggered {DAG_ID}, run {run_id}\n")
        follow(stack, run_id)
        summarise(stack, run_id)
    finally:
        if os.environ.get("DEMO_KEEP"):
            kept = [*stack.processes.values(), *([emulator.process] if emulator else [])]
            for process in kept:
                release(process.pid)
            print(
                f"\nAirflow keeps running at {stack.url} (PIDs {[p.pid for p in stack.processes.values()]})."
            )
        else:
            stack.stop()
            if emulator is not None:
                emulator.stop()
            print("\nStopped everything the demo started.")


def emulator_connection(emulator: EmulatorProcess) -> dict:
    """The connection a user of the emulator's dialect writes; on Azure the DAG's model names the
    deployment."""
    if emulator.dialect == "azure":
        extra = {"api_type": "azure", "azure_endpoint": emulator.root_url, "api_version": "2024-10-21"}
        return {"conn_type": "openai_batch", "password": "demo-azure-key", "extra": extra}
    return {"conn_type": "openai_batch", "host": emulator.base_url, "password": "sk-demo-not-a-real-key"}


def follow(stack: AirflowStack, run_id: str, timeout: float = 300) -> None:
    """Print each state the batch task goes through until the run ends."""
    seen: str | None = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = stack.task_state(DAG_ID, run_id, TASK_ID)
        if state != seen:
            note = "  <- waiting in the triggerer, no worker slot held" if state == "deferred" else ""
            print(f"  {time.strftime('%H:%M:%S')}  {TASK_ID}: {state}{note}")
            seen = state
        run_state = stack.run_state(DAG_ID, run_id)
        if run_state in ("success", "failed"):
            print(f"  {time.strftime('%H:%M:%S')}  run: {run_state}")
            if run_state == "failed":
                raise SystemExit(f"The run failed; see {stack.home / 'logs'}")
            return
        time.sleep(0.5)
    raise SystemExit(f"The run did not finish in {timeout:.0f} s; see {stack.home / 'logs'}")


def summarise(stack: AirflowStack, run_id: str) -> None:
    manifest = stack.xcom(DAG_ID, run_id, TASK_ID)
    neighbours = stack.xcom(DAG_ID, run_id, "nearest_neighbours")
    counts, usage = manifest["request_counts"], manifest["usage"] or {}
    summary = manifest.get("results_summary") or {}
    print("\nSummary")
    print(f"  batch        {manifest['batch_id']} ({manifest['status']}, model {manifest['model']})")
    print(f"  requests     {counts['completed']} completed, {counts['failed']} failed of {counts['total']}")
    print(f"  usage        {usage.get('input_tokens')} input tokens, {usage.get('total_tokens')} in all")
    print(f"  results      {manifest.get('results_uri')} ({summary.get('succeeded')} rows ok, input order)")
    print(f"  files        output {manifest['output_file_id']}, errors {manifest['error_file_id']}")
    print("  neighbours   " + ", ".join(f"{doc} -> {other}" for doc, other in sorted(neighbours.items())))
    print(f"\nUI: {stack.url} (keep it running with DEMO_KEEP=1; every user is admin in this demo)")


if __name__ == "__main__":
    main()
