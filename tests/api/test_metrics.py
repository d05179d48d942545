"""`GET metrics`: our counters, and each engine's own metrics labelled with engine and model."""

from __future__ import annotations

import json

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from jupyter_modelrunner.engines.vllm import default_vllm_python

pytestmark = pytest.mark.timeout(900)


def scrape(server) -> dict[str, list]:
    with server.client() as http:
        response = http.get("metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {family.name: family.samples for family in text_string_to_metric_families(response.text)}


def test_requests_loads_and_runners_are_counted(jupyter):
    sdk = openai.OpenAI(base_url=jupyter.url + "v1", api_key=jupyter.token, max_retries=0)
    sdk.chat.completions.create(model="ai/tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    families = scrape(jupyter)
    requests = {(s.labels["endpoint"], s.labels["model"]): s.value for s in families["modelrunner_requests"]}
    assert requests[("chat/completions", "ai/tiny")] >= 1
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
