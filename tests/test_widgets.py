"""The notebook widgets as a user drives them: real runners (`jupyter modelrunner serve`) on real stores, clicks on
stock ipywidgets (which work outside a kernel through their dummy comm), and what the widgets then show."""

from __future__ import annotations

import html
from collections.abc import Iterator

import pytest

from jupyter_modelrunner.client import RunnerClient
from jupyter_modelrunner.errors import ModelRunnerError
from jupyter_modelrunner.sizes import format_bytes
from jupyter_modelrunner.widgets import MapProgress, ModelPicker, PullProgress, RunnerStatus, picker

from .conftest import server_env
from .support.jupyter import ServerProcess
from .support.registry import find_free_port

HELLO = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def client(standalone) -> RunnerClient:
    """A client of the module's runner, whose store holds `ai/tiny` and `ai/tiny-long`."""
    return RunnerClient(standalone.url, standalone.token)


@pytest.fixture(scope="module")
def empty_runner(tmp_path_factory, registry, seeded) -> Iterator[ServerProcess]:
    """A runner whose store starts empty, so a pull from the widget visibly adds a model."""
    workdir = tmp_path_factory.mktemp("widgets-empty")
    with ServerProcess.standalone(workdir, server_env(workdir, workdir / "store", registry.host)) as server:
        yield server


@pytest.fixture(scope="module")
def empty_client(empty_runner) -> RunnerClient:
    return RunnerClient(empty_runner.url, empty_runner.token)


def listed(picker: ModelPicker, reference: str) -> list[str]:
    """The dropdown's values that are `reference` (tags come back as users name them, `ai/tiny:latest`)."""
    return [value for _label, value in picker.dropdown.options
            if value == reference or value.endswith("/" + reference)]


def runner_of(client: RunnerClient, model_id: str) -> dict | None:
    return next((entry for entry in client.ps() if entry["model_id"] == model_id), None)


@pytest.mark.timeout(120)
def test_picker_lists_local_models_with_format_and_size(client):
    widget = picker(client)
    labels = dict(widget.dropdown.options)
    tiny = listed(widget, "ai/tiny:latest")[0]
    label = next(text for text, value in labels.items() if value == tiny)
    assert "gguf" in label and format_bytes(client.inspect("ai/tiny")["size"]) in label
    assert listed(widget, "ai/tiny-long:latest")
    assert widget.value in labels.values() and widget.dropdown.value == widget.value
    assert widget.error.value == ""

    long = listed(widget, "ai/tiny-long:latest")[0]
    widget.value = long
    seen: list[str] = []
    widget.observe(lambda change: seen.append(change["new"]), "value")
    widget.dropdown.value = tiny  # the user's choice in the dropdown
    assert widget.value == tiny and seen == [tiny]
    assert "<b>llama.cpp</b> · cpu" in widget.badge.value and "gguf model" in widget.badge.value
    widget.value = "ai/tiny-long"  # the short form users type selects the stored tag
    assert widget.value == long and widget.dropdown.value == long and seen == [tiny, long]
    widget.refresh_button.click()  # a refresh keeps the selection and tells no observer anything
    assert widget.value == long and seen == [tiny, long]


@pytest.mark.timeout(180)
def test_pull_from_the_widget_fills_the_bar_and_selects_the_model(empty_client):
    widget = ModelPicker(empty_client)
    assert not listed(widget, "ai/tiny:latest")
    fractions: list[float] = []
    widget.progress.bar.observe(lambda change: fractions.append(change["new"]), "value")

    widget.pull_text.value = "ai/tiny"
    widget.pull_button.click()
    assert widget.wait(150)

    progress = widget.progress
    assert progress.phase == "done" and progress.bar.bar_style == "success", progress.message.value
    assert progress.bar.value == progress.bar.max and fractions[-1] == 1.0 and fractions == sorted(fractions)
    assert progress.label.value.endswith("(100 %)")
    assert progress.layers.children and "Pulled" in progress.message.value
    assert widget.value == listed(widget, "ai/tiny:latest")[0] and widget.dropdown.value == widget.value
    assert "llama.cpp" in widget.badge.value
    assert widget.error.value == "" and not widget.pull_button.disabled and widget.pull_text.value == ""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("reference", ["ai/no-such-model", "Not A/Reference!"])
def test_a_failed_pull_shows_the_servers_message_inline(empty_client, reference):
    with pytest.raises(ModelRunnerError) as expected:
        list(empty_client.pull(reference))
    widget = ModelPicker(empty_client)
    before = widget.value

    widget.pull_text.value = reference
    widget.pull_button.click()
    assert widget.wait(100)

    assert widget.progress.phase == "failed" and widget.progress.bar.bar_style == "danger"
    assert widget.progress.bar.value < widget.progress.bar.max
    message = html.escape(str(expected.value))
    assert message and message in widget.error.value and message in widget.progress.message.value
    assert "Traceback" not in widget.error.value
    assert widget.value == before and not widget.pull_button.disabled


