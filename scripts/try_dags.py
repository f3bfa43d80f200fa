"""`make try DAGS=path/to/dags`: your own DAGs on the emulator, without a key.

Sets up the sandbox of the getting-started page for a DAG folder: a fresh Airflow home (SQLite,
no example DAGs), the emulator in the background, and the connection ``openai_default`` on it.
Airflow settings from the environment (``AIRFLOW__*``) are dropped: one pointing at a real
metadata database would otherwise be migrated and written to.
Then it opens a shell there, or runs the command given after ``--``, and stops the emulator when
that ends, when it is interrupted (Ctrl-C, SIGTERM, SIGHUP) and, through the emulator's guardian,
even when this process is killed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import psutil

from airflow_provider_batch.emulator.process import EmulatorProcess

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dags", required=True, help="the DAG folder to try")
    parser.add_argument("--home", type=Path, default=ROOT / ".try", help="the sandbox (emptied first)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="run this instead of a shell")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # in order with the children's
    dags = Path(args.dags).resolve()
    if not args.dags or not dags.is_dir():
        parser.error(f"DAGS={args.dags} is not a directory (usage: make try DAGS=path/to/dags)")
    command = args.command[1:] if args.command[:1] == ["--"] else args.command

    # Python runs no cleanup on SIGTERM or SIGHUP (a closed terminal) unless they raise.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, _: sys.exit(128 + signum))

    home = args.home.resolve()
    if home.is_dir() and any(home.iterdir()) and not (home / "airflow").is_dir():
        parser.error(f"{home} is not a sandbox of an earlier run; not emptying it")
    shutil.rmtree(home, ignore_errors=True)
    (home / "airflow").mkdir(parents=True)
    emulator = EmulatorProcess(home / "emulator")
    ours = {child.pid for child in psutil.Process().children()}  # the emulator and its guardian
    try:
        log = home / "emulator" / "emulator.log"
        print(f"Emulator at {emulator.base_url} (pid {emulator.process.pid}, log {log})")
        connection = {"conn_type": "openai_batch", "host": emulator.base_url, "password": "sk-emulator-try"}
        env = {
            **{name: value for name, value in os.environ.items() if not name.startswith("AIRFLOW__")},
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "AIRFLOW_HOME": str(home / "airflow"),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW_CONN_OPENAI_DEFAULT": json.dumps(connection),
        }
        print(f"Creating the metadata database in {home / 'airflow'} ...")
        log = home / "airflow" / "migrate.log"
        with log.open("w") as out:
            if subprocess.run(["airflow", "db", "migrate"], env=env, stdout=out, stderr=out).returncode:
                raise SystemExit(f"airflow db migrate failed; see {log}")
        if command:
            print(f"Sandbox ready; running: {' '.join(command)}")
            return subprocess.run(command, env=env, check=False).returncode
        print(f"Sandbox ready. DAGs from {dags}. Run: airflow dags test <dag_id>; exit stops the emulator.")
        # bash without rc files, so that nothing puts another airflow before this one on the PATH.
        prompt = {"PS1": r"(make try) \w \$ "}
        return subprocess.run(["bash", "--norc", "-i"], env={**env, **prompt}, check=False).returncode
    finally:
        emulator.stop()
        stop_children(besides=ours)
        print("Stopped the emulator.")


def stop_children(besides: set[int]) -> None:
    """Stop what is left of the sandbox's commands. An interrupt that comes while a command starts
    leaves it running: it is our child, but ``subprocess.run`` had not returned to kill it."""
    left = [child for child in psutil.Process().children(recursive=True) if child.pid not in besides]
    for child in left:
        with contextlib.suppress(psutil.Error):
            child.terminate()
    _, alive = psutil.wait_procs(left, timeout=5)
    for child in alive:
        with contextlib.suppress(psutil.Error):
            child.kill()


if __name__ == "__main__":
    sys.exit(main())
