"""Parse and normalize model references the way Docker Model Runner does.

`smollm2` means `docker.io/ai/smollm2:latest`; the default registry can be moved (mirrors, tests) with
`MODEL_RUNNER_DEFAULT_REGISTRY` or an explicit argument. Every other module receives a `Reference`, never
a raw string, so normalization happens exactly once.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from .errors import InvalidReference

DOCKER_HUB = "docker.io"
DOCKER_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"})
DOCKER_HUB_API_HOST = "registry-1.docker.io"
#: Hugging Face models are stored under `hf.co/…`, as Docker Model Runner names them.
HUGGING_FACE = "hf.co"
HUGGING_FACE_ALIASES = frozenset({"hf.co", "huggingface.co", "www.huggingface.co"})
HUGGING_FACE_SCHEME = "hf://"
DEFAULT_NAMESPACE = "ai"
DEFAULT_TAG = "latest"
#: `hf.co/org/repo` means its default choice (Q4_K_M when the repo has it, see distribution/huggingface), kept under
#: `latest` like any other name without a tag; `hf.co/org/repo:Q4_K_M` names the quantization itself.
HUGGING_FACE_DEFAULT_TAG = DEFAULT_TAG

ENV_DEFAULT_REGISTRY = "MODEL_RUNNER_DEFAULT_REGISTRY"
ENV_INSECURE_REGISTRIES = "MODEL_RUNNER_INSECURE_REGISTRIES"

_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_DIGEST = re.compile(r"^sha256:[a-f0-9]{64}$")
_HOST = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9-]+)*|\[[0-9a-fA-F:]+\])(?::\d{1,5})?$")
_LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]", "::1"})


@dataclass(frozen=True, slots=True)
class Reference:
    """A normalized model reference: where the model lives and which version of it.

    `tag` and `digest` may both be set (`name:tag@sha256:…`); the digest then wins when resolving.
    """

    registry: str
    repository: str
    tag: str | None = DEFAULT_TAG
    digest: str | None = None

    @property
    def name(self) -> str:
        """Registry and repository, no tag: `docker.io/ai/smollm2`."""
        return f"{self.registry}/{self.repository}"

    @property
    def full(self) -> str:
        """The canonical string stored in the index: `docker.io/ai/smollm2:latest` (or `…@sha256:…`)."""
        text = self.name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text

    @property
    def familiar(self) -> str:
        """What users type and `ls` shows: Docker Hub's host is left out (`ai/smollm2:latest`)."""
        full = self.full
        prefix = f"{DOCKER_HUB}/"
        return full[len(prefix) :] if full.startswith(prefix) else full

    def relative_to(self, default: str | None = None) -> str:
        """The name as users type it where bare names go to `default` (None: `$MODEL_RUNNER_DEFAULT_REGISTRY`, else
        Docker Hub): that registry's host is left out, and Docker Hub's is kept when it is not the default (a bare
        name would mean the other registry)."""
        home = default_registry(default)
        if home == DOCKER_HUB:
            return self.familiar
        return self.full[len(home) + 1:] if self.registry == home else self.full

    @property
    def target(self) -> str:
        """What the registry's `/manifests/<target>` endpoint is asked for."""
        return self.digest or self.tag or DEFAULT_TAG

    @property
    def api_host(self) -> str:
        """The host that answers the registry API (Docker Hub's differs from its name)."""
        return DOCKER_HUB_API_HOST if self.registry == DOCKER_HUB else self.registry

    @property
    def insecure(self) -> bool:
        """True when the registry is spoken to over plain HTTP (loopback, or listed by the user)."""
        return is_insecure_registry(self.registry)

    def with_tag(self, tag: str) -> Reference:
        """The same repository under another tag, without a digest."""
        return Reference(self.registry, self.repository, tag, None)

    def __str__(self) -> str:
        return self.familiar


@dataclass(frozen=True, slots=True)
class HubReference:
    """A Hugging Face model as the user typed it: the repo id goes to the Hub with its case (the Hub ignores case,
    mirrors may not); `tag` is None when none was given (a quantization for a GGUF repo, else a revision)."""

    repo_id: str
    tag: str | None = None

    @property
    def reference(self) -> Reference:
        """The local (lower-cased) name, `hf.co/org/repo:tag` (`latest` without a tag)."""
        return Reference(HUGGING_FACE, self.repo_id.lower(), self.tag or HUGGING_FACE_DEFAULT_TAG, None)


def parse_hub_reference(text: str) -> HubReference | None:
    """`hf.co/ORG/REPO[:TAG]`, `huggingface.co/…` or `hf://ORG/REPO[:TAG]` as a `HubReference`; None for any other
    reference. Raises `InvalidReference` for a Hugging Face name that is malformed."""
    if not isinstance(text, str):
        return None
    stripped = text.strip()
    if stripped.lower().startswith(HUGGING_FACE_SCHEME):
        stripped = f"{HUGGING_FACE}/{stripped[len(HUGGING_FACE_SCHEME):]}"
    for scheme in ("https://", "http://"):  # a Hub page's address pasted as it is
        if stripped.lower().startswith(scheme):
            stripped = stripped[len(scheme):]
    host, _, rest = stripped.partition("/")
    if host.lower() not in HUGGING_FACE_ALIASES:
        return None
    ref = parse_reference(f"{HUGGING_FACE}/{rest}")  # validates the characters, the tag and org/repo
    if ref.digest:
        raise InvalidReference(f"Invalid model reference {text!r}: pin a Hugging Face revision with `:COMMIT`, not "
                               "a digest.")
    path, _, tag = rest.rpartition(":") if ":" in rest else (rest, "", "")
    if len(path.split("/")) != 2:
        raise InvalidReference(f"Invalid model reference {text!r}: Hugging Face models are `hf.co/org/repo`.")
    return HubReference(path, tag or None)


