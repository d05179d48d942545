"""`GET metrics`: our counters, and each engine's own metrics labelled with engine and model."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from jupyter_modelrunner.engines.vllm import default_vllm_python

pytestmark = pytest.mark.timeout(900)


def page(server) -> str:
    with server.client() as http:
        response = http.get("metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    types = [line.split()[2] for line in response.text.splitlines() if line.startswith("# TYPE")]
    assert len(types) == len(set(types))  # one header per family
    return response.text


def scrape(server) -> dict[str, list]:
    return {family.name: family.samples for family in text_string_to_metric_families(page(server))}


def test_requests_loads_and_runners_are_counted(jupyter, registry):
    sdk = openai.OpenAI(base_url=jupyter.url + "v1", api_key=jupyter.token, max_retries=0)
    sdk.chat.completions.create(model="ai/tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    families = scrape(jupyter)
    requests = {(s.labels["endpoint"], s.labels["model"]): s.value for s in families["modelrunner_requests"]}
    assert requests[("chat/completions", "ai/tiny:latest")] >= 1  # as resolved (its familiar name), not as typed
    runners = families["modelrunner_runners"]
    assert any(s.labels["engine"] == "llama.cpp" and s.labels["state"] == "ready" for s in runners)
    events = {(s.labels["event"], s.labels["engine"]) for s in families["modelrunner_engine_events"]}
    assert ("ready", "llama.cpp") in events


def test_llama_server_metrics_are_merged_with_engine_and_model_labels(jupyter):
    sdk = openai.OpenAI(base_url=jupyter.url + "v1", api_key=jupyter.token, max_retries=0)
    sdk.chat.completions.create(model="ai/tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    families = scrape(jupyter)
    llama = {name: samples for name, samples in families.items() if name.startswith("llamacpp:")}
    assert llama, sorted(families)  # llama-server runs with --metrics
    tokens = [s for s in llama.get("llamacpp:tokens_predicted", []) if s.labels["model"].endswith("ai/tiny:latest")]
    assert tokens and all(s.labels["engine"] == "llama.cpp" for s in tokens) and tokens[0].value >= 1


def test_vllm_metrics_are_merged_with_engine_and_model_labels(jupyter):
    if default_vllm_python() is None:
        pytest.skip("no vLLM environment (jupyter modelrunner install-runner vllm)")
    with jupyter.client() as http:
        pulled = http.post("models/create", json={"from": "ai/tiny-st"}).text.splitlines()
    assert json.loads(pulled[-1])["type"] == "success"
    sdk = openai.OpenAI(base_url=jupyter.url + "engines/vllm/v1", api_key=jupyter.token, max_retries=0)
    answer = sdk.chat.completions.create(model="ai/tiny-st", messages=[{"role": "user", "content": "Hi"}],
                                         max_tokens=8, temperature=0)
    assert answer.model == "ai/tiny-st"
    families = scrape(jupyter)
    vllm_samples = [s for name, samples in families.items() if name.startswith("vllm:") for s in samples]
    assert vllm_samples, sorted(families)
    assert all(s.labels["engine"] == "vllm" and s.labels["model"].endswith("ai/tiny-st:latest")
               for s in vllm_samples)
    with jupyter.client() as http:
        assert http.post("engines/unload", json={"models": ["ai/tiny-st"]}).json()["unloaded_runners"] == 1


def test_a_request_for_a_mistyped_model_makes_no_series(jupyter):
    def errors(endpoint: str) -> float:
        return sum(s.value for s in scrape(jupyter).get("modelrunner_request_errors", [])
                   if s.labels["endpoint"] == endpoint)

    before = errors("chat/completions"), errors("ollama/chat")
    sdk = openai.OpenAI(base_url=jupyter.url + "v1", api_key=jupyter.token, max_retries=0)
    with pytest.raises(openai.NotFoundError):
        sdk.chat.completions.create(model="ai/tinyy", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    with jupyter.client() as http:
        answer = http.post("api/chat", json={"model": "ai/tinyy", "messages": [{"role": "user", "content": "hi"}]})
    assert answer.status_code == 404
    assert "tinyy" not in page(jupyter)
    assert (errors("chat/completions"), errors("ollama/chat")) == (before[0] + 1, before[1] + 1)


def test_our_counters_are_on_jupyters_own_metrics_without_the_engines(jupyter, registry):
    sdk = openai.OpenAI(base_url=jupyter.url + "v1", api_key=jupyter.token, max_retries=0)
    sdk.chat.completions.create(model="ai/tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    response = httpx.get(jupyter.origin + "metrics", headers=jupyter.headers, trust_env=False)
    assert response.status_code == 200
    families = {family.name: family for family in text_string_to_metric_families(response.text)}
    assert {"jupyter_server_started_timestamp_seconds", "modelrunner_requests", "modelrunner_runners",
            "modelrunner_start_time_seconds"} <= set(families)  # Jupyter's metrics and ours
    assert any(s.labels["model"] == "ai/tiny:latest" for s in families["modelrunner_requests"].samples)
    assert not any(name.startswith(("llamacpp:", "vllm:")) for name in families)  # those cost a scrape


async def test_our_families_leave_jupyters_registry_when_the_extension_stops(jp_serverapp):
    (extension,) = jp_serverapp.extension_manager.extension_apps["jupyter_modelrunner"]
    budget = extension.service.scheduler.memory_budget
    assert REGISTRY.get_sample_value("modelrunner_memory_budget_bytes") == budget

    await extension.stop_extension()

    assert REGISTRY.get_sample_value("modelrunner_memory_budget_bytes") is None
