"""A chunk committed whole adds the sum of its records' bumps: the rule applied per kind of record, the same sum as
applied to each record."""

import itertools
from collections import Counter

from cascade.broker.store import _bumps, _bumps_all
from cascade.workers.items import AnswerSource, ErrorCode, ItemError, ItemResult, Route, Tier


def _records() -> list[ItemResult | ItemError]:
    records: list[ItemResult | ItemError] = []
    kinds = itertools.product(
        [Tier.SPECIALIST, Tier.LLM, Tier.ABSTAIN],
        [Route.ACCEPT, Route.ESCALATE, Route.EXPLORE],
        [None, "a", "b"],  # gold
        [None, "timeout"],  # llm_error
        [(None, None), (30, 2), (11, 1)],  # tokens
        [None, AnswerSource.LLM, AnswerSource.CACHE],
    )
    for n, (tier, route, gold, error, (prompt, completion), source) in enumerate(kinds):
        records.append(
            ItemResult(
                custom_id=f"c{n}",
                line=n + 1,
                label="a",
                confidence=0.5,
                tier=tier,
                route=route,
                specialist_label="b" if n % 2 else "a",
                specialist_confidence=0.5,
                llm_error=error,
                llm_prompt_tokens=prompt,
                llm_completion_tokens=completion,
                llm_source=source,
                gold=gold,
                correct=None if gold is None else gold == "a",
            )
        )
        if n % 7 == 0:
            records.append(ItemError(line=n + 1, custom_id=f"e{n}", code=ErrorCode.LLM_ERROR, message="x"))
    return records * 3


def test_the_sum_per_kind_is_the_sum_per_record() -> None:
    records = _records()
    one_by_one: Counter[str] = Counter()
    for r in records:
        one_by_one.update(_bumps(r))
    assert _bumps_all(records) == one_by_one
    assert one_by_one["n_results"] + one_by_one["n_errors"] == len(records)
    for name in ("llm_tokens", "llm_requests", "llm_cache_hits", "llm_errors", "correct:llm", "labelled:abstain"):
        assert one_by_one[name] > 0, name
