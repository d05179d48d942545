"""Merge the `/metrics` of several engine processes into one Prometheus text exposition (format 0.0.4).

The runner is the only scrape target a user configures, yet each engine (vLLM, llama.cpp server) exposes
its own metrics. Concatenating them would repeat `# HELP`/`# TYPE` headers and lose which model a sample
belongs to, which strict parsers reject; so we regroup every family under one header and label every
engine sample with `engine` and `model`. Engine output is untrusted text: a line we cannot parse is
dropped, never raised, so one misbehaving engine cannot take the whole endpoint down.

Standard library only, on purpose: the exposition format is small, and the runner must not depend on
`prometheus_client` (nor on tornado) to serve it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
# What Go's strconv.ParseFloat accepts in practice (hex floats aside); the text is kept, never reformatted.
_VALUE = re.compile(r"[+-]?(?:(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:e[+-]?[0-9]+)?|inf|infinity)|nan", re.IGNORECASE)
_TIMESTAMP = re.compile(r"[+-]?[0-9]+")
_COMMENT = re.compile(r"#[ \t]*(HELP|TYPE)[ \t]+([a-zA-Z_:][a-zA-Z0-9_:]*)(?:[ \t]+(.*))?")
_TYPES = frozenset({"counter", "gauge", "histogram", "summary", "untyped"})
# Sample names that belong to a family declared under a shorter name (OpenMetrics' convention).
_SUFFIXES = {"histogram": ("_bucket", "_sum", "_count", "_created"), "summary": ("_sum", "_count", "_created"),
             "counter": ("_total", "_created")}
_UNESCAPE = {"\\": "\\", '"': '"', "n": "\n"}

Labels = list[tuple[str, str]]


@dataclass
class _Family:
    """One metric family: declared type (None until a TYPE line), first HELP seen, rendered samples."""

    type: str | None = None
    help: str | None = None
    samples: list[str] = field(default_factory=list)


def _skip_blanks(line: str, pos: int) -> int:
    while pos < len(line) and line[pos] in " \t":
        pos += 1
    return pos


def _parse_labels(line: str, pos: int) -> tuple[Labels, int] | None:
    """Parse `name="value", ...}` from just after `{`: values may hold `}`, `,`, `=` and escapes."""
    labels: Labels = []
    while True:
        pos = _skip_blanks(line, pos)
        if pos < len(line) and line[pos] == "}":
            return labels, pos + 1
        match = _LABEL_NAME.match(line, pos)
        if not match:
            return None
        pos = _skip_blanks(line, match.end())
        if line[pos:pos + 1] != "=":
            return None
        pos = _skip_blanks(line, pos + 1)
        if line[pos:pos + 1] != '"':
            return None
        pos += 1
        value: list[str] = []
        while pos < len(line) and line[pos] != '"':
            if line[pos] == "\\":
                unescaped = _UNESCAPE.get(line[pos + 1:pos + 2])
                if unescaped is None:
                    return None  # an unknown escape or a trailing backslash: the spec allows only three
                value.append(unescaped)
                pos += 2
            else:
                value.append(line[pos])
                pos += 1
        if pos >= len(line) or any(name == match.group() for name, _ in labels):
            return None  # unterminated value, or a label given twice
        labels.append((match.group(), "".join(value)))
        pos = _skip_blanks(line, pos + 1)
        if line[pos:pos + 1] == ",":
            pos += 1
        elif line[pos:pos + 1] != "}":
            return None


def _parse_sample(line: str) -> tuple[str, Labels, str] | None:
    """Split a sample line into name, labels and the value (plus timestamp) text, or None if malformed."""
    match = _METRIC_NAME.match(line)
    if not match:
        return None
    labels: Labels = []
    pos = _skip_blanks(line, match.end())
    if line[pos:pos + 1] == "{":
        parsed = _parse_labels(line, pos + 1)
        if parsed is None:
            return None
        labels, pos = parsed
    elif pos == match.end():
        return None  # the name runs into something that is neither `{` nor a blank
    rest = line[pos:].split()
    if not 1 <= len(rest) <= 2 or not _VALUE.fullmatch(rest[0]) or not all(map(_TIMESTAMP.fullmatch, rest[1:])):
        return None
    return match.group(), labels, " ".join(rest)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _render(name: str, labels: Labels, value: str) -> str:
    inner = ",".join(f'{key}="{_escape(val)}"' for key, val in labels)
    return f"{name}{{{inner}}} {value}" if labels else f"{name} {value}"


def _with_extra(labels: Labels, extra: Labels) -> Labels:
    """Prepend `extra`; an engine label of the same name becomes `exported_<name>`, as Prometheus renames."""
    ours = {name for name, _ in extra}
    taken = ours | {name for name, _ in labels}
    merged = list(extra)
    for name, value in labels:
        if name in ours:
            while name in taken:
                name = f"exported_{name}"
            taken.add(name)
        merged.append((name, value))
    return merged


def _family_of(name: str, families: dict[str, _Family]) -> str:
    """The family a sample name belongs to: itself, or a typed family it is a suffix of; else a new untyped one."""
    if name in families:
        return name
    for kind, suffixes in _SUFFIXES.items():
        for suffix in suffixes:
            base = name[:-len(suffix)]
            if name.endswith(suffix) and base in families and families[base].type == kind:
                return base
    families[name] = _Family()
    return name


def _absorb(text: str, extra: Labels, families: dict[str, _Family]) -> None:
    """Add every well-formed line of one exposition to `families`, labelled with `extra`."""
    for raw in text.split("\n"):
        line = raw.strip(" \t\r")
        if not line:
            continue
        if line.startswith("#"):
            comment = _COMMENT.fullmatch(line)
            if not comment:
                continue  # a plain comment, or a HELP/TYPE line we cannot read
            keyword, name, rest = comment.group(1), comment.group(2), (comment.group(3) or "").strip(" \t")
            if keyword == "TYPE" and rest.lower() not in _TYPES:
                continue
            family = families.setdefault(name, _Family())
            if keyword == "TYPE" and family.type is None:
                family.type = rest.lower()
            elif keyword == "HELP" and family.help is None:
                family.help = rest
            continue
        sample = _parse_sample(line)
        if sample is not None:
            name, labels, value = sample
            families[_family_of(name, families)].samples.append(_render(name, _with_extra(labels, extra), value))


def _valid_labels(labels: Mapping[str, str]) -> Labels:
    """Our own label names are code, not input: a bad one is a bug worth raising about."""
    for name in labels:
        if not _LABEL_NAME.fullmatch(name) or name.startswith("__"):
            raise ValueError(f"invalid Prometheus label name: {name!r}")
    return [(name, str(value)) for name, value in labels.items()]


def merge_metrics(sources: Iterable[tuple[Mapping[str, str], str]], own: str = "") -> str:
    """One exposition from our own text and each engine's, every family once under a single HELP/TYPE.

    `sources` pairs the labels to add to every sample of an engine (e.g. `{"engine": "vllm", "model":
    "ai/smollm2"}`) with that engine's exposition text. Families of `own` come first, then engine families
    in order of first appearance; the first HELP and TYPE of a family win. Malformed lines are dropped.
    Raises only ValueError for an invalid label *name* in `sources`, never because of the texts.
    """
    families: dict[str, _Family] = {}
    _absorb(own, [], families)
    for extra, text in sources:
        _absorb(text, _valid_labels(extra), families)
    lines: list[str] = []
    for name, family in families.items():
        if family.help:
            lines.append(f"# HELP {name} {family.help}")
        lines.append(f"# TYPE {name} {family.type or 'untyped'}")
        lines.extend(family.samples)
    return "\n".join(lines) + "\n"


def _format_value(value: float) -> str:
    """Go's spelling of special floats; whole numbers without a spurious `.0`."""
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return str(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)


def _family_text(kind: str, name: str, help: str, samples: Iterable[tuple[Mapping[str, str], float]]) -> str:
    if not _METRIC_NAME.fullmatch(name):
        raise ValueError(f"invalid Prometheus metric name: {name!r}")
    escaped_help = help.replace("\\", "\\\\").replace("\n", "\\n")  # HELP escapes only these two
    lines = [f"# HELP {name} {escaped_help}", f"# TYPE {name} {kind}"]
    lines.extend(_render(name, _valid_labels(labels), _format_value(value)) for labels, value in samples)
    return "\n".join(lines) + "\n"


def counter_text(name: str, help: str, samples: Iterable[tuple[Mapping[str, str], float]]) -> str:
    """Render one counter family of our own (e.g. `modelrunner_pulls_total`), ready to pass as `own`."""
    return _family_text("counter", name, help, samples)


def gauge_text(name: str, help: str, samples: Iterable[tuple[Mapping[str, str], float]]) -> str:
    """Render one gauge family of our own (e.g. `modelrunner_models_loaded`), ready to pass as `own`."""
    return _family_text("gauge", name, help, samples)
