"""`bench` as a user runs it: `jupyter modelrunner bench` against a real runner (`serve` with the tiny GGUF models on a
real llama-server), and `%model bench` in a real kernel (nbclient), where it draws a chart. Durations are a second a
level: the numbers are checked for sense, never for speed."""

from __future__ import annotations

import base64
import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from jupyter_modelrunner.arguments import duration_seconds
from jupyter_modelrunner.benchmarking import percentile
from jupyter_modelrunner.client import RunnerClient

pytestmark = pytest.mark.timeout(300)

SHORT = ("--concurrency", "1,2", "--duration", "1", "--max-tokens", "8")


def run_cli(*args: str, env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jupyter_modelrunner", *args], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=timeout)


@pytest.fixture(scope="module")
def runner_env(standalone) -> dict[str, str]:
    return {"MODEL_RUNNER_HOST": standalone.url, "MODEL_RUNNER_TOKEN": standalone.token}


def poll(condition, what: str, timeout: float = 120):
    """Wait for `condition()` to be true; `timeout` is only how long to wait before failing."""
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, f"still not {what} after {timeout} s"
        time.sleep(0.1)
    return result


def test_bench_json_has_a_measurement_per_model_and_level(runner_env):
    done = run_cli("bench", "ai/tiny", "ai/tiny-long", *SHORT, "--json", env=runner_env)
    assert done.returncode == 0, done.stderr
    points = json.loads(done.stdout)  # stdout is the JSON alone: the progress lines go to stderr
    assert [(p["model"], p["concurrency"]) for p in points] == [
        ("ai/tiny", 1), ("ai/tiny", 2), ("ai/tiny-long", 1), ("ai/tiny-long", 2)]
    for point in points:
        assert point["errors"] == 0 and point["error"] is None, point
        assert point["requests"] >= 1 and point["completion_tokens"] >= point["requests"], point
        assert point["tokens_per_second"] > 0 and point["requests_per_second"] > 0, point
        assert 0 < point["ttft_p50_ms"] <= point["ttft_p95_ms"], point
        assert point["request_tokens_per_second"] > 0, point
        assert point["engine"] == "llama.cpp" and point["complete"] is True, point
        assert point["seconds"] >= 1, point  # the level ran its whole duration (and its last requests to the end)
    assert "ai/tiny-long: 2 at once" in done.stderr  # the progress, a line per level in a log


def test_bench_table_shows_both_models(runner_env):
    done = run_cli("bench", "ai/tiny", "ai/tiny-long", *SHORT, env=runner_env)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("MODEL"))
    assert "TTFT P50" in lines[start] and "TOKENS/S TOTAL" in lines[start]
    rows = [line.split() for line in lines[start + 1 : lines.index("", start)]]
    assert [(row[0], row[1]) for row in rows] == [
        ("ai/tiny", "1"), ("ai/tiny", "2"), ("ai/tiny-long", "1"), ("ai/tiny-long", "2")]
    assert any(line.startswith("ai/tiny (llama.cpp on ") and "fastest at" in line for line in lines)
    assert any(line.startswith("ai/tiny-long (llama.cpp on ") and "fastest at" in line for line in lines)


def test_bench_of_a_model_that_is_not_there_is_one_line_and_status_1(runner_env):
    done = run_cli("bench", "ai/tiny", "ai/no-such-model", *SHORT, env=runner_env)
    assert done.returncode == 1
    assert done.stderr.startswith("Error:") and "no-such-model" in done.stderr and "Traceback" not in done.stderr
    assert done.stdout == ""  # checked before anything is measured: ai/tiny was not run for nothing


@pytest.mark.parametrize(("flag", "value", "says"), [
    ("--concurrency", "0", "argument --concurrency: '0' is not a list of whole numbers"),
    ("--concurrency", "a,b", "argument --concurrency: 'a,b' is not a list of whole numbers"),
    ("--duration", "-1", "argument --duration: '-1' is not a duration of more than 0"),
    ("--max-tokens", "0", "argument --max-tokens: '0' is not a whole number of 1 or more"),
])
def test_bad_flags_are_usage_errors(flag, value, says):
    done = run_cli("bench", "ai/tiny", flag, value, env={})
    assert done.returncode == 2 and says in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_help_documents_bench():
    listed = run_cli("--help", env={}).stdout
    assert "bench" in listed and "tokens/s" in listed
    shown = run_cli("bench", "--help", env={}).stdout
    for flag in ("--concurrency", "--duration", "--prompt", "--max-tokens", "--timeout", "--json"):
        assert flag in shown
    assert "Ctrl-C" in shown


def test_durations_read_as_dmr_writes_them():
    assert [duration_seconds(text) for text in ("5", "5s", "1.5s", "2m", "500ms", "1h")] == [
        5.0, 5.0, 1.5, 120.0, 0.5, 3600.0]


def test_percentiles_interpolate_between_ranks():
    assert percentile([], 0.5) is None
    assert percentile([3.0], 0.95) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert percentile(list(range(101)), 0.95) == 95.0


