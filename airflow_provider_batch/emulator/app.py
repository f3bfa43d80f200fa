"""The HTTP surface: OpenAI's Files and Batches routes under ``/v1``, synchronous echo endpoints
(so one emulator can serve as another's ``--upstream``), and admin routes under ``/_emulator``.
Under ``--dialect azure`` the gate serves the same handlers on Azure's paths (``azure.py``), and
the handlers answer with Azure's differences: uploads ``pending`` for a while, the quota of files
without expiry, ``""`` for missing result files, both endpoint forms, fail-fast token limits.

Handlers parse their input by hand so that every rejection, down to a malformed query string,
is a 4xx in OpenAI's error shape with the parameter named; an unexpected exception is the only
path to a 500, and tests make sure garbage never takes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from python_multipart.exceptions import MultipartParseError
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, MalformedRangeHeader, RangeNotSatisfiable, Response
from starlette.routing import Route

from airflow_provider_batch.emulator import validation
from airflow_provider_batch.emulator.azure import (
    DIALECTS,
    azure_error,
    file_not_processed,
    quota_exceeded,
    resource_not_found,
)
from airflow_provider_batch.emulator.engines import EchoEngine, Engine, echo
from airflow_provider_batch.emulator.errors import APIError, error_body, invalid
from airflow_provider_batch.emulator.gate import Gate
from airflow_provider_batch.emulator.runner import DAY, DEFAULT_FILE_TTL, BatchRunner, scaled
from airflow_provider_batch.emulator.settings import Settings, apply_changes
from airflow_provider_batch.emulator.store import BatchRecord, FileRecord, Store, new_id
from airflow_provider_batch.emulator.validation import FileReport
from airflow_provider_batch.limits import ENDPOINTS

MAX_JSON_BODY = 1024 * 1024
AZURE_ENDPOINTS = ENDPOINTS + tuple(endpoint.removeprefix("/v1") for endpoint in ENDPOINTS)
"""Azure takes each batch endpoint with or without ``/v1`` (classic and v1 examples differ)."""
SYNC_ENDPOINTS = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/responses",
    "/v1/embeddings",
    "/v1/moderations",
)


@dataclass
class Emulator:
    """Everything one server instance owns."""

    store: Store
    settings: Settings = field(default_factory=Settings)
    engine: Engine = field(default_factory=EchoEngine)
    dialect: str = "openai"
    runner: BatchRunner = field(init=False)

    def __post_init__(self) -> None:
        self.runner = BatchRunner(self.store, self.engine, self.settings, self.dialect)

    @property
    def azure(self) -> bool:
        return self.dialect == "azure"


def create_app(
    data_dir: Path,
    *,
    settings: Settings | None = None,
    engine: Engine | None = None,
    api_key: str | None = None,
    dialect: str = "openai",
) -> Gate:
    """Build the ASGI application: the routes wrapped in the fault/auth :class:`Gate`."""
    if dialect not in DIALECTS:
        raise ValueError(f"dialect must be one of {', '.join(DIALECTS)}; got {dialect!r}")
    emulator = Emulator(
        store=Store(data_dir), settings=settings or Settings(), engine=engine or EchoEngine(), dialect=dialect
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        emulator.runner.resume_all()
        try:
            yield
        finally:
            await emulator.runner.stop()
            await emulator.engine.aclose()
            emulator.store.close()

    routes = [
        Route("/v1/files", upload_file, methods=["POST"]),
        Route("/v1/files", list_files, methods=["GET"]),
        Route("/v1/files/{file_id}", retrieve_file, methods=["GET"]),
        Route("/v1/files/{file_id}", delete_file, methods=["DELETE"]),
        Route("/v1/files/{file_id}/content", file_content, methods=["GET"]),
        Route("/v1/batches", create_batch, methods=["POST"]),
        Route("/v1/batches", list_batches, methods=["GET"]),
        Route("/v1/batches/{batch_id}", retrieve_batch, methods=["GET"]),
        Route("/v1/batches/{batch_id}/cancel", cancel_batch, methods=["POST"]),
        *(Route(path, sync_endpoint, methods=["POST"]) for path in SYNC_ENDPOINTS),
        Route("/_emulator/health", health, methods=["GET"]),
        Route("/_emulator/settings", read_settings, methods=["GET"]),
        Route("/_emulator/settings", change_settings, methods=["PATCH"]),
        Route("/_emulator/stats", read_stats, methods=["GET"]),
        Route("/_emulator/stats", reset_stats, methods=["DELETE"]),
        Route("/_emulator/lines", read_lines, methods=["GET"]),
        Route("/_emulator/batches/{batch_id}/expire", expire_batch, methods=["POST"]),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={APIError: _api_error, HTTPException: _http_error, Exception: _unexpected},
    )
    app.state.emulator = emulator
    gate = Gate(app, emulator.settings, api_key, dialect)
    app.state.gate = gate
    return gate


def _emulator(request: Request) -> Emulator:
    return request.app.state.emulator


def _json(payload: Any, status: int = 200) -> Response:
    return Response(msgspec.json.encode(payload), status_code=status, media_type="application/json")


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, APIError)
    response = _json(exc.body(), exc.status)
    response.headers.update(exc.headers)
    return response


async def _http_error(request: Request, exc: Exception) -> Response:
    """Routing and parsing errors from Starlette (unknown URL, wrong method, broken multipart)."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404 and _emulator(request).azure:
        return await _api_error(request, resource_not_found())
    if exc.status_code == 404:
        message = f"Invalid URL ({request.method} {request.url.path})"
    elif exc.status_code == 405:
        message = f"Method {request.method} is not allowed for {request.url.path}."
    else:
        message = str(exc.detail)
    return _json(error_body(message), exc.status_code)


