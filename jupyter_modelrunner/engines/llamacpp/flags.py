"""The llama-server flags a user may pass a model (`configure MODEL -- FLAGS`), and how llama-cpp-python's server, the
fallback, reads the few it has a setting for. Anything not listed is refused (engines/base.py `check_flags`)."""

from __future__ import annotations

from ...errors import EngineFlagRefused
from ..base import FlagSpec

INSTALL_COMMAND = "jupyter modelrunner install-runner llama.cpp"

_V = FlagSpec()
_SWITCH = FlagSpec(takes_value=False)
_ON_OFF = FlagSpec(optional_values=("on", "off", "auto"))


def _flags(names: str, spec: FlagSpec) -> dict[str, FlagSpec]:
    return dict.fromkeys(names.split(), spec)


# llama-server's flags a user may set per model: Docker Model Runner's allowlist (pkg/inference), minus what the
# runner itself manages (address, API key, API prefix) and anything naming a file. Everything else is refused.
LLAMA_SERVER_FLAGS: dict[str, FlagSpec] = {
    # threads and CPU placement
    **_flags("-t --threads -tb --threads-batch -C --cpu-mask -Cr --cpu-range --cpu-strict --prio --poll -Cb "
             "--cpu-mask-batch -Crb --cpu-range-batch --cpu-strict-batch --prio-batch --poll-batch", _V),
    # context, prediction, batching
    **_flags("-c --ctx-size -n --predict --n-predict --keep -b --batch-size -ub --ubatch-size", _V),
    **_flags("--swa-full --perf --no-perf", _SWITCH),
    **_flags("-fa --flash-attn", _ON_OFF),
    # sampling defaults
    **_flags("--samplers -s --seed --temp --temperature --top-k --top-p --min-p --top-nsigma --top-n-sigma "
             "--xtc-probability --xtc-threshold --typical --typical-p --repeat-last-n --repeat-penalty "
             "--presence-penalty --frequency-penalty --dry-multiplier --dry-base --dry-allowed-length "
             "--dry-penalty-last-n --mirostat --mirostat-lr --mirostat-ent --dynatemp-range --dynatemp-exp", _V),
    **_flags("--ignore-eos", _SWITCH),
    # devices
    **_flags("-dev --device -ngl --gpu-layers --n-gpu-layers -sm --split-mode -ts --tensor-split -mg --main-gpu "
             "-fitt --fit-target -fitc --fit-ctx", _V),
    **_flags("-fit --fit", _ON_OFF),
    # memory and caching
    **_flags("-kvo --kv-offload -nkvo --no-kv-offload --repack -nr --no-repack --no-host --mlock --mmap --no-mmap "
             "-dio --direct-io -ndio --no-direct-io -kvu --kv-unified -no-kvu --no-kv-unified --context-shift "
             "--no-context-shift --cache-prompt --no-cache-prompt", _SWITCH),
    **_flags("-ctk --cache-type-k -ctv --cache-type-v -cram --cache-ram --kv-unified-per-slot", _V),
    # RoPE scaling
    **_flags("--rope-scaling --rope-scale --rope-freq-base --rope-freq-scale --yarn-orig-ctx --yarn-ext-factor "
             "--yarn-attn-factor --yarn-beta-slow --yarn-beta-fast", _V),
    # server
    **_flags("-np --parallel -to --timeout --threads-http --cache-reuse --sleep-idle-seconds", _V),
    **_flags("-cb --cont-batching -nocb --no-cont-batching --warmup --no-warmup --slots --no-slots", _SWITCH),
    # multimodal (no file paths)
    **_flags("--mmproj-auto --no-mmproj --no-mmproj-auto --mmproj-offload --no-mmproj-offload --spm-infill",
             _SWITCH),
    **_flags("--image-min-tokens --image-max-tokens", _V),
    # speculative decoding (no file paths: a draft model is not a runtime flag)
    **_flags("--spec-draft-threads -td --threads-draft --spec-draft-threads-batch -tbd --threads-batch-draft "
             "--spec-draft-cpu-mask -Cd --cpu-mask-draft --spec-draft-cpu-range -Crd --cpu-range-draft "
             "--spec-draft-cpu-strict --cpu-strict-draft --spec-draft-prio --prio-draft --spec-draft-poll "
             "--poll-draft --spec-draft-cpu-mask-batch -Cbd --cpu-mask-batch-draft --spec-draft-cpu-strict-batch "
             "--cpu-strict-batch-draft --spec-draft-prio-batch --prio-batch-draft --spec-draft-poll-batch "
             "--poll-batch-draft --spec-draft-n-cpu-moe --spec-draft-ncmoe -ncmoed --n-cpu-moe-draft "
             "--spec-draft-n-max --draft-n-max --draft-max --spec-draft-n-min --draft-n-min --draft-min "
             "--spec-draft-p-split --draft-p-split --spec-draft-p-min --draft-p-min --spec-draft-device -devd "
             "--device-draft --spec-draft-ngl -ngld --gpu-layers-draft --n-gpu-layers-draft --spec-type "
             "--spec-ngram-mod-n-min --spec-ngram-mod-n-max --spec-ngram-mod-n-match --spec-ngram-simple-size-n "
             "--spec-ngram-simple-size-m --spec-ngram-simple-min-hits --spec-ngram-map-k-size-n "
             "--spec-ngram-map-k-size-m --spec-ngram-map-k-min-hits --spec-ngram-map-k4v-size-n "
             "--spec-ngram-map-k4v-size-m --spec-ngram-map-k4v-min-hits --spec-draft-type-k -ctkd "
             "--cache-type-k-draft --spec-draft-type-v -ctvd --cache-type-v-draft -cd --ctx-size-draft", _V),
    **_flags("--spec-draft-cpu-moe -cmoed --cpu-moe-draft --spec-draft-backend-sampling "
             "--no-spec-draft-backend-sampling", _SWITCH),
    # LoRA and control vectors (no file paths)
    **_flags("--lora-init-without-apply", _SWITCH),
    "--control-vector-layer-range": _V,
    # grammar and templates
    **_flags("--grammar -j --json-schema --chat-template --chat-template-kwargs --pooling --reasoning-format "
             "--reasoning-budget --reasoning-effort -sps --slot-prompt-similarity", _V),
    **_flags("-bs --backend-sampling --jinja --no-jinja --prefill-assistant --no-prefill-assistant", _SWITCH),
    **_flags("-rea --reasoning", _ON_OFF),
    # metrics and endpoints
    **_flags("--metrics --no-metrics --props --embedding --embeddings --rerank --reranking", _SWITCH),
    # tensors and MoE
    **_flags("-cmoe --cpu-moe --check-tensors --op-offload --no-op-offload", _SWITCH),
    **_flags("-ncmoe --n-cpu-moe", _V),
    # logs
    **_flags("-v --verbose --log-verbose", _SWITCH),
    **_flags("-lv --verbosity --log-verbosity", _V),
}
CONTEXT_FLAGS = ("-c", "--ctx-size")
SLOT_FLAGS = ("-np", "--parallel")
THINK_FLAGS = ("-rea", "--reasoning")
BUDGET_FLAG = "--reasoning-budget"
#: How llama-server returns thinking: apart from the answer, in `reasoning_content` (its `auto` means the same today;
#: named so that a change of its default cannot put `<think>` blocks back into answers).
REASONING_FORMAT = "deepseek"

