"""A chunk's final specialist answers as columns: the records of a chunk nothing from it reached the LLM for.

``SpecialistAnswers`` is a ``Sequence[ItemResult]`` (a record is built when it is asked for, by
``specialist_result``, the one definition of a specialist's answer) that the whole-chunk path writes, counts and
measures from its columns: its part file (``jsonl``), its counters and metrics (``groups``: the records that
count alike, with how many of each), without one ``ItemResult`` object per item. Read back, its part file gives
the very records the sequence holds (``tests/workers/test_blocks.py``).
"""

import json
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import overload

from cascade.workers.items import ItemResult, Route, Tier


def is_correct(label: str, gold: str | None) -> bool | None:
    return None if gold is None else label == gold


def specialist_result(
    custom_id: str,
    line: int,
    gold: str | None,
    label: str,
    confidence: float,
    route: Route = Route.ACCEPT,
    budget_limited: bool = False,
) -> ItemResult:
    """An item whose final answer is the specialist's (accepted, kept by the budget, or abstained on)."""
    return ItemResult(
        custom_id=custom_id,
        line=line,
        label=label,
        confidence=confidence,
        tier=Tier.ABSTAIN if route is Route.ABSTAIN else Tier.SPECIALIST,
        route=route,
        specialist_label=label,
        specialist_confidence=confidence,
        budget_limited=budget_limited,
        gold=gold,
        correct=is_correct(label, gold),
    )


_quote = json.encoder.encode_basestring_ascii  # the C encoder json.dumps uses


@dataclass(frozen=True)
class SpecialistAnswers(Sequence[ItemResult]):
    """Specialist answers as columns, in line order."""

    custom_id: list[str]
    line: list[int]
    gold: list[str | None]
    label: list[str]
    confidence: list[float]
    route: list[Route]
    """Accept or abstain: an item routed elsewhere is not a specialist's final answer."""
    budget_limited: list[bool]

    def __post_init__(self) -> None:
        n = len(self.custom_id)
        columns = (self.line, self.gold, self.label, self.confidence, self.route, self.budget_limited)
        if any(len(c) != n for c in columns):
            raise ValueError("the columns of a chunk's specialist answers differ in length")

    def __len__(self) -> int:
        return len(self.custom_id)

    @overload
    def __getitem__(self, index: int) -> ItemResult: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[ItemResult]: ...

    def __getitem__(self, index: int | slice) -> ItemResult | Sequence[ItemResult]:
        if isinstance(index, slice):
            return [self[i] for i in range(len(self))[index]]
        return specialist_result(
            self.custom_id[index],
            self.line[index],
            self.gold[index],
            self.label[index],
            self.confidence[index],
            self.route[index],
            self.budget_limited[index],
        )

    def __iter__(self) -> Iterator[ItemResult]:
        return (self[i] for i in range(len(self)))

    @cached_property
    def groups(self) -> list[tuple[ItemResult, int]]:
        """The records that count alike (same route, budget mark, and right, wrong or unlabelled), each as its
        first record and how many there are: what a job's counters and the metrics read of a chunk."""
        keys = zip(self.route, self.budget_limited, map(is_correct, self.label, self.gold), strict=True)
        first: dict[tuple[Route, bool, bool | None], int] = {}
        counts: Counter[tuple[Route, bool, bool | None]] = Counter()
        for n, key in enumerate(keys):
            first.setdefault(key, n)
            counts[key] += 1
        return [(self[first[key]], count) for key, count in counts.items()]

    def jsonl(self) -> bytes:
        """The part file of these records: what ``results._jsonl`` writes of them (fields at their defaults left
        out), written from the columns."""
        # What repeats is written once: each label's JSON, each route's tier and route.
        labels = {label: _quote(label) for label in set(self.label)}
        routes = {
            route: f'"tier":"{"abstain" if route is Route.ABSTAIN else "specialist"}","route":"{route.value}"'
            for route in set(self.route)
        }
        lines: list[str] = []
        add = lines.append
        if not any(self.budget_limited) and all(gold is None for gold in self.gold):  # the common chunk
            for custom_id, line, label, confidence, route in zip(
                self.custom_id, self.line, self.label, self.confidence, self.route, strict=True
            ):
                quoted, c = labels[label], repr(confidence)
                add(
                    f'{{"custom_id":{_quote(custom_id)},"line":{line},"label":{quoted},"confidence":{c},'
                    f'{routes[route]},"specialist_label":{quoted},"specialist_confidence":{c}}}\n'
                )
            return "".join(lines).encode()
        columns = (self.custom_id, self.line, self.gold, self.label, self.confidence, self.route, self.budget_limited)
        for custom_id, line, gold, label, confidence, route, limited in zip(*columns, strict=True):
            quoted, c = labels[label], repr(confidence)
            tail = ',"budget_limited":true' if limited else ""
            if gold is not None:
                tail += f',"gold":{_quote(gold)},"correct":{"true" if gold == label else "false"}'
            add(
                f'{{"custom_id":{_quote(custom_id)},"line":{line},"label":{quoted},"confidence":{c},'
                f'{routes[route]},"specialist_label":{quoted},"specialist_confidence":{c}{tail}}}\n'
            )
        return "".join(lines).encode()


def grouped(results: Sequence[ItemResult]) -> Iterable[tuple[ItemResult, int]]:
    """Records with how many records count like each: a columnar chunk's groups, else every record once."""
    if isinstance(results, SpecialistAnswers):
        return results.groups
    return ((r, 1) for r in results)
