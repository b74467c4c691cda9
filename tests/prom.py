"""Prometheus text exposition, parsed with a real parser (prometheus_client), for
tests that assert exact values of series."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

SeriesKey = tuple[str, frozenset[tuple[str, str]]]


@dataclass(frozen=True)
class Exposition:
    """One /metrics body, parsed: sample values by (sample name, labels), and types."""

    samples: Mapping[SeriesKey, float]
    types: Mapping[str, str]
    text: str

    def value(self, name: str, **labels: str) -> float:
        return self.samples[(name, frozenset(labels.items()))]

    def has(self, name: str, **labels: str) -> bool:
        return (name, frozenset(labels.items())) in self.samples

    def series(self) -> frozenset[SeriesKey]:
        return frozenset(self.samples)

    def series_of(self, name: str) -> dict[frozenset[tuple[str, str]], float]:
        return {labels: value for (sample, labels), value in self.samples.items() if sample == name}


def parse_exposition(text: str) -> Exposition:
    types = _declared_types(text)
    samples: dict[SeriesKey, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name = _exposed_name(sample.name, family.type, types)
            key = (name, frozenset(sample.labels.items()))
            assert key not in samples, f"duplicate series {key}"
            samples[key] = sample.value
    return Exposition(samples=samples, types=types, text=text)


def _declared_types(text: str) -> dict[str, str]:
    types: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            types[name] = kind
    return types


def _exposed_name(sample_name: str, family_type: str, types: Mapping[str, str]) -> str:
    # prometheus_client renames the samples of a counter declared without "_total"
    # (slo_requests_good) to "<name>_total"; Prometheus stores the name as exposed.
    if family_type == "counter" and sample_name not in types:
        return sample_name.removesuffix("_total")
    return sample_name
