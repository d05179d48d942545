"""`jupyter modelrunner` as a user runs it: real processes, one-line errors and non-zero exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from jupyter_modelrunner.lease import read_owner

from .support.registry import find_free_port
from .support.runners import stop_store_owner


def run_cli(*args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "jupyter_modelrunner", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=120)
    if check and done.returncode != 0:
        raise AssertionError(f"exit {done.returncode}: {done.stderr}")
    return done


@pytest.fixture
def cli_env(tmp_path, registry, monkeypatch):
    """A store of the test's own; the embedded runner the first command starts for it is stopped afterwards."""
    store = tmp_path / "store"
    monkeypatch.setenv("MODEL_RUNNER_STORE", str(store))
    monkeypatch.setenv("MODEL_RUNNER_DEFAULT_REGISTRY", registry.host)
    for name in ("MODEL_RUNNER_HOST", "MODEL_RUNNER_TOKEN", "JPY_PARENT_PID"):
        monkeypatch.delenv(name, raising=False)
    yield tmp_path
    stop_store_owner(store)


def test_help_lists_the_docker_model_verbs():
    out = run_cli("--help").stdout
    for verb in ("pull", "push", "package", "tag", "ls", "list", "inspect", "rm", "df"):
        assert verb in out


def test_pull_ls_inspect_tag_rm_df(cli_env, seeded):
    pulled = run_cli("pull", "ai/tiny")
    assert "Pulled" in pulled.stdout and "gguf" in pulled.stdout
    listing = run_cli("ls").stdout
    assert "ai/tiny:latest" in listing and "F32" in listing and "llama" in listing
    models = json.loads(run_cli("ls", "--json").stdout)
    assert models[0]["config"]["format"] == "gguf" and models[0]["config"]["architecture"] == "llama"
    inspected = json.loads(run_cli("inspect", "ai/tiny").stdout)
    assert inspected["id"] == seeded["ai/tiny"]
    assert inspected["config"]["gguf"]["general.architecture"] == "llama"
    run_cli("tag", "ai/tiny", "ai/tiny:mine")
    assert "ai/tiny:mine" in run_cli("list").stdout
    refused = run_cli("rm", inspected["id"][7:19], check=False)
    assert refused.returncode == 1 and "--force" in refused.stderr
    assert "Untagged" in run_cli("rm", "ai/tiny:mine").stdout
    usage = json.loads(run_cli("df", "--json").stdout)
    assert usage["model_count"] == 1 and usage["models"] > 0
    assert "Deleted" in run_cli("rm", "ai/tiny").stdout
    assert json.loads(run_cli("ls", "--json").stdout) == []


def test_package_and_push(cli_env, registry, tiny_gguf, tiny_safetensors):
    template = cli_env / "template.jinja"
    template.write_text("{% for m in messages %}{{ m.content }}{% endfor %}")
    license_file = cli_env / "LICENSE"
    license_file.write_text("Apache-2.0")
    out = run_cli("package", "--gguf", str(tiny_gguf), "--license", str(license_file), "--chat-template",
                  str(template), "--context-size", "256", "--push", "ai/packaged:v1").stdout
    assert "Packaged" in out and "Pushed" in out
    run_cli("rm", "ai/packaged:v1")
    run_cli("pull", "ai/packaged:v1")
    inspected = json.loads(run_cli("inspect", "ai/packaged:v1").stdout)
    assert inspected["config"]["context_size"] == 256
    bundle = inspected["bundle"]
    assert (Path(bundle) / "template.jinja").is_file()
    assert run_cli("package", "--safetensors-dir", str(tiny_safetensors), "ai/st:v1").returncode == 0


