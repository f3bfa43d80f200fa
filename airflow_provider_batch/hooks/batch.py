"""``OpenAIBatchHook``: the Files and Batches endpoints for OpenAI, Azure OpenAI and any
OpenAI-compatible server, behind one connection and one retry policy.

The connection (type ``openai_batch``; connections of the official provider's type ``openai``
are read as that provider documents them, ``openai_client_kwargs`` included):

- password: the API key;
- host: the base URL (or extra ``base_url``), e.g. ``http://127.0.0.1:8000/v1`` for the emulator;
- extra ``organization``, ``project``, ``timeout`` (seconds per HTTP call), ``default_headers``
  and ``default_query`` (objects), ``max_connections`` (HTTP connections per client, default 50;
  see :data:`MAX_CONNECTIONS`);
- extra ``max_retries``, ``retry_initial_wait``, ``retry_max_wait``, ``retry_max_total``: the
  :class:`~airflow_provider_batch.hooks.retry.RetryPolicy` (5 retries, 1 s doubling to 60 s,
  300 s in all by default);
- extra ``api_type: "azure"`` with ``api_version`` and ``azure_endpoint`` (or host) for Azure
  OpenAI, which needs ``AzureOpenAI`` and its deployment-name models.

Sync calls run on workers; the async surface (``aget_batch``, ``acancel_batch``, ``apoll_batch``,
``apoll_batches``, and ``ascan_batches`` / ``apoll_each`` for the triggerer's status observer) is
what the triggers need and never blocks the event loop: the connection is
resolved with Airflow's async connection API and the client is built in a worker thread.

Many batches (a job's round) are observed through the batch listing, ``ceil(N / 100)`` calls for
``N`` batches, instead of one call per batch (:meth:`OpenAIBatchHook.poll_batches`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, BinaryIO, TypeVar

import httpx2
import openai
from airflow.providers.common.compat.connection import get_async_connection, get_async_extra_dejson
from airflow.sdk import BaseHook

from airflow_provider_batch.events import build_event, build_round_event
from airflow_provider_batch.exceptions import OpenAIBatchAPIError, OpenAIBatchConfigError, OpenAIBatchError
from airflow_provider_batch.hooks.retry import RetryPolicy, is_transient
from airflow_provider_batch.status import BatchSnapshot, Decision, PollFailure, PollSchedule, Wait
from airflow_provider_batch.watch import RoundWait, Waiter

if TYPE_CHECKING:
    from airflow.sdk import Connection, ObjectStoragePath
    from openai.types import Batch, FileObject, FilePurpose

log = logging.getLogger(__name__)
Observed = TypeVar("Observed")

IDEMPOTENCY_KEY = "airflow_idempotency_key"
"""Metadata key under which every batch we create carries its idempotency key."""
CLOCK_SKEW = 300
"""Seconds of tolerance between our clock and the server's when bounding a metadata lookup."""
DOWNLOAD_CHUNK = 1024 * 1024
UPLOAD_PROCESSING_TIMEOUT = 30 * 60
"""Seconds to wait for an upload to be processed (Azure) before giving up, as the SDK's own wait."""
OPENAI_DASHBOARD = "https://platform.openai.com"
OPENAI_API = "https://api.openai.com/v1"
"""The SDK's base URL when a connection names none."""
MAX_CONNECTIONS = 50
"""HTTP connections per client, by default (the SDK's own default is 1,000).

A triggerer's triggers share one client, so its pool holds as many connections as triggers
polled at the same moment, and the HTTP stack walks the whole pool, with system calls per idle
connection, on every request and every release: at 1,000 triggers that walk was 43 % of the
triggerer's CPU (``benchmarks/triggerer_scale.py --profile``). Fifty connections still serve
hundreds of status calls a second; a request beyond them waits for a free connection within the
call's ``timeout``.
"""
LIST_PAGE_SIZE = 100
"""Batches per page of ``GET /v1/batches``: the API's maximum, so a look at N batches costs
``ceil(N / 100)`` calls."""
EXTRA_LIST_PAGES = 2
"""Pages a look at many batches reads beyond ``ceil(N / 100)``: room for batches that other work
on the account created after them. Batches still not listed are then retrieved one by one."""
POLL_CONCURRENCY = 8
"""Batches retrieved at the same time (async) when the listing did not show them: enough to keep
a look short, few enough not to take over the shared client's connections."""


