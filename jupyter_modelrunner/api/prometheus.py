"""Merge the `/metrics` of several engine processes into one set of Prometheus metric families.

The runner is the only scrape target a user configures, yet each engine (llama-server, vLLM) exposes its
own metrics. Concatenating them would repeat `# HELP`/`# TYPE` headers (two llama-server models export the
same families) and lose which model a sample belongs to; so each text is parsed with prometheus_client's
parser, every sample gets `engine` and `model` labels, and families are regrouped by name. Engine output is
untrusted: a text the parser rejects is dropped whole, never raised, so one engine cannot break the page.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator, Mapping

from prometheus_client import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

log = logging.getLogger(__name__)

#: The types the text format can say; the parser also lets OpenMetrics-only ones through, which render wrongly.
_TEXT_TYPES = frozenset({"counter", "gauge", "histogram", "summary", "unknown"})
# Recent parsers also read UTF-8 names (`{"a.b"}`), which older renderers would write out unquoted.
_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


def _plain_names(family: Metric) -> bool:
    return all(_METRIC_NAME.fullmatch(s.name) and all(map(_LABEL_NAME.fullmatch, s.labels)) for s in family.samples)


def relabel(labels: Mapping[str, str], extra: Mapping[str, str]) -> dict[str, str]:
    """`extra` plus an engine sample's labels; one that `extra` also names becomes `exported_<name>`, as
    Prometheus renames a scraped label that clashes with a target label."""
    taken = set(extra) | set(labels)
    merged = dict(extra)
    for name, value in labels.items():
        if name in extra:
            while name in taken:
                name = f"exported_{name}"
            taken.add(name)
        merged[name] = value
    return merged


class EngineMetrics:
    """A collector of the engines' families: each family once, every sample labelled with its engine and model."""

    def __init__(self) -> None:
        self._families: dict[str, Metric] = {}

    def add(self, labels: Mapping[str, str], text: str) -> bool:
        """Merge one engine's exposition; False, with nothing merged, when the parser rejects any of it."""
        try:
            parsed = list(text_string_to_metric_families(text))
            if not all(map(_plain_names, parsed)):
                raise ValueError("a metric or label name outside the text format's characters")
        except Exception as exc:  # the parser is lax and raises more than ValueError on garbage
            log.debug("Dropped the metrics of %s: the parser rejects them (%r)", dict(labels), exc)
            return False
        for family in parsed:
            merged = self._families.setdefault(family.name, Metric(family.name, family.documentation, family.type))
            if family.type not in _TEXT_TYPES or family.type != merged.type:
                continue  # under one name, the first engine's type wins
            merged.samples.extend(s._replace(labels=relabel(s.labels, labels)) for s in family.samples)
        return True

    def collect(self) -> Iterator[Metric]:
        return (family for family in self._families.values() if family.samples and family.type in _TEXT_TYPES)


def _names(family: Metric) -> set[str]:
    """The metric names a family takes in the text: its header's and its samples'."""
    return {family.name + "_total" if family.type == "counter" else family.name} | {s.name for s in family.samples}


def distinct(families: Iterable[Metric]) -> Iterator[Metric]:
    """`families` minus those using a name an earlier one uses (our own come first, so they win): a second
    `# TYPE` for a name, or one after its samples, makes strict parsers reject the whole page."""
    seen: set[str] = set()
    for family in families:
        names = _names(family)
        if names.isdisjoint(seen):
            seen |= names
            yield family


class _Families:
    """A fixed list as a collector, for `generate_latest`."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families


def render(families: Iterable[Metric]) -> bytes:
    """The text exposition (format 0.0.4) of `families`, as Jupyter's `/metrics` renders its registry."""
    return generate_latest(_Families(distinct(families)))