def test_fsck_finds_damage_and_repair_drops_only_the_broken_model(cli_env, seeded):
    run_cli("pull", "-q", "ai/tiny")
    run_cli("pull", "-q", "ai/tiny-st")
    clean = run_cli("fsck")
    assert clean.returncode == 0 and clean.stdout.strip().splitlines()[-1].endswith(": clean")

    store = cli_env / "store"
    inspected = json.loads(run_cli("inspect", "ai/tiny").stdout)
    weights = store / "blobs" / "sha256" / inspected["manifest"]["layers"][0]["digest"].removeprefix("sha256:")
    weights.chmod(0o644)
    with weights.open("r+b") as handle:  # bytes flipped in place: the size still matches
        handle.seek(100)
        handle.write(b"\xff" * 8)
    st_bundle = Path(json.loads(run_cli("inspect", "ai/tiny-st").stdout)["bundle"])
    (st_bundle / "config.json").unlink()  # a broken link in the other model's folder

    found = run_cli("fsck", check=False)
    assert found.returncode == 1
    lines = found.stdout.strip().splitlines()
    assert any(line.startswith("ai/tiny:latest: layer") and "is corrupt" in line for line in lines), found.stdout
    assert any(line.startswith("ai/tiny-st:latest: config.json") and "links it to its blob again" in line
               for line in lines), found.stdout
    assert lines[-1].endswith("2 problems (`jupyter modelrunner fsck --repair` fixes them)")

    repaired = run_cli("fsck", "--repair")
    assert repaired.returncode == 0 and "Removed from the index: ai/tiny:latest" in repaired.stdout
    assert "jupyter modelrunner pull ai/tiny:latest" in repaired.stdout
    assert repaired.stdout.strip().splitlines()[-1].endswith("2 problems, all repaired")
    listing = run_cli("ls").stdout
    assert "ai/tiny:latest" not in listing and "ai/tiny-st:latest" in listing
    assert run_cli("fsck").stdout.strip().endswith(": clean")
    run_cli("pull", "-q", "ai/tiny")
    assert "ai/tiny:latest" in run_cli("ls").stdout and run_cli("fsck").returncode == 0


def test_package_a_vision_model_with_its_projector(cli_env, registry, tiny_vision, tiny_safetensors):
    out = run_cli("package", "--gguf", str(tiny_vision.gguf), "--mmproj", str(tiny_vision.mmproj), "--push",
                  "ai/seeing:v1").stdout
    assert "with a multimodal projector (it takes images)" in out and "Pushed" in out
    run_cli("rm", "ai/seeing:v1")
    run_cli("pull", "ai/seeing:v1")
    inspected = json.loads(run_cli("inspect", "ai/seeing:v1").stdout)
    assert inspected["multimodal"] is True
    assert "application/vnd.docker.ai.mmproj" in [layer["mediaType"] for layer in inspected["manifest"]["layers"]]
    assert (Path(inspected["bundle"]) / "model.mmproj").read_bytes() == tiny_vision.mmproj.read_bytes()
    refused = run_cli("package", "--safetensors-dir", str(tiny_safetensors), "--mmproj", str(tiny_vision.mmproj),
                      "ai/st-vision", check=False)
    assert refused.returncode == 1 and "goes with GGUF weights" in refused.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("pull", "ai/does-not-exist"), "not found"),
        (("pull", "ai/tiny:nope"), "not found"),
        (("pull", "Bad Name!"), "Invalid model reference"),
        (("inspect", "ai/never-pulled"), "not in the local store"),
        (("rm", "ai/never-pulled"), "not in the local store"),
        (("package", "--gguf", "/nonexistent.gguf", "ai/x"), "does not exist"),
    ],
)
def test_failures_print_one_line_and_exit_non_zero(cli_env, seeded, args, message):
    done = run_cli(*args, check=False)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], done.stderr
    assert "Traceback" not in done.stderr


def test_registry_down_is_one_line(cli_env):
    done = run_cli("pull", f"127.0.0.1:{find_free_port()}/ai/tiny", check=False)
    assert done.returncode == 1 and "Cannot reach registry" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_bad_credentials_is_one_line(cli_env, auth_registry):
    done = run_cli("pull", f"{auth_registry.host}/ai/private", check=False)
    assert done.returncode == 1 and "docker login" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_run_pulls_loads_and_streams_an_answer(cli_env, seeded):
    """`run` pulls a missing model, loads it and writes the model's own answer on stdout, and nothing else: the text
    the runner's OpenAI endpoint gives for the same prompt at temperature 0."""
    done = run_cli("run", "--temperature", "0", "--max-tokens", "8", "ai/tiny", "Say hello")
    assert "pulling it" in done.stderr and "Engine: llama.cpp on cpu" in done.stderr
    owner = read_owner(cli_env / "store")
    with httpx.Client(base_url=owner.url.rstrip("/") + "/", headers={"Authorization": f"token {owner.token}"},
                      trust_env=False, timeout=60) as http:
        assert [r["model_name"] for r in http.get("engines/ps").json()] == ["ai/tiny:latest"]
        answer = http.post("v1/chat/completions", json={
            "model": "ai/tiny", "temperature": 0, "max_tokens": 8,
            "messages": [{"role": "user", "content": "Say hello"}]}).json()["choices"][0]["message"]["content"]
    assert answer.strip() and done.stdout == answer + "\n"
    assert run_cli("run", "-d", "ai/tiny").returncode == 0


