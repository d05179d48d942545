"""Engine `/metrics` merged into one page: one header per family, every sample labelled, nothing raised."""

from __future__ import annotations

import random

from prometheus_client.metrics_core import CounterMetricFamily
from prometheus_client.parser import text_string_to_metric_families

from jupyter_modelrunner.api.prometheus import EngineMetrics, render

VLLM_METRICS = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="%(model)s"} 1.0
# HELP vllm:request_success_total Count of successfully processed requests.
# TYPE vllm:request_success_total counter
vllm:request_success_total{engine="0",finished_reason="stop",model_name="%(model)s"} 7.0
vllm:request_success_total{engine="0",finished_reason="length",model_name="%(model)s"} 2.0
# HELP vllm:e2e_request_latency_seconds Histogram of e2e request latency in seconds.
# TYPE vllm:e2e_request_latency_seconds histogram
vllm:e2e_request_latency_seconds_bucket{engine="0",le="0.3",model_name="%(model)s"} 3.0
vllm:e2e_request_latency_seconds_bucket{engine="0",le="+Inf",model_name="%(model)s"} 9.0
vllm:e2e_request_latency_seconds_count{engine="0",model_name="%(model)s"} 9.0
vllm:e2e_request_latency_seconds_sum{engine="0",model_name="%(model)s"} 4.5e-01
"""

LLAMA_METRICS = """\
# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed.
# TYPE llamacpp:prompt_tokens_total counter
llamacpp:prompt_tokens_total %(tokens)s
# HELP llamacpp:requests_processing Number of requests processing.
# TYPE llamacpp:requests_processing gauge
llamacpp:requests_processing 0
"""

SMOLLM = {"engine": "vllm", "model": "ai/smollm2"}
QWEN = {"engine": "vllm", "model": "ai/qwen3"}


def page(*sources: tuple[dict[str, str], str]) -> str:
    engines = EngineMetrics()
    for labels, text in sources:
        engines.add(labels, text)
    return render(engines.collect()).decode()


def two_vllm_models() -> str:
    return page((SMOLLM, VLLM_METRICS % {"model": "smollm2"}), (QWEN, VLLM_METRICS % {"model": "qwen3"}))


def headers(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("#")]


def test_two_llama_servers_exporting_the_same_families_give_one_header_each() -> None:
    text = page(({"engine": "llama.cpp", "model": "ai/smollm2:latest"}, LLAMA_METRICS % {"tokens": 12}),
                ({"engine": "llama.cpp", "model": "ai/qwen3:latest"}, LLAMA_METRICS % {"tokens": 30}))

    assert headers(text) == ["# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed.",
                             "# TYPE llamacpp:prompt_tokens_total counter",
                             "# HELP llamacpp:requests_processing Number of requests processing.",
                             "# TYPE llamacpp:requests_processing gauge"]
    tokens, _ = text_string_to_metric_families(text)
    assert {(s.labels["engine"], s.labels["model"], s.value) for s in tokens.samples} == {
        ("llama.cpp", "ai/smollm2:latest", 12), ("llama.cpp", "ai/qwen3:latest", 30)}


def test_every_sample_parses_back_labelled_with_its_engine_and_model() -> None:
    families = list(text_string_to_metric_families(two_vllm_models()))

    assert [(f.name, f.type) for f in families] == [("vllm:num_requests_running", "gauge"),
                                                     ("vllm:request_success", "counter"),
                                                     ("vllm:e2e_request_latency_seconds", "histogram")]
    samples = [sample for family in families for sample in family.samples]
    assert len(samples) == 14
    assert sorted({s.labels["model"] for s in samples}) == ["ai/qwen3", "ai/smollm2"]
    assert {(s.labels["model"], s.labels["finished_reason"], s.value) for s in samples
            if s.name == "vllm:request_success_total"} == {
        ("ai/smollm2", "stop", 7), ("ai/smollm2", "length", 2), ("ai/qwen3", "stop", 7), ("ai/qwen3", "length", 2)}


def test_an_engine_label_clashing_with_ours_is_renamed_exported() -> None:
    (family,) = text_string_to_metric_families(
        page((SMOLLM, 'requests{engine="0",model="smollm2",exported_model="x"} 3\n')))

    assert family.samples[0].labels == {"engine": "vllm", "model": "ai/smollm2", "exported_engine": "0",
                                        "exported_exported_model": "smollm2", "exported_model": "x"}


def test_label_values_with_quotes_backslashes_and_newlines_round_trip() -> None:
    text = 'odd{path="C:\\\\models\\\\x",quote="say \\"hi\\"",nl="a\\nb",punct="}, =,{"} 1 1700000000000\n'
    tricky_model = 'ai/"smol"\\lm\n2'

    (family,) = text_string_to_metric_families(page(({"model": tricky_model}, text)))

    assert family.samples[0].labels == {"model": tricky_model, "path": "C:\\models\\x", "quote": 'say "hi"',
                                        "nl": "a\nb", "punct": "}, =,{"}
    assert family.samples[0].timestamp == 1700000000


def test_a_garbage_engine_text_is_dropped_and_the_other_engines_kept() -> None:
    engines = EngineMetrics()

    assert not engines.add({"engine": "vllm", "model": "ai/broken"}, 'vllm:x{a="unterminated} 1\nvllm:y 2\n')
    assert engines.add(SMOLLM, VLLM_METRICS % {"model": "smollm2"})

    text = render(engines.collect()).decode()
    assert "ai/broken" not in text and "vllm:y" not in text  # the whole text goes, not only the bad line
    assert len(list(text_string_to_metric_families(text))) == 3


def test_names_outside_the_text_format_and_openmetrics_types_are_dropped() -> None:
    engines = EngineMetrics()

    assert not engines.add({"model": "m"}, '{"dotted.name"} 1\n')  # a UTF-8 name recent parsers accept
    assert not engines.add({"model": "m"}, 'x{"dotted.label"="v"} 1\n')
    assert engines.add({"model": "m"}, "# TYPE build info\nbuild 1\n# TYPE up gauge\nup 1\n")

    assert render(engines.collect()).decode() == '# HELP up \n# TYPE up gauge\nup{model="m"} 1.0\n'


def test_a_name_taken_by_our_own_or_an_earlier_family_keeps_its_first_owner() -> None:
    ours = CounterMetricFamily("modelrunner_requests", "Inference requests.", value=5)
    engines = EngineMetrics()
    engines.add({"model": "a"}, "# TYPE modelrunner_requests_total gauge\nmodelrunner_requests_total 99\n"
                                "# TYPE latency histogram\nlatency_sum 1\nlatency_count 2\n")
    engines.add({"model": "b"}, "latency_sum 3\n# TYPE latency gauge\nlatency 4\n")

    text = render([ours, *engines.collect()]).decode()

    assert [line for line in text.splitlines() if line.startswith("# TYPE")] == [
        "# TYPE modelrunner_requests_total counter", "# TYPE latency histogram"]
    assert "99" not in text and 'model="b"' not in text


def test_garbage_never_raises_and_what_is_kept_renders_parseable() -> None:
    alphabet = '#{}",=\\ \t\nabc_:019.+-eE\r\x00é'
    rng = random.Random(4)
    for _ in range(500):
        garbage = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 120)))
        text = page(({"model": "m"}, garbage), ({"model": "n"}, garbage))
        types = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")]
        assert len(types) == len(set(types))
        list(text_string_to_metric_families(text))


def test_damaged_engine_output_is_dropped_or_merged_into_parseable_text() -> None:
    original = VLLM_METRICS % {"model": "smollm2"} + 'odd{q="a\\"}b,c=\\"d\\\\",e="x"} 1e3 -17\n'
    rng = random.Random(7)
    for _ in range(500):
        damaged = list(original)
        for _ in range(rng.randint(1, 6)):
            damaged.insert(rng.randrange(len(damaged)), rng.choice('#{}",=\\ \tn\n_:0.+-eE'))
            del damaged[rng.randrange(len(damaged))]
        text = page((SMOLLM, "".join(damaged)), (QWEN, original))
        families = list(text_string_to_metric_families(text))
        assert sum(len(f.samples) for f in families) == sum(not line.startswith("#") for line in text.splitlines())
        assert {s.labels["model"] for f in families for s in f.samples} >= {"ai/qwen3"}