@pytest.mark.timeout(240)
def test_engine_badge_names_vllm_or_why_not_for_safetensors(empty_client):
    widget = ModelPicker(empty_client)
    widget.pull("ai/tiny-st")
    assert widget.wait(200) and widget.error.value == "", widget.error.value
    assert widget.value == listed(widget, "ai/tiny-st:latest")[0]
    assert widget.model["config"]["format"] == "safetensors"

    vllm = next(engine for engine in empty_client.status()["engines"] if engine["engine"] == "vllm")
    if vllm["available"]:
        assert f"<b>vllm</b> · {vllm['device']}" in widget.badge.value and vllm["device"] == "cpu"
        assert "safetensors model" in widget.badge.value and not widget.load_button.disabled
    else:
        error = empty_client.inspect("ai/tiny-st")["engine_error"]
        assert "vLLM" in error and html.escape(error) in widget.badge.value and "⚠" in widget.badge.value
        assert widget.load_button.disabled  # nothing could run it, so nothing to load


@pytest.mark.timeout(240)
def test_load_and_unload_through_the_button(client):
    client.unload(["ai/tiny"])
    widget = ModelPicker(client, value="ai/tiny")
    model_id = widget.model["id"]
    assert widget.load_button.description == "Load" and not widget.load_button.disabled

    widget.load_button.click()
    assert widget.load_button.description == "Loading…" and widget.load_button.disabled
    assert widget.wait(200) and widget.error.value == "", widget.error.value
    assert runner_of(client, model_id)["state"] == "ready"
    assert widget.loaded and widget.load_button.description == "Unload"
    assert "llama.cpp" in widget.load_status.value and "ready" in widget.load_status.value

    widget.load_button.click()
    assert widget.wait(60) and widget.error.value == "", widget.error.value
    assert runner_of(client, model_id) is None
    assert not widget.loaded and widget.load_button.description == "Load"


@pytest.mark.timeout(240)
def test_runner_status_shows_the_loaded_model(client):
    for _piece in client.chat("ai/tiny", HELLO, max_tokens=1):
        pass
    try:
        status = RunnerStatus(client)
        entry = next(e for e in status.runners if e["model_name"].endswith("ai/tiny:latest"))
        assert entry["state"] == "ready"
        for shown in (entry["model_name"], "llama.cpp", "cpu", "ready", format_bytes(entry["memory"]), "in 4m"):
            assert html.escape(str(shown)) in status.table.value
    finally:
        client.unload(["ai/tiny"])
    status.refresh_button.click()
    assert not any(e["model_name"].endswith("ai/tiny:latest") for e in status.runners)
    assert "ai/tiny:latest" not in status.table.value


@pytest.mark.timeout(120)
def test_pull_progress_shows_a_pull_driven_by_the_magics(client):
    progress = PullProgress(title="Pulling ai/tiny-st")  # as `%model pull` makes it
    final: dict = {}
    for event in client.pull("ai/tiny-st"):
        if event["type"] == "success":
            final = event
        else:
            progress.update(event)
    layers = [row.children[1] for row in progress.layers.children]
    assert progress.phase == "running" and len(layers) >= 2 and progress.heading.value == "Pulling ai/tiny-st"
    progress.done(final["message"])
    assert progress.phase == "done" and progress.bar.value == progress.bar.max
    assert progress.label.value.endswith("(100 %)") and all(bar.value == bar.max for bar in layers)

    again = PullProgress("ai/tiny-st")
    assert again.track(client.pull("ai/tiny-st"))["type"] == "success"  # nothing to download this time
    assert again.phase == "done" and again.bar.value == again.bar.max and "already up to date" in again.message.value


@pytest.mark.timeout(60)
def test_an_unreachable_runner_is_said_inline():
    widget = ModelPicker(RunnerClient(f"http://127.0.0.1:{find_free_port()}/", "token"))
    assert "No model runner answers at" in widget.error.value and "Traceback" not in widget.error.value
    assert widget.value == "" and widget.load_button.disabled
    status = RunnerStatus(widget.client)
    assert "No model runner answers at" in status.error.value and status.runners == []


def test_map_progress_counts_rows_and_says_how_it_ended():
    """`map`'s widget as `map` drives it (tests/test_mapping.py sees it appear in a real kernel's cell)."""
    view = MapProgress("Mapping ai/tiny over 32 rows", 32)
    view.update(12, 1, 32, cached=3, tokens=452, seconds=10.0)
    assert view.bar.value == 13 and view.bar.max == 32 and view.bar.bar_style == "warning"  # a row failed
    assert view.label.value == "12/32 done · 1 failed · 3 cached · 45.2 tokens/s · ETA 0:19"
    view.update(31, 1, 32, cached=3, tokens=1200, seconds=30.0)
    view.done("31 of 32 done, 1 failed in 30.0 s")
    assert view.phase == "done" and view.bar.value == 32 and "1 failed in 30.0 s" in view.message.value
    interrupted = MapProgress("Mapping ai/tiny over 8 rows", 8)
    interrupted.update(2, 0, 8, seconds=1.0)
    interrupted.fail("Interrupted: 2 of 8 rows done and cached; run it again to resume.")
    assert interrupted.phase == "failed" and interrupted.bar.value == 2 and interrupted.bar.bar_style == "danger"
    assert "run it again to resume" in interrupted.message.value
