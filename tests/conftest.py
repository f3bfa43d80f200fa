"""Shared fixtures: a real emulator process on a free port, driven over HTTP."""

from __future__ import annotations

# First, before anything imports Airflow: point AIRFLOW_HOME at a temporary directory.
from tests import airflow_env  # isort: split

from collections.abc import Callable, Iterator
from pathlib import Path

import fsspec
import pytest
from airflow.sdk.io import attach

from airflow_provider_batch.emulator.process import EmulatorProcess
from tests.batch_testing import emulator_flags

# Airflow maps URL schemes to filesystems through providers, and none registers fsspec's
# in-memory filesystem; attach it so tests can use ``ObjectStoragePath("memory://...")``.
attach("memory", fs=fsspec.filesystem("memory"))


@pytest.fixture(scope="session")
def airflow_home() -> Path:
    """The session's Airflow home with a migrated metadata database (``airflow db migrate``, ~10 s,
    paid once and only by the tests that ask for it)."""
    airflow_env.migrate()
    return airflow_env.AIRFLOW_HOME


@pytest.fixture(scope="session")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorProcess]:
    """One emulator shared by the session, for tests that leave its settings alone."""
    with EmulatorProcess(tmp_path_factory.mktemp("emulator")) as server:
        yield server


@pytest.fixture(scope="session")
def azure_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorProcess]:
    """One emulator in the Azure dialect shared by the session (see :func:`dialect`)."""
    with EmulatorProcess(tmp_path_factory.mktemp("azure-emulator"), *emulator_flags("azure")) as server:
        yield server


@pytest.fixture
def dialect() -> str:
    """Which API a test talks to: ``openai``, ``azure`` (an ``AzureOpenAI`` client on an Azure
    emulator) or ``azure-v1`` (an OpenAI client on that emulator's ``/openai/v1`` routes).
    Lifecycle tests run on several with ``@pytest.mark.parametrize("dialect", DIALECTS)``."""
    return "openai"


@pytest.fixture
def dialect_emulator(request: pytest.FixtureRequest, dialect: str) -> EmulatorProcess:
    """The session's shared emulator of the test's :func:`dialect`."""
    return request.getfixturevalue("azure_emulator" if dialect.startswith("azure") else "emulator")


@pytest.fixture
def make_emulator(tmp_path: Path, dialect: str) -> Iterator[Callable[..., EmulatorProcess]]:
    """Start private emulators (own flags, own data dir) that are stopped after the test; of the
    test's :func:`dialect` (the flags given come after the dialect's, so they win)."""
    started: list[EmulatorProcess] = []

    def start(*flags: str, api_key: str | None = None, data_dir: Path | None = None) -> EmulatorProcess:
        flags = (*emulator_flags(dialect), *flags)
        server = EmulatorProcess(data_dir or tmp_path / f"emulator-{len(started)}", *flags, api_key=api_key)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
