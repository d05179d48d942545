"""The chaos soak (benchmarks/soak.py), short: a minute of 32 clients while engines are killed, the registry
restarts mid-pull and clients hang up mid-stream. It fails on any lost request or a damaged store."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(1200)
def test_a_minute_of_chaos_loses_nothing():
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "soak.py"), "--duration", "60",
                           "--kill-every", "15"], capture_output=True, text=True, timeout=1100)
    report = done.stdout + done.stderr[-3000:]
    assert done.returncode == 0, report
    assert re.search(r"^LOST\s+0$", done.stdout, re.M) and "fsck at the end" in done.stdout, report
    completed = int(re.search(r"^completed\s+(\d+)$", done.stdout, re.M).group(1))
    assert completed > 100, report  # it really ran under load
    tried = int(re.search(r"^attacks tried\s+(\d+)$", done.stdout, re.M).group(1))
    refused = int(re.search(r"^attacks refused\s+(\d+)$", done.stdout, re.M).group(1))
    assert tried > 50 and refused == tried, report  # the attack mix ran alongside, and nothing got through
    print(done.stdout)
