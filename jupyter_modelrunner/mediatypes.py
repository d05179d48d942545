"""Every media type and annotation key of Docker's model artifacts, in one place.

The values are those Docker Model Runner writes and Docker Hub's `ai/` models carry; where DMR's code and
the written model-spec disagree, both spellings are listed and accepted on pull.
"""

from __future__ import annotations

# Manifests
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
ACCEPTED_MANIFESTS = (OCI_MANIFEST, DOCKER_MANIFEST_V2)
CNCF_MODEL_MANIFEST_ARTIFACT = "application/vnd.cncf.model.manifest.v1+json"

# Configs
MODEL_CONFIG_V01 = "application/vnd.docker.ai.model.config.v0.1+json"
MODEL_CONFIG_V02 = "application/vnd.docker.ai.model.config.v0.2+json"
CNCF_MODEL_CONFIG_V1 = "application/vnd.cncf.model.config.v1+json"
MODEL_CONFIGS = (MODEL_CONFIG_V01, MODEL_CONFIG_V02, CNCF_MODEL_CONFIG_V1)

# Layers
GGUF = "application/vnd.docker.ai.gguf.v3"
SAFETENSORS = "application/vnd.docker.ai.safetensors"
VLLM_CONFIG_TAR = "application/vnd.docker.ai.vllm.config.tar"
DIR_TAR = "application/vnd.docker.ai.dir.tar"
MODEL_FILE = "application/vnd.docker.ai.model.file"
MMPROJ = "application/vnd.docker.ai.mmproj"
MMPROJ_SPEC = "application/vnd.docker.ai.gguf.v3.mmproj"
LICENSE = "application/vnd.docker.ai.license"
CHAT_TEMPLATE = "application/vnd.docker.ai.chat.template.jinja"
# CNCF ModelPack (github.com/modelpack/model-spec): every file is a layer of its kind (weight, weight config, doc,
# code, dataset), `.raw` (the file itself, its path in `org.cncf.model.filepath`) or a tar of files (`.tar`,
# `.tar+gzip`; `.tar+zstd` is refused: Python 3.11 cannot read zstd). DMR also reads its own older
# `weight.v1.gguf` / `weight.v1.safetensors`.
CNCF_WEIGHT_PREFIX = "application/vnd.cncf.model.weight.v1."
CNCF_WEIGHT_RAW = CNCF_WEIGHT_PREFIX + "raw"
CNCF_WEIGHT_TAR = CNCF_WEIGHT_PREFIX + "tar"
CNCF_WEIGHT_GGUF = CNCF_WEIGHT_PREFIX + "gguf"
CNCF_WEIGHT_SAFETENSORS = CNCF_WEIGHT_PREFIX + "safetensors"
CNCF_KINDS = ("weight", "weight.config", "doc", "code", "dataset")
CNCF_RAW = (*(f"application/vnd.cncf.model.{kind}.v1.raw" for kind in CNCF_KINDS), CNCF_WEIGHT_GGUF,
            CNCF_WEIGHT_SAFETENSORS)
CNCF_TARS = tuple(f"application/vnd.cncf.model.{kind}.v1.{packing}" for kind in CNCF_KINDS
                  for packing in ("tar", "tar+gzip"))
CNCF_ZSTD = tuple(f"application/vnd.cncf.model.{kind}.v1.tar+zstd" for kind in CNCF_KINDS)
#: Layers the bundle unpacks (safely: store/tar_layers.py) rather than links.
TAR_LAYERS = (VLLM_CONFIG_TAR, DIR_TAR, *CNCF_TARS)


def is_cncf_weight(media_type: str) -> bool:
    """A ModelPack weights layer (`weight.v1.*`; `weight.config.v1.*` is not one: it holds tokenizers and configs)."""
    return media_type.startswith(CNCF_WEIGHT_PREFIX)

# Annotations
ANNOTATION_FILEPATH = "org.cncf.model.filepath"
ANNOTATION_FILE_METADATA = "org.cncf.model.file.metadata+json"
ANNOTATION_TITLE = "org.opencontainers.image.title"

# Formats as they appear in the config JSON
FORMAT_GGUF = "gguf"
FORMAT_SAFETENSORS = "safetensors"
