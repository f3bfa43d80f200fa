"""Files API: upload, retrieve, list, delete, content streaming and HTTP Range downloads."""

from __future__ import annotations

import httpx
import openai
import pytest

from airflow_provider_batch.emulator.process import EmulatorProcess
from tests.emulator.helpers import (
    assert_error,
    async_download,
    async_sdk,
    chat_lines,
    checked,
    download,
    jsonl,
    retrieve_file,
    sdk,
    upload,
)
from tests.emulator.schemas import assert_schema

THIRTY_DAYS = 30 * 86_400
CONTENT = jsonl(chat_lines(3))


def test_upload_batch_file(emulator: EmulatorProcess) -> None:
    file = upload(sdk(emulator), CONTENT, filename="requests.jsonl")
    assert file.id.startswith("file-")
    assert (file.object, file.purpose, file.status, file.status_details) == (
        "file",
        "batch",
        "processed",
        None,
    )
    assert (file.filename, file.bytes) == ("requests.jsonl", len(CONTENT))
    # Batch files expire after 30 days by default.
    assert file.expires_at == file.created_at + THIRTY_DAYS


def test_upload_with_expires_after(emulator: EmulatorProcess) -> None:
    file = upload(sdk(emulator), CONTENT, expires_after={"anchor": "created_at", "seconds": 7200})
    assert file.expires_at == file.created_at + 7200


def test_other_purposes_need_no_jsonl_and_do_not_expire(emulator: EmulatorProcess) -> None:
    file = upload(sdk(emulator), b"\x89PNG not really", filename="picture.png", purpose="vision")
    assert (file.purpose, file.filename, file.expires_at) == ("vision", "picture.png", None)


def test_non_jsonl_batch_upload_is_rejected(emulator: EmulatorProcess) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(emulator).files.create(file=("requests.csv", CONTENT), purpose="batch")
    assert_error(
        caught.value.response, 400, message="Invalid file format for Batch API. Must be .jsonl", param="file"
    )


def test_unknown_purpose_is_rejected(emulator: EmulatorProcess) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(emulator).files.create(file=("requests.jsonl", CONTENT), purpose="homework")  # type: ignore[arg-type]
    error = assert_error(caught.value.response, 400, param="purpose")
    assert "'homework'" in error["message"]


@pytest.mark.parametrize(
    ("expires_after", "param", "code"),
    [
        ({"anchor": "created_at", "seconds": 60}, "expires_after.seconds", "invalid_value"),
        ({"anchor": "created_at", "seconds": 2_592_001}, "expires_after.seconds", "invalid_value"),
        ({"anchor": "last_accessed_at", "seconds": 3600}, "expires_after.anchor", "invalid_value"),
        ({"anchor": "created_at", "seconds": "soon"}, "expires_after.seconds", "invalid_type"),
    ],
)
def test_bad_expires_after_is_rejected(
    emulator: EmulatorProcess, expires_after: dict[str, object], param: str, code: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(emulator).files.create(
            file=("requests.jsonl", CONTENT),
            purpose="batch",
            expires_after=expires_after,  # type: ignore[arg-type]
        )
    assert_error(caught.value.response, 400, param=param, code=code)


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"data": {"purpose": "batch"}}, "file"),
        ({"files": {"file": ("requests.jsonl", CONTENT)}}, "purpose"),
        ({"files": {"file": ("requests.jsonl", CONTENT)}, "data": {"purpose": ""}}, "purpose"),
    ],
    ids=["no-file", "no-purpose", "empty-purpose"],
)
def test_missing_upload_fields(emulator: EmulatorProcess, fields: dict[str, object], param: str) -> None:
    # The SDK cannot leave out required fields, so this one goes through httpx.
    if "files" not in fields:  # force multipart even without a file part
        fields = {**fields, "files": {"unrelated": ("x.txt", b"x")}}
    response = httpx.post(f"{emulator.base_url}/files", **fields)  # type: ignore[arg-type]
    assert_error(
        response,
        400,
        message=f"Missing required parameter: '{param}'.",
        param=param,
        code="missing_required_parameter",
    )