@dataclass(frozen=True)
class ClientConfig:
    """Everything needed to build an OpenAI client; hashable, so async clients can be shared.

    The key is kept out of ``repr`` so the config can appear in logs and tracebacks.
    """

    api_key: str | None = field(repr=False)
    base_url: str | None = None
    organization: str | None = None
    project: str | None = None
    timeout: float = 600.0
    default_headers: tuple[tuple[str, str], ...] = ()
    default_query: tuple[tuple[str, str], ...] = ()
    api_type: str = "openai"
    api_version: str | None = None
    azure_endpoint: str | None = None
    max_connections: int = MAX_CONNECTIONS
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    @classmethod
    def from_connection(cls, conn: Connection, extra: dict[str, Any]) -> ClientConfig:
        """Read a connection of type ``openai_batch`` (or the official provider's ``openai``)."""
        extra = _flatten_client_kwargs(conn.conn_id, extra)
        api_type = str(extra.get("api_type") or "openai").lower()
        if api_type not in ("openai", "azure"):
            raise ValueError(f"connection {conn.conn_id!r}: extra 'api_type' must be 'openai' or 'azure'")
        host = conn.host or None
        if host and conn.schema and "://" not in host:
            host = f"{conn.schema}://{host}"
        if host and conn.port and "://" in host and host.count(":") == 1:
            host = f"{host}:{conn.port}"
        base_url = extra.get("base_url") or (host if api_type == "openai" else None)
        headers = extra.get("default_headers") or {}
        query = extra.get("default_query") or {}
        for name, value in (("default_headers", headers), ("default_query", query)):
            if not isinstance(value, dict):
                raise ValueError(f"connection {conn.conn_id!r}: extra {name!r} must be an object")
        max_connections = int(extra.get("max_connections", MAX_CONNECTIONS))
        if max_connections < 1:
            raise ValueError(f"connection {conn.conn_id!r}: extra 'max_connections' must be at least 1")
        return cls(
            api_key=extra.get("api_key") or conn.password or None,
            base_url=base_url,
            organization=extra.get("organization") or None,
            project=extra.get("project") or None,
            timeout=float(extra.get("timeout", 600.0)),
            default_headers=tuple(sorted((str(k), str(v)) for k, v in headers.items())),
            default_query=tuple(sorted((str(k), str(v)) for k, v in query.items())),
            api_type=api_type,
            api_version=extra.get("api_version") or None,
            azure_endpoint=extra.get("azure_endpoint") or (host if api_type == "azure" else None),
            max_connections=max_connections,
            retry=RetryPolicy.from_extra(extra),
        )

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments shared by the four client classes (sync/async, OpenAI/Azure)."""
        kwargs: dict[str, Any] = {
            "api_key": self.api_key,
            "organization": self.organization,
            "project": self.project,
            "timeout": self.timeout,
            "max_retries": 0,  # the hook's RetryPolicy owns retries; see hooks/retry.py
            "default_headers": dict(self.default_headers) or None,
            "default_query": dict(self.default_query) or None,
        }
        if self.api_type == "azure":
            if not self.azure_endpoint or not self.api_version:
                raise ValueError(
                    "an Azure OpenAI connection needs 'azure_endpoint' (or host) and 'api_version'"
                )
            kwargs.update(api_version=self.api_version, azure_endpoint=self.azure_endpoint)
        else:
            kwargs["base_url"] = self.base_url
        return kwargs

    def build(self, *, asynchronous: bool) -> openai.OpenAI | openai.AsyncOpenAI:
        """Build the client this configuration describes. Costs tens of milliseconds of CPU (TLS
        context), so async callers run it in a thread and share the result."""
        if self.api_type == "azure":
            cls: type = openai.AsyncAzureOpenAI if asynchronous else openai.AzureOpenAI
        else:
            cls = openai.AsyncOpenAI if asynchronous else openai.OpenAI
        http_client_cls = openai.DefaultAsyncHttpxClient if asynchronous else openai.DefaultHttpxClient
        limits = httpx2.Limits(
            max_connections=self.max_connections, max_keepalive_connections=self.max_connections
        )
        return cls(**self.client_kwargs(), http_client=http_client_cls(limits=limits))


CLIENT_KWARGS_EXTRA = "openai_client_kwargs"
"""The official provider's extra: keyword arguments for the ``OpenAI`` client."""
HONOURED_CLIENT_KWARGS = frozenset(
    {
        "api_key",
        "base_url",
        "organization",
        "project",
        "timeout",
        "max_retries",
        "default_headers",
        "default_query",
    }
)
"""The ``openai_client_kwargs`` this hook applies; any other one is refused, never dropped."""


def _flatten_client_kwargs(conn_id: str, extra: dict[str, Any]) -> dict[str, Any]:
    """The extra with the official provider's ``openai_client_kwargs`` merged in, so that a
    connection written for ``apache-airflow-providers-openai`` means the same here.

    As there, ``api_key`` and ``base_url`` in it win over the password and the host. A setting this
    hook cannot honour is refused with the reason: silently dropping ``base_url`` would send the
    traffic, and the key, to api.openai.com instead of the gateway the user configured.
    """
    client_kwargs = extra.get(CLIENT_KWARGS_EXTRA)
    auth_type = extra.get("auth_type", "api_key")
    if auth_type != "api_key":
        raise ValueError(
            f"connection {conn_id!r}: extra auth_type={auth_type!r} is not supported by the OpenAI Batch"
            " provider; use an API key (the connection's password, or openai_client_kwargs.api_key)"
        )
    if client_kwargs is None:
        return extra
    if not isinstance(client_kwargs, dict):
        raise ValueError(f"connection {conn_id!r}: extra {CLIENT_KWARGS_EXTRA!r} must be an object")
    if unknown := sorted(set(client_kwargs) - HONOURED_CLIENT_KWARGS):
        raise ValueError(
            f"connection {conn_id!r}: {CLIENT_KWARGS_EXTRA} {', '.join(unknown)} cannot be applied by the"
            f" OpenAI Batch provider (it applies {', '.join(sorted(HONOURED_CLIENT_KWARGS))}); remove"
            " them or set the equivalent extra of an openai_batch connection"
        )
    merged = dict(extra)
    for name, value in client_kwargs.items():
        if name not in ("api_key", "base_url") and extra.get(name) not in (None, value):
            raise ValueError(
                f"connection {conn_id!r}: {name!r} is set twice, differently, in extra and in"
                f" {CLIENT_KWARGS_EXTRA}; keep one"
            )
        merged[name] = value
    return merged


