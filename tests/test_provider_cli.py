"""Airflow discovers the provider: ``airflow providers list|hooks|links`` (the virtualenv's
``airflow`` command, in the test session's Airflow home) show the distribution, the
``openai_batch`` connection type with its hook, and the extra link."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from airflow_provider_batch import __version__
from tests import airflow_env


def test_airflow_cli_lists_the_provider_hook_and_link() -> None:
    airflow = Path(sys.executable).with_name("airflow")
    assert_airflow_lists_the_provider(airflow, {**os.environ, **airflow_env.ENVIRONMENT})


def assert_airflow_lists_the_provider(airflow: Path, env: Mapping[str, str], cwd: Path | None = None) -> None:
    """``airflow`` (a virtualenv's command) lists the provider, its connection type and its link."""
    # About ten seconds each, mostly importing Airflow: run the three at once.
    running = {
        what: subprocess.Popen(
            [str(airflow), "providers", what, "--output", "json"],
            env=env,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for what in ("list", "hooks", "links")
    }
    listed = {}
    for what, process in running.items():
        stdout, stderr = process.communicate(timeout=120)
        assert process.returncode == 0, f"airflow providers {what} failed:\n{stderr[-3000:]}"
        listed[what] = json.loads(stdout)

    [provider] = [p for p in listed["list"] if p["package_name"] == "airflow-provider-batch"]
    assert provider["version"] == __version__
    assert provider["description"].startswith("Run OpenAI Batch API jobs from Airflow")

    [hook] = [h for h in listed["hooks"] if h["connection_type"] == "openai_batch"]
    assert hook == {
        "connection_type": "openai_batch",
        "class": "airflow_provider_batch.hooks.batch.OpenAIBatchHook",
        "conn_id_attribute_name": "conn_id",
        "package_name": "airflow-provider-batch",
        "hook_name": "OpenAI Batch",
    }

    links = [link["extra_link_class_name"] for link in listed["links"]]
    assert "airflow_provider_batch.links.batch.OpenAIBatchLink" in links
