"""Stopping the runner that owns a test's store: the embedded one its first command or kernel started (it would
otherwise wait an hour for work, outliving the test session)."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import pytest

from jupyter_modelrunner.lease import lease_is_held, read_owner


def _running(pid: int) -> bool:
    """Alive and not a zombie (a reparented runner may wait for a reaper that never comes)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def stop_store_owner(store: Path, timeout: float = 30.0) -> None:
    """SIGTERM the process that owns `store` (it stops its engines first) and wait until its lease is free."""
    owner = read_owner(store)
    if owner is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(owner.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while (lease_is_held(store) or _running(owner.pid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _running(owner.pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(owner.pid, signal.SIGKILL)  # an embedded runner leads its own session
        pytest.fail(f"the runner owning {store} (pid {owner.pid}) ignored SIGTERM for {timeout:.0f} s")
