"""Batches in the store: the record is OpenAI's batch object, and the output files tell which requests are answered,
even after a kill cut a line in half."""

from __future__ import annotations

import json

import pytest

from jupyter_modelrunner.batches.records import Batch, BatchStore, RowLog, cut_partial_line, new_batch_id
from jupyter_modelrunner.errors import BatchNotFound


@pytest.fixture
def batches(tmp_path) -> BatchStore:
    return BatchStore(tmp_path / "batches")


def test_a_batch_is_saved_and_read_back_as_openais_object(batches):
    batch = Batch(new_batch_id(), "/v1/chat/completions", "file-" + "0" * 24, "key:alice", "inference",
                  metadata={"job": "labels"})
    batches.create(batch)
    batch.mark("in_progress")
    batches.save(batch)
    shown = batches.load(batch.id).to_json()
    assert shown["object"] == "batch" and shown["status"] == "in_progress" and shown["in_progress_at"]
    assert shown["request_counts"] == {"total": 0, "completed": 0, "failed": 0}
    assert shown["metadata"] == {"job": "labels"}
    assert "owner" not in shown  # who made it is the runner's business
    assert set(shown) >= {"id", "endpoint", "errors", "input_file_id", "completion_window", "output_file_id",
                          "error_file_id", "created_at", "finalizing_at", "completed_at", "failed_at",
                          "cancelling_at", "cancelled_at", "expires_at", "expired_at"}
    assert [p.name for p in batches.folder(batch.id).iterdir()] == ["batch.json"]


@pytest.mark.parametrize("batch_id", ["../x", "/tmp", "batch_../../x", "batch_" + "0" * 500, ""])
def test_ids_of_any_other_shape_name_no_batch(batches, batch_id):
    with pytest.raises(BatchNotFound):
        batches.load(batch_id)


def test_a_line_cut_off_by_a_kill_is_removed_and_the_answered_ids_counted(batches):
    batch = Batch(new_batch_id(), "/v1/embeddings", "file-" + "0" * 24, "token", "manage")
    batches.create(batch)
    output = RowLog(batches.output_path(batch.id))
    for custom_id in ("a", "b"):
        output.append({"custom_id": custom_id, "response": {"status_code": 200}})
    output.close()
    with batches.output_path(batch.id).open("ab") as handle:
        handle.write(b'{"custom_id": "c", "respo')  # what SIGKILL in the middle of a write leaves
    RowLog(batches.errors_path(batch.id)).append({"custom_id": "d", "error": {"code": "x"}})
    done, completed, failed = batches.answered(batch.id)
    assert (done, completed, failed) == ({"a", "b", "d"}, 2, 1)
    assert batches.output_path(batch.id).read_bytes().endswith(b"}\n")
    assert [json.loads(x)["custom_id"] for x in batches.output_path(batch.id).read_text().splitlines()] == ["a", "b"]


def test_cutting_a_file_of_one_partial_line_empties_it(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_bytes(b"x" * 200_000)
    assert cut_partial_line(path) == 200_000 and path.read_bytes() == b""
    path.write_bytes(b"whole\n")
    assert cut_partial_line(path) == 0 and path.read_bytes() == b"whole\n"
    assert cut_partial_line(tmp_path / "missing.jsonl") == 0
