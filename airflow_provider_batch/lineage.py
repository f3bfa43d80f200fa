"""Lineage: what a task read and what it landed, reported to Airflow's hook lineage collector.

OpenLineage (and any other plugin that registers a hook lineage reader) reads the collector when a
task ends and turns each reported Airflow asset into a dataset. With no such plugin installed the
collector is a no-op, so reporting costs nothing and needs no new dependency: the collector comes
from ``apache-airflow-providers-common-compat``, which smooths over its move from
``airflow.lineage.hook`` (Airflow 3.0-3.1) to ``airflow.sdk.lineage`` (3.2+).

What is reported, and under which URI:

* a local file: ``file:///absolute/path`` (the form Airflow's own ``file`` asset factory builds);
* an ``ObjectStoragePath``: its ``scheme://bucket/key``, without the connection id Airflow keeps as
  user info, so the same object has one name whichever connection reached it;
* an OpenAI file: ``openai://<api host>/files/<file id>``. The host (``api.openai.com``, an Azure
  resource, an emulator) is part of the name because a file id only means something on the server
  that issued it; in OpenLineage terms the host is the namespace and ``files/<id>`` the name, the
  way ``s3://bucket`` and the key are.

Two rules shape the callers:

* **Report in the run that finishes the task.** The collector lives in the worker process, and a
  deferred task resumes in a new one, so whatever the first run reported is gone when OpenLineage
  reads the collector at the end. The operator and the sensor therefore report both sides when
  they finish.
* **Report each asset once.** Airflow already reports every read and write through an
  ``ObjectStoragePath`` (its file wrapper does). A URI already collected in the same direction is
  not added again, so OpenLineage does not list the same dataset twice.

``openai://`` assets reach OpenLineage only if the provider registers the scheme with Airflow
(``asset-uris`` in the provider info, with :func:`sanitize_uri` and
:func:`convert_asset_to_openlineage`): without a converter OpenLineage drops an asset silently.
"""

from __future__ import annotations

import logging
import os
import urllib.parse
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from airflow.sdk import Asset, ObjectStoragePath

if TYPE_CHECKING:
    from airflow.providers.common.compat.openlineage.facet import Dataset as OpenLineageDataset

    from airflow_provider_batch.hooks.batch import OpenAIBatchHook

log = logging.getLogger(__name__)

OPENAI_FILE_SCHEME = "openai"
"""Scheme of the assets that name a file held by an OpenAI-compatible API."""
DEFAULT_API_HOST = "api.openai.com"

Direction = Literal["input", "output"]


def openai_file_uri(hook: OpenAIBatchHook, file_id: str) -> str:
    """``openai://<host>/files/<file_id>``: the file on the server that ``hook`` talks to."""
    return f"{OPENAI_FILE_SCHEME}://{api_host(hook)}/files/{urllib.parse.quote(file_id, safe='')}"


def api_host(hook: OpenAIBatchHook) -> str:
    """The host (and port) of the API the connection points at: Azure's endpoint, the base URL, or
    OpenAI's when the connection names none."""
    config = hook.resolved_config
    url = config.azure_endpoint if config.api_type == "azure" else config.base_url
    return urllib.parse.urlsplit(str(url)).netloc.lower() if url else DEFAULT_API_HOST


def storage_uri(path: str | os.PathLike[str] | ObjectStoragePath) -> str:
    """The asset URI of a local path or an object-storage location.

    A string with ``://`` is a URL (as ``output_path`` and ``input_path`` read it); anything else
    is a local path, made absolute because a relative one names nothing outside the worker.
    """
    if isinstance(path, ObjectStoragePath) or "://" in str(path):
        parsed = urllib.parse.urlsplit(str(path))
        if parsed.scheme != "file":
            return _without_user_info(str(path))
        path = parsed.path
    return f"file://{Path(path).absolute()}"


