"""Names: which model of the index a name means, and how a tag is shown.

A user names a model by full reference (`registry.example/ai/smollm2:latest`), short name (`smollm2`, `ai/smollm2`),
digest, or its id's first 12 hex digits. The index stores full references; these functions match a name against it
given the store's default registry, and read nothing from disk.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import InvalidReference
from ..reference import Reference, parse_reference
from .index import Entry

SHORT_ID_LENGTH = 12


def familiar_name(tag: str, default: str | None = None) -> str:
    """`tag` as users type it where bare names go to `default` (the registry's host left out when it is that)."""
    try:
        return parse_reference(tag).relative_to(default)
    except InvalidReference:
        return tag


def try_parse(name: str, registry: str | None) -> Reference | None:
    try:
        return parse_reference(name, registry=registry)
    except InvalidReference:
        return None


def find(entries: list[Entry], name: str, registry: str | None) -> Entry | None:
    """The entry `name` means: by tag first, then by digest, then by a unique id prefix of 12 or more hex digits."""
    name = name.strip()
    ref = try_parse(name, registry)
    entry = find_by_tag(entries, ref, registry)
    if entry is not None:
        return entry
    if ref is not None and ref.digest:
        entry = next((e for e in entries if e["id"] == ref.digest), None)
        if entry is not None:
            return entry
    prefix = name.removeprefix("sha256:").lower()
    if len(prefix) >= SHORT_ID_LENGTH and all(c in "0123456789abcdef" for c in prefix):
        hits = [e for e in entries if e["id"].removeprefix("sha256:").startswith(prefix)]
        if len(hits) == 1:
            return hits[0]
    return None


def find_by_tag(entries: list[Entry], ref: Reference | None, registry: str | None) -> Entry | None:
    if ref is None:
        return None
    for entry in entries:
        if ref.full in entry.get("tags", []):
            return entry
    # A short name typed while the default registry was elsewhere: match repository:tag if unique.
    hits = [e for e in entries if any(same_name(t, ref, registry) for t in e.get("tags", []))]
    return hits[0] if len(hits) == 1 else None


def matching_tag(entry: Entry, ref: Reference, registry: str | None) -> str:
    """The tag of `entry` that `ref` names (`find_by_tag` found the entry by it)."""
    if ref.full in entry["tags"]:
        return ref.full
    return next(t for t in entry["tags"] if same_name(t, ref, registry))


def same_name(tag: str, ref: Reference, registry: str | None) -> bool:
    other = try_parse(tag, registry)
    if other is None:
        return False
    return (other.repository, other.tag, other.digest) == (ref.repository, ref.tag, ref.digest)


def as_reference(name: str, tags: Sequence[str], registry: str | None) -> Reference | None:
    """The tag among `tags` that `name` stands for (the first tag for an id; None for a model with no tag)."""
    ref = try_parse(name, registry)
    if ref is not None:
        for tag in tags:
            if tag == ref.full or same_name(tag, ref, registry):
                return parse_reference(tag)
    return parse_reference(tags[0]) if tags else None
