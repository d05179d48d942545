"""Publish a folder all at once: the one way this project's model builders write their caches.

A builder (the SmolLM2 twin, the tiny reranker, the tiny vision model) may run in several test processes at the same
time, and a reader must never see half a model. So the build happens under a lock next to the target, in a scratch
folder that is renamed into place when complete; a complete target is left alone. Standard library only: the
builders run with the vLLM environment's interpreter, which does not have this package.
"""

from __future__ import annotations

import contextlib
import fcntl
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def publish_folder(outdir: Path, build: Callable[[Path], None], is_complete: Callable[[Path], bool]) -> bool:
    """Make `outdir` with `build(scratch)` unless `is_complete(outdir)`; True when it was built now.

    The build writes into a private scratch folder beside `outdir`; its files are then made readable by all (a
    model cache is not private, mkdtemp's 0700 is) and the folder renamed into place, an older or broken `outdir`
    moved away first (rename needs the name free). A concurrent builder waits on the lock and finds it complete."""
    if is_complete(outdir):
        return False
    outdir.parent.mkdir(parents=True, exist_ok=True)
    with (outdir.parent / f".{outdir.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_complete(outdir):  # built by another process while we waited
            return False
        scratch = Path(tempfile.mkdtemp(dir=outdir.parent, prefix=f".{outdir.name}.building-"))
        try:
            build(scratch)
            for path in [scratch, *scratch.rglob("*")]:
                path.chmod(0o755 if path.is_dir() else 0o644)
            if outdir.exists():
                stale = Path(tempfile.mkdtemp(dir=outdir.parent, prefix=f".{outdir.name}.stale-"))
                outdir.rename(stale / "old")
                shutil.rmtree(stale, ignore_errors=True)
            scratch.rename(outdir)
        finally:
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(scratch)
    return True