def test_run_writes_a_reasoning_models_thinking_to_stderr_and_the_answer_to_stdout(cli_env, tmp_path):
    """DeepSeek-R1's template opens a think block, so the tiny model's words are thinking (on stderr, stdout stays
    empty) until `configure --no-think` makes the template close the block (then they are the answer)."""
    from .conftest import R1_TEMPLATE
    from .support.models import llama_cpp_chat_template, make_tiny_gguf

    template = tmp_path / R1_TEMPLATE
    template.write_text(llama_cpp_chat_template(R1_TEMPLATE))
    weights = make_tiny_gguf(tmp_path / "tiny-r1.gguf", special_tokens=("<think>", "</think>"))
    run_cli("package", "--gguf", str(weights), "--chat-template", str(template), "ai/tiny-r1")
    thinking = run_cli("run", "--temperature", "0", "--max-tokens", "8", "ai/tiny-r1", "Say hello")
    assert thinking.stdout.strip() == ""
    assert thinking.stderr.split("Loaded in", 1)[1].split("\n", 1)[1].strip()  # the thinking, after the load lines
    run_cli("configure", "ai/tiny-r1", "--no-think")
    answer = run_cli("run", "--temperature", "0", "--max-tokens", "8", "ai/tiny-r1", "Say hello")
    assert answer.stdout.strip()


def test_configure_logs_and_status(cli_env, seeded):
    run_cli("pull", "-q", "ai/tiny")
    out = run_cli("configure", "ai/tiny", "--context-size", "256", "--keep-alive", "10m", "--", "--threads", "1")
    assert "context size 256" in out.stdout and "keep_alive 10m" in out.stdout and "--threads 1" in out.stdout
    refused = run_cli("configure", "ai/tiny", "--", "--host", "0.0.0.0", check=False)
    assert refused.returncode == 1 and "Allowed:" in refused.stderr
    run_cli("run", "--max-tokens", "4", "ai/tiny", "hi")
    assert "--threads 1" in run_cli("logs", "-n", "100000", "ai/tiny").stdout
    status = json.loads(run_cli("status", "--json").stdout)
    engines = {e["engine"]: e for e in status["engines"]}
    assert engines["llama.cpp"]["available"]
    assert "vllm" in engines and engines["vllm"]["reason"]


def test_configure_thinking_is_shown_by_configure_and_ps(cli_env, seeded):
    run_cli("pull", "-q", "ai/tiny")
    out = run_cli("configure", "ai/tiny", "--no-think", "--reasoning-budget", "128")
    assert "thinking off, reasoning budget 128 tokens" in out.stdout
    assert "thinking off, reasoning budget 128 tokens" in run_cli("configure", "ai/tiny").stdout
    run_cli("run", "-d", "ai/tiny")
    ps = run_cli("ps").stdout
    assert "THINKING" in ps and "off, reasoning budget 128 tokens" in ps
    refused = run_cli("configure", "ai/tiny", "--reasoning-budget", "-2", check=False)
    assert refused.returncode == 1 and "reasoning budget" in refused.stderr


@pytest.mark.slow
def test_smollm2_knows_the_capital_of_france(cli_env, registry, smollm2_file):
    from .support.publish import publish_gguf

    publish_gguf(registry.host, "ai/smollm2", smollm2_file)
    done = run_cli("run", "--temperature", "0", "--max-tokens", "60", "ai/smollm2",
                   "What is the capital of France? Answer in one word.")
    assert "Paris" in done.stdout, done.stdout


def test_ps_and_unload_talk_to_the_running_server(standalone):
    env = {"MODEL_RUNNER_HOST": standalone.url, "MODEL_RUNNER_TOKEN": standalone.token}
    with standalone.client() as http:
        http.post("engines/v1/chat/completions", json={"model": "ai/tiny", "max_tokens": 2,
                                                       "messages": [{"role": "user", "content": "hi"}]})
    listing = run_cli("ps", env=env).stdout
    assert "ai/tiny" in listing and "llama.cpp" in listing and "ready" in listing
    assert run_cli("unload", "--all", env=env).stdout.startswith("Unloaded 1 model")
    assert json.loads(run_cli("ps", "--json", env=env).stdout) == []


def test_commands_start_an_embedded_runner_that_the_next_ones_reuse(cli_env, seeded):
    """The first command starts a runner for the store (as Docker's CLI starts its daemon); it then owns the store,
    the next commands go to it, and the model stays loaded between them (keep_alive)."""
    run_cli("pull", "-q", "ai/tiny")
    owner = read_owner(cli_env / "store")
    assert owner is not None and owner.kind == "embedded"
    run_cli("run", "--max-tokens", "2", "ai/tiny", "hi")
    assert [r["model_name"] for r in json.loads(run_cli("ps", "--json").stdout)] == ["ai/tiny:latest"]
    assert read_owner(cli_env / "store").pid == owner.pid
    loaded = run_cli("load", "ai/tiny").stdout
    assert loaded.startswith("Loaded ai/tiny:latest on llama.cpp")


