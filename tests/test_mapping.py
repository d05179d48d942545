"""`map` and `embed` against a real runner (`jupyter modelrunner serve`) and real llama-server: answers aligned with
the inputs, several requests at once but never more than the engine's slots, failed rows as values, the answer cache
(counted at the engine: a cached run sends nothing), and an interrupt in a real kernel."""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Iterator
from typing import Literal

import pandas as pd
import pytest
from jupyter_client.manager import start_new_kernel
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel

import jupyter_modelrunner as mr
from jupyter_modelrunner import client as client_module
from jupyter_modelrunner.answer_cache import AnswerCache
from jupyter_modelrunner.distribution import package_gguf, pull
from jupyter_modelrunner.reference import parse_reference
from jupyter_modelrunner.store import Store

from .conftest import TEST_API_KEY, server_env
from .support.jupyter import ServerProcess
from .support.waiting import wait_for

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def models(live_store, tiny_gguf, registry) -> dict[str, str]:
    """`ai/tiny-short`: the tiny model with a 256-token context, so a long prompt is refused by the engine."""
    package_gguf(live_store, tiny_gguf, parse_reference(f"{registry.host}/ai/tiny-short"), context_size=256)
    return {"short": "ai/tiny-short"}


@pytest.fixture
def runner(standalone, models, monkeypatch) -> Iterator[mr.client.RunnerClient]:
    """This process's client, connected to the module's runner; the answer cache is the test's own store's."""
    monkeypatch.setattr(client_module, "_active", None)
    monkeypatch.setenv("MODEL_RUNNER_MAGICS_OUTPUT", "text")
    yield client_module.connect(standalone.url, standalone.token)


def metric(server: ServerProcess, name: str, model: str | None = None) -> float:
    """The sum of a family's samples in the runner's `GET metrics` (ours and llama-server's), for one model's."""
    with server.client() as http:
        text = http.get("metrics").text
    return sum(sample.value for family in text_string_to_metric_families(text) if family.name == name
               for sample in family.samples
               if not sample.name.endswith("_created") and (model is None or model in sample.labels.get("model", "")))


def engine_requests(server: ServerProcess) -> float:
    return metric(server, "modelrunner_requests")


def test_map_answers_32_inputs_in_order_and_a_rerun_asks_the_engine_nothing(runner, standalone, capfd):
    inputs = [f"Item number {i}" for i in range(32)]
    answers = mr.map("ai/tiny", inputs, max_tokens=4)
    assert len(answers) == 32 and all(isinstance(a, str) and a for a in answers)
    shown = capfd.readouterr().err  # the terminal's progress line, on stderr
    assert "Mapping ai/tiny over 32 rows" in shown and "32 of 32 done" in shown
    before = engine_requests(standalone)
    # Each answer stays with its input: the same inputs in another order come back (from the cache) in that order.
    order = [*range(31, -1, -2), *range(0, 32, 2)]
    assert mr.map("ai/tiny", [inputs[i] for i in order], max_tokens=4, progress=False) == [answers[i] for i in order]
    again = mr.map("ai/tiny", inputs, max_tokens=4)
    assert again == answers and engine_requests(standalone) == before
    assert "32 cached" in capfd.readouterr().err
    mr.map("ai/tiny", inputs, max_tokens=5, progress=False)  # another parameter, other answers: asked
    assert engine_requests(standalone) == before + 32


def test_an_inference_key_may_map_and_embed(standalone, models, monkeypatch):
    """A kernel holding only an inference key (a team runner's user) works on data too: `map` asks the model's id
    and preloads through the OpenAI routes, which a key may use, not through management routes."""
    monkeypatch.setattr(client_module, "_active", None)
    client_module.connect(standalone.url, TEST_API_KEY)
    answers = mr.map("ai/tiny", ["a key's first row", "a key's second row"], max_tokens=3, progress=False,
                     cache=False)
    assert len(answers) == 2 and all(isinstance(a, str) and a for a in answers)
    assert mr.embed("ai/tiny", ["one", "two", "three"], progress=False, cache=False).shape[0] == 3
    with pytest.raises(mr.client.ModelRunnerError, match="ai/no-such-model"):
        mr.map("ai/no-such-model", ["x"], progress=False)


