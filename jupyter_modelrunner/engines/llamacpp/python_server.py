"""The llama.cpp engine process: llama-cpp-python's OpenAI server, served on a Unix socket.

Run as `python -m jupyter_modelrunner.engines.llamacpp.python_server --uds SOCKET --model FILE [settings…]`.
It accepts every model setting of `python -m llama_cpp.server` (same names) and adds what that CLI lacks:
`--uds` (listen on a socket instead of a TCP port) and `--chat_template_file` (the model artifact's
Jinja chat template layer). This module runs only inside the engine process; nothing imports it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _use_chat_template(template: str) -> None:
    """Make every model this process loads format chats with `template` (a Jinja chat template).

    llama-cpp-python reads a template embedded in the GGUF by itself; a separate template layer has no
    server setting, so the loaded `Llama` gets a chat handler built from it.
    """
    from llama_cpp import llama_chat_format
    from llama_cpp.server import model as server_model

    original = server_model.LlamaProxy.load_llama_from_model_settings

    def load(settings):  # type: ignore[no-untyped-def]
        llama = original(settings)
        eos = llama.detokenize([llama.token_eos()]).decode("utf-8", "replace")
        bos = llama.detokenize([llama.token_bos()]).decode("utf-8", "replace")
        formatter = llama_chat_format.Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos)
        llama.chat_handler = formatter.to_chat_handler()
        return llama

    server_model.LlamaProxy.load_llama_from_model_settings = staticmethod(load)


def _default_pooling(pooling: str) -> None:
    """Pool token embeddings into one vector per input for models whose GGUF names no pooling.

    Generative models (no pooling in their metadata) would otherwise answer `/v1/embeddings` with one
    vector per token, which no OpenAI client expects. The server has no setting for it, so the `Llama`
    constructor gets a default.
    """
    import llama_cpp

    kind = {"mean": llama_cpp.LLAMA_POOLING_TYPE_MEAN, "cls": llama_cpp.LLAMA_POOLING_TYPE_CLS,
            "last": llama_cpp.LLAMA_POOLING_TYPE_LAST}[pooling]
    original = llama_cpp.Llama.__init__

    def init(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        kwargs.setdefault("pooling_type", kind)
        original(self, *args, **kwargs)

    llama_cpp.Llama.__init__ = init


def main(argv: list[str] | None = None) -> int:
    import uvicorn
    from llama_cpp.server.app import create_app
    from llama_cpp.server.cli import add_args_from_model, parse_model_from_args
    from llama_cpp.server.settings import ModelSettings, ServerSettings

    parser = argparse.ArgumentParser(prog="llamacpp_python_server", description=__doc__.splitlines()[0])
    parser.add_argument("--uds", required=True, help="Unix socket to listen on")
    parser.add_argument("--chat_template_file", help="Jinja chat template to use instead of the GGUF's")
    parser.add_argument("--pooling_type", choices=["mean", "cls", "last"], help="embedding pooling default")
    add_args_from_model(parser, ModelSettings)
    args = parser.parse_args(argv)
    if args.chat_template_file:
        _use_chat_template(Path(args.chat_template_file).read_text())
    if args.pooling_type:
        _default_pooling(args.pooling_type)
    model_settings = parse_model_from_args(ModelSettings, args)
    # The socket lives in a user-only directory, so no API key is needed; TCP is never opened.
    # interrupt_requests=False: by default a new request cancels the stream in progress; we queue instead.
    server_settings = ServerSettings(host="127.0.0.1", port=0, interrupt_requests=False)
    app = create_app(server_settings=server_settings, model_settings=[model_settings])
    uvicorn.run(app, uds=args.uds, log_level="warning", timeout_graceful_shutdown=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