async def _unexpected(request: Request, exc: Exception) -> Response:
    return _json(error_body(f"The emulator failed: {type(exc).__name__}: {exc}", type="server_error"), 500)


async def _read_json(request: Request) -> Any:
    body = b""
    async for part in request.stream():
        body += part
        if len(body) > MAX_JSON_BODY:
            raise APIError(413, f"The request body is larger than {MAX_JSON_BODY} bytes.")
    try:
        return msgspec.json.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):  # bad UTF-8 in a string; deep nesting
        raise invalid(
            "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your"
            " HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid"
            " JSON.)"
        ) from None


def _query_int(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise invalid(f"Invalid '{name}': expected an integer, but got '{raw[:50]}'.", param=name) from None
    if not low <= value <= high:
        raise invalid(f"Invalid '{name}': must be between {low} and {high}, got {value}.", param=name)
    return value


# Files -----------------------------------------------------------------------------------------


async def upload_file(request: Request) -> Response:
    emulator = _emulator(request)
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > validation.MAX_UPLOAD_BYTES + 64 * 1024:
        raise invalid("File is too large.", param="file")
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise invalid("The request must be multipart/form-data with 'file' and 'purpose' fields.")
    async with _multipart(request) as form:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise invalid(
                "Missing required parameter: 'file'.", param="file", code="missing_required_parameter"
            )
        purpose = form.get("purpose")
        if not isinstance(purpose, str) or not purpose:
            raise invalid(
                "Missing required parameter: 'purpose'.", param="purpose", code="missing_required_parameter"
            )
        if purpose not in validation.FILE_PURPOSES:
            raise invalid(
                f"Invalid value for 'purpose': '{purpose[:50]}'. Supported values are:"
                f" {', '.join(validation.FILE_PURPOSES)}.",
                param="purpose",
            )
        ttl = _upload_ttl(form, purpose, emulator)
        filename = upload.filename or "upload"
        size = upload.size if upload.size is not None else 0
        if purpose == "batch":
            if not filename.endswith(".jsonl"):
                raise invalid("Invalid file format for Batch API. Must be .jsonl", param="file")
            if size > validation.MAX_BATCH_FILE_BYTES:
                raise invalid("File is too large.", param="file")
        if size > validation.MAX_UPLOAD_BYTES:
            raise invalid("File is too large.", param="file")
        file_id = new_id("file-")
        target = emulator.store.blob_path(file_id)
        await asyncio.to_thread(_copy_upload, upload, target)
    now = time.time()
    record = FileRecord(
        id=file_id,
        bytes=target.stat().st_size,
        created_at=int(now),
        filename=filename,
        purpose=purpose,
        expires_at=None if ttl is None else int(now) + max(1, round(scaled(ttl, emulator.settings))),
        processed_at=now + emulator.settings.azure.file_processing_delay if emulator.azure else 0.0,
    )
    emulator.store.add_file(record)
    return _json(record.to_api(emulator.dialect))


@contextlib.asynccontextmanager
async def _multipart(request: Request) -> AsyncIterator[Any]:
    """The parsed form, spooled to disk past 1 MB. Broken multipart is a 400 on every Starlette:
    older releases let the parser's own error escape."""
    try:
        form = await request.form(max_files=1, max_fields=8)
    except MultipartParseError as exc:
        raise invalid(f"Invalid multipart data: {exc}") from None
    try:
        yield form
    finally:
        await form.close()


def _upload_ttl(form: Any, purpose: str, emulator: Emulator) -> int | None:
    """File expiry in seconds: ``expires_after`` if given, else 30 days for OpenAI's batch files.

    Azure keeps a file without ``expires_after`` forever, and caps how many such files a resource
    holds: an upload over the cap is refused before anything is stored."""
    anchor, seconds = form.get("expires_after[anchor]"), form.get("expires_after[seconds]")
    if anchor is not None or seconds is not None:
        return validation.parse_expires_after({"anchor": anchor, "seconds": seconds}, "expires_after")
    if emulator.azure:
        limit = emulator.settings.azure.max_files_without_expiry
        if emulator.store.count_files_without_expiry() >= limit:
            raise quota_exceeded(limit)
        return None
    return DEFAULT_FILE_TTL if purpose == "batch" else None


def _copy_upload(upload: UploadFile, target: Path) -> None:
    upload.file.seek(0)
    with target.open("wb") as out:
        shutil.copyfileobj(upload.file, out, 1024 * 1024)


async def list_files(request: Request) -> Response:
    order = request.query_params.get("order", "desc")
    if order not in ("asc", "desc"):
        raise invalid(
            f"Invalid value for 'order': '{order[:20]}'. Supported values are: 'asc' and 'desc'.", "order"
        )
    page = _emulator(request).store.list_files(
        purpose=request.query_params.get("purpose"),
        after=request.query_params.get("after"),
        limit=_query_int(request, "limit", 10_000, 1, 10_000),
        ascending=order == "asc",
    )
    return _json(page.to_api(_emulator(request).dialect))


async def retrieve_file(request: Request) -> Response:
    emulator = _emulator(request)
    return _json(emulator.store.get_file(request.path_params["file_id"]).to_api(emulator.dialect))


async def delete_file(request: Request) -> Response:
    file_id = request.path_params["file_id"]
    _emulator(request).store.delete_file(file_id)
    return _json({"id": file_id, "object": "file", "deleted": True})


async def file_content(request: Request) -> Response:
    """Stream the blob (with HTTP Range support, so clients can resume a broken download)."""
    store = _emulator(request).store
    record = store.get_file(request.path_params["file_id"])
    path = store.blob_path(record.id)
    http_range = request.headers.get("range")
    if http_range is not None and "if-range" not in request.headers:
        # FileResponse answers a bad Range with a bare text/plain 400 or 416; check it first with the
        # same parser so that those errors carry OpenAI's envelope like every other error.
        size = path.stat().st_size
        try:
            FileResponse._parse_range_header(http_range, size)
        except MalformedRangeHeader as exc:
            raise invalid(f"Invalid Range header: {exc.content}", param="range") from None
        except RangeNotSatisfiable:
            raise APIError(
                416,
                f"The requested range is not satisfiable for a file of {size} bytes.",
                param="range",
                headers={"content-range": f"bytes */{size}"},
            ) from None
    return FileResponse(path, media_type="application/octet-stream")


# Batches ---------------------------------------------------------------------------------------


async def create_batch(request: Request) -> Response:
    emulator = _emulator(request)
    endpoints = AZURE_ENDPOINTS if emulator.azure else ENDPOINTS
    params = validation.parse_create_batch(await _read_json(request), endpoints)
    try:
        input_file = emulator.store.get_file(params.input_file_id)
    except APIError:
        raise invalid(f"Cannot find file {params.input_file_id}.", param="input_file_id") from None
    if input_file.purpose != "batch":
        raise invalid(
            f"The file {input_file.id} has purpose '{input_file.purpose}'; a batch input file must be"
            " uploaded"
            " with purpose 'batch'.",
            param="input_file_id",
        )
    counted = await _azure_admission(emulator, input_file, params.endpoint) if emulator.azure else None
    now = time.time()
    window = scaled(DAY, emulator.settings)
    batch = BatchRecord(
        id=new_id("batch_"),
        endpoint=params.endpoint,
        input_file_id=params.input_file_id,
        completion_window=params.completion_window,
        status="validating",
        created_at=int(now),
        expires_at=int(now + window),
        metadata=params.metadata,
        deadline=now + window,
        phase_started=now,
        output_expires_after=params.output_expires_after,
        model=counted.model if counted else None,
    )
    admit = _admission_at_create(emulator.runner, counted) if counted else None
    total = emulator.store.add_batch(batch, admit=admit)
    if batch.admitted:
        emulator.runner.enqueued.saw(batch.model, total)
    emulator.runner.wake(batch.id)
    return _json(batch.to_api(emulator.dialect))


async def _azure_admission(emulator: Emulator, input_file: FileRecord, endpoint: str) -> FileReport | None:
    """What Azure refuses at create: a file not processed yet, and, in "fail fast" mode, a batch
    over the enqueued-token quota (a 400 now rather than a batch ``failed`` in validating).

    In fail-fast mode (with a limit set) the file is read and its tokens counted now; the report is
    returned for :func:`_admission_at_create`. A file with problems is not admitted at create (None):
    it fails in ``validating`` as any other."""
    if input_file.status() != "processed":
        raise file_not_processed(input_file.id, input_file.status())
    if not emulator.settings.azure.token_limit_fail_fast or not emulator.settings.counts_tokens():
        return None
    report = await asyncio.to_thread(emulator.runner.read_input, input_file.id, endpoint)
    return None if report.errors or report.model is None else report


def _admission_at_create(runner: BatchRunner, report: FileReport) -> Callable[[BatchRecord, int], None]:
    """Admit a new batch by the runner's own rule (:meth:`BatchRunner.admits`), inside the store
    transaction that inserts it (``others``: what the model's in-flight batches hold, read in that
    transaction), so concurrent creates cannot overfill the quota together; or refuse it with
    Azure's synchronous 400. Admitted, the batch holds its tokens from ``validating`` on."""

    def admit(batch: BatchRecord, others: int) -> None:
        if not runner.admits(report, others):
            runner.enqueued.refuse(report.model)
            raise azure_error(400, "token_limit_exceeded", runner.token_limit_message(report.model))
        batch.admitted, batch.enqueued_tokens = True, report.input_tokens

    return admit


async def list_batches(request: Request) -> Response:
    emulator = _emulator(request)
    page = emulator.store.list_batches(
        after=request.query_params.get("after"), limit=_query_int(request, "limit", 20, 1, 100)
    )
    return _json(page.to_api(emulator.dialect))


async def retrieve_batch(request: Request) -> Response:
    emulator = _emulator(request)
    return _json(emulator.store.get_batch(request.path_params["batch_id"]).to_api(emulator.dialect))


async def cancel_batch(request: Request) -> Response:
    emulator = _emulator(request)

    def cancel(batch: BatchRecord) -> None:
        if batch.status in ("validating", "in_progress", "finalizing"):
            now = time.time()
            batch.status, batch.cancelling_at, batch.phase_started = "cancelling", int(now), now
        elif batch.status != "cancelling":
            # 400 rather than 409: the SDK silently retries 409s.
            raise invalid(f"Cannot cancel a batch with status '{batch.status}'.", param="batch_id")

    batch = emulator.store.update_batch(request.path_params["batch_id"], cancel)
    emulator.runner.wake(batch.id)
    return _json(batch.to_api(emulator.dialect))


async def sync_endpoint(request: Request) -> Response:
    """The echo engine as a live endpoint (``POST /v1/chat/completions`` and friends)."""
    body = await _read_json(request)
    if not isinstance(body, dict):
        raise invalid("The request body must be a JSON object.")
    status, payload = await asyncio.to_thread(echo, request.url.path, body)
    return _json(payload, status)


# Admin -----------------------------------------------------------------------------------------


async def health(request: Request) -> Response:
    return _json({"status": "ok"})


async def read_settings(request: Request) -> Response:
    return _json(_emulator(request).settings.to_json())


async def change_settings(request: Request) -> Response:
    settings = _emulator(request).settings
    changes = await _read_json(request)
    try:
        apply_changes(settings, changes)
    except ValueError as exc:
        raise invalid(str(exc)) from None
    if isinstance(changes.get("faults"), dict) and "seed" in changes["faults"]:
        request.app.state.gate.reseed()
    return _json(settings.to_json())


def _stats(request: Request) -> dict[str, Any]:
    """The gate's call and fault statistics, and the enqueued tokens per model
    (``runner.EnqueuedTokens``)."""
    emulator = _emulator(request)
    enqueued = emulator.runner.enqueued.to_json(emulator.store.enqueued_tokens())
    return {**request.app.state.gate.stats(), "enqueued_tokens": enqueued}


async def read_stats(request: Request) -> Response:
    return _json(_stats(request))


async def reset_stats(request: Request) -> Response:
    """Reset the call and fault statistics, the enqueued-token peaks and the line counts."""
    request.app.state.gate.reset_stats()
    _emulator(request).runner.lines.clear()
    _emulator(request).runner.enqueued.clear()
    return _json(_stats(request))


async def read_lines(request: Request) -> Response:
    """Batch lines processed, in total and per ``custom_id`` (``runner.LineCounts``)."""
    return _json(_emulator(request).runner.lines.to_json())


async def expire_batch(request: Request) -> Response:
    """Close the batch's completion window now: it expires at its next step."""
    emulator = _emulator(request)

    def expire(batch: BatchRecord) -> None:
        if batch.status in ("completed", "failed", "expired", "cancelled"):
            raise invalid(f"Cannot expire a batch with status '{batch.status}'.", param="batch_id")
        batch.deadline = time.time()

    batch = emulator.store.update_batch(request.path_params["batch_id"], expire)
    emulator.runner.wake(batch.id)
    return _json(batch.to_api(emulator.dialect))
