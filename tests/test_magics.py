"""`%model` and `%%chat` in a real IPython shell, against a real runner (`jupyter modelrunner serve` with the
tiny GGUF model and, for one test, the real SmolLM2)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output
from prometheus_client.parser import text_string_to_metric_families

from jupyter_modelrunner import client as client_module
from jupyter_modelrunner.distribution import package_gguf
from jupyter_modelrunner.engines.vllm import default_vllm_python
from jupyter_modelrunner.magics import ModelRunnerMagics, split_chat_line
from jupyter_modelrunner.presentation import format_bytes
from jupyter_modelrunner.reference import parse_reference
from jupyter_modelrunner.terminal import AnswerWriter

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def shell(standalone, monkeypatch) -> Iterator[InteractiveShell]:
    """A fresh IPython shell with the extension loaded, connected to the test runner; text output."""
    monkeypatch.setenv("MODEL_RUNNER_MAGICS_OUTPUT", "text")
    monkeypatch.setattr(client_module, "_active", None)
    client_module.connect(standalone.url, standalone.token)
    InteractiveShell.clear_instance()
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "jupyter_modelrunner")
    yield shell
    InteractiveShell.clear_instance()


@pytest.fixture
def magics(shell) -> ModelRunnerMagics:
    return shell.magics_manager.registry["ModelRunnerMagics"]


def run(shell: InteractiveShell, cell: str) -> tuple[str, str, object]:
    with capture_output() as captured:
        result = shell.run_cell(cell)
    return captured.stdout, captured.stderr, result


def test_model_with_no_verb_prints_help_and_each_verb_has_help(shell):
    out, _, result = run(shell, "%model")
    assert result.success and "pull" in out and "connect" in out
    out, _, result = run(shell, "%model pull --help")
    assert result.success and "usage: %model pull" in out


def test_pull_ls_inspect_tag_rm(shell, registry):
    out, _, result = run(shell, "%model pull ai/tiny")
    assert result.success, out
    assert "Pulled ai/tiny:latest" in out and "gguf" in out and "Runs on llama.cpp" in out
    out, _, _ = run(shell, "%model ls")
    assert "MODEL NAME" in out and "ai/tiny:latest" in out
    out, _, _ = run(shell, "%model inspect ai/tiny")
    assert '"engine": "llama.cpp"' in out
    out, _, result = run(shell, "%model tag ai/tiny ai/tiny-copy:v1")
    assert result.success and "Tagged" in out
    out, _, result = run(shell, "%model rm ai/tiny-copy:v1")
    assert result.success and "Untagged: ai/tiny-copy:v1" in out


def test_pull_of_a_vllm_model_offers_to_start_it_before_the_first_question(shell):
    if default_vllm_python() is None:
        pytest.skip("no vLLM environment (jupyter modelrunner install-runner vllm)")
    out, _, result = run(shell, "%model pull ai/tiny-st")
    assert result.success, out
    assert "Runs on vllm" in out and "`%model load ai/tiny-st` starts it now" in out
    out, _, _ = run(shell, "%model pull ai/tiny")  # llama.cpp starts in a second: no such advice
    assert "Runs on llama.cpp" in out and "%model load" not in out


def test_push_package_configure_logs_df_fsck_status(shell, magics, registry, tiny_gguf, tmp_path):
    """Each verb shows what a user checks it by: the packaged model's id and its row in `ls`, the digest the
    registry now serves, the settings as the runner stored them, the store's numbers, `clean`, where the runner is
    and what the engine printed."""
    client = magics.client
    out, _, result = run(shell, f"%model package --gguf {tiny_gguf} --context-size 256 ai/packaged-tiny")
    assert result.success, out
    packaged = client.inspect("ai/packaged-tiny")
    short_id = packaged["id"].removeprefix("sha256:")[:12]
    assert out.startswith(f"Packaged ai/packaged-tiny ({short_id}): gguf") and "Runs on llama.cpp" in out, out
    out, _, _ = run(shell, "%model ls")
    row = next(line for line in out.splitlines() if line.startswith("ai/packaged-tiny:latest "))
    assert row.split()[1] == "gguf" and short_id in row.split()

    out, _, result = run(shell, f"%model push ai/packaged-tiny --to {registry.host}/team/pushed:v1")
    assert result.success, out
    assert "\nPushed team/pushed:v1: uploaded " in out  # after the progress lines; the registry is implied
    served = requests.get(f"{registry.url}/v2/team/pushed/manifests/v1", timeout=10, headers={
        "Accept": "application/vnd.oci.image.manifest.v1+json"}, proxies={"http": None, "https": None})
    assert served.status_code == 200
    assert f"digest: {served.headers['Docker-Content-Digest']}" in out

    out, _, result = run(shell, "%model configure ai/packaged-tiny --context-size 512 --keep-alive 2m "
                                "-- --threads 1")
    assert result.success, out
    shown, _, _ = run(shell, "%model configure ai/packaged-tiny")  # no options: what the runner kept
    assert shown.strip() == out.strip() == "ai/packaged-tiny: context size 512, keep_alive 2m, flags --threads 1"
    out, _, result = run(shell, "%model configure ai/packaged-tiny -- --model /etc/passwd")
    assert not result.success and "Error:" in out and "Traceback" not in out

    out, _, _ = run(shell, "%model df")
    usage, models = client.df(), client.models()
    shown = dict(line.split(":", 1) for line in out.strip().splitlines())
    assert shown["Store"].strip() == usage["store"] and int(shown["Model count"]) == len(models) >= 2
    assert shown["Models"].strip() == format_bytes(usage["models"]) and usage["models"] >= packaged["size"] > 0
    assert shown["Total"].strip() == format_bytes(usage["total"])

    out, _, result = run(shell, "%model fsck")
    assert result.success, out
    assert out.strip().splitlines()[-1].startswith(f"fsck: {len(models)} models, ")
    assert out.strip().splitlines()[-1].endswith(": clean"), out

    out, _, _ = run(shell, "%model status")
    lines = out.splitlines()
    assert lines[0] == f"Runner: {client.url} (found via connect)" and lines[1].startswith("Machine: ")
    assert f"Store: {usage['store']}" in lines
    assert any(line.split()[:2] == ["llama.cpp", "available"] for line in lines), out
    assert any(line.startswith("vllm ") for line in lines), out

    out, _, _ = run(shell, "%model logs ai/packaged-tiny")
    assert out.strip() == "No engine has run ai/packaged-tiny yet."
    run(shell, "%model load ai/packaged-tiny")
    out, _, _ = run(shell, "%model logs -n 100000 ai/packaged-tiny")
    assert "--threads 1" in out  # the engine's command line, with the configured flag
    run(shell, "%model unload ai/packaged-tiny")


def test_chat_streams_keeps_history_and_new_resets(shell, magics):
    out, _, result = run(shell, "%%chat ai/tiny --max-tokens 8 --temperature 0\nHello there")
    assert result.success, out
    first = shell.user_ns["_chat"]
    assert first and first in out and "llama.cpp" in out and "tokens in" in out
    assert [m["role"] for m in magics.conversations["ai/tiny"]] == ["user", "assistant"]
    run(shell, "%%chat ai/tiny --max-tokens 8 --temperature 0\nAnd again")
    assert [m["role"] for m in magics.conversations["ai/tiny"]] == ["user", "assistant"] * 2
    run(shell, "%%chat ai/tiny --new --system 'Be brief.' --max-tokens 8 --temperature 0\nHello there")
    assert [m["role"] for m in magics.conversations["ai/tiny"]] == ["system", "user", "assistant"]
    out, _, _ = run(shell, "%chat --max-tokens 8 --temperature 0 ai/tiny What's \"up\"?")
    assert magics.conversations["ai/tiny"][-2]["content"] == 'What\'s "up"?'


def test_chat_in_a_notebook_updates_one_markdown_display_in_place(shell, magics):
    magics.rich = True
    with capture_output() as captured:
        result = shell.run_cell("%%chat ai/tiny --max-tokens 200 --temperature 0\nTell me a story")
    assert result.success
    outputs = captured.outputs
    assert len(outputs) >= 3, "the answer should arrive in several updates"
    assert all("text/markdown" in o.data for o in outputs)
    assert all(o.update for o in outputs[1:]) and not outputs[0].update
    ids = {o.transient.get("display_id") for o in outputs}
    assert len(ids) == 1, "one display, updated in place"
    final = outputs[-1].data["text/markdown"]
    assert final.startswith(shell.user_ns["_chat"]) and "llama.cpp" in final


def test_thinking_shows_prefixed_above_the_answer_in_a_terminal_and_stays_out_of_chat(shell, magics,
                                                                                     reasoning_models):
    """DeepSeek-R1's template opens a think block, so the tiny model's words are all thinking: shown, marked as
    thinking, and kept out of `_chat` and of the conversation; `--no-think` makes them the answer."""
    out, _, result = run(shell, "%%chat ai/tiny-r1 --max-tokens 12 --temperature 0\nHello")
    assert result.success, out
    assert out.startswith("Thinking:\n│ ") and "tokens in" in out
    assert shell.user_ns["_chat"] == "" and magics.conversations["ai/tiny-r1"][-1] == {"role": "assistant",
                                                                                      "content": ""}
    out, _, result = run(shell, "%%chat ai/tiny-r1 --new --no-think --max-tokens 12 --temperature 0\nHello")
    assert result.success and "Thinking:" not in out
    assert shell.user_ns["_chat"] and out.startswith(shell.user_ns["_chat"])


def test_thinking_in_a_notebook_is_a_details_block_open_while_thinking_then_collapsed(shell, magics,
                                                                                      reasoning_models):
    magics.rich = True
    with capture_output() as captured:
        result = shell.run_cell("%%chat ai/tiny-r1 --max-tokens 200 --temperature 0\nTell me a story")
    assert result.success
    shown = [o.data["text/markdown"] for o in captured.outputs]
    assert len({o.transient.get("display_id") for o in captured.outputs}) == 1, "one display, updated in place"
    assert any(text.startswith("<details open><summary>Thinking…</summary>\n\n> ") for text in shown[1:-1])
    assert shown[-1].startswith("<details><summary>Thought for ") and "</details>" in shown[-1]
    assert "tokens in" in shown[-1] and shell.user_ns["_chat"] == ""


def test_use_sets_the_default_model(shell):
    out, _, result = run(shell, "%%chat\nHello")
    assert not result.success and "%model use" in out
    out, _, result = run(shell, "%model use ai/absent")
    assert not result.success and "ai/absent" in out and "Traceback" not in out
    run(shell, "%model use ai/tiny")
    out, _, result = run(shell, "%%chat --max-tokens 4\nHello")
    assert result.success and "ai/tiny" in out


def test_ps_and_unload(shell):
    run(shell, "%chat --max-tokens 2 ai/tiny Hi")
    out, _, _ = run(shell, "%model ps")
    assert "ai/tiny:latest" in out and "llama.cpp" in out
    out, _, result = run(shell, "%model unload --all")
    assert result.success and "Unloaded" in out
    out, _, _ = run(shell, "%model ps")
    assert "No model is loaded" in out


def test_errors_are_one_line_unless_debug(shell):
    out, _, result = run(shell, "%%chat ai/absent\nHello")
    assert not result.success
    assert "Error:" in out and "pull ai/absent" in out and "Traceback" not in out
    out, _, result = run(shell, "%model pull 127.0.0.1:9/ai/x")
    assert not result.success and "Error:" in out and "Traceback" not in out
    out, _, result = run(shell, "%model inspect ai/absent --debug")
    assert not result.success and "Traceback" in out
    out, _, result = run(shell, "%model pull")
    assert not result.success and "usage: %model pull" in out and "Traceback" not in out


def tokens_predicted(server, model: str) -> float:
    """llama-server's own count of the tokens it generated for `model`, as the runner's `/metrics` shows it."""
    with server.client() as http:
        text = http.get("metrics").text
    return sum(sample.value for family in text_string_to_metric_families(text)
               if family.name == "llamacpp:tokens_predicted" for sample in family.samples
               if sample.labels.get("model", "").endswith(model))


def poll(condition, what: str, timeout: float = 120):
    """Wait for `condition()` to be true (checked every 0.1 s); `timeout` is only how long to wait before failing."""
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, f"still not {what} after {timeout} s"
        time.sleep(0.1)
    return result


def test_interrupt_stops_the_stream_and_frees_the_runner(shell, magics, standalone, monkeypatch):
    run(shell, "%chat --max-tokens 2 ai/tiny-long Hi")  # loaded, so the interrupt lands mid-stream
    before = tokens_predicted(standalone, "ai/tiny-long:latest")
    shown = 0
    original = AnswerWriter.update

    def interrupt_at_the_fifth_piece(self, thinking: str, text: str) -> None:  # Ctrl-C while the answer streams
        nonlocal shown
        original(self, thinking, text)
        shown += 1
        if shown == 5:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(AnswerWriter, "update", interrupt_at_the_fifth_piece)
    out, _, result = run(shell, "%%chat ai/tiny-long --max-tokens 6000 --temperature 0\nHello")
    assert result.success and "stopped" in out
    assert shown == 5, "no piece may be shown after the interrupt"
    assert shell.user_ns["_chat"], "what arrived before the interrupt is kept"
    assert magics.conversations["ai/tiny-long"][-1]["content"] == shell.user_ns["_chat"]
    monkeypatch.setattr(AnswerWriter, "update", original)
    # The runner lets go of the engine, and the engine stopped generating: had it gone on to the 6000 tokens (the
    # request left open), its own count would say so once it is free.
    poll(lambda: not any(r["in_use"] for r in magics.client.ps() if r["model_name"] == "ai/tiny-long:latest"),
         "free")
    assert tokens_predicted(standalone, "ai/tiny-long:latest") - before < 6000
    out, _, result = run(shell, "%chat --max-tokens 4 ai/tiny-long Hi again")
    assert result.success, out


@pytest.mark.slow
def test_smollm2_answers_paris(shell, live_store, smollm2_file, registry):
    package_gguf(live_store, smollm2_file, parse_reference(f"{registry.host}/ai/smollm2"))
    out, _, result = run(shell, "%%chat ai/smollm2 --temperature 0 --max-tokens 24\n"
                                "What is the capital of France? Answer in one word.")
    assert result.success, out
    assert "Paris" in shell.user_ns["_chat"]


@pytest.mark.slow
def test_chat_json_puts_a_parsed_object_in_chat(shell, live_store, smollm2_file, registry):
    package_gguf(live_store, smollm2_file, parse_reference(f"{registry.host}/ai/smollm2"))
    run(shell, "from pydantic import BaseModel\nclass City(BaseModel):\n    name: str\n    country: str")
    out, _, result = run(shell, "%%chat ai/smollm2 --json City --temperature 0 --max-tokens 64\n"
                                "Name the capital of France and its country.")
    assert result.success, out
    city = shell.user_ns["_chat"]
    assert type(city).__name__ == "City" and city.name and city.country
    shell.user_ns["answer_schema"] = {"type": "object", "properties": {"answer": {"type": "string"}},
                                      "required": ["answer"]}
    out, _, result = run(shell, "%%chat ai/smollm2 --new --json answer_schema --temperature 0 --max-tokens 64\n"
                                "What is the capital of France?")
    assert result.success, out
    assert isinstance(shell.user_ns["_chat"]["answer"], str)
    out, _, result = run(shell, "%%chat ai/smollm2 --json Nowhere\nHi")
    assert not result.success and "--json Nowhere: no such name" in out


def test_split_chat_line_keeps_the_prompt_verbatim():
    assert split_chat_line("--temperature 0 ai/x  What's \"up\"?") == (["--temperature", "0", "ai/x"],
                                                                       "What's \"up\"?")
    assert split_chat_line("--new --system 'Be kind.'") == (["--new", "--system", "Be kind."], "")
    assert split_chat_line("ai/x") == (["ai/x"], "")
    assert split_chat_line("--image a.png --image 'my cat.jpg' --json City ai/x What?") == (
        ["--image", "a.png", "--image", "my cat.jpg", "--json", "City", "ai/x"], "What?")


def test_chat_image_shows_the_model_files_and_urls(shell, magics, tiny_vision, tmp_path):
    from .support.imageserver import ImageServer
    from .support.vision import images_encoded, png

    # The server packages only from the suite's temporary folders (package_roots), not from the model cache.
    gguf, mmproj = (Path(shutil.copy(path, tmp_path)) for path in (tiny_vision.gguf, tiny_vision.mmproj))
    out, _, result = run(shell, f"%model package --gguf {gguf} --mmproj {mmproj} ai/tiny-vision")
    assert result.success and "with a multimodal projector" in out, out
    out, _, result = run(shell, "%model configure ai/tiny-vision -- -lv 4")  # llama-server then logs each image
    assert result.success, out
    picture = tmp_path / "red square.png"
    picture.write_bytes(png(rgb=(230, 20, 20)))
    out, _, result = run(shell, f"%%chat ai/tiny-vision --image '{picture}' --max-tokens 8 --temperature 0\n"
                                "What is in the image?")
    assert result.success, out
    assert shell.user_ns["_chat"] and "llama.cpp" in out
    sent = magics.conversations["ai/tiny-vision"][0]["content"]
    assert sent[0] == {"type": "text", "text": "What is in the image?"}
    assert sent[1]["image_url"]["url"].startswith("data:image/png;base64,")
    def engine_log() -> str:
        return run(shell, "%model logs -n 2000 ai/tiny-vision")[0]

    assert images_encoded(engine_log, at_least=1) == 1

    # A URL goes to the runner, which fetches it (tests/api/test_vision.py) — but not from a loopback or private
    # address unless the runner allows them, which this one does not: the server here is never asked.
    with ImageServer() as web:
        out, _, result = run(shell, f"%chat --new --image {web.url('/green.png')} --max-tokens 8 --temperature 0 "
                                    "ai/tiny-vision Describe it")
        assert not result.success and "non-public address (127.0.0.1)" in out, out
        assert "allow_private_image_urls" in out
        assert web.hits.get("/green.png", 0) == 0
    assert images_encoded(engine_log, at_least=1) == 1  # still one: the refused URL reached no engine

    out, _, result = run(shell, f"%%chat ai/tiny-vision --image {tmp_path / 'nowhere.png'}\nHi")
    assert not result.success and "no such file" in out and "Traceback" not in out
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    out, _, result = run(shell, f"%%chat ai/tiny-vision --image {notes}\nHi")
    assert not result.success and "not an image file" in out
    out, _, result = run(shell, f"%%chat ai/tiny --new --image '{picture}'\nHi")
    assert not result.success and "no multimodal projector" in out
    out, _, _ = run(shell, "%chat --help")
    assert "--image PATH_OR_URL" in out


def test_load_ext_is_cheap():
    """`%load_ext jupyter_modelrunner` imports no HTTP, OpenAI, widget, registry or server code, nor the other front
    ends: a kernel pays for them at the first magic that needs them. (How long it takes is measured in
    benchmarks/magics.py, not bounded here.)"""
    heavy = ("httpx", "openai", "ipywidgets", "oras", "jupyter_server", "jupyter_modelrunner.cli",
             "jupyter_modelrunner.widgets", "jupyter_modelrunner.commands")
    code = ("import sys; from IPython.core.interactiveshell import InteractiveShell; "
            "InteractiveShell.instance().run_line_magic('load_ext', 'jupyter_modelrunner'); "
            f"print('loaded' if 'jupyter_modelrunner.magics' in sys.modules else ''); "
            f"print(' '.join(m for m in {heavy!r} if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded, imported = [*done.stdout.splitlines(), "", ""][:2]
    assert loaded == "loaded", done.stdout + done.stderr
    assert not imported.strip(), f"%load_ext imported {imported}"


def test_picker_and_runners_widgets_follow_the_runner(shell, magics):
    """The widgets `%model picker` and `%model runners` give show what the runner has: a model `%model load` starts
    appears in both, and is gone from both after `%model unload`; the picker's choice is `%%chat`'s default."""
    run(shell, "%model unload --all")
    picker = shell.run_line_magic("model", "picker")
    status = shell.run_line_magic("model", "runners")
    assert any(label.startswith(("ai/tiny", "127.0.0.1")) for label, _ in picker.dropdown.options)
    picker.value = "ai/tiny"
    assert magics.default_model == picker.value and picker.value.endswith("ai/tiny:latest")
    assert status.runners == [] and "No model is loaded" in status.table.value
    assert not picker.loaded and picker.load_button.description == "Load"

    out, _, result = run(shell, "%model load ai/tiny")
    assert result.success, out
    picker.refresh()
    status.refresh()
    assert [r["model_name"] for r in status.runners] == ["ai/tiny:latest"]
    assert "<td>ai/tiny:latest</td><td>llama.cpp</td>" in status.table.value
    assert picker.loaded and picker.load_button.description == "Unload" and "llama.cpp" in picker.load_status.value

    out, _, result = run(shell, "%model unload ai/tiny")
    assert result.success, out
    picker.refresh()
    status.refresh()
    assert status.runners == [] and "No model is loaded" in status.table.value
    assert not picker.loaded and picker.load_button.description == "Load"
    assert "not loaded" in picker.load_status.value


def test_model_ls_hf_cache_and_search_share_the_cli_verbs(shell):
    """The test runner's HF cache is empty and its Hub a port nothing listens on: what a user then reads."""
    out, _, result = run(shell, "%model ls --hf-cache")
    assert result.success and "holds no GGUF or safetensors model" in out and "%model search" in out
    _, err, result = run(shell, "%model search qwen")
    assert not result.success and "cannot be reached" in err + str(result.error_in_exec)
