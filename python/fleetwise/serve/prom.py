"""A minimal Prometheus text exposition (counters, gauges, histograms) and a parser for scraping.

The exposition is hand-written (each server keeps its own small registry instead of
prometheus_client's process-global one); it follows the text format vLLM's ``/metrics`` uses
(``# HELP``/``# TYPE`` lines, ``_total`` counters, ``_bucket``/``_sum``/``_count`` histograms).
Parsing a scraped exposition uses prometheus_client's text parser, which reads every escape and
quoting the format allows (``}``, ``"``, ``\\`` and newlines inside label values).
"""

from __future__ import annotations

import bisect
import math
from typing import Iterable


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items())
    return "{" + inner + "}"


def _num(x: float) -> str:
    if x == math.inf:
        return "+Inf"
    return repr(float(x))


class Metric:
    """One metric family: a name, a help line, a type and values per label set."""

    def __init__(self, name: str, help: str, kind: str):
        self.name, self.help, self.kind = name, help, kind
        self.values: dict[tuple, float] = {}

    def _key(self, labels: dict[str, str]) -> tuple:
        return tuple(sorted(labels.items()))

    def render(self) -> list[str]:
        """Exposition lines of this family."""
        suffix = "_total" if self.kind == "counter" else ""
        lines = [f"# HELP {self.name}{suffix} {self.help}", f"# TYPE {self.name}{suffix} {self.kind}"]
        for key, v in self.values.items():
            lines.append(f"{self.name}{suffix}{_labels(dict(key))} {_num(v)}")
        return lines


class Counter(Metric):
    """A monotonically increasing count (exposed as ``NAME_total``)."""

    def __init__(self, name: str, help: str):
        super().__init__(name, help, "counter")

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        """Adds ``amount`` to the series with ``labels``."""
        k = self._key(labels)
        self.values[k] = self.values.get(k, 0.0) + amount


class Gauge(Metric):
    """A value that goes up and down."""

    def __init__(self, name: str, help: str):
        super().__init__(name, help, "gauge")

    def set(self, value: float, **labels: str) -> None:
        """Sets the series with ``labels``."""
        self.values[self._key(labels)] = float(value)


class Histogram(Metric):
    """Observations counted into cumulative buckets, with their sum and count."""

    def __init__(self, name: str, help: str, buckets: Iterable[float]):
        super().__init__(name, help, "histogram")
        self.buckets = sorted(buckets)
        self.series: dict[tuple, list] = {}

    def observe(self, value: float, **labels: str) -> None:
        """Records one observation."""
        k = self._key(labels)
        s = self.series.setdefault(k, [[0] * (len(self.buckets) + 1), 0.0, 0])
        s[0][bisect.bisect_left(self.buckets, value)] += 1
        s[1] += value
        s[2] += 1

    def render(self) -> list[str]:
        """Exposition lines: cumulative ``_bucket`` series, ``_sum`` and ``_count``."""
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        for key, (counts, total, n) in self.series.items():
            labels = dict(key)
            acc = 0
            for le, c in zip(self.buckets + [math.inf], counts):
                acc += c
                lines.append(f"{self.name}_bucket{_labels({**labels, 'le': _num(le)})} {acc}")
            lines.append(f"{self.name}_sum{_labels(labels)} {_num(total)}")
            lines.append(f"{self.name}_count{_labels(labels)} {n}")
        return lines


def render(metrics: Iterable[Metric]) -> str:
    """The exposition text of ``metrics``."""
    return "\n".join(line for m in metrics for line in m.render()) + "\n"


def parse(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Samples of an exposition text by sample name (``NAME_total``, ``NAME_bucket``, ... as
    written): ``{name: [(labels, value), ...]}``. Raises ValueError when the text is not a valid
    Prometheus exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), float(sample.value)))
    return out


def total(samples: dict, name: str) -> float | None:
    """The sum of all series of ``name`` in parsed ``samples``, or None when it is absent."""
    if name not in samples:
        return None
    return sum(v for _, v in samples[name])
