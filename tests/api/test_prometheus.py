"""Merging engine `/metrics` into one exposition: one header per family, every sample labelled, nothing raised."""

from __future__ import annotations

import random

from prometheus_client.parser import text_string_to_metric_families

from jupyter_modelrunner.api.prometheus import counter_text, gauge_text, merge_metrics

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

SMOLLM = {"engine": "vllm", "model": "ai/smollm2"}
QWEN = {"engine": "vllm", "model": "ai/qwen3"}


def two_vllm_sources() -> list[tuple[dict[str, str], str]]:
    return [(SMOLLM, VLLM_METRICS % {"model": "smollm2"}), (QWEN, VLLM_METRICS % {"model": "qwen3"})]


def header_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("#")]


def test_two_engines_with_the_same_families_get_one_header_per_family() -> None:
    merged = merge_metrics(two_vllm_sources())

    headers = header_lines(merged)
    assert len(headers) == len(set(headers)) == 6
    assert headers[:2] == ["# HELP vllm:num_requests_running Number of requests in model execution batches.",
                           "# TYPE vllm:num_requests_running gauge"]
    assert 'vllm:num_requests_running{engine="vllm",model="ai/smollm2",engine="0"' not in merged  # renamed
    assert ('vllm:num_requests_running{engine="vllm",model="ai/smollm2",exported_engine="0",model_name="smollm2"} 1.0'
            in merged)
    assert ('vllm:num_requests_running{engine="vllm",model="ai/qwen3",exported_engine="0",model_name="qwen3"} 1.0'
            in merged)
    assert merged.endswith("\n")


def test_merged_output_parses_back_with_every_sample_labelled() -> None:
    families = list(text_string_to_metric_families(merge_metrics(two_vllm_sources())))

    assert [(f.name, f.type) for f in families] == [("vllm:num_requests_running", "gauge"),
                                                     ("vllm:request_success", "counter"),
                                                     ("vllm:e2e_request_latency_seconds", "histogram")]
    samples = [sample for family in families for sample in family.samples]
    assert len(samples) == 14
    assert sorted({s.labels["model"] for s in samples}) == ["ai/qwen3", "ai/smollm2"]
    assert all(s.labels["engine"] == "vllm" and s.labels["exported_engine"] == "0" for s in samples)
    assert {(s.labels["model"], s.value) for s in samples if s.name == "vllm:request_success_total"} == {
        ("ai/smollm2", 7.0), ("ai/smollm2", 2.0), ("ai/qwen3", 7.0), ("ai/qwen3", 2.0)}


def test_histogram_buckets_of_all_engines_stay_under_one_header() -> None:
    merged = merge_metrics(two_vllm_sources()).splitlines()

    start = merged.index("# TYPE vllm:e2e_request_latency_seconds histogram")
    body = merged[start + 1:]
    assert len(body) == 8
    assert all(line.startswith("vllm:e2e_request_latency_seconds_") for line in body)
    assert sum('model="ai/qwen3"' in line for line in body) == 4


def test_engine_label_clashing_with_ours_is_renamed_exported() -> None:
    text = 'requests{model="smollm2",exported_model="x"} 3\n'

    merged = merge_metrics([({"engine": "vllm", "model": "ai/smollm2"}, text)])

    assert ('requests{engine="vllm",model="ai/smollm2",exported_exported_model="smollm2",exported_model="x"} 3'
            in merged)
    (family,) = text_string_to_metric_families(merged)
    assert family.samples[0].labels["exported_exported_model"] == "smollm2"


def test_label_values_with_quotes_backslashes_and_newlines_round_trip() -> None:
    text = 'odd{path="C:\\\\models\\\\x",quote="say \\"hi\\"",nl="a\\nb",punct="}, =,{"} 1 1700000000000\n'
    tricky_model = 'ai/"smol"\\lm\n2'

    merged = merge_metrics([({"model": tricky_model}, text)])

    assert 'model="ai/\\"smol\\"\\\\lm\\n2"' in merged
    assert merged.rstrip("\n").endswith("} 1 1700000000000")
    (family,) = text_string_to_metric_families(merged)
    assert family.samples[0].labels == {"model": tricky_model, "path": "C:\\models\\x", "quote": 'say "hi"',
                                        "nl": "a\nb", "punct": "}, =,{"}
    assert family.samples[0].timestamp == 1700000000