# The llama-server flags the fallback understands, as llama-cpp-python's server settings (value → its value).
_PYTHON_FLAG_NAMES = {
    "-t": "--n_threads", "--threads": "--n_threads", "-tb": "--n_threads_batch", "--threads-batch": "--n_threads_batch",
    "-b": "--n_batch", "--batch-size": "--n_batch", "-ub": "--n_ubatch", "--ubatch-size": "--n_ubatch",
    "-ngl": "--n_gpu_layers", "--gpu-layers": "--n_gpu_layers", "--n-gpu-layers": "--n_gpu_layers",
    "-mg": "--main_gpu", "--main-gpu": "--main_gpu", "-ts": "--tensor_split", "--tensor-split": "--tensor_split",
    "--rope-freq-base": "--rope_freq_base", "--rope-freq-scale": "--rope_freq_scale", "-s": "--seed",
    "--seed": "--seed", "-fa": "--flash_attn", "--flash-attn": "--flash_attn",
}
_PYTHON_SWITCHES = {"--mlock": ("--use_mlock", "true"), "--no-mmap": ("--use_mmap", "false"),
                    "--mmap": ("--use_mmap", "true"), "-v": ("--verbose", "true"), "--verbose": ("--verbose", "true"),
                    "--jinja": None, "--metrics": None, "--no-warmup": None, "--warmup": None}


def python_flags(flags: tuple[str, ...]) -> list[str]:
    """Checked llama-server flags as llama-cpp-python server settings, refusing those it has no setting for."""
    out: list[str] = []
    items = list(flags)
    i = 0
    while i < len(items):
        name, spec = items[i], LLAMA_SERVER_FLAGS[items[i]]
        value = None
        if (spec.takes_value and not spec.optional_values) or (
                spec.optional_values and i + 1 < len(items) and items[i + 1] in spec.optional_values):
            value = items[i + 1]
        i += 1 if value is None else 2
        if name in _PYTHON_SWITCHES:
            out += list(_PYTHON_SWITCHES[name] or ())
            continue
        target = _PYTHON_FLAG_NAMES.get(name)
        if target is None:
            raise EngineFlagRefused(
                f"The llama.cpp flag {name} is not supported by the llama-cpp-python fallback; `{INSTALL_COMMAND}` "
                "installs llama-server, which takes it.")
        if target == "--flash_attn":
            value = "false" if value == "off" else "true"
        out += [target, value or "true"]
    return out