@dataclass
class _Lease:
    client: asyncio.Future[openai.AsyncOpenAI]
    users: int = 0


class _SharedAsyncClients:
    """One ``AsyncOpenAI`` per configuration per event loop, counted by its users.

    A triggerer running a thousand triggers on one connection shares one client: one connection
    pool, one TLS context. Building a client costs ~30 ms of CPU, so it happens once, in a thread,
    and triggers that arrive while it is being built wait for that same build. The last user to
    leave closes the client.
    """

    def __init__(self) -> None:
        self._by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[ClientConfig, _Lease]] = (
            weakref.WeakKeyDictionary()
        )

    def _leases(self) -> dict[ClientConfig, _Lease]:
        return self._by_loop.setdefault(asyncio.get_running_loop(), {})

    async def acquire(self, config: ClientConfig) -> openai.AsyncOpenAI:
        leases = self._leases()
        lease = leases.get(config)
        if lease is None:
            build = asyncio.ensure_future(asyncio.to_thread(config.build, asynchronous=True))
            lease = leases[config] = _Lease(build)  # type: ignore[arg-type]
        lease.users += 1
        try:
            return await asyncio.shield(lease.client)
        except BaseException:
            await self.release(config)
            raise

    async def release(self, config: ClientConfig) -> None:
        leases = self._leases()
        lease = leases.get(config)
        if lease is None:
            return
        lease.users -= 1
        if lease.users > 0:
            return
        del leases[config]
        if lease.client.done() and not lease.client.cancelled() and lease.client.exception() is None:
            await lease.client.result().close()

    def users(self, config: ClientConfig) -> int:
        lease = self._leases().get(config)
        return lease.users if lease else 0


SHARED_ASYNC_CLIENTS = _SharedAsyncClients()


