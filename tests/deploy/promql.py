"""Metric names referenced by PromQL expressions, and the sample names a Prometheus registry exports.

Just enough of PromQL to list the series selectors of a dashboard query or an alert rule: strings, label matchers,
range/subquery brackets, grouping clauses and function calls are stripped; every identifier left is a metric name.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from prometheus_client.registry import CollectorRegistry

_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset", "and", "or", "unless"}
    | {"inf", "nan"}
)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_OFFSET = re.compile(r"\boffset\s+-?[0-9a-zA-Z_$]+")
_IDENT = re.compile(r"(?<![\w:.$])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w:])(\s*\()?")


def metric_names(expr: str) -> set[str]:
    """Metric names of every series selector in ``expr`` (functions, keywords and label names excluded)."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    text = _OFFSET.sub(" ", text)
    names = set()
    for match in _IDENT.finditer(text):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in _KEYWORDS:
            continue
        names.add(name)
    return names


_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("_sum", "_count", "_created", ""),
    "gauge": ("",),
    "info": ("_info",),
    "stateset": ("",),
    "enum": ("",),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "unknown": ("",),
}


def exported_sample_names(families: Iterable[tuple[str, str]]) -> set[str]:
    """Every sample name Prometheus can scrape for metric families given as (name, type)."""
    return {name + suffix for name, kind in families for suffix in _SUFFIXES[kind]}


def registry_families(registry: CollectorRegistry) -> list[tuple[str, str]]:
    """(name, type) of every metric family a prometheus_client registry collects."""
    return [(family.name, family.type) for family in registry.collect()]