def test_retrieve_list_and_delete(emulator: EmulatorProcess) -> None:
    client = sdk(emulator)
    file = upload(client, CONTENT)
    assert retrieve_file(client, file.id) == file
    # Newest first: a file just uploaded (and not deleted) is on the first page.
    listed = checked(client.files.with_raw_response.list(purpose="batch", limit=5), "ListFilesResponse")
    assert listed.data[0].id == file.id

    deleted = client.files.with_raw_response.delete(file.id)
    assert assert_schema("DeleteFileResponse", deleted.http_response.json()) == {
        "id": file.id,
        "object": "file",
        "deleted": True,
    }
    message = f"No such file: '{file.id}'."
    for call in (client.files.retrieve, client.files.content, client.files.delete):
        with pytest.raises(openai.NotFoundError) as caught:
            call(file.id)
        assert_error(caught.value.response, 404, message=message, param="file_id")
    listed = checked(client.files.with_raw_response.list(purpose="batch", limit=5), "ListFilesResponse")
    assert file.id not in [f.id for f in listed.data]


def test_content_is_streamed_back_unchanged(emulator: EmulatorProcess) -> None:
    client = sdk(emulator)
    content = bytes(range(256)) * 1000  # binary, larger than one read chunk
    file = upload(client, content, filename="blob.bin", purpose="user_data")
    with client.files.with_streaming_response.content(file.id) as response:
        assert response.http_response.status_code == 200
        chunks = list(response.iter_bytes(chunk_size=4096))
    assert len(chunks) > 1
    assert b"".join(chunks) == content


async def test_content_streams_with_the_async_client(emulator: EmulatorProcess) -> None:
    async with async_sdk(emulator) as client:
        file = await client.files.create(file=("input.jsonl", CONTENT), purpose="batch")
        assert await async_download(client, file.id) == CONTENT


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [("bytes=10-19", 10, 20), ("bytes=90-", 90, 100), ("bytes=-5", 95, 100), ("bytes=0-0", 0, 1)],
)
def test_range_requests(emulator: EmulatorProcess, header: str, start: int, end: int) -> None:
    content = bytes(range(100))
    file = upload(sdk(emulator), content, filename="range.bin", purpose="user_data")
    response = httpx.get(f"{emulator.base_url}/files/{file.id}/content", headers={"Range": header})
    assert response.status_code == 206
    assert response.content == content[start:end]
    assert response.headers["content-range"] == f"bytes {start}-{end - 1}/100"
    assert response.headers["accept-ranges"] == "bytes"


def test_resume_a_download_with_range(emulator: EmulatorProcess) -> None:
    """What a client does after a broken download: fetch the rest from the byte it stopped at."""
    content = jsonl(chat_lines(200))
    file = upload(sdk(emulator), content)
    url = f"{emulator.base_url}/files/{file.id}/content"
    with httpx.stream("GET", url) as response:
        first = next(response.iter_bytes(1000))
    rest = httpx.get(url, headers={"Range": f"bytes={len(first)}-"})
    assert rest.status_code == 206
    assert first + rest.content == content == download(sdk(emulator), file.id)


def test_bad_ranges_get_the_error_envelope(emulator: EmulatorProcess) -> None:
    file = upload(sdk(emulator), bytes(100), filename="range.bin", purpose="user_data")
    url = f"{emulator.base_url}/files/{file.id}/content"
    unsatisfiable = httpx.get(url, headers={"Range": "bytes=500-600"})
    assert_error(unsatisfiable, 416, param="range")
    assert unsatisfiable.headers["content-range"] == "bytes */100"
    for header in ("bytes=5-2", "pages=1-2", "nonsense"):
        assert_error(httpx.get(url, headers={"Range": header}), 400, param="range")
