"""Which files of a Hugging Face repository make the model, and what the stored model is called.

Pure functions over the repo's file list (no I/O), so the rules can be read and tested alone. GGUF repos: the tag
names a quantization, matched case-insensitively against the file names as Docker Model Runner does (`-Q4_K_M`,
`.Q4_K_M`, `_Q4_K_M`, before `.gguf` or a shard suffix); with no tag, Q4_K_M when the repo has it, else DMR's
choice: the first model file by name (with its shards). A `mmproj` GGUF is the vision projector (F16 preferred, as
DMR). Safetensors repos: weights with their index, config, tokenizer, generation config and chat template.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath

from ...errors import ModelNotFound, UnsupportedArtifact
from ...reference import HUGGING_FACE, HUGGING_FACE_DEFAULT_TAG

#: The quantization a GGUF repo gives when none is asked for (DMR's and Ollama's default).
DEFAULT_QUANTIZATION = "Q4_K_M"
#: Tags that ask for the repo's default choice rather than naming a quantization or revision (as DMR reads them).
DEFAULT_TAGS = frozenset({"latest", "main"})
#: A quantization as it appears in GGUF file names: Q4_K_M, IQ2_XXS, Q8_0, TQ1_0, F16, BF16, MXFP4, Unsloth's UD-…
_QUANTIZATION = r"(?:ud-)?(?:i?q\d+(?:_[a-z0-9]+)*?|tq[12]_0|b?f16|f32|fp16|fp32|mxfp4(?:_moe)?)"
_QUANT = re.compile(rf"(?i)^{_QUANTIZATION}$")
_QUANT_IN_NAME = re.compile(rf"(?i)(?:^|[-._])({_QUANTIZATION})(?=$|[-.])")
SHARD_SUFFIX = re.compile(r"-(\d{5})-of-(\d{5})$")
#: Files besides the weights that make a safetensors model runnable (vLLM reads them from the model folder).
SAFETENSORS_SIDE_FILES = frozenset({
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "tokenizer.model",
    "special_tokens_map.json", "added_tokens.json", "vocab.json", "merges.txt", "chat_template.jinja",
    "chat_template.json", "preprocessor_config.json", "processor_config.json", "model.safetensors.index.json",
})


@dataclass(frozen=True)
class RepoFile:
    """One file of a revision: its path in the repo, size, and the sha256 the Hub records for LFS files (None for
    files kept in git, whose blob id is a sha1)."""

    path: str
    size: int
    sha256: str | None = None

    @property
    def name(self) -> str:
        return PurePosixPath(self.path).name


@dataclass(frozen=True)
class Selection:
    """What to fetch and how to package it."""

    format: str  # "gguf" | "safetensors"
    weights: tuple[RepoFile, ...]
    side_files: tuple[RepoFile, ...] = ()
    mmproj: RepoFile | None = None
    quantization: str | None = None

    @property
    def files(self) -> tuple[RepoFile, ...]:
        return (*self.weights, *self.side_files, *((self.mmproj,) if self.mmproj else ()))


def hf_repo_name(repo_id: str) -> str:
    """The local name of a Hub repository without a tag (`hf.co/org/repo`, lower-cased: the Hub ignores case), as
    search offers it to be pulled."""
    return f"{HUGGING_FACE}/{repo_id.lower()}"


def hf_model_name(repo_id: str, tag: str | None = None) -> str:
    """The name a model from the Hub is stored under: `hf.co/<repo id lower-cased>:<tag>`.

    `tag` None (or DMR's `latest`) gives `latest`; a quantization is written upper-case (`q4_k_m` → `Q4_K_M`) so
    one quantization has one name however it was typed; a revision keeps its case. Everything that names a model
    from the Hub (pull, `ls --hf-cache`, search) goes through here.
    """
    if not tag or tag == HUGGING_FACE_DEFAULT_TAG:
        tag = HUGGING_FACE_DEFAULT_TAG
    elif is_quantization(tag):
        tag = tag.upper()
    return f"{hf_repo_name(repo_id)}:{tag}"


def is_quantization(tag: str) -> bool:
    """True for a tag that reads as a GGUF quantization (`Q4_K_M`, `iq2_xxs`, `F16`)."""
    return bool(_QUANT.match(tag))


def quantization_of(filename: str) -> str | None:
    """The quantization a GGUF file name carries (`Llama-3.2-1B-Instruct-Q4_K_M-00001-of-00002.gguf` → `Q4_K_M`)."""
    stem = SHARD_SUFFIX.sub("", PurePosixPath(filename).name.removesuffix(".gguf").removesuffix(".GGUF"))
    found = _QUANT_IN_NAME.findall(stem)
    return found[-1].upper() if found else None


def is_gguf(file: RepoFile) -> bool:
    return file.name.lower().endswith(".gguf")


def is_projector(file: RepoFile) -> bool:
    return is_gguf(file) and "mmproj" in file.name.lower()


def choose(files: list[RepoFile], repo_id: str, tag: str | None) -> Selection:
    """The files `tag` means in this revision's `files`; raises with the choices when it means none."""
    ggufs = [f for f in files if is_gguf(f)]
    if ggufs:
        return _choose_gguf(ggufs, repo_id, tag)
    if any(f.name.endswith(".safetensors") for f in files):
        if tag and is_quantization(tag) and tag not in DEFAULT_TAGS:
            raise ModelNotFound(f"{repo_id} holds safetensors weights, not GGUF quantizations: pull it without a tag "
                                f"(or with a revision), not :{tag}.")
        return _choose_safetensors(files)
    raise UnsupportedArtifact(f"{repo_id} holds neither GGUF nor safetensors weights; this runner cannot run it.")


def quantizations(files: list[RepoFile]) -> list[str]:
    """The quantizations a GGUF repo offers, as tags (sorted, each once)."""
    found = {quantization_of(f.name) for f in files if is_gguf(f) and not is_projector(f)}
    return sorted(q for q in found if q)


def _choose_gguf(ggufs: list[RepoFile], repo_id: str, tag: str | None) -> Selection:
    models = sorted((f for f in ggufs if not is_projector(f)), key=lambda f: f.path)
    projectors = sorted((f for f in ggufs if is_projector(f)), key=lambda f: f.path)
    mmproj = next((f for f in projectors if "f16" in f.name.lower()), projectors[0] if projectors else None)
    if not models:
        raise UnsupportedArtifact(f"{repo_id} holds only multimodal projectors, no model GGUF.")
    wanted = None if not tag or tag in DEFAULT_TAGS or not is_quantization(tag) else tag.upper()
    if wanted is not None:
        chosen = [f for f in models if quantization_of(f.name) == wanted]
        if not chosen:
            offered = quantizations(models)
            listed = ", ".join(offered) or "only files without a quantization in their names"
            example = hf_model_name(repo_id, offered[0] if offered else None)
            raise ModelNotFound(f"{repo_id} has no {wanted} quantization; it has {listed}. Pull one of them: "
                                f"`pull {example}`.")
    elif len(models) == 1:
        chosen = models
    else:
        chosen = [f for f in models if quantization_of(f.name) == DEFAULT_QUANTIZATION] or _first_with_shards(models)
    chosen = _one_model(chosen)
    return Selection("gguf", tuple(chosen), mmproj=mmproj, quantization=quantization_of(chosen[0].name))


def _first_with_shards(models: list[RepoFile]) -> list[RepoFile]:
    """DMR's fallback: the first file by name, with the other shards of its set."""
    first = models[0]
    prefix = _shard_prefix(first)
    return [f for f in models if _shard_prefix(f) == prefix] if prefix else [first]


def _shard_prefix(file: RepoFile) -> str | None:
    stem = file.path.removesuffix(".gguf")
    match = SHARD_SUFFIX.search(stem)
    return stem[: match.start()] if match else None


def _one_model(chosen: list[RepoFile]) -> list[RepoFile]:
    """One model's files in shard order: the shards of one set kept together, complete, or one single file."""
    sets: dict[str | None, list[RepoFile]] = {}
    for file in chosen:
        sets.setdefault(_shard_prefix(file) or file.path, []).append(file)
    key = sorted(sets, key=str)[0]
    files = sorted(sets[key], key=lambda f: f.path)
    match = SHARD_SUFFIX.search(files[0].path.removesuffix(".gguf"))
    if match and len(files) != int(match.group(2)):
        raise UnsupportedArtifact(f"{files[0].path} is one of {int(match.group(2))} shards but the repo has "
                                  f"{len(files)} of them.")
    return files


def _choose_safetensors(files: list[RepoFile]) -> Selection:
    weights = sorted((f for f in files if f.name.endswith(".safetensors") and "/" not in f.path), key=lambda f: f.path)
    if not weights:  # weights only in sub-folders (a diffusers pipeline, an adapter): not a model vLLM serves
        raise UnsupportedArtifact("The repo's safetensors weights are in sub-folders; this runner pulls a model whose "
                                  "weights are at the top of the repo.")
    side = sorted((f for f in files if f.path in SAFETENSORS_SIDE_FILES), key=lambda f: f.path)
    if not any(f.path == "config.json" for f in side):
        raise UnsupportedArtifact("The repo has safetensors weights but no config.json: vLLM cannot run it.")
    return Selection("safetensors", tuple(weights), tuple(side))
