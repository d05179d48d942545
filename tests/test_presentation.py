"""What `ps` and the other tables print, from the runner's JSON as the API gives it (no server needed)."""

from __future__ import annotations

import time

from jupyter_modelrunner.presentation import in_use_text, runners_table


def _runner(**fields):
    return {"model_name": "ai/tiny:latest", "backend_name": "llama.cpp", "mode": "completion", "device": "cpu",
            "state": "ready", "in_use": False, "requests": 0, "context_size": 512, "slots": 8, "memory": 2**20,
            "keep_alive": 300, "expires_at": time.time() + 200, "last_used": time.time(), **fields}


def test_ps_says_how_much_of_a_busy_engine_is_work_on_data():
    idle = _runner()
    chat = _runner(in_use=True, requests=1)
    mapping = _runner(in_use=True, requests=9, background_requests=7, background_waiting=1)
    assert [in_use_text(r) for r in (idle, chat, mapping)] == ["no", "yes", "9 (8 on data)"]
    table = runners_table([mapping])
    assert "9 (8 on data)" in table.splitlines()[1]
