"""Result assembly and the specialist/policy split, without a broker."""

from pathlib import Path

import numpy as np
import pytest

from cascade.workers import specialist
from cascade.workers.data import read_labelled_csv
from cascade.workers.errors import LLMError
from cascade.workers.items import Escalation, Item, ItemError, ItemResult, Tier
from cascade.workers.jobs import JobSpec, OnLLMError
from cascade.workers.llm import LLMAnswer, estimate_tokens
from cascade.workers.pipeline import llm_failure, llm_result, split_chunk
from tests.conftest import dataset


def spec(model: specialist.Specialist, threshold: float, top_k: int = 1) -> JobSpec:
    return JobSpec(model_path="m", model_sha256=model.sha256, threshold=threshold, top_k=top_k, llm_model="x")


ESC = Escalation(
    custom_id="c1", line=4, text="t", gold="b", specialist_label="a", specialist_confidence=0.4, candidates=["a", "b"]
)


def test_split_escalates_exactly_the_items_below_threshold(sms_model: Path) -> None:
    model = specialist.load(sms_model)
    test = read_labelled_csv(dataset("sms_spam") / "test.csv")
    items = [
        Item(custom_id=f"i{n}", text=t, line=n + 1, label=g)
        for n, (t, g) in enumerate(zip(test.texts[:400], test.labels[:400], strict=True))
    ]
    confidences = model.predict_proba([i.text for i in items]).max(axis=1)
    threshold = float(np.median(np.unique(confidences)))
    expected = {i.custom_id for i, c in zip(items, confidences, strict=True) if c < threshold}
    assert 0 < len(expected) < len(items)

    accepted, escalated = split_chunk(items, model, spec(model, threshold, top_k=0))

    assert {e.custom_id for e in escalated} == expected
    assert {r.custom_id for r in accepted} == {i.custom_id for i in items} - expected
    assert all(sorted(e.candidates) == ["ham", "spam"] for e in escalated)
    assert all(r.tier is Tier.SPECIALIST and r.correct == (r.label == r.gold) for r in accepted)


def test_llm_result_keeps_both_tiers_answers() -> None:
    result = llm_result(ESC, LLMAnswer(label="b", confidence=0.8, prompt_tokens=10, completion_tokens=2))
    assert (result.label, result.tier, result.llm_label, result.specialist_label) == ("b", Tier.LLM, "b", "a")
    assert result.correct is True
    assert result.candidates == ["a", "b"]


@pytest.mark.parametrize("policy", list(OnLLMError))
def test_llm_failure_follows_the_job_policy(policy: OnLLMError) -> None:
    record = llm_failure(ESC, LLMError("down"), policy)
    if policy is OnLLMError.KEEP:
        assert isinstance(record, ItemResult)
        assert (record.label, record.tier, record.llm_error, record.correct) == ("a", Tier.SPECIALIST, "down", False)
    else:
        assert isinstance(record, ItemError)
        assert (record.custom_id, record.line, record.code) == ("c1", 4, "llm_error")


def test_policy_routes_explore_and_abstain_and_budget_keeps_the_least_confident(sms_model: Path) -> None:
    from cascade.workers.items import Route
    from cascade.workers.policy import Band, Policy

    model = specialist.load(sms_model)
    test = read_labelled_csv(dataset("sms_spam") / "test.csv")
    items = [
        Item(custom_id=f"i{n}", text=t, line=n + 1, label=g)
        for n, (t, g) in enumerate(zip(test.texts[:500], test.labels[:500], strict=True))
    ]
    policy = Policy(
        version="v-test",
        created_at=0,
        target_accuracy=0.9,
        delta=0.05,
        reachable=True,
        message="",
        edges=[0.0, 0.6, 0.9, 1.0],
        escalate={"*": [1]},
        abstain=[0],
        explore_rate=0.2,
        bands=[Band(lo=0, hi=1, n=1, specialist_accuracy=1, n_llm=1, llm_accuracy=1)],
        certificate=None,
        specialist_sha256=model.sha256,
        llm_model="x",
        calibration_sha256="c",
        calibration_items=1,
        mean_llm_tokens=10,
        gains={"*|1": 0.2},
    )
    spec = JobSpec(model_path="m", model_sha256=model.sha256, threshold=0.5, top_k=0, llm_model="x", policy=policy)
    confidences = model.predict_proba([i.text for i in items]).max(axis=1)
    by_id = dict(zip((i.custom_id for i in items), confidences, strict=True))
    accepted, escalated = split_chunk(items, model, spec)

    routes = {r.custom_id: r.route for r in accepted} | {e.custom_id: e.route for e in escalated}
    for cid, conf in by_id.items():
        band = policy.band(conf)
        if band == 0:
            assert routes[cid] is Route.ABSTAIN
        elif band == 1:
            assert routes[cid] is Route.ESCALATE
        else:
            assert routes[cid] in {Route.ACCEPT, Route.EXPLORE}
    explored = [e for e in escalated if e.route is Route.EXPLORE]
    assert explored
    assert all(e.sampling_probability == 0.2 for e in explored)
    assert 0.1 < len(explored) / sum(policy.band(c) == 2 for c in by_id.values()) < 0.3
    abstained = [r for r in accepted if r.route is Route.ABSTAIN]
    assert all(r.tier is Tier.ABSTAIN for r in abstained)
    # an explored item's LLM answer never replaces the specialist's
    result = llm_result(explored[0], LLMAnswer(label="other", confidence=0.9, prompt_tokens=5, completion_tokens=1))
    assert (result.label, result.tier, result.llm_label) == (explored[0].specialist_label, Tier.SPECIALIST, "other")

    # a budget of 2% of the chunk keeps the escalations the rule wanted with the largest gain per cost
    plain = JobSpec(
        model_path="m",
        model_sha256=model.sha256,
        threshold=1.0,
        top_k=2,
        llm_model="x",
        max_escalation=0.02,
        usd_per_llm_token=1e-7,
    )
    accepted, escalated = split_chunk(items, model, plain)
    assert len(escalated) == 10
    limited = [r for r in accepted if r.budget_limited]
    assert len(limited) == 490
    text = {i.custom_id: i.text for i in items}

    def per_cost(cid: str, conf: float) -> float:
        return (1 - conf) / estimate_tokens(text[cid], 2)

    kept_worst = min(per_cost(e.custom_id, e.specialist_confidence) for e in escalated)
    assert kept_worst >= max(per_cost(r.custom_id, r.specialist_confidence) for r in limited)
