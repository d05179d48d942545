"""Finding the line in an engine's output that says why it stopped (pure: text in, line out)."""

from __future__ import annotations

from jupyter_modelrunner.scheduling.logs import reason_line

VLLM_START_FAILURE = """\
--- 2025-01-01 12:00:00 python -m vllm.entrypoints.openai.api_server --model /store/model --error-log x
INFO 05-01 12:00:00 [api_server.py:1000] vLLM API server version 0.11.0
(EngineCore_DP0 pid=1234) ERROR 05-01 12:00:09 [core.py:708] EngineCore failed to start.
(EngineCore_DP0 pid=1234) Traceback (most recent call last):
(EngineCore_DP0 pid=1234)   File "/venv/lib/python3.12/site-packages/vllm/v1/engine/core.py", line 699, in run
(EngineCore_DP0 pid=1234)     raise ValueError(
(EngineCore_DP0 pid=1234) ValueError: To serve at least one request with the models's max seq len (8192), 0.38 GiB KV \
cache is needed, which is larger than the available KV cache memory (0.12 GiB).
Traceback (most recent call last):
  File "<frozen runpy>", line 198, in _run_module_as_main
RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}
""".splitlines()

LLAMA_SERVER_BAD_FLAG = """\
--- 2025-01-01 12:00:00 llama-server --model /store/model.gguf --cache-type-k bogus
error while handling argument "--cache-type-k": Unsupported cache type: bogus

usage:
-ctk,  --cache-type-k TYPE              KV cache data type for K
""".splitlines()


def test_the_root_cause_of_a_vllm_start_failure_not_its_wrapper():
    assert reason_line(VLLM_START_FAILURE) == (
        "ValueError: To serve at least one request with the models's max seq len (8192), 0.38 GiB KV cache is "
        "needed, which is larger than the available KV cache memory (0.12 GiB).")


def test_llama_servers_error_line_not_its_usage_nor_the_command_line():
    assert reason_line(LLAMA_SERVER_BAD_FLAG) == \
        'error while handling argument "--cache-type-k": Unsupported cache type: bogus'


def test_an_argument_parser_error_and_no_reason_at_all():
    assert reason_line(["usage: vllm serve [-h] ...", "vllm: error: argument --max-model-len: invalid int value: "
                        "'big'"]) == "vllm: error: argument --max-model-len: invalid int value: 'big'"
    assert reason_line(["--- llama-server -m x", "loading model", "Killed"]) is None
