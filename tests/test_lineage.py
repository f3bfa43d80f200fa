"""Lineage through Airflow's own hook lineage collector.

Hook lineage is switched on here the way a deployment switches it on: a plugin that declares a
hook lineage reader (OpenLineage's plugin declares exactly that). The fixture puts such a plugin in
a plugins folder and makes Airflow load its plugins again, so ``get_hook_lineage_collector()``
hands out a real collector; the tests then read what it collected. Nothing of the provider is
mocked: the sensor and the operator run real batches on the emulator.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from airflow.providers.common.compat.lineage.hook import get_hook_lineage_collector
from airflow.sdk import Asset, ObjectStoragePath

from airflow_provider_batch.emulator.process import EmulatorProcess
from airflow_provider_batch.exceptions import OpenAIBatchPartialFailure
from airflow_provider_batch.hooks.batch import OpenAIBatchHook
from airflow_provider_batch.lineage import (
    convert_asset_to_openlineage,
    openai_file_uri,
    report_input,
    report_output,
    sanitize_uri,
    storage_uri,
)
from airflow_provider_batch.sensors.batch import OpenAIBatchSensor
from tests.batch_testing import (
    CHAT,
    chat_record,
    event,
    make_context,
    quick_operator,
    use_emulator,
    wait_for_status,
)

CONN = "batch_lineage"

READER_PLUGIN = """
from airflow.plugins_manager import AirflowPlugin
from airflow.providers.common.compat.sdk import HookLineageReader


class BatchTestsLineageReader(AirflowPlugin):
    name = "batch_tests_lineage_reader"
    hook_lineage_readers = [HookLineageReader]
"""


def _forget_plugins_and_collector() -> None:
    """Make Airflow look for plugins, and decide on a collector, again on next use."""
    try:  # Airflow 3.2+: cached functions in the Task SDK
        from airflow.sdk import lineage, plugins_manager

        plugins_manager._get_plugins.cache_clear()
        plugins_manager.get_hook_lineage_readers_plugins.cache_clear()
        lineage.get_hook_lineage_collector.cache_clear()
    except ImportError:  # Airflow 3.0-3.1: module globals in core
        from airflow import plugins_manager as core_plugins  # type: ignore[no-redef]
        from airflow.lineage import hook

        core_plugins.plugins = None
        core_plugins.loaded_plugins.clear()
        core_plugins.hook_lineage_reader_classes = None
        hook._hook_lineage_collector = None


@pytest.fixture
def collector(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Airflow's collector, enabled by a hook lineage reader plugin, empty at the start."""
    from airflow import settings

    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "batch_tests_lineage_reader.py").write_text(READER_PLUGIN)
    monkeypatch.setattr(settings, "PLUGINS_FOLDER", str(plugins))
    _forget_plugins_and_collector()
    found = get_hook_lineage_collector()
    assert type(found).__name__ == "HookLineageCollector", "the reader plugin did not enable hook lineage"
    yield found
    _forget_plugins_and_collector()


def inputs(found: Any) -> list[str]:
    return [info.asset.uri for info in found.collected_assets.inputs]


def outputs(found: Any) -> list[str]:
    return [info.asset.uri for info in found.collected_assets.outputs]


@pytest.fixture
def server(make_emulator: Callable[..., EmulatorProcess], monkeypatch: pytest.MonkeyPatch) -> EmulatorProcess:
    server = make_emulator()
    use_emulator(monkeypatch, CONN, server)
    return server


def api_host(server: EmulatorProcess) -> str:
    return urllib.parse.urlsplit(server.base_url).netloc


def submit(server: EmulatorProcess, *, failing_line: bool = False) -> tuple[str, str]:
    """A batch created elsewhere (plain SDK), as the sensor waits on; returns (batch id, input file id)."""
    records = [chat_record(f"l-{i}", f"lineage {i}") for i in range(3)]
    if failing_line:
        records.append(chat_record("l-bad", emulator={"status_code": 500, "message": "boom"}))
    body = "".join(json.dumps({**record, "method": "POST", "url": CHAT}) + "\n" for record in records)
    client = server.client()
    file = client.files.create(file=("in.jsonl", body.encode()), purpose="batch")
    batch = client.batches.create(input_file_id=file.id, endpoint=CHAT, completion_window="24h")
    return batch.id, file.id


def poke_sensor(batch_id: str, **kwargs: Any) -> OpenAIBatchSensor:
    return OpenAIBatchSensor(
        task_id="lineage_sensor",
        batch_id=batch_id,
        conn_id=CONN,
        deferrable=False,
        mode="poke",
        poke_interval=0.05,
        timeout=60,
        **kwargs,
    )