def test_ps_and_unload_with_no_runner_start_none(tmp_path, monkeypatch):
    monkeypatch.setenv("MODEL_RUNNER_STORE", str(tmp_path / "empty-store"))
    for name in ("MODEL_RUNNER_HOST", "MODEL_RUNNER_TOKEN", "JPY_PARENT_PID"):
        monkeypatch.delenv(name, raising=False)
    assert "no model is loaded" in run_cli("ps").stdout
    assert "nothing to unload" in run_cli("unload", "--all").stdout
    assert read_owner(tmp_path / "empty-store") is None


def test_ps_without_a_server_says_what_to_start():
    port = find_free_port()
    done = run_cli("ps", env={"MODEL_RUNNER_HOST": f"http://127.0.0.1:{port}/"}, check=False)
    assert done.returncode == 1
    assert "jupyter modelrunner serve" in done.stderr and str(port) in done.stderr


def test_unload_needs_models_or_all():
    done = run_cli("unload", check=False)
    assert done.returncode == 2 and "--all" in done.stderr


def test_key_create_list_revoke(tmp_path):
    env = {"JUPYTER_CONFIG_DIR": str(tmp_path / "config")}
    made = run_cli("key", "create", "dashboard", env=env)
    key = made.stdout.strip()
    assert key.startswith("mrk-") and len(key) > 40 and "shown only now" in made.stderr
    listing = run_cli("key", "list", env=env).stdout
    assert "dashboard" in listing and key[:8] in listing and key not in listing
    again = run_cli("key", "create", "dashboard", env=env, check=False)
    assert again.returncode == 1 and "already a key named 'dashboard'" in again.stderr
    assert "Revoked 'dashboard'" in run_cli("key", "revoke", "dashboard", env=env).stdout
    assert "No inference keys" in run_cli("key", "list", env=env).stdout
    unknown = run_cli("key", "revoke", "dashboard", env=env, check=False)
    assert unknown.returncode == 1 and "No key named 'dashboard'" in unknown.stderr


def test_ls_hf_cache_and_search(cli_env, monkeypatch, tiny_gguf):
    """`ls --hf-cache` lists the HF cache the runner sees (HF_HOME); `search` asks the Hub at HF_ENDPOINT (the
    suite's named fake hub: olah has no search route)."""
    from .support.fakehub import FakeHub, fill_hf_cache, hub_model

    monkeypatch.setenv("HF_HOME", str(cli_env / "hf"))
    with FakeHub(models=[hub_model("Org/Tiny-GGUF", downloads=1234, likes=5, library="gguf", tags=["gguf"],
                                         used_storage=2 * 1024**2, gguf_parameters=494_032_768)]) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        assert "holds no GGUF or safetensors model" in run_cli("ls", "--hf-cache").stdout
        fill_hf_cache(hub, cli_env / "hf" / "hub", "Org/Tiny-GGUF", {"tiny-Q4_K_M.gguf": tiny_gguf.read_bytes()})
        listing = run_cli("ls", "--hf-cache").stdout
        assert "hf.co/org/tiny-gguf:Q4_K_M" in listing and "Q4_K_M" in listing and "llama.cpp" in listing
        assert run_cli("ls", "--hf-cache", "-q").stdout.split() == ["hf.co/org/tiny-gguf:Q4_K_M"]
        found = run_cli("search", "tiny", "gguf", "--limit", "5").stdout
        assert "hf.co/org/tiny-gguf" in found and "494M" in found and "1.2K" in found and "2.00 MiB" in found
        assert hub.searches()[-1]["search"] == ["tiny gguf"]
        assert json.loads(run_cli("search", "tiny", "--json").stdout)[0]["repo"] == "Org/Tiny-GGUF"
        refused = run_cli("search", "x" * 300, check=False)
        assert refused.returncode == 1 and "at most 256" in refused.stderr


def test_export_import_and_package_from_on_the_command_line(cli_env, seeded, tmp_path):
    """DMR's archive moves through `export`/`import`; `package --from` makes a variant sharing the weights."""
    run_cli("pull", "-q", "ai/tiny")
    archive = tmp_path / "tiny.tar"
    assert run_cli("export", "ai/tiny", str(archive)).stdout.startswith("Exported ai/tiny")
    run_cli("rm", "ai/tiny")
    assert run_cli("import", str(archive)).stdout.startswith("Imported ai/tiny:latest")
    run_cli("package", "--from", "ai/tiny", "--context-size", "2048", "ai/tiny-2k")
    variant = json.loads(run_cli("inspect", "ai/tiny-2k").stdout)
    assert variant["config"]["context_size"] == 2048