def test_ctrl_c_shows_what_was_measured_and_frees_the_engine(runner_env, standalone, tmp_path):
    """Interrupted in its second level, `bench` prints the table of the levels so far (the cut one marked), exits
    130 like any interrupted command, and leaves no request running on the engine."""
    log = tmp_path / "stderr"
    with log.open("w") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "jupyter_modelrunner", "bench", "ai/tiny-long",
                                    "--concurrency", "1,2", "--duration", "3", "--max-tokens", "1000"],
                                   stdout=subprocess.PIPE, stderr=stderr, text=True,
                                   env={**os.environ, **runner_env})
        try:
            poll(lambda: "ai/tiny-long: 2 at once" in log.read_text(), "at the second level")
            process.send_signal(signal.SIGINT)
            out, _ = process.communicate(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
    assert process.returncode == 130, log.read_text()
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("MODEL"))
    assert [line.split()[1] for line in lines[start + 1 : lines.index("", start)]] == ["1", "2*"], out
    assert "Interrupted" in out and "Traceback" not in log.read_text()
    client = RunnerClient(standalone.url, standalone.token)
    poll(lambda: not any(r["in_use"] for r in client.ps()), "free")


# -- %model bench in a notebook ---------------------------------------------------------------------------


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's header, which must be there: the signature, then the IHDR chunk."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def execute(cells: list[str], env: dict[str, str], workdir: Path) -> list[nbformat.NotebookNode]:
    """Run `cells` in a fresh python3 kernel (this interpreter, so this checkout) with `env`; their outputs."""
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source) for source in cells])
    client = NotebookClient(notebook, timeout=180, kernel_name="python3",
                            resources={"metadata": {"path": str(workdir)}})
    client.execute(env={**os.environ, **env})
    return [cell.outputs for cell in notebook.cells]


def text_of(outputs: list[nbformat.NotebookNode]) -> str:
    return "\n".join(out.get("text", "") if out.output_type == "stream" else
                     out.get("data", {}).get("text/plain", "") for out in outputs)


def test_model_bench_in_a_notebook_shows_the_table_and_a_chart(runner_env, tmp_path):
    loaded, helped, charted, as_json, kept = execute([
        "%load_ext jupyter_modelrunner",
        "%model bench --help",
        "%model bench ai/tiny ai/tiny-long " + " ".join(SHORT),
        "%model bench ai/tiny --concurrency 1 --duration 1 --max-tokens 8 --json",
        "import sys; print(len(_bench), _bench[0]['model'], _bench[0]['tokens_per_second'] > 0, "
        "'matplotlib.pyplot' in sys.modules)",
    ], runner_env, tmp_path)
    assert not [out for out in loaded if out.output_type == "error"]
    assert "usage: %model bench" in text_of(helped) and "--concurrency" in text_of(helped)
    assert not [out for out in charted if out.output_type == "error"], text_of(charted)
    table = text_of(charted)
    assert "TTFT P50" in table and "\nai/tiny " in table and "\nai/tiny-long " in table, table
    images = [out for out in charted if "image/png" in out.get("data", {})]
    assert len(images) == 1, charted
    png = base64.b64decode(images[0]["data"]["image/png"])
    width, height = png_size(png)
    assert 600 <= width <= 2000 and 250 <= height <= 1200 and len(png) > 10_000, (width, height, len(png))

    assert not [out for out in as_json if "image/png" in out.get("data", {})]  # --json: the data alone
    stdout = "".join(out.get("text", "") for out in as_json if out.output_type == "stream" and out.name == "stdout")
    points = json.loads(stdout)
    assert [(p["model"], p["concurrency"]) for p in points] == [("ai/tiny", 1)] and points[0]["errors"] == 0
    # The last run's measurements, for pandas & co.; the chart was drawn without pyplot (no figure left open, the
    # kernel's matplotlib backend untouched).
    assert text_of(kept).strip() == "1 ai/tiny True False"


def test_kernel_interrupt_stops_bench_and_shows_what_was_measured(runner_env, standalone):
    """The notebook's stop button while `%model bench` runs its second level: the cell ends without an error, with the
    table so far and its chart, and the engine has no request left running."""
    from jupyter_client.manager import start_new_kernel

    kernel, client = start_new_kernel(kernel_name="python3", env={**os.environ, **runner_env})
    outputs: list[dict] = []

    def interrupt_at_the_second_level(message: dict) -> None:
        outputs.append(message)
        shown = message["content"].get("data", {}).get("text/plain", "")
        if message["msg_type"] == "update_display_data" and "2 at once" in shown and not interrupted:
            interrupted.append(True)
            kernel.interrupt_kernel()

    interrupted: list[bool] = []
    try:
        client.execute_interactive("%load_ext jupyter_modelrunner", timeout=60)
        reply = client.execute_interactive(
            "%model bench ai/tiny-long --concurrency 1,2 --duration 3 --max-tokens 1000",
            output_hook=interrupt_at_the_second_level, timeout=120)
    finally:
        client.stop_channels()
        kernel.shutdown_kernel(now=True)
    assert interrupted and reply["content"]["status"] == "ok", reply["content"]
    text = "".join(m["content"].get("text", "") for m in outputs if m["msg_type"] == "stream")
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("MODEL"))
    assert [line.split()[1] for line in lines[start + 1 : lines.index("", start)]] == ["1", "2*"], text
    assert "Interrupted" in text
    assert any("image/png" in m["content"].get("data", {}) for m in outputs if m["msg_type"] == "display_data")
    runner = RunnerClient(standalone.url, standalone.token)
    poll(lambda: not any(r["in_use"] for r in runner.ps()), "free")