def test_requests_at_once_never_exceed_the_engines_slots(runner, standalone):
    """Watched at the runner (`ps`): several requests at once, never more than the slots, and the engine's own share
    of them never more than the slots interactive requests leave free."""
    runner.load("ai/tiny")
    seen: list[dict] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            seen.extend(r for r in runner.ps() if r["model_name"] == "ai/tiny:latest")
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        answers = mr.map("ai/tiny", [f"Count to {i}" for i in range(40)], max_tokens=48, progress=False)
    finally:
        stop.set()
        watcher.join()
    assert len(answers) == 40 and all(isinstance(a, str) for a in answers)
    slots = seen[0]["slots"]
    assert slots >= 2 and seen[0]["background_slots"] == slots - 1
    assert max(r["requests"] for r in seen) <= slots
    assert max(r["background_requests"] for r in seen) <= slots - 1
    assert max(r["requests"] for r in seen) >= 2, "map sent one request at a time"


def test_a_dataframe_fills_columns_into_the_prompt_and_keeps_its_index(runner, standalone):
    frame = pd.DataFrame({"name": ["Ada", "Grace", "Linus"], "city": ["London", "Arlington", "Helsinki"]},
                         index=["a", "b", "c"])
    frame["answer"] = mr.map("ai/tiny", frame, prompt="{name} lives in {city}.", max_tokens=4, progress=False)
    assert frame["answer"].map(type).eq(str).all() and list(frame.index) == ["a", "b", "c"]
    # The rows became exactly these prompts: asked as a list, all three come from the cache.
    before = engine_requests(standalone)
    listed = mr.map("ai/tiny", ["Ada lives in London.", "Grace lives in Arlington.", "Linus lives in Helsinki."],
                    max_tokens=4, progress=False)
    assert listed == frame["answer"].tolist() and engine_requests(standalone) == before
    # A Series keeps its index too, with a system message for every row.
    series = pd.Series(["x", "y"], index=[10, 20])
    labelled = mr.map("ai/tiny", series, prompt="Say {}", system="Be brief.", max_tokens=3, progress=False)
    assert isinstance(labelled, pd.Series) and list(labelled.index) == [10, 20]
    with pytest.raises(mr.errors.ModelRunnerError, match=r"\{column\}"):
        mr.map("ai/tiny", frame, prompt="{nmae}", progress=False)


def test_a_row_too_long_for_the_context_is_an_error_value_and_the_others_succeed(runner, standalone):
    inputs = ["Hello there", "word " * 2000, "Good morning", "Hi"]
    answers = mr.map("ai/tiny-short", inputs, max_tokens=4, progress=False)
    assert [isinstance(a, str) for a in answers] == [True, False, True, True]
    failed = answers[1]
    assert isinstance(failed, mr.RowError) and not failed and failed.status == 400
    assert "context" in failed.message and repr(failed).startswith("RowError(400: ")
    frame = pd.DataFrame({"text": inputs})
    frame["answer"] = mr.map("ai/tiny-short", frame["text"], max_tokens=4, progress=False)
    assert "RowError(400: " in frame.to_string()  # how a user sees it in the table
    # Failures are not cached: a re-run asks for that row (only) again.
    before = engine_requests(standalone)
    again = mr.map("ai/tiny-short", inputs, max_tokens=4, progress=False)
    assert again[1] == failed and again[0] == answers[0] and engine_requests(standalone) - before <= 1

    with pytest.raises(mr.MapRowFailed, match=r"Row 1 failed: .*context") as raised:
        mr.map("ai/tiny-short", inputs, max_tokens=4, errors="raise", progress=False)
    assert raised.value.row == 1 and raised.value.error.status == 400


class Sentiment(BaseModel):
    label: Literal["positive", "negative"]


