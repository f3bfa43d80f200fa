"""The DAG of ``tests/e2e/test_interrupted.py``: one task that holds a worker with a shell.

The BashOperator runs its shell in a session of its own, under the task process (itself in a
process group of its own, under the task supervisor and the LocalExecutor's worker): the deepest
tree a running task makes, which must not outlive the run that started it.
"""

from __future__ import annotations

import pendulum
from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG

HOLD_DAG = "interrupted_hold"
HOLD_TASK = "hold"
HOLD_COMMAND = "sleep 3517"
"""A command line no other process of this machine has, to be recognised in a process listing."""

with DAG(HOLD_DAG, schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"), catchup=False):
    BashOperator(task_id=HOLD_TASK, bash_command=HOLD_COMMAND)
