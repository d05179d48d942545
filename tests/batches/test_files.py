"""The Files API's files in the store: whole or absent, each seen by its owner only, and no id reaches a path outside
`<store>/files`."""

from __future__ import annotations

import os
import time

import pytest

from jupyter_modelrunner.batches import FileStore
from jupyter_modelrunner.errors import FileNotFound, FileTooLarge
from jupyter_modelrunner.inference import OWNER, Caller
from jupyter_modelrunner.keys import SCOPE_INFERENCE

ALICE = Caller("key:alice", SCOPE_INFERENCE)
BOB = Caller("key:bob", SCOPE_INFERENCE)


@pytest.fixture
def files(tmp_path) -> FileStore:
    return FileStore(tmp_path / "store" / "files")


def test_an_upload_becomes_a_file_its_owner_reads_back(files):
    upload = files.upload(limit=1000)
    upload.write(b'{"custom_id": "a"}\n')
    upload.write(b'{"custom_id": "b"}\n')
    record = upload.commit("../../requests.jsonl", "batch", ALICE.name)
    assert record.id.startswith("file-") and record.bytes == 38
    assert record.filename == "requests.jsonl"  # only the name is kept, never a path
    assert files.get(record.id, ALICE).to_json() == {
        "id": record.id, "object": "file", "bytes": 38, "created_at": record.created_at,
        "filename": "requests.jsonl", "purpose": "batch", "status": "processed", "status_details": None,
        "expires_at": None}
    assert files.data_path(record.id).read_bytes() == b'{"custom_id": "a"}\n{"custom_id": "b"}\n'
    assert [r.id for r in files.list(ALICE)] == [record.id]
    assert sorted(p.name for p in files.root.iterdir()) == [record.id, f"{record.id}.json"]  # no leftovers


def test_another_callers_file_does_not_exist_for_it_but_the_token_sees_all(files):
    mine = files.add_bytes(b"x\n", filename="a.jsonl", purpose="batch", owner=ALICE.name)
    with pytest.raises(FileNotFound):
        files.get(mine.id, BOB)
    with pytest.raises(FileNotFound):
        files.delete(mine.id, BOB)
    assert files.list(BOB) == []
    assert files.get(mine.id, OWNER).id == mine.id
    assert [r.id for r in files.list(OWNER)] == [mine.id]
    files.delete(mine.id, ALICE)
    with pytest.raises(FileNotFound):
        files.get(mine.id, OWNER)
    assert list(files.root.iterdir()) == []


def test_an_upload_over_the_cap_is_refused_and_nothing_is_kept(files):
    upload = files.upload(limit=10)
    upload.write(b"0123456789")
    with pytest.raises(FileTooLarge, match="max_batch_file_bytes"):
        upload.write(b"!")
    assert list(files.root.iterdir()) == []


@pytest.mark.parametrize("file_id", ["../files", "../../secret.json", "/etc/passwd", "file-../../x",
                                     "file-" + "a" * 24 + "/../x", "%2e%2e", "file-" + "0" * 5000, "",
                                     "file-0123456789ABCDEF01234567"])
def test_ids_of_any_other_shape_name_no_file_and_build_no_path(files, tmp_path, file_id):
    secret = tmp_path / "store" / "secret.json"
    secret.write_text('{"id": "file-0123456789abcdef01234567"}')
    for call in (lambda: files.get(file_id, OWNER), lambda: files.delete(file_id, OWNER),
                 lambda: files.data_path(file_id)):
        with pytest.raises(FileNotFound):
            call()
    assert secret.exists()


def test_an_adopted_output_is_linked_once_even_if_adopted_again(files, tmp_path):
    output = tmp_path / "output.jsonl"
    output.write_text('{"custom_id": "a"}\n')
    first = files.adopt(output, "file-" + "1" * 24, filename="out.jsonl", purpose="batch_output", owner=ALICE.name)
    again = files.adopt(output, "file-" + "1" * 24, filename="out.jsonl", purpose="batch_output", owner=ALICE.name)
    assert first == again and first.bytes == output.stat().st_size
    assert files.data_path(first.id).read_text() == output.read_text()


def test_what_a_killed_runner_left_of_an_upload_is_removed_once_abandoned(files):
    upload = files.upload(limit=100)
    upload.write(b"half")  # the runner dies here
    leftover = next(files.root.glob(".upload-*"))
    assert files.remove_abandoned() == 0 and leftover.exists()  # a live upload is young: kept
    an_hour_ago = time.time() - 3700
    os.utime(leftover, (an_hour_ago, an_hour_ago))
    assert files.remove_abandoned() == 1 and list(files.root.iterdir()) == []
