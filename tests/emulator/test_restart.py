"""Durability: a server stopped mid-batch (SIGTERM) or killed (SIGKILL) and started again on the
same data directory finishes the batch without losing or repeating a line; files survive.

``EmulatorProcess.restart()`` returns a new process that ``make_emulator`` does not track, so each
test stops it itself.
"""

from __future__ import annotations

import json
import signal

import pytest

from airflow_provider_batch.emulator.process import EmulatorProcess
from tests.emulator.helpers import (
    assert_counts_match_files,
    assert_each_custom_id_once,
    assert_unrun_line,
    chat_line,
    create_batch,
    download,
    results,
    retrieve_batch,
    retrieve_file,
    sdk,
    upload,
    wait_for,
    wait_for_status,
)

LINES = [
    chat_line(f"r{i}", emulator={"status_code": 500}) if i % 5 == 0 else chat_line(f"r{i}") for i in range(24)
]
FAILING = {f"r{i}" for i in range(0, 24, 5)}


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_batch_finishes_after_a_restart_mid_batch(make_emulator, sig: signal.Signals) -> None:
    server: EmulatorProcess = make_emulator()
    client = sdk(server)
    notes = upload(client, b"keep me", filename="notes.txt", purpose="user_data")
    finished = wait_for_status(client, create_batch(client, LINES[1:4]).id)  # three good lines
    batch = create_batch(client, LINES, metadata={"emulator_line_delay": "0.03"})
    before = wait_for(
        client,
        batch.id,
        lambda b: b.request_counts.completed + b.request_counts.failed >= 6,
        what="six lines done",
    )
    assert before.status == "in_progress"

    restarted = server.restart(sig)
    try:
        assert server.process.returncode == (0 if sig == signal.SIGTERM else -signal.SIGKILL)
        client = sdk(restarted)
        done = wait_for_status(client, batch.id)
        assert done.status == "completed"
        assert done.request_counts.model_dump() == {
            "total": 24,
            "completed": 24 - len(FAILING),
            "failed": len(FAILING),
        }
        assert (done.created_at, done.in_progress_at) == (before.created_at, before.in_progress_at)
        output, errors = results(client, done)
        assert_counts_match_files(done, output, errors)
        assert_each_custom_id_once(output + errors, [line["custom_id"] for line in LINES])
        assert {line["custom_id"] for line in errors} == FAILING
        assert all(line["response"]["status_code"] == 500 for line in errors)
        assert len({line["id"] for line in output + errors}) == 24
        # Usage was counted once per line, not again for lines redone after the restart.
        assert done.usage.input_tokens == sum(
            line["response"]["body"]["usage"]["prompt_tokens"] for line in output
        )

        # Everything from before the restart is still there.
        assert retrieve_file(client, notes.id) == notes
        assert download(client, notes.id) == b"keep me"
        assert retrieve_batch(client, finished.id) == finished
        assert len(download(client, finished.output_file_id).splitlines()) == 3
        assert {b.id for b in client.batches.list()} == {batch.id, finished.id}
    finally:
        restarted.stop()


def test_uncommitted_result_lines_are_dropped_on_resume(make_emulator) -> None:
    """A crash between writing a chunk's result lines and committing the progress leaves lines in
    the partial result file that the record does not know about; they are run again on resume, so
    they must be cut off first. SIGKILL cannot be aimed at that instant, so the test leaves the
    same residue itself: it appends an uncommitted line to the partial output file (white-box:
    ``<data dir>/work/<batch id>.output.part``) while the server is down."""
    server: EmulatorProcess = make_emulator()
    client = sdk(server)
    batch = create_batch(client, LINES, metadata={"emulator_line_delay": "0.03"})
    wait_for(client, batch.id, lambda b: b.request_counts.completed >= 3, what="three lines done")
    server.stop(signal.SIGKILL)
    part = server.data_dir / "work" / f"{batch.id}.output.part"
    assert part.is_file()
    # As much as a whole chunk of lines would be: more than the rest of the batch writes, so that
    # overwriting from the committed offset alone would leave some of it behind.
    residue = {"id": "batch_req_residue", "custom_id": "r23", "response": {"status_code": 200}, "error": None}
    with part.open("ab") as out:
        out.write((json.dumps(residue).encode() + b"\n") * 500)

    restarted = EmulatorProcess(server.data_dir)
    try:
        client = sdk(restarted)
        done = wait_for_status(client, batch.id)
        output, errors = results(client, done)
        assert "batch_req_residue" not in {line["id"] for line in output}
        assert_each_custom_id_once(output + errors, [line["custom_id"] for line in LINES])
        assert_counts_match_files(done, output, errors)
    finally:
        restarted.stop()


def test_cancelling_batch_finishes_after_a_restart(make_emulator) -> None:
    # Cancelling takes 30 s on the first server, so the batch is surely still cancelling when it is
    # killed; the second server, on the same data directory, cancels at once.
    server: EmulatorProcess = make_emulator("--cancelling-delay", "30")
    client = sdk(server)
    batch = create_batch(client, LINES, metadata={"emulator_line_delay": "0.03"})
    wait_for(client, batch.id, lambda b: b.request_counts.completed >= 2, what="two lines done")
    assert client.batches.cancel(batch.id).status == "cancelling"
    assert client.batches.retrieve(batch.id).status == "cancelling"

    server.stop(signal.SIGKILL)
    restarted = EmulatorProcess(server.data_dir, "--cancelling-delay", "0")
    try:
        client = sdk(restarted)
        done = wait_for_status(client, batch.id)
        assert done.status == "cancelled"
        output, errors = results(client, done)
        assert_counts_match_files(done, output, errors)
        assert_each_custom_id_once(output + errors, [line["custom_id"] for line in LINES])
        unrun = [line for line in errors if line["response"] is None]
        assert unrun, "every line ran although the batch was cancelled early"
        for line in unrun:
            assert_unrun_line(line, "batch_cancelled")
    finally:
        restarted.stop()