def _without_user_info(uri: str) -> str:
    """``uri`` without the connection id Airflow keeps as user info (``s3://aws_default@bucket/key``):
    it says how the object was reached, not which object it is."""
    parsed = urllib.parse.urlsplit(uri)
    if "@" not in parsed.netloc:
        return uri
    host = parsed.hostname or ""
    netloc = f"{host}:{parsed.port}" if parsed.port else host
    return urllib.parse.urlunsplit(parsed._replace(netloc=netloc, fragment=""))


def report_input(
    hook: OpenAIBatchHook,
    *,
    path: str | os.PathLike[str] | ObjectStoragePath | None = None,
    file_ids: Iterable[str | None] = (),
) -> None:
    """Report what the task's requests came from: ``path`` when it read one (the files it uploaded
    from it are copies, not sources), otherwise the OpenAI files it ran (an ``input_file_id``, or
    the files it uploaded from ``requests``)."""
    if path is not None:
        _report(hook, "input", lambda: [storage_uri(path)])
    else:
        ids = [f for f in file_ids if f]
        _report(hook, "input", lambda: [openai_file_uri(hook, file_id) for file_id in ids])


def report_output(hook: OpenAIBatchHook, landed: str | os.PathLike[str] | ObjectStoragePath | None) -> None:
    """Report landed results (``results_uri`` of the manifest or of the error); ``None`` (nothing
    landed) reports nothing."""
    if landed:
        _report(hook, "output", lambda: [storage_uri(landed)])


def _report(hook: OpenAIBatchHook, direction: Direction, uris: Callable[[], list[str]]) -> None:
    """Add the URIs to the collector, each unless it is already there.

    Lineage only observes: an unreadable connection (for the API host) or a URI Airflow refuses is
    logged, never raised, so it cannot fail a task whose batch has been paid for. The URIs are
    built here, inside that guard, hence the callable.
    """
    try:
        from airflow.providers.common.compat.lineage.hook import get_hook_lineage_collector

        collector = get_hook_lineage_collector()
        add = collector.add_input_asset if direction == "input" else collector.add_output_asset
        for uri in dict.fromkeys(uris()):
            stored = Asset(uri=uri).uri  # as the collector will hold it (Airflow tidies URIs)
            collected = collector.collected_assets
            if not any(_same(info.asset, stored) for info in getattr(collected, f"{direction}s")):
                add(context=hook, uri=uri)
    except Exception as exc:
        log.warning("Could not report the task's %s to the hook lineage collector: %s", direction, exc)


def _same(asset: Asset, uri: str) -> bool:
    """Whether a collected asset names the object ``uri`` (already tidied by ``Asset``) names:
    Airflow's own reports keep the connection id in the URI; ours do not."""
    try:
        return _without_user_info(asset.uri) == uri
    except ValueError:
        return False


# Registration of the openai:// scheme with Airflow (provider info "asset-uris") ---------------------


def sanitize_uri(uri: urllib.parse.SplitResult) -> urllib.parse.SplitResult:
    """Airflow's URI check for ``openai://`` assets: a host and ``/files/<id>``, nothing else."""
    parts = uri.path.strip("/").split("/")
    if not uri.netloc or len(parts) != 2 or parts[0] != "files" or not parts[1]:
        raise ValueError(
            f"An openai:// asset URI is openai://<api host>/files/<file id>, not {uri.geturl()!r}"
        )
    return uri._replace(netloc=uri.netloc.lower(), query="", fragment="")


def convert_asset_to_openlineage(asset: Asset, lineage_context: Any) -> OpenLineageDataset:
    """The OpenLineage dataset of an ``openai://`` asset: the API host as the namespace and
    ``files/<id>`` as the name. Called by the OpenLineage provider only, so its client is there."""
    from airflow.providers.common.compat.openlineage.facet import Dataset as OpenLineageDataset

    parsed = urllib.parse.urlsplit(asset.uri)
    return OpenLineageDataset(namespace=f"{parsed.scheme}://{parsed.netloc}", name=parsed.path.lstrip("/"))
