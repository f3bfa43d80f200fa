"""The package tier (``make test-package``, ``pytest -m package``): build the sdist and the wheel as a
release would, install the wheel alone (with ``constraints.txt``) into a fresh virtualenv, and check
what a user gets: the files, Airflow's view of the provider, and the emulator's command.

Every command runs outside the repository with a clean environment, so nothing can import the
sources instead of the installed wheel.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import urllib.request
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from airflow_provider_batch import __version__
from tests.test_packaging import declared_dependencies
from tests.test_provider_cli import assert_airflow_lists_the_provider

pytestmark = [pytest.mark.package, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "airflow_provider_batch"
NOT_SHIPPED = ("tests/", "benchmarks/", "scripts/", "example_dags/", "docs/")


def run(*command: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [str(part) for part in command], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, f"{command} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def clean_environment(**extra: str) -> dict[str, str]:
    """This process's environment without what would point a child at the repository, the test
    session's Airflow home or this virtualenv."""
    kept = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("AIRFLOW", "PYTHON", "VIRTUAL_ENV", "BATCH_"))
    }
    return {**kept, **extra}


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    run(sys.executable, "-m", "build", "--outdir", out, ROOT, cwd=out)
    return out


@pytest.fixture(scope="module")
def wheel(dist: Path) -> Path:
    [built] = dist.glob("*.whl")
    return built


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> Path:
    """A fresh virtualenv holding only the wheel and what it requires, at the pinned versions."""
    venv = tmp_path_factory.mktemp("venv")
    env = clean_environment()
    run(sys.executable, "-m", "venv", venv, cwd=venv, env=env)
    pip = [venv / "bin" / "python", "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    run(*pip, "-c", ROOT / "constraints.txt", wheel, cwd=venv, env=env)
    return venv


def test_the_wheel_holds_the_package_and_nothing_else(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    dist_info = f"airflow_provider_batch-{__version__}.dist-info/"
    assert {name.split("/")[0] + "/" for name in names} == {"airflow_provider_batch/", dist_info}
    assert not [name for name in names if name.startswith(NOT_SHIPPED)]
    sources = {
        path.relative_to(ROOT).as_posix()
        for path in PACKAGE.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }
    assert {name for name in names if not name.startswith(dist_info)} == sources
    assert "airflow_provider_batch/py.typed" in sources


def test_the_wheel_declares_the_dependencies_and_entry_points(wheel: Path) -> None:
    dist_info = f"airflow_provider_batch-{__version__}.dist-info"
    with zipfile.ZipFile(wheel) as archive:
        metadata = Parser().parsestr(archive.read(f"{dist_info}/METADATA").decode())
        entry_points = archive.read(f"{dist_info}/entry_points.txt").decode()
    requires = [Requirement(line) for line in metadata.get_all("Requires-Dist", [])]
    runtime = {(r.name, str(r.specifier)) for r in requires if r.marker is None}
    assert runtime == {(r.name, str(r.specifier)) for r in declared_dependencies()}
    parquet = {
        (r.name, str(r.specifier)) for r in requires if r.marker and r.marker.evaluate({"extra": "parquet"})
    }
    assert ("pyarrow", ">=26.0.1") in parquet, "the parquet extra brings pyarrow"
    assert "Programming Language :: Python :: 3.13" in metadata.get_all("Classifier", [])
    assert "provider_info = airflow_provider_batch.get_provider_info:get_provider_info" in entry_points
    assert "openai-batch-emulator = airflow_provider_batch.emulator.__main__:main" in entry_points


def test_the_sdist_holds_the_sources(dist: Path) -> None:
    [sdist] = dist.glob("*.tar.gz")
    root = f"airflow_provider_batch-{__version__}/"
    with tarfile.open(sdist) as archive:
        names = set(archive.getnames())
    assert {f"{root}pyproject.toml", f"{root}PKG-INFO", f"{root}airflow_provider_batch/py.typed"} <= names


def test_python_imports_the_installed_wheel(venv: Path, tmp_path: Path) -> None:
    script = "import airflow_provider_batch as p, json; print(json.dumps([p.__file__, p.__version__]))"
    file, version = json.loads(
        run(venv / "bin" / "python", "-c", script, cwd=tmp_path, env=clean_environment())
    )
    installed = Path(file).parent
    assert installed.is_relative_to(venv)
    assert version == __version__
    assert (installed / "py.typed").is_file()


def test_airflow_lists_the_installed_provider(venv: Path, tmp_path: Path) -> None:
    env = clean_environment(AIRFLOW_HOME=str(tmp_path / "airflow"))
    assert_airflow_lists_the_provider(venv / "bin" / "airflow", env, cwd=tmp_path)


def test_the_emulator_runs_from_the_installed_wheel(venv: Path, tmp_path: Path) -> None:
    env = clean_environment()
    assert "--data-dir" in run(venv / "bin" / "openai-batch-emulator", "--help", cwd=tmp_path, env=env)
    command = [venv / "bin" / "python", "-m", "airflow_provider_batch.emulator", "--port", "0"]
    with (tmp_path / "emulator.log").open("wb") as log:
        server = subprocess.Popen(
            [*command, "--data-dir", tmp_path / "data"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=log,
        )
        try:
            assert server.stdout is not None
            base_url = server.stdout.readline().decode().strip()
            assert base_url.startswith("http://127.0.0.1:"), (tmp_path / "emulator.log").read_text()
            assert base_url.endswith("/v1")
            with urllib.request.urlopen(f"{base_url}/batches", timeout=30) as response:
                assert json.load(response) == {
                    "object": "list",
                    "data": [],
                    "first_id": None,
                    "last_id": None,
                    "has_more": False,
                }
        finally:
            server.terminate()
            returncode = server.wait(timeout=30)
    assert returncode == 0, (tmp_path / "emulator.log").read_text()
