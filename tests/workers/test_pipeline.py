"""Result assembly and the specialist/policy split, without a broker."""

from pathlib import Path

import numpy as np
import pytest

from broker.exceptions import LLMError
from broker.jobs import Item, ItemError, ItemResult, JobSpec, OnLLMError, Tier
from tests.conftest import dataset
from workers import specialist
from workers.data import read_labelled_csv
from workers.llm import LLMAnswer
from workers.pipeline import Escalation, llm_failure, llm_result, split_chunk


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