class OpenAIBatchHook(BaseHook):
    """Interact with the OpenAI Batch and Files API.

    :param conn_id: an ``openai_batch`` (or ``openai``) connection id.
    """

    conn_name_attr = "conn_id"
    default_conn_name = "openai_default"
    conn_type = "openai_batch"
    hook_name = "OpenAI Batch"

    def __init__(self, conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.conn_id = conn_id
        self._async_config: ClientConfig | None = None

    # clients -----------------------------------------------------------------------------------

    @cached_property
    def config(self) -> ClientConfig:
        """The client configuration, resolved once through the synchronous connection API."""
        conn = self.get_connection(self.conn_id)
        return ClientConfig.from_connection(conn, conn.extra_dejson)

    async def aconfig(self) -> ClientConfig:
        """The client configuration, resolved without blocking the event loop.

        ``get_connection`` and ``extra_dejson`` call the supervisor synchronously; on a trigger's
        loop that blocks every other trigger (and can deadlock before Airflow 3.3.2), so the async
        connection API is used, through the compat helpers that fall back to a thread.
        """
        if self._async_config is None:
            conn = await get_async_connection(self.conn_id, hook=self)
            extra = await get_async_extra_dejson(conn)
            self._async_config = ClientConfig.from_connection(conn, extra)
        return self._async_config

    def connection_extra(self, name: str) -> Any:
        """One field of the connection's extra that is not a client setting (``prices``), or None."""
        return self.get_connection(self.conn_id).extra_dejson.get(name)

    @property
    def resolved_config(self) -> ClientConfig:
        """The configuration already resolved, by whichever path (async first: no sync lookup)."""
        return self._async_config or self.config

    @property
    def retry_policy(self) -> RetryPolicy:
        return self.resolved_config.retry

    def batch_url(self, batch_id: str) -> str:
        """Where a person can look at the batch: OpenAI's dashboard, or the server's own URL."""
        config = self.config
        if config.api_type == "azure":
            endpoint = str(config.azure_endpoint).rstrip("/")
            return f"{endpoint}/openai/batches/{batch_id}?api-version={config.api_version}"
        if not config.base_url or "api.openai.com" in config.base_url:
            return f"{OPENAI_DASHBOARD}/batches/{batch_id}"
        return f"{config.base_url.rstrip('/')}/batches/{batch_id}"

    @property
    def server(self) -> str:
        """``connection 'x' (https://...)``: how errors say where a call went, never with the key.
        Only the id when the connection itself cannot be read: an error message must not fail."""
        try:
            config = self.resolved_config
        except Exception:
            return f"connection {self.conn_id!r}"
        url = config.azure_endpoint if config.api_type == "azure" else config.base_url or OPENAI_API
        return f"connection {self.conn_id!r} ({url})"

    @contextlib.contextmanager
    def explaining(self, action: str) -> Iterator[None]:
        """Turn an SDK error that the retry policy gave up on into :meth:`explain`'s, raised
        without the SDK's and the retry machinery's traceback: the message says it all."""
        try:
            yield
        except openai.OpenAIError as exc:
            raise self.explain(exc, action) from None

    def explain(self, exc: openai.OpenAIError, action: str) -> OpenAIBatchError:
        """The error a person can act on: what was being done, where, what the server said, what
        to check. A refused key is a configuration error (not retried); the rest may pass."""
        policy = self.retry_policy
        tried = f"after up to {policy.max_attempts} attempts in {policy.max_total:.0f} s"
        if isinstance(exc, openai.APIConnectionError):
            cause = exc.__cause__
            detail = f"{type(cause).__name__}: {cause}" if cause else str(exc)
            kind = (
                "did not answer in time"
                if isinstance(exc, openai.APITimeoutError)
                else "could not be reached"
            )
            text = (
                f"{action} failed: {self.server} {kind} ({detail}), {tried}. Check the connection's host"
                " or base URL, and that the workers and the triggerer can reach it."
            )
            return OpenAIBatchAPIError(self._without_key(text))
        status = exc.status_code if isinstance(exc, openai.APIStatusError) else None
        said = (
            f"HTTP {status}: {_server_message(exc)}" if isinstance(exc, openai.APIStatusError) else str(exc)
        )
        if status in (401, 403):
            text = (
                f"{action} failed: {self.server} refused the API key ({said}). Put a valid key in the"
                " connection's password (or its openai_client_kwargs.api_key)."
            )
            return OpenAIBatchConfigError(self._without_key(text))
        if status == 404:
            hint = (
                " Check the id, that the key belongs to the project that owns it, and the base URL"
                " (OpenAI's ends in /v1)."
            )
        elif is_transient(exc):
            hint = f" The server kept failing {tried}; the task's retries will try again."
        else:
            hint = ""
        code = getattr(exc, "code", None)
        return OpenAIBatchAPIError(
            self._without_key(f"{action} failed: {self.server} answered {said}.{hint}"),
            code=code if isinstance(code, str) else None,
        )

    def _without_key(self, text: str) -> str:
        key = self.resolved_config.api_key
        return text.replace(key, "***") if key else text

    def get_conn(self) -> openai.OpenAI:
        """The synchronous client (``OpenAI`` or ``AzureOpenAI``)."""
        return self._client

    @cached_property
    def _client(self) -> openai.OpenAI:
        return self.config.build(asynchronous=False)  # type: ignore[return-value]

    async def aget_conn(self) -> openai.AsyncOpenAI:
        """The asynchronous client shared on this event loop, kept open for the loop's lifetime.

        Long-lived async code (the trigger) should prefer :meth:`async_client`, which hands the
        client back when done.
        """
        return await SHARED_ASYNC_CLIENTS.acquire(await self.aconfig())

    @contextlib.asynccontextmanager
    async def async_client(self) -> AsyncIterator[openai.AsyncOpenAI]:
        """Borrow the shared async client; the last borrower on the loop closes it."""
        config = await self.aconfig()
        client = await SHARED_ASYNC_CLIENTS.acquire(config)
        try:
            yield client
        finally:
            await SHARED_ASYNC_CLIENTS.release(config)

    def test_connection(self) -> tuple[bool, str]:
        """One cheap authenticated call, for the UI's Test button. Never echoes the key."""
        try:
            self.get_conn().batches.list(limit=1)
        except openai.APIStatusError as exc:
            return False, f"HTTP {exc.status_code}: {_server_message(exc)}"
        except Exception as exc:
            return False, f"{type(exc).__name__}: {exc}"
        return True, "Connection successfully tested: the Batch API answered."

    # calls ---------------------------------------------------------------------------------------

    def _call(self, operation: Any, *args: Any, **kwargs: Any) -> Any:
        for attempt in self.retry_policy.retrying():
            with attempt:
                return operation(*args, **kwargs)
        raise AssertionError("unreachable: tenacity reraises the last error")

    async def _acall(self, operation: Any, *args: Any, **kwargs: Any) -> Any:
        async for attempt in (await self.aconfig()).retry.async_retrying():
            with attempt:
                return await operation(*args, **kwargs)
        raise AssertionError("unreachable: tenacity reraises the last error")

    # files -----------------------------------------------------------------------------------------

    def upload_file(
        self,
        source: str | os.PathLike[str] | ObjectStoragePath | BinaryIO,
        *,
        purpose: FilePurpose = "batch",
        filename: str | None = None,
        expires_after_seconds: int | None = None,
    ) -> FileObject:
        """Upload a file, streamed from disk or object storage (never read whole into memory).

        :param source: a local path, an ``ObjectStoragePath``, or a binary file object (which must
            be seekable to be retried).
        :param filename: the name sent to the server (defaults to the source's name); batch input
            files must end in ``.jsonl``.
        :param expires_after_seconds: delete the file this long after upload (3,600 to 2,592,000);
            the API's default for batch files is 30 days.
        """
        extra_body = None
        if expires_after_seconds is not None:
            extra_body = {"expires_after": {"anchor": "created_at", "seconds": expires_after_seconds}}

        def send() -> FileObject:
            with _open_source(source) as (name, stream):
                return self.get_conn().files.create(
                    file=(filename or name, stream), purpose=purpose, extra_body=extra_body
                )

        return self._wait_until_processed(self._call(send))

    def _wait_until_processed(self, uploaded: FileObject) -> FileObject:
        """Azure OpenAI processes an upload asynchronously (``pending``, then ``processed``) and
        refuses a batch on a file that is not processed yet; OpenAI answers ``processed`` at once.

        Polls from 0.1 s, doubling to 5 s: an upload is usually processed within seconds, and the
        SDK's own ``wait_for_processing`` sleeps 5 s before its first look.
        """
        pause = 0.1
        deadline = time.monotonic() + UPLOAD_PROCESSING_TIMEOUT
        while uploaded.status not in ("processed", "error", "deleted"):
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"file {uploaded.id} was still {uploaded.status!r} after {UPLOAD_PROCESSING_TIMEOUT} s"
                )
            time.sleep(pause)
            pause = min(pause * 2, 5.0)
            uploaded = self._call(self.get_conn().files.retrieve, uploaded.id)
        return uploaded

    def download_file(
        self, file_id: str, destination: str | os.PathLike[str] | ObjectStoragePath | BinaryIO
    ) -> int:
        """Stream a file's content to ``destination``; return the bytes written.

        The body is copied in 1 MiB blocks, never held whole. A transient failure part-way resumes
        with an HTTP ``Range`` request from the bytes already written (large outputs are known to
        break mid-download), or starts over if the server ignores the range.
        """
        with _open_destination(destination) as sink:
            start = sink.tell()
            written = 0
            for attempt in self.retry_policy.retrying():
                with attempt:
                    headers = {"Range": f"bytes={written}-"} if written else None
                    with self.get_conn().files.with_streaming_response.content(
                        file_id, extra_headers=headers
                    ) as response:
                        if written and response.status_code != 206:
                            sink.seek(start)
                            sink.truncate()
                            written = 0
                        for block in response.iter_bytes(DOWNLOAD_CHUNK):
                            sink.write(block)
                            written += len(block)
            return written

    def delete_file(self, file_id: str) -> bool:
        return bool(self._call(self.get_conn().files.delete, file_id).deleted)

    # batches ---------------------------------------------------------------------------------------

    def create_batch(
        self,
        input_file_id: str,
        endpoint: str,
        *,
        completion_window: str = "24h",
        metadata: dict[str, str] | None = None,
        output_expires_after_seconds: int | None = None,
        idempotency_key: str | None = None,
    ) -> Batch:
        """Create a batch exactly once, even when responses are lost.

        The batch carries ``idempotency_key`` (a new UUID when not given) in its metadata under
        :data:`IDEMPOTENCY_KEY`. A create is never replayed blindly: after a transient failure,
        whose batch may or may not exist (a 5xx, a timeout, a dropped connection), each new attempt
        first looks the key up and returns the batch it finds.
        """
        key = idempotency_key or uuid.uuid4().hex
        tagged = {**(metadata or {}), IDEMPOTENCY_KEY: key}
        extra_body = None
        if output_expires_after_seconds is not None:
            extra_body = {
                "output_expires_after": {"anchor": "created_at", "seconds": output_expires_after_seconds}
            }
        started = time.time()
        for attempt in self.retry_policy.retrying():
            with attempt:
                if attempt.retry_state.attempt_number > 1:
                    earlier = self.find_batch_by_metadata(
                        IDEMPOTENCY_KEY, key, created_after=started - CLOCK_SKEW
                    )
                    if earlier is not None:
                        log.info("Batch %s was created by an attempt whose response was lost", earlier.id)
                        return earlier
                batch = self.get_conn().batches.create(
                    input_file_id=input_file_id,
                    endpoint=endpoint,  # type: ignore[arg-type]
                    completion_window=completion_window,  # type: ignore[arg-type]
                    metadata=tagged,
                    extra_body=extra_body,
                )
                log.info("Created batch %s", batch.id)
                return batch
        raise AssertionError("unreachable: tenacity reraises the last error")

    def get_batch(self, batch_id: str) -> Batch:
        return self._call(self.get_conn().batches.retrieve, batch_id)

    def cancel_batch(self, batch_id: str) -> Batch:
        return self._call(self.get_conn().batches.cancel, batch_id)

    def list_batches(self, page_size: int = 100) -> Iterator[Batch]:
        """Every batch, newest first, page by page (each page retried on its own)."""
        after: str | None = None
        while True:
            kwargs = {"limit": page_size} | ({"after": after} if after else {})
            page = self._call(self.get_conn().batches.list, **kwargs)
            yield from page.data
            if not page.has_more or not page.data:
                return
            after = page.data[-1].id

    def find_batch_by_metadata(
        self, key: str, value: str, *, created_after: float | None = None, max_batches: int = 10_000
    ) -> Batch | None:
        """The newest batch whose ``metadata[key] == value`` (see :meth:`find_batches_by_metadata`)."""
        return self._find_by_metadata(key, {value}, created_after, max_batches).get(value)

    def recent_batches(self, *, created_after: float) -> list[BatchSnapshot]:
        """Every batch created after ``created_after`` (unix seconds), newest first: one walk over the
        listing, as an enqueued-token budget reads what is in flight."""
        recent = []
        for batch in self.list_batches():
            if batch.created_at < created_after:
                break
            recent.append(snapshot_of(batch))
        return recent

    def find_batches_by_metadata(
        self,
        key: str,
        values: Collection[str],
        *,
        created_after: float | None = None,
        max_batches: int = 10_000,
    ) -> dict[str, BatchSnapshot]:
        """For each of ``values`` found, the newest batch whose ``metadata[key]`` is that value.

        One walk over the list, newest first, for all the values (a job re-attaching its shards
        looks for tens of them: one walk each would list the account's batches tens of times). It
        stops once every value is found, at the first batch created before ``created_after`` (unix
        seconds), or after ``max_batches`` batches, so it stays bounded on accounts with a long
        history. Values not found are absent from the answer.
        """
        found = self._find_by_metadata(key, set(values), created_after, max_batches)
        return {value: snapshot_of(batch) for value, batch in found.items()}

    def _find_by_metadata(
        self, key: str, values: set[str], created_after: float | None, max_batches: int
    ) -> dict[str, Batch]:
        found: dict[str, Batch] = {}
        if not values:
            return found
        for seen, batch in enumerate(self.list_batches(), start=1):
            if created_after is not None and batch.created_at < created_after:
                break
            value = (batch.metadata or {}).get(key)
            if value in values and value not in found:
                found[value] = batch
                if len(found) == len(values):
                    break
            if seen >= max_batches:
                missing = ", ".join(sorted(values - found.keys()))
                log.warning("Stopped looking for %s=%s after %d batches", key, missing, seen)
                break
        return found

    # async surface (triggers, deferrable sensors) ----------------------------------------------

    async def aget_batch(self, batch_id: str) -> Batch:
        async with self.async_client() as client:
            return await self._acall(client.batches.retrieve, batch_id)

    async def acancel_batch(self, batch_id: str) -> Batch:
        async with self.async_client() as client:
            return await self._acall(client.batches.cancel, batch_id)

    # observing a batch: one attempt, translated for status.decide() -------------------------------

    def poll_batch(self, batch_id: str) -> BatchSnapshot | PollFailure:
        """Observe a batch once, never raising: a blip is retried at once under the retry policy
        (seconds, not the minutes until the next poll); what still fails comes back as a
        ``PollFailure`` for :func:`~airflow_provider_batch.status.decide` to count, so only a
        sustained outage ends a wait."""
        try:
            return read_snapshot(self._call(self.get_conn().batches.with_raw_response.retrieve, batch_id))
        except openai.OpenAIError as exc:
            return poll_failure(exc)

    async def apoll_batch(self, batch_id: str) -> BatchSnapshot | PollFailure:
        """:meth:`poll_batch` for the event loop."""
        try:
            async with self.async_client() as client:
                return read_snapshot(await self._acall(client.batches.with_raw_response.retrieve, batch_id))
        except openai.OpenAIError as exc:
            return poll_failure(exc)

    # observing many batches: the listing, then one by one what it did not show ---------------------

    def poll_batches(
        self, batch_ids: Sequence[str], *, created_after: float | None = None
    ) -> dict[str, BatchSnapshot | PollFailure]:
        """Observe many batches at once with as few calls as possible, never raising.

        The batch listing (``GET /v1/batches``, 100 a page, newest first) is read until every
        batch was seen, or a page ends before ``created_after`` (unix seconds by the server's
        clock: the oldest creation time of the batches, when the caller knows it), or after
        ``ceil(N / 100) + 2`` pages (:data:`EXTRA_LIST_PAGES`). So N batches created together cost
        ``ceil(N / 100)`` calls instead of N. A batch the listing did not show is retrieved on its
        own (:meth:`poll_batch`). A listing that fails under the retry policy is a ``PollFailure``
        for every batch not seen yet, and nothing is retrieved one by one: with the listing
        failing, N more calls would most likely fail too, each after its own retries.

        :return: every id of ``batch_ids``, with its snapshot or why it could not be observed.
        """
        scan = ListingScan(batch_ids, created_after)
        try:
            while (query := scan.next_query()) is not None:
                scan.take(self._call(self.get_conn().batches.with_raw_response.list, **query))
        except openai.OpenAIError as exc:
            scan.fail(poll_failure(exc))
        return scan.answer({batch_id: self.poll_batch(batch_id) for batch_id in scan.unseen()})

    async def apoll_batches(
        self, batch_ids: Sequence[str], *, created_after: float | None = None
    ) -> dict[str, BatchSnapshot | PollFailure]:
        """:meth:`poll_batches` for the event loop; the batches the listing did not show are
        retrieved concurrently, :data:`POLL_CONCURRENCY` at a time."""
        scan = await self.ascan_batches(batch_ids, created_after=created_after)
        return scan.answer(await self.apoll_each(scan.unseen()))

    async def ascan_batches(
        self,
        batch_ids: Sequence[str],
        *,
        created_after: float | None = None,
        max_pages: int | None = None,
        locate: Collection[str] = (),
    ) -> ListingScan:
        """Read the batch listing for ``batch_ids`` (at most ``max_pages`` pages, by default
        ``ceil(N / 100) + 2``) and return the scan: what it saw, where (and where the batches of
        ``locate`` were, if the pages showed them), and what it did not reach. A failing listing is a
        ``PollFailure`` for every batch not seen yet."""
        scan = ListingScan(batch_ids, created_after, max_pages=max_pages, locate=locate)
        try:
            async with self.async_client() as client:
                while (query := scan.next_query()) is not None:
                    scan.take(await self._acall(client.batches.with_raw_response.list, **query))
        except openai.OpenAIError as exc:
            scan.fail(poll_failure(exc))
        return scan

    async def apoll_each(self, batch_ids: Sequence[str]) -> dict[str, BatchSnapshot | PollFailure]:
        """Retrieve each batch on its own (:meth:`apoll_batch`), :data:`POLL_CONCURRENCY` at a time."""
        slots = asyncio.Semaphore(POLL_CONCURRENCY)

        async def retrieve(batch_id: str) -> BatchSnapshot | PollFailure:
            async with slots:
                return await self.apoll_batch(batch_id)

        singles = await asyncio.gather(*(retrieve(batch_id) for batch_id in batch_ids))
        return dict(zip(batch_ids, singles, strict=True))

    # waiting ---------------------------------------------------------------------------------------

    def wait_for_batch(
        self,
        batch_id: str,
        *,
        end_time: float,
        schedule: PollSchedule | None = None,
        max_consecutive_failures: int = 5,
    ) -> dict[str, Any]:
        """Poll until the wait ends; return the same event payload the trigger would yield, so
        the deferrable and the synchronous paths finish through the same code."""
        wait = Wait(batch_id, end_time, schedule or PollSchedule(), max_consecutive_failures)
        decision = self._wait_until_done(wait, lambda: self.poll_batch(batch_id))
        return build_event(batch_id, decision, wait.last)

    def wait_for_batches(
        self,
        batch_ids: Sequence[str],
        *,
        end_time: float,
        schedule: PollSchedule | None = None,
        max_consecutive_failures: int = 5,
        round_number: int = 1,
        created_after: float | None = None,
        wake_at: float | None = None,
    ) -> dict[str, Any]:
        """Wait for a job's round of batches until every one ended or ``end_time`` passed (with
        ``wake_at``, wait for room instead: see :class:`~airflow_provider_batch.watch.RoundWait`); return
        the event payload :class:`~airflow_provider_batch.triggers.job.OpenAIBatchJobTrigger` would
        yield (:func:`~airflow_provider_batch.events.build_round_event`), so the deferrable and the
        synchronous paths finish through the same code. Each look costs :meth:`poll_batches`'s
        calls for the batches not yet ended.

        :param created_after: passed on to :meth:`poll_batches` (the round's oldest creation time).
        """
        wait = RoundWait(
            batch_ids,
            end_time,
            schedule or PollSchedule(),
            max_consecutive_failures,
            round_number=round_number,
            until_any=wake_at is not None,
            wake_at=wake_at,
        )
        decision = self._wait_until_done(
            wait, lambda: self.poll_batches(wait.unfinished(), created_after=created_after)
        )
        return build_round_event(decision, wait.batch_ids, wait.last)

    def _wait_until_done(self, wait: Waiter[Observed], look: Callable[[], Observed]) -> Decision:
        """The synchronous waiting loop: pause, look, let ``wait`` decide, until it says done."""
        pause = wait.pause(time.time())
        while True:
            time.sleep(pause)
            step = wait.observe(look(), now=time.time())
            step.log_to(log)
            if step.decision.done:
                return step.decision
            pause = step.pause


