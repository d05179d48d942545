"""`fsck --repair`: fix what a check found, each finding checked again under the lock that excludes whatever
could have changed it since.

Partial downloads are deleted under their blob's lock; models are dropped and corrupt blobs deleted only while no
pull or package is in progress (`Store.adding_excluded`); bundle files are relinked or rebuilt under the index lock.
A model that cannot be used leaves the index, but its intact blobs stay, so pulling it again downloads only what
was lost.
"""

from __future__ import annotations

from filelock import Timeout

from ..distribution.artifact import sha256_digest
from ..errors import ModelRunnerError
from .findings import (
    BLOB_CORRUPT,
    BLOB_MISSING,
    BUNDLE,
    BUNDLE_LINK,
    MANIFEST_CORRUPT,
    MANIFEST_MISSING,
    PARTIAL_ORPHANED,
    UNUSABLE,
    FsckReport,
    Problem,
    file_identity,
)
from .models import Store
from .names import familiar_name

#: How long `--repair` waits for pulls and packages in progress to end before it drops models or deletes blobs.
REPAIR_WAIT_SECONDS = 10.0


def repair_store(store: Store, report: FsckReport, *, wait: float = REPAIR_WAIT_SECONDS) -> FsckReport:
    """Fix what `report` found, each finding checked again under the lock that excludes what could change it;
    marks each problem `repaired` (with its `outcome`) or says in `outcome` why not. Returns `report`."""
    report.repair_ran = True
    for problem in report.problems:
        if problem.kind == PARTIAL_ORPHANED:
            _delete_partial(store, problem)
    unusable = [p for p in report.problems if p.kind in UNUSABLE]
    if unusable:
        with store.adding_excluded(wait) as alone:
            if alone:
                _drop_unusable(store, report, unusable)
            else:
                for problem in unusable:
                    problem.outcome = ("not repaired: a pull or package is in progress; run fsck --repair again "
                                       "when it has ended")
    _repair_bundles(store, [p for p in report.problems if p.kind in BUNDLE])
    return report


def _delete_partial(store: Store, problem: Problem) -> None:
    assert problem.digest is not None
    lock = store.blob_lock(problem.digest)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        problem.repaired, problem.outcome = True, "kept: a pull took it up meanwhile"
        return
    try:
        store.incomplete_path(problem.digest).unlink(missing_ok=True)
    finally:
        lock.release()
    problem.repaired, problem.outcome = True, "deleted it"


def _drop_unusable(store: Store, report: FsckReport, problems: list[Problem]) -> None:
    """With no pull or package in progress: confirm each finding, delete corrupt blobs, drop the models."""
    bad_blobs: set[str] = set()
    bad_models: set[str] = set()
    for problem in problems:
        assert problem.digest is not None and problem.model_id is not None
        if problem.kind == BLOB_MISSING and store.has_blob(problem.digest):
            problem.repaired, problem.outcome = True, "a pull brought it back meanwhile"
        elif problem.kind == BLOB_CORRUPT and file_identity(store.blob_path(problem.digest)) != problem.identity:
            problem.repaired, problem.outcome = True, "replaced meanwhile"
        elif problem.kind in (MANIFEST_MISSING, MANIFEST_CORRUPT) and _manifest_good(store, problem.model_id):
            problem.repaired, problem.outcome = True, "a pull restored it meanwhile"
        elif problem.kind in (BLOB_MISSING, BLOB_CORRUPT):
            bad_blobs.add(problem.digest)
        else:
            bad_models.add(problem.model_id)
    for digest in bad_blobs:
        store.blob_path(digest).unlink(missing_ok=True)  # corrupt ones; the missing are gone already
    # Every model using a bad blob goes, including any indexed since the check (it was never going to work).
    dropped = store.drop_models(lambda entry: entry.get("id") in bad_models
                                or any(d in bad_blobs for d in entry.get("files", [])))
    gone = {entry["id"] for entry in dropped}
    for entry in dropped:
        report.removed.append({"id": entry["id"], "tags": [familiar_name(t, store.registry)
                                                           for t in entry.get("tags", [])]})
    for problem in problems:
        if problem.repaired:
            continue
        problem.repaired = True
        if problem.model_id in gone:
            deleted = " and deleted the corrupt blob" if problem.kind == BLOB_CORRUPT else ""
            problem.outcome = f"removed the model from the index{deleted} (pull it again)"
        else:
            problem.outcome = "the model was removed meanwhile"


def _repair_bundles(store: Store, problems: list[Problem]) -> None:
    """Relink single files; rebuild a folder that is gone or whose unpacked files changed. The blobs were found
    good by the check, and blobs never change in place."""
    by_model: dict[str, list[Problem]] = {}
    for problem in problems:
        assert problem.model_id is not None
        by_model.setdefault(problem.model_id, []).append(problem)
    for model_id, found in by_model.items():
        try:
            if any(p.kind != BUNDLE_LINK for p in found):
                present = store.rebuild_bundle(model_id)
                done = "rebuilt the folder from the blobs"
            else:
                present = all([store.relink_bundle_file(model_id, p.digest or "", p.path or "") for p in found])
                done = "linked it to its blob again"
        except (OSError, ModelRunnerError) as exc:
            for problem in found:
                problem.outcome = f"not repaired: {getattr(exc, 'strerror', None) or exc}"
            continue
        for problem in found:
            problem.repaired = True
            problem.outcome = done if present else "the model was removed meanwhile"


def _manifest_good(store: Store, model_id: str) -> bool:
    try:
        return sha256_digest(store.manifest_path(model_id).read_bytes()) == model_id
    except OSError:
        return False
