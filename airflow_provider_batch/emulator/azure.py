"""The Azure OpenAI dialect (``--dialect azure``): Azure's URLs, authentication and error shape in
front of the same Files and Batches handlers.

Azure serves the batch API in two forms (``shared/reference/openai-batch-api.md`` §15):

* the classic routes, ``/openai/files…`` and ``/openai/batches…``, each request carrying a dated
  ``?api-version=``: what ``AzureOpenAI(azure_endpoint=…, api_version=…)`` calls;
* the v1 routes, ``/openai/v1/files…`` and ``/openai/v1/batches…``, without a dated version: what a
  plain ``OpenAI(base_url="<endpoint>/openai/v1")`` calls.

The gate resolves either form to the handlers' own ``/v1/…`` path, so one set of handlers serves
both dialects and statistics and fault routes name a route the same way whatever the dialect. What
happens before a handler runs (routing, ``api-version``, the ``api-key`` header) answers in Azure's
error shape, ``{"error": {"code", "message"}}``, with the wording Azure is reported to use.
"""

from __future__ import annotations

import re
import secrets

from airflow_provider_batch.emulator.errors import APIError

DIALECTS = ("openai", "azure")
CLASSIC_PREFIX = "/openai/"
V1_PREFIX = "/openai/v1/"
DEFAULT_API_VERSION = "2024-10-21"
"""The first generally available version with the batch API; what clients of the emulator use."""
FIRST_BATCH_API_VERSION = "2024-07-01"
"""Batches (and files with purpose ``batch``) arrived in ``2024-07-01-preview``."""
V1_API_VERSIONS = frozenset({"preview", "latest"})
"""The only ``api-version`` values the v1 routes take; a dated one is refused there."""
_DATED_VERSION = re.compile(r"(\d{4}-\d{2}-\d{2})(-preview)?")


def azure_error(status: int, code: str, message: str) -> APIError:
    """An error in Azure's own shape (no ``type`` or ``param``)."""
    return APIError(status, message, code=code, shape="azure")


def resource_not_found() -> APIError:
    """Azure's answer to an unknown path, a deployment-scoped files/batches path, or a classic
    request without ``api-version``: a 404, not a 400."""
    return azure_error(404, "404", "Resource not found")


def resolve(path: str) -> tuple[str, bool] | None:
    """Map an Azure path to the handlers' ``/v1/…`` path, and whether it is a v1 route."""
    if path.startswith(V1_PREFIX):
        return "/v1/" + path.removeprefix(V1_PREFIX), True
    if path.startswith(CLASSIC_PREFIX):
        return "/v1/" + path.removeprefix(CLASSIC_PREFIX), False
    return None


def check_api_version(version: str | None, *, v1: bool) -> APIError | None:
    """Classic routes need a dated version that has the batch API; v1 routes take none.

    The emulator accepts every ``YYYY-MM-DD`` or ``YYYY-MM-DD-preview`` from ``2024-07-01`` on
    (rather than a list that would go stale) and refuses the rest the way Azure refuses a version
    it does not serve: 400 ``BadRequest`` "API version not supported".
    """
    if v1:
        if version is None or version in V1_API_VERSIONS:
            return None
    else:
        if version is None:
            return resource_not_found()
        match = _DATED_VERSION.fullmatch(version)
        if match and match.group(1) >= FIRST_BATCH_API_VERSION:
            return None
    return azure_error(400, "BadRequest", "API version not supported")


def authenticate(headers: dict[bytes, bytes], api_key: str, *, bearer_too: bool) -> APIError | None:
    """Azure's key header is ``api-key``; a v1 route also takes it as ``Authorization: Bearer``
    (what a plain OpenAI client sends). The key given is never echoed back."""
    given = [headers.get(b"api-key", b"").decode("latin-1")]
    if bearer_too:
        bearer = headers.get(b"authorization", b"").decode("latin-1")
        given.append(bearer.removeprefix("Bearer ") if bearer.startswith("Bearer ") else "")
    given = [key for key in given if key]
    if not given:
        return azure_error(
            401,
            "401",
            "Access denied due to missing subscription key. Make sure to include subscription key when making"
            " requests to an API.",
        )
    if not any(secrets.compare_digest(key, api_key) for key in given):
        return azure_error(
            401,
            "401",
            "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a"
            " valid key for an active subscription and use a correct regional API endpoint for your"
            " resource.",
        )
    return None


def quota_exceeded(limit: int) -> APIError:
    """An upload without expiry over the resource's cap (500 files by default, output files
    included; Azure/azure-sdk-for-java#47401)."""
    return azure_error(
        400, "quotaExceeded", f"The quota for files without expiry is reached. The maximum is {limit}."
    )


def file_not_processed(file_id: str, status: str) -> APIError:
    """A batch created on a file still being processed (wording from a Microsoft Q&A report; the
    code is the emulator's guess)."""
    return azure_error(
        400,
        "BadRequest",
        f"The input file '{file_id}' is in '{status}' state. Only files with status 'Processed' are accepted"
        " for batch inferencing. Please check the file status and try again",
    )


def token_limit_message(deployment: str | None, limit: int) -> str:
    """Azure's wording of ``token_limit_exceeded``, whose quota is per deployment."""
    return (
        f"The number of enqueued tokens has surpassed the configured limit of {limit:,} for the deployment"
        f" '{deployment}'. Please either increase the limit or try again once the current jobs have finished."
    )


def canonical_endpoint(endpoint: str) -> str:
    """``/chat/completions`` (classic examples) and ``/v1/chat/completions`` name the same endpoint."""
    return endpoint if endpoint.startswith("/v1/") else "/v1" + endpoint