def test_values_and_timestamps_are_kept_verbatim() -> None:
    text = "# TYPE g gauge\ng{a=\"1\"} NaN\ng{a=\"2\"} +Inf 123\ng{a=\"3\"} -1.5E+07\ng{a=\"4\"} 12e-3 -5\n"

    merged = merge_metrics([({"model": "m"}, text)])

    assert [line.split("} ", 1)[1] for line in merged.splitlines()[1:]] == ["NaN", "+Inf 123", "-1.5E+07", "12e-3 -5"]


def test_malformed_lines_are_dropped_and_the_rest_kept() -> None:
    text = "\n".join([
        "# TYPE good counter", "good_total 1", "# TYPE bad nonsense", "# HELP", "#  just a comment",
        'broken{a="unterminated} 1', 'broken{a="x" b="y"} 1', 'broken{a=x} 1', 'broken{a="\\q"} 1',
        'broken{a="1",a="2"} 1', "broken 1 2 3", "broken one", "broken 1 1.5", "broken", "9starts_with_digit 1",
        "broken{} 1_000", "", "   ", "\r", "good_total{x=\"y\",} 2\r",
    ])

    merged = merge_metrics([({"model": "m"}, text)])

    assert merged == '# TYPE good counter\ngood_total{model="m"} 1\ngood_total{model="m",x="y"} 2\n'


def test_untyped_samples_get_their_own_group() -> None:
    merged = merge_metrics([({"model": "a"}, "loose 1\n"), ({"model": "b"}, "# HELP loose Later help.\nloose 2\n")])

    assert merged == ('# HELP loose Later help.\n# TYPE loose untyped\nloose{model="a"} 1\nloose{model="b"} 2\n')


def test_own_families_come_first_and_first_help_wins() -> None:
    own = counter_text("modelrunner_pulls_total", "Models pulled.\nBy reference.", [({"reference": "ai/x"}, 3)])
    own += gauge_text("modelrunner_models_loaded", "Models in memory.", [({}, 1.0)])
    engine = "# HELP modelrunner_pulls_total Engine's own help.\n# TYPE modelrunner_pulls_total counter\n" \
             "modelrunner_pulls_total 4\n# TYPE vllm:x gauge\nvllm:x 0.5\n"

    merged = merge_metrics([({"model": "m"}, engine)], own=own)

    assert merged == (
        "# HELP modelrunner_pulls_total Models pulled.\\nBy reference.\n# TYPE modelrunner_pulls_total counter\n"
        'modelrunner_pulls_total{reference="ai/x"} 3\nmodelrunner_pulls_total{model="m"} 4\n'
        "# HELP modelrunner_models_loaded Models in memory.\n# TYPE modelrunner_models_loaded gauge\n"
        "modelrunner_models_loaded 1\n# TYPE vllm:x gauge\nvllm:x{model=\"m\"} 0.5\n")


def test_counter_text_spells_special_floats_like_prometheus() -> None:
    text = counter_text("c_total", "h", [({"k": "a"}, float("inf")), ({"k": "b"}, float("nan")), ({"k": "c"}, 0.25)])

    assert text.splitlines()[2:] == ['c_total{k="a"} +Inf', 'c_total{k="b"} NaN', 'c_total{k="c"} 0.25']
    assert len(next(iter(text_string_to_metric_families(text))).samples) == 3


def test_garbage_never_raises() -> None:
    alphabet = '#{}",=\\ \t\nabc_:019.+-eE\r\x00é'
    rng = random.Random(4)
    for _ in range(500):
        garbage = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 120)))
        merged = merge_metrics([({"model": "m"}, garbage), ({"model": "n"}, garbage)], own=garbage)
        assert merged.endswith("\n")


def test_damaged_engine_output_still_merges_into_parseable_text() -> None:
    """Whatever survives of a corrupted exposition is well-formed: prometheus_client reads back every sample."""
    original = VLLM_METRICS % {"model": "smollm2"} + 'odd{q="a\\"}b,c=\\"d\\\\",e="x"} 1e3 -17\n'
    rng = random.Random(7)
    for _ in range(500):
        text = list(original)
        for _ in range(rng.randint(1, 6)):
            text.insert(rng.randrange(len(text)), rng.choice('#{}",=\\ \tn\n_:0.+-eE'))
            del text[rng.randrange(len(text))]
        merged = merge_metrics([(SMOLLM, "".join(text))], own="".join(text))
        families = list(text_string_to_metric_families(merged))
        assert sum(len(f.samples) for f in families) == sum(not line.startswith("#") for line in merged.splitlines())