def snapshot_of(batch: Batch) -> BatchSnapshot:
    return BatchSnapshot.from_api(batch.model_dump())


def read_snapshot(response: Any) -> BatchSnapshot | PollFailure:
    """A status observation read straight from a raw response's JSON (``with_raw_response``).

    A poll needs a handful of fields; having the SDK build its pydantic ``Batch`` and dumping it back
    to a dict cost about 0.4 ms of CPU per call, an eighth of a poll, on a triggerer loop that a
    thousand triggers share. A body that is not a batch object counts as a failed observation.
    """
    try:
        body = json.loads(response.content)
    except (ValueError, TypeError, AttributeError) as exc:
        return PollFailure(retryable=True, message=f"the server's answer is not a batch object: {exc!r}")
    return _snapshot_from_json(body)


def _snapshot_from_json(body: Any) -> BatchSnapshot | PollFailure:
    try:
        return BatchSnapshot.from_api(body)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        return PollFailure(retryable=True, message=f"the server's answer is not a batch object: {exc!r}")


class ListingScan:
    """Which pages of the batch listing a look at many batches reads, and what they showed: the
    logic :meth:`OpenAIBatchHook.poll_batches`, ``apoll_batches`` and the triggerer's status
    observer (:mod:`~airflow_provider_batch.observer`) share, doing only the calls.

    Pages are parsed from the raw JSON, as :func:`read_snapshot` does, and only the wanted
    batches of a page become snapshots: a page is 100 batches, most of them someone else's.
    ``ranks`` says where in the listing each wanted batch, and each batch of ``locate``, was (0 is
    the newest), and ``read`` how many batches the pages held: the observer plans its next pages
    from them.
    """

    def __init__(
        self,
        batch_ids: Sequence[str],
        created_after: float | None,
        *,
        max_pages: int | None = None,
        locate: Collection[str] = (),
    ) -> None:
        self.wanted = list(dict.fromkeys(batch_ids))
        self._wanted = set(self.wanted)
        self.created_after = created_after
        default_pages = math.ceil(len(self.wanted) / LIST_PAGE_SIZE) + EXTRA_LIST_PAGES
        self.max_pages = default_pages if max_pages is None else max_pages
        self.observed: dict[str, BatchSnapshot | PollFailure] = {}
        self.ranks: dict[str, int] = {}
        self._locate = locate
        self.read = 0
        self.failed = False
        self.pages = 0
        self.after: str | None = None
        self.exhausted = False

    def next_query(self) -> dict[str, Any] | None:
        """The arguments of the next ``batches.list`` call, or ``None`` when the scan is over."""
        if self.exhausted or self.pages >= self.max_pages or len(self.observed) == len(self.wanted):
            return None
        return {"limit": LIST_PAGE_SIZE} | ({"after": self.after} if self.after else {})

    def take(self, response: Any) -> None:
        """Read one page (a raw response); a page that is not a list of batches fails the rest."""
        self.pages += 1
        try:
            body = json.loads(response.content)
            data = body["data"]
            for position, item in enumerate(data, start=self.read):
                batch_id = item.get("id")
                if batch_id in self._wanted and batch_id not in self.observed:
                    self.observed[batch_id] = _snapshot_from_json(item)
                    self.ranks[batch_id] = position
                elif batch_id in self._locate:
                    self.ranks[batch_id] = position
            self.read += len(data)
            oldest = data[-1] if data else None
            more = bool(body.get("has_more")) and oldest is not None
            self.after = oldest["id"] if oldest is not None else None
            created = oldest.get("created_at") if oldest is not None else None
        except (ValueError, TypeError, KeyError, AttributeError, IndexError) as exc:
            message = f"the server's answer is not a list of batches: {exc!r}"
            self.fail(PollFailure(retryable=True, message=message))
            return
        past = (
            self.created_after is not None
            and isinstance(created, int | float)
            and created < self.created_after
        )
        self.exhausted = not more or past

    def fail(self, failure: PollFailure) -> None:
        """The listing failed: every batch not seen yet gets ``failure``, and the scan is over."""
        self.failed = True
        for batch_id in self.unseen():
            self.observed[batch_id] = failure
        self.exhausted = True

    def unseen(self) -> list[str]:
        return [batch_id for batch_id in self.wanted if batch_id not in self.observed]

    def answer(
        self, singles: Mapping[str, BatchSnapshot | PollFailure]
    ) -> dict[str, BatchSnapshot | PollFailure]:
        """Every wanted batch, from the listing or else from ``singles`` (retrieved one by one)."""
        return {
            batch_id: self.observed[batch_id] if batch_id in self.observed else singles[batch_id]
            for batch_id in self.wanted
        }