# The sensor ----------------------------------------------------------------------------------------


def test_the_sensor_reports_the_request_file_and_the_landed_results(
    collector: Any, server: EmulatorProcess, tmp_path: Path
) -> None:
    batch_id, input_file_id = submit(server)
    landed = tmp_path / "out" / "results.jsonl"

    manifest = poke_sensor(batch_id, output_path=str(landed)).execute(make_context("lineage_sensor"))

    assert manifest["results_uri"] == str(landed)
    assert inputs(collector) == [f"openai://{api_host(server)}/files/{input_file_id}"]
    assert outputs(collector) == [f"file://{landed}"]
    assert all(isinstance(info.context, OpenAIBatchHook) for info in collector.collected_assets.inputs)


def test_a_resumed_sensor_reports_from_its_final_run(
    collector: Any, server: EmulatorProcess, tmp_path: Path
) -> None:
    """A deferred sensor resumes in a new process with an empty collector: the run that receives
    the trigger's event must report both sides itself."""
    batch_id, input_file_id = submit(server)
    done = wait_for_status(server, batch_id)
    landed = tmp_path / "results.jsonl"
    ended = event(
        batch_id=batch_id,
        input_file_id=input_file_id,
        output_file_id=done.output_file_id,
        request_counts={"total": 3, "completed": 3, "failed": 0},
    )

    resumed = OpenAIBatchSensor(
        task_id="lineage_sensor", batch_id=batch_id, conn_id=CONN, output_path=str(landed)
    )
    resumed.execute_complete(make_context("lineage_sensor"), event=ended)

    assert inputs(collector) == [f"openai://{api_host(server)}/files/{input_file_id}"]
    assert outputs(collector) == [f"file://{landed}"]


def test_a_sensor_that_lands_nothing_reports_only_its_input(collector: Any, server: EmulatorProcess) -> None:
    batch_id, input_file_id = submit(server)

    poke_sensor(batch_id).execute(make_context("lineage_sensor"))

    assert inputs(collector) == [f"openai://{api_host(server)}/files/{input_file_id}"]
    assert outputs(collector) == []


def test_results_landed_before_too_many_failed_lines_fail_the_task_are_still_reported(
    collector: Any, server: EmulatorProcess, tmp_path: Path
) -> None:
    batch_id, _ = submit(server, failing_line=True)
    landed = tmp_path / "results.jsonl"

    with pytest.raises(OpenAIBatchPartialFailure):
        poke_sensor(batch_id, output_path=str(landed)).execute(make_context("lineage_sensor"))

    assert landed.exists()
    assert outputs(collector) == [f"file://{landed}"]


def test_object_storage_results_are_one_output_though_airflow_also_reports_the_write(
    collector: Any, server: EmulatorProcess
) -> None:
    """Airflow's ``ObjectStoragePath`` reports its own writes; the sensor's report must not add the
    same object a second time."""
    batch_id, _ = submit(server)
    landed = ObjectStoragePath("memory://lineage-tests/sensor/results.jsonl")

    poke_sensor(batch_id, output_path=landed).execute(make_context("lineage_sensor"))

    # The name Airflow gives an in-memory object differs between versions (memory:// or memory:/).
    assert len([uri for uri in outputs(collector) if uri.endswith("/sensor/results.jsonl")]) == 1


def test_the_write_check_probe_is_not_reported_as_an_output(collector: Any, server: EmulatorProcess) -> None:
    batch_id, _ = submit(server)
    landed = ObjectStoragePath("memory://lineage-tests/probe/results.jsonl")

    poke_sensor(batch_id, output_path=landed).execute(make_context("lineage_sensor"))

    assert [uri.rsplit("/", 1)[-1] for uri in outputs(collector)] == ["results.jsonl"]


# The operator -------------------------------------------


def test_the_operator_reports_its_input_path_and_landed_results(
    collector: Any, server: EmulatorProcess, tmp_path: Path
) -> None:
    source = tmp_path / "requests.jsonl"
    source.write_text(
        "".join(json.dumps({**chat_record(f"o-{i}"), "method": "POST", "url": CHAT}) + "\n" for i in range(3))
    )
    landed = tmp_path / "results.jsonl"

    quick_operator(CONN, "lineage_operator", input_path=str(source), output_path=str(landed)).execute(
        make_context("lineage_operator")
    )

    assert inputs(collector) == [f"file://{source}"]
    assert outputs(collector) == [f"file://{landed}"]


