"""observe_all: a chunk's observations counted first, then one update per bucket, the same as one observe each."""

import random

import pytest
from prometheus_client import CollectorRegistry, Histogram

from cascade.monitoring import metrics
from cascade.workers.instrument import observe_all

BOUNDS = metrics.CONFIDENCE._upper_bounds[:-1]  # the confidence histogram's own, without +Inf


def _samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in registry.collect()
        for s in family.samples
        if not s.name.endswith("_created")
    }


def _pair() -> tuple[CollectorRegistry, Histogram, CollectorRegistry, Histogram]:
    one, many = CollectorRegistry(), CollectorRegistry()
    return (
        one,
        Histogram("h", "h", buckets=BOUNDS, registry=one),
        many,
        Histogram("h", "h", buckets=BOUNDS, registry=many),
    )


@pytest.mark.parametrize(
    "values",
    [
        [],
        [0.5],
        list(BOUNDS),  # exactly on each upper bound: that bucket, as observe puts them
        [0.0, 1e-9, 0.0999999, 0.1000001, 0.95, 0.990001, 1.0, 1.5, -0.2],
        [random.Random(7).random() for _ in range(1_000)],
    ],
)
def test_the_same_as_one_observe_each(values: list[float]) -> None:
    one, single, many, batched = _pair()
    for v in values:
        single.observe(v)
    observe_all(batched, values)
    assert _samples(many) == pytest.approx(_samples(one))
    assert _samples(many)[("h_count", ())] == len(values)


def test_a_labelled_histogram_is_refused_without_its_labels() -> None:
    h = Histogram("l", "l", ["tier"], registry=CollectorRegistry())
    with pytest.raises(ValueError, match="missing label values"):
        observe_all(h, [0.5])
    observe_all(h.labels(tier="x"), [0.5])