def default_registry(override: str | None = None) -> str:
    """The registry a bare name resolves to: the explicit value, then the environment, then Docker Hub."""
    value = (override or os.environ.get(ENV_DEFAULT_REGISTRY) or DOCKER_HUB).strip()
    value = value.removeprefix("https://").removeprefix("http://").rstrip("/")
    return _normalize_registry(value)


def is_insecure_registry(registry: str) -> bool:
    """Plain HTTP is used for loopback registries and for hosts the user lists in the environment."""
    host = _strip_port(registry)
    if host in _LOOPBACK_HOSTS or host.startswith("127."):
        return True
    listed = {item.strip() for item in os.environ.get(ENV_INSECURE_REGISTRIES, "").split(",") if item.strip()}
    return registry in listed or host in listed


def parse_reference(text: str, *, registry: str | None = None) -> Reference:
    """Parse `text` into a `Reference`, applying FORMAT.md §1's defaults.

    `registry` overrides the default registry for bare names (otherwise `MODEL_RUNNER_DEFAULT_REGISTRY`,
    then Docker Hub). Raises `InvalidReference` with the reason when the text is not a reference.
    """
    if not isinstance(text, str) or not text.strip():
        raise InvalidReference("A model reference cannot be empty (try `ai/smollm2`).")
    original = text
    text = text.strip()
    if text.lower().startswith(HUGGING_FACE_SCHEME):
        text = f"{HUGGING_FACE}/{text[len(HUGGING_FACE_SCHEME):]}"
    if any(ch.isspace() for ch in text):
        raise InvalidReference(f"Invalid model reference {original!r}: it contains whitespace.")
    if "://" in text:
        raise InvalidReference(
            f"Invalid model reference {original!r}: leave out the scheme (write `host/name:tag`)."
        )

    digest = None
    if "@" in text:
        text, digest = text.rsplit("@", 1)
        digest = digest.lower()
        if not _DIGEST.match(digest):
            raise InvalidReference(
                f"Invalid model reference {original!r}: a digest is `sha256:` followed by 64 hex characters."
            )

    # A tag follows the last colon only if no slash comes after it (a colon before a slash is a port).
    tag = None
    last_colon, last_slash = text.rfind(":"), text.rfind("/")
    if last_colon > last_slash:
        text, tag = text[:last_colon], text[last_colon + 1 :]
        if not _TAG.match(tag):
            raise InvalidReference(
                f"Invalid model reference {original!r}: tag {tag!r} may use letters, digits, `_`, `.` and `-` "
                "(at most 128 characters, not starting with `.` or `-`)."
            )

    parts = text.split("/")
    if len(parts) > 1 and _looks_like_host(parts[0]):
        host, path = _normalize_registry(parts[0]), parts[1:]
    else:
        host, path = default_registry(registry), parts
        if len(path) == 1:
            path = [DEFAULT_NAMESPACE, *path]
    repository = "/".join(path).lower()
    for component in repository.split("/"):
        if not _COMPONENT.match(component):
            raise InvalidReference(
                f"Invalid model reference {original!r}: {component!r} is not a valid name component "
                "(lowercase letters, digits and single separators `.`, `_`, `-`)."
            )
    if host == HUGGING_FACE and len(path) < 2:
        raise InvalidReference(f"Invalid model reference {original!r}: Hugging Face models are `hf.co/org/repo`.")
    if tag is None and digest is None:
        tag = HUGGING_FACE_DEFAULT_TAG if host == HUGGING_FACE else DEFAULT_TAG
    if len(repository) > 255:
        raise InvalidReference(f"Invalid model reference {original!r}: the name is longer than 255 characters.")
    return Reference(host, repository, tag, digest)


def _looks_like_host(component: str) -> bool:
    """Docker's rule: the first component is a registry if it has a dot or a port, or is `localhost`."""
    if not ("." in component or ":" in component or component == "localhost" or component.startswith("[")):
        return False
    if not _HOST.match(component):
        raise InvalidReference(f"Invalid registry host {component!r}.")
    return True


def _normalize_registry(host: str) -> str:
    lowered = host.lower()
    if lowered in DOCKER_HUB_ALIASES:
        return DOCKER_HUB
    if lowered in HUGGING_FACE_ALIASES:
        return HUGGING_FACE
    return lowered


def _strip_port(registry: str) -> str:
    if registry.startswith("["):
        return registry.split("]", 1)[0] + "]"
    return registry.rsplit(":", 1)[0] if ":" in registry else registry