def test_the_operator_reports_the_file_it_uploaded_from_records(
    collector: Any, server: EmulatorProcess
) -> None:
    manifest = quick_operator(
        CONN, "lineage_operator", requests=[chat_record("r-1"), chat_record("r-2")]
    ).execute(make_context("lineage_operator"))

    assert inputs(collector) == [f"openai://{api_host(server)}/files/{manifest['input_file_id']}"]
    assert outputs(collector) == []


# The functions -------------------------------------------------------------------------------------


def test_a_path_wins_over_the_files_uploaded_from_it(collector: Any, server: EmulatorProcess) -> None:
    hook = OpenAIBatchHook(conn_id=CONN)

    report_input(hook, path="s3://aws_default@bucket/requests.jsonl", file_ids=["file-copy"])
    report_input(hook, file_ids=["file-a", None, "file-b", "file-a"])

    host = api_host(server)
    assert inputs(collector) == [
        "s3://bucket/requests.jsonl",
        f"openai://{host}/files/file-a",
        f"openai://{host}/files/file-b",
    ]


def test_a_read_airflow_already_reported_is_not_reported_twice(
    collector: Any, server: EmulatorProcess
) -> None:
    source = ObjectStoragePath("memory://lineage-tests/functions/requests.jsonl")
    with source.open("wb") as handle:
        handle.write(b"{}\n")
    with source.open("rb") as handle:  # Airflow's file wrapper reports this read
        handle.read()

    report_input(OpenAIBatchHook(conn_id=CONN), path=ObjectStoragePath(str(source)))

    assert inputs(collector) == [Asset(uri=storage_uri(source)).uri]
    assert inputs(collector)[0].endswith("/functions/requests.jsonl")


def test_nothing_landed_reports_nothing(collector: Any) -> None:
    report_output(OpenAIBatchHook(conn_id=CONN), None)
    assert not collector.has_collected


def test_an_unreadable_connection_costs_the_lineage_not_the_task(collector: Any) -> None:
    report_input(OpenAIBatchHook(conn_id="no_such_connection"), file_ids=["file-x"])
    assert not collector.has_collected


@pytest.mark.parametrize(
    ("path", "uri"),
    [
        ("/data/in.jsonl", "file:///data/in.jsonl"),
        ("file:///data/in.jsonl", "file:///data/in.jsonl"),
        (ObjectStoragePath("file:///data/in.jsonl"), "file:///data/in.jsonl"),
        (ObjectStoragePath("s3://aws_default@bucket/k/in.jsonl"), "s3://bucket/k/in.jsonl"),
        ("gs://bucket/in.jsonl", "gs://bucket/in.jsonl"),
    ],
)
def test_storage_uris(path: Any, uri: str) -> None:
    assert storage_uri(path) == uri


def test_the_openai_host_names_azure_resources_and_defaults_to_openai(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_LINEAGE_AZURE",
        json.dumps(
            {
                "conn_type": "openai_batch",
                "password": "k",
                "extra": {
                    "api_type": "azure",
                    "azure_endpoint": "https://My-Resource.openai.azure.com/",
                    "api_version": "2024-10-21",
                },
            }
        ),
    )
    monkeypatch.setenv(
        "AIRFLOW_CONN_LINEAGE_OPENAI", json.dumps({"conn_type": "openai_batch", "password": "k"})
    )

    azure = openai_file_uri(OpenAIBatchHook(conn_id="lineage_azure"), "file-1")
    openai = openai_file_uri(OpenAIBatchHook(conn_id="lineage_openai"), "file-1")

    assert azure == "openai://my-resource.openai.azure.com/files/file-1"
    assert openai == "openai://api.openai.com/files/file-1"


# The openai:// scheme, for OpenLineage ---------------------------------------------------------------


@pytest.mark.parametrize(
    "uri",
    [
        "openai://api.openai.com/files",
        "openai:///files/file-1",
        "openai://h/batches/b-1",
        "openai://h/files/a/b",
    ],
)
def test_malformed_openai_uris_are_refused(uri: str) -> None:
    with pytest.raises(ValueError, match="openai://<api host>/files/<file id>"):
        sanitize_uri(urllib.parse.urlsplit(uri))


def test_an_openai_file_becomes_a_dataset_in_the_api_hosts_namespace() -> None:
    pytest.importorskip("openlineage.client", reason="the OpenLineage client comes with its provider")
    dataset = convert_asset_to_openlineage(Asset(uri="openai://api.openai.com/files/file-1"), None)
    assert (dataset.namespace, dataset.name) == ("openai://api.openai.com", "files/file-1")


def test_airflow_knows_the_openai_scheme() -> None:
    asset = Asset(uri="openai://API.openai.com/files/file-1")
    assert asset.normalized_uri == "openai://api.openai.com/files/file-1"