@pytest.mark.slow
def test_a_schema_gives_instances_or_dicts_from_smollm2_and_a_cut_answer_is_an_error_value(
        runner, live_store, smollm2_file, registry):
    package_gguf(live_store, smollm2_file, parse_reference(f"{registry.host}/ai/smollm2-map"), context_size=2048)
    reviews = pd.Series(["I loved this film, wonderful acting.", "Terrible, boring and far too long.",
                         "A delight from start to end.", "I want my money back."])
    labels = mr.map("ai/smollm2-map", reviews, schema=Sentiment, max_tokens=24,
                    prompt="Is this review positive or negative?\n\n{}", progress=False)
    assert all(isinstance(label, Sentiment) for label in labels), labels.tolist()
    assert {label.label for label in labels} <= {"positive", "negative"}
    # A JSON Schema dict gives dicts; an answer cut before its JSON ends is an error value saying why.
    schema = Sentiment.model_json_schema()
    answers = mr.map("ai/smollm2-map", reviews.tolist(), schema=schema, max_tokens=24, progress=False,
                     prompt="Is this review positive or negative?\n\n{}")
    assert [answer["label"] for answer in answers] == [label.label for label in labels]
    # Each row's answer is its own input's: the model copies each row's word, and rows are answered 8 at once.
    words = ["apple", "river", "pencil", "tiger", "guitar", "window", "rocket", "garden", "candle", "bridge",
             "violin", "carpet", "planet", "button", "forest", "ladder"]
    copies = mr.map("ai/smollm2-map", words, prompt="Repeat this word and nothing else: {}", max_tokens=6,
                    progress=False)
    owned = [word for word, copy in zip(words, copies, strict=True) if word in copy.lower()]
    strays = [copy for word, copy in zip(words, copies, strict=True)
              if any(other in copy.lower() for other in words if other != word)]
    assert len(owned) >= 12 and not strays, copies
    cut = mr.map("ai/smollm2-map", reviews.tolist()[:2], schema=schema, max_tokens=2, progress=False)
    assert all(isinstance(a, mr.RowError) and a.status is None and "cut at max_tokens" in a.message
               for a in cut), cut


def test_embed_gives_one_row_per_input_and_caches_them(runner, standalone):
    texts = [f"sentence {i % 13}" for i in range(40)]  # repeats are asked once
    vectors = mr.embed("ai/tiny", texts)
    assert vectors.shape == (40, 64) and vectors.dtype.name == "float32"
    assert (vectors[0] == vectors[13]).all() and not (vectors[0] == vectors[1]).all()
    before = engine_requests(standalone)
    again = mr.embed("ai/tiny", pd.Series(texts), progress=False)
    assert (again == vectors).all() and engine_requests(standalone) == before
    assert mr.embed("ai/tiny", [], progress=False).shape[0] == 0


def test_the_cache_answers_after_the_runner_restarts_without_loading_a_model(tmp_path, registry, seeded,
                                                                             monkeypatch):
    store = Store(tmp_path / "runner-store", registry=registry.host)
    pull("ai/tiny", store, registry=registry.host)
    workdir = tmp_path / "serve"
    workdir.mkdir()
    monkeypatch.setattr(client_module, "_active", None)
    inputs = ["one", "two", "three", "four"]
    with ServerProcess.standalone(workdir, server_env(workdir, store.root, registry.host)) as first:
        client_module.connect(first.url, first.token)
        answers = mr.map("ai/tiny", inputs, max_tokens=4, progress=False)
        vectors = mr.embed("ai/tiny", inputs, progress=False)
    with ServerProcess.standalone(workdir, server_env(workdir, store.root, registry.host)) as second:
        restarted = client_module.connect(second.url, second.token)
        assert mr.map("ai/tiny", inputs, max_tokens=4, progress=False) == answers
        assert (mr.embed("ai/tiny", inputs, progress=False) == vectors).all()
        assert restarted.ps() == [] and engine_requests(second) == 0  # no engine was even started


def test_map_names_what_is_wrong_before_any_request(runner):
    with pytest.raises(mr.errors.ModelNotFound):
        mr.map("ai/absent", ["x"], progress=False)
    with pytest.raises(mr.errors.ModelRunnerError, match="wrap it in a list"):
        mr.map("ai/tiny", "just one string", progress=False)
    with pytest.raises(mr.errors.ModelRunnerError, match="errors="):
        mr.map("ai/tiny", ["x"], errors="ignore", progress=False)
    with pytest.raises(mr.errors.ModelRunnerError, match="Pydantic model class or a JSON Schema"):
        mr.map("ai/tiny", ["x"], schema=str, progress=False)


# -- in a real kernel -----------------------------------------------------------------------------------------