def poll_failure(exc: openai.OpenAIError) -> PollFailure:
    """Translate an SDK error into the neutral form ``decide()`` understands."""
    status = exc.status_code if isinstance(exc, openai.APIStatusError) else None
    message = f"HTTP {status}: {_server_message(exc)}" if isinstance(exc, openai.APIStatusError) else str(exc)
    return PollFailure(retryable=is_transient(exc), message=message, http_status=status)


def _server_message(exc: openai.APIStatusError) -> str:
    """The server's own message: the SDK stores the ``error`` object of the envelope as ``body``."""
    body = exc.body if isinstance(exc.body, dict) else {}
    error = body.get("error", body)
    message = error.get("message") if isinstance(error, dict) else None
    return str(message or exc.message)


@contextlib.contextmanager
def _open_source(source: Any) -> Iterator[tuple[str, IO[bytes]]]:
    """Open an upload source for streaming; a caller's file object is rewound, not closed."""
    if hasattr(source, "read"):
        if source.seekable():
            source.seek(0)
        yield Path(getattr(source, "name", "upload.jsonl")).name, source
        return
    if isinstance(source, (str, os.PathLike)) and not hasattr(source, "protocol"):
        path = Path(source)
        with path.open("rb") as stream:
            yield path.name, stream
        return
    with source.open("rb") as stream:  # ObjectStoragePath
        yield source.name, stream


@contextlib.contextmanager
def _open_destination(destination: Any) -> Iterator[IO[bytes]]:
    if hasattr(destination, "write"):
        yield destination
        return
    if isinstance(destination, (str, os.PathLike)) and not hasattr(destination, "protocol"):
        with Path(destination).open("wb") as sink:
            yield sink
        return
    with destination.open("wb") as sink:  # ObjectStoragePath
        yield sink
