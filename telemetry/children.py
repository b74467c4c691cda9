"""Label children for the hot path: resolved once per label set, not per call.

aioprometheus looks a label set up on every ``inc``/``observe``: it serialises the
label dict with orjson (sorted keys) to find the stored value, and its histogram walks
every bucket of every observation. On the request path that is most of what a metric
costs. Here each label set is resolved once into a child object:

* :class:`HistogramChild` *is* the value aioprometheus stores for that label set
  (registered with ``Histogram.set_value`` when the child is made), so the registry
  renders it directly; an observation is one ``bisect`` and three additions.
* :class:`CounterChildren` keeps plain ``int`` counts and folds them into the
  aioprometheus ``Counter`` when ``/metrics`` is rendered (``fold``), writing only the
  counts that moved. The registry stays the single source of the exposition.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Hashable, Mapping, Sequence

from aioprometheus.collectors import Counter, Histogram

__all__ = ["Count", "CounterChildren", "HistogramChild", "histogram_child"]

_POS_INF = float("inf")


class HistogramChild:
    """One label set of a histogram: what aioprometheus' text renderer reads
    (``buckets``, cumulative; ``observations``; ``sum``), kept as per-bucket counts."""

    __slots__ = ("_bounds", "_counts", "observations", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self._bounds = tuple(float(b) for b in bounds if b != _POS_INF)
        # One slot per finite bound, plus the +Inf bucket.
        self._counts = [0] * (len(self._bounds) + 1)
        self.observations = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound lands in that bound's bucket (le).
        self._counts[bisect_left(self._bounds, value)] += 1
        self.sum += value
        self.observations += 1

    @property
    def buckets(self) -> OrderedDict[float, int]:
        """Cumulative counts per upper bound, +Inf last (read at render time only)."""
        cumulative: OrderedDict[float, int] = OrderedDict()
        running = 0
        for bound, count in zip((*self._bounds, _POS_INF), self._counts, strict=True):
            running += count
            cumulative[bound] = running
        return cumulative


def histogram_child(histogram: Histogram, labels: Mapping[str, str]) -> HistogramChild:
    """A child for ``labels`` registered in ``histogram`` (replacing any value there)."""
    child = HistogramChild(histogram.upper_bounds)
    histogram.set_value(dict(labels), child)
    return child


class Count:
    """One label set's count; ``value`` is what the hot path increments."""

    __slots__ = ("folded", "labels", "value")

    def __init__(self, labels: dict[str, str]) -> None:
        self.labels = labels
        self.value = 0
        self.folded = -1  # never folded: the first fold writes even a 0


class CounterChildren:
    """Plain counts per label set of one counter, folded into it at render time.

    ``key`` is any hashable the caller already has (a tuple of label values); the
    label dict is built once, when the key is first seen.
    """

    __slots__ = ("_counter", "_counts")

    def __init__(self, counter: Counter) -> None:
        self._counter = counter
        self._counts: dict[Hashable, Count] = {}

    def get(self, key: Hashable) -> Count | None:
        """The count of ``key``, None when it was never made."""
        return self._counts.get(key)

    def child(self, key: Hashable, labels: Mapping[str, str]) -> Count:
        count = self._counts.get(key)
        if count is None:
            count = self._counts[key] = Count(dict(labels))
        return count

    def fold(self) -> None:
        """Write every count that moved since the last fold into the counter."""
        for count in self._counts.values():
            if count.value != count.folded:
                self._counter.set(count.labels, count.value)
                count.folded = count.value