class Kernel:
    """A real ipykernel (jupyter_client starts it as a notebook server would) and its outputs, cell by cell."""

    def __init__(self, env: dict[str, str]) -> None:
        self.manager, self.client = start_new_kernel(kernel_name="python3", env=env)

    def execute(self, code: str) -> str:
        return self.client.execute(code)

    def outputs(self, msg_id: str, timeout: float = 240) -> tuple[list[dict], dict]:
        """Every iopub message of the cell until it is idle, and its execute_reply's content."""
        messages = []
        deadline = time.monotonic() + timeout
        while True:
            message = self.client.get_iopub_msg(timeout=max(1.0, deadline - time.monotonic()))
            if message["parent_header"].get("msg_id") != msg_id:
                continue
            messages.append(message)
            if message["msg_type"] == "status" and message["content"]["execution_state"] == "idle":
                break
        while True:
            reply = self.client.get_shell_msg(timeout=30)
            if reply["parent_header"].get("msg_id") == msg_id:
                return messages, reply["content"]

    def close(self) -> None:
        self.client.stop_channels()
        self.manager.shutdown_kernel(now=True)


def cached_answers(store) -> int:
    path = store / "cache" / "answers.sqlite"
    if not path.exists():
        return 0
    with AnswerCache(store) as cache:
        return sum(u.entries for u in cache.usage())


def test_a_kernel_interrupt_stops_map_at_once_keeps_finished_rows_and_frees_the_engine(standalone, tmp_path,
                                                                                         runner):
    """Long rows (`ai/tiny-long` never stops on its own at temperature 0): interrupted once some are done, the cell
    raises KeyboardInterrupt, its progress widget shows, the engine stops generating and the runner has nothing in
    flight; the re-run starts with the finished rows from the cache."""
    store = tmp_path / "kernel-store"
    env = {**os.environ, "MODEL_RUNNER_HOST": standalone.url, "MODEL_RUNNER_TOKEN": standalone.token,
           "MODEL_RUNNER_STORE": str(store)}
    env.pop("MODEL_RUNNER_MAGICS_OUTPUT", None)
    max_tokens, rows = 1000, 30
    runner.load("ai/tiny-long")
    predicted = metric(standalone, "llamacpp:tokens_predicted", "ai/tiny-long")
    kernel = Kernel(env)
    try:
        code = ("import jupyter_modelrunner as mr\n"
                f"answers = mr.map('ai/tiny-long', [f'Story {{i}}' for i in range({rows})], max_tokens={max_tokens})")
        msg_id = kernel.execute(code)
        wait_for(lambda: cached_answers(store) >= 2, timeout=240)
        kernel.manager.interrupt_kernel()
        messages, reply = kernel.outputs(msg_id)
        assert reply["status"] == "error" and reply["ename"] == "KeyboardInterrupt"
        assert any("application/vnd.jupyter.widget-view+json" in m["content"].get("data", {})
                   for m in messages if m["msg_type"] == "display_data"), "no progress widget in the cell"
        finished = cached_answers(store)
        assert 2 <= finished < rows

        def engine_free() -> bool:
            ps = [r for r in runner.ps() if r["model_name"] == "ai/tiny-long:latest"]
            return bool(ps) and ps[0]["requests"] == 0 and \
                metric(standalone, "llamacpp:requests_processing", "ai/tiny-long") == 0

        wait_for(engine_free)
        # Had the engine gone on with the (at most 7) requests in flight, each would have made its max_tokens.
        generated = metric(standalone, "llamacpp:tokens_predicted", "ai/tiny-long") - predicted
        assert generated < (finished + 7) * max_tokens

        # The re-run starts from the finished rows (its terminal progress says so at once), then is interrupted too.
        msg_id = kernel.execute("import os; os.environ['MODEL_RUNNER_MAGICS_OUTPUT'] = 'text'\n" + code)
        expected = f"{finished}/{rows} done · {finished} cached"
        def said_cached() -> bool:
            try:
                message = kernel.client.get_iopub_msg(timeout=1)
            except queue.Empty:
                return False
            return message["parent_header"].get("msg_id") == msg_id and message["msg_type"] == "stream" and \
                expected in message["content"]["text"]

        wait_for(said_cached, timeout=120)
        kernel.manager.interrupt_kernel()
        _, reply = kernel.outputs(msg_id)
        assert reply["status"] == "error" and reply["ename"] == "KeyboardInterrupt"
        wait_for(engine_free)
    finally:
        kernel.close()
