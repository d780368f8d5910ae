"""The answer cache's key (what counts as the same question) and its in-memory fake's contract."""

import pytest

from cascade.workers.answers import AnswerCache, CachedAnswer, answer_key, normalise
from cascade.workers.items import Message, Role
from cascade.workers.llm import PROMPT_VERSION, LLMAnswer
from cascade.workers.memory import MemoryAnswerCache
from tests.workers.answer_cache_contract import AnswerCacheContract


class TestMemoryAnswerCache(AnswerCacheContract):
    @pytest.fixture
    def cache(self) -> AnswerCache:
        return MemoryAnswerCache()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("  Hello \t World\n", "hello world"),
        ("\uff28\uff25\uff2c\uff2c\uff2f\u3000\uff57\uff4f\uff52\uff4c\uff44", "hello world"),  # fullwidth, NFKC
        ("Straße", "strasse"),  # case folding, not lower()
        ("ﬁle №5", "file no5"),  # compatibility ligature and sign (NFKC)
        ("a\u00a0\u2003b", "a b"),  # no-break and em spaces are whitespace
        ("", ""),
    ],
)
def test_normalise(text: str, expected: str) -> None:
    assert normalise(text) == expected
    assert normalise(expected) == expected  # idempotent


def key(
    text: str = "Hello world", candidates: tuple[str, ...] = ("a", "b"), model: str = "m", version: str = "p1"
) -> str:
    return answer_key(model, version, candidates, text)


def test_the_same_question_has_one_key_whatever_its_spacing_case_or_candidate_order() -> None:
    assert len(key()) == 64
    assert int(key(), 16) >= 0
    assert key() == key("  HELLO\tworld ") == key(candidates=("b", "a")) == key(candidates=("a", "b", "a"))


@pytest.mark.parametrize(
    "other",
    [
        {"model": "m2"},
        {"version": "p2"},
        {"candidates": ("a", "c")},
        {"candidates": ("a", "b", "c")},
        {"candidates": ("a",)},
        {"text": "Hello world!"},
    ],
    ids=["another-model", "another-prompt-version", "another-candidate", "more-candidates", "fewer", "another-text"],
)
def test_another_model_prompt_candidate_set_or_text_is_another_key(other: dict[str, str]) -> None:
    assert key(**other) != key()  # type: ignore[arg-type]


def test_fields_cannot_run_into_each_other() -> None:
    assert answer_key("ab", "c", ["x"], "t") != answer_key("a", "bc", ["x"], "t")
    assert answer_key("m", "p", ["a,b"], "t") != answer_key("m", "p", ["a", "b"], "t")
    assert answer_key("m", "p", ["a"], "b t") != answer_key("m", "p", ["a b"], "t")


def test_a_cached_answer_keeps_what_the_record_keeps() -> None:
    answer = CachedAnswer.of(LLMAnswer("b", float("nan"), 12, 3), "m", PROMPT_VERSION)
    assert answer.confidence == 0.0  # as llm_result records a missing confidence: JSON has no NaN
    assert CachedAnswer.model_validate_json(answer.model_dump_json()) == answer
    assert answer.answer() == LLMAnswer("b", 0.0, 12, 3)


def test_the_cost_model_prices_a_cached_answer_like_the_bought_ones_not_as_free() -> None:
    """A job pays nothing for an answer from the cache, but ``cascade evaluate`` and ``calibrate`` measure what
    escalating costs: a cached answer's tokens are unknown (NaN), not 0."""
    import numpy as np

    from cascade.workers.evaluation import CostModel, calibration_data, point
    from cascade.workers.items import AnswerSource, ItemResult, Route, Tier

    def result(n: int, source: AnswerSource) -> ItemResult:
        bought = source is AnswerSource.LLM
        return ItemResult(
            custom_id=f"c{n}",
            line=n + 1,
            label="b",
            confidence=0.9,
            tier=Tier.LLM,
            route=Route.ESCALATE,
            specialist_label="a",
            specialist_confidence=0.3,
            candidates=["a", "b"],
            llm_label="b",
            llm_source=source,
            llm_prompt_tokens=90 if bought else None,
            llm_completion_tokens=10 if bought else None,
            gold="b",
            correct=True,
        )

    data = calibration_data(
        [result(0, AnswerSource.LLM), result(1, AnswerSource.LLM)] + [result(n, AnswerSource.CACHE) for n in (2, 3)]
    )
    assert np.isnan(data.llm_tokens[2:]).all()
    everything = point("llm", data, np.ones(4, dtype=bool), CostModel(1e-6, 0.0, 0.0))
    assert everything.llm_tokens == 100 * 1000  # 100 tokens a request, every item escalated
    assert everything.cost_per_1000 == pytest.approx(0.1)


def test_a_lines_own_messages_are_part_of_the_key_and_no_messages_keep_the_old_key() -> None:
    helpful = [Message(role=Role.SYSTEM, content="You are a helpful assistant.")]
    unhelpful = [Message(role=Role.SYSTEM, content="You are an unhelpful assistant.")]
    as_user = [Message(role=Role.USER, content="You are a helpful assistant.")]
    plain = answer_key("m", "p1", ["a", "b"], "Hello world")
    assert answer_key("m", "p1", ["a", "b"], "Hello world", []) == answer_key(
        "m", "p1", ["a", "b"], "Hello world", None
    )
    assert answer_key("m", "p1", ["a", "b"], "Hello world", None) == plain  # the key of a line without context
    keys = {plain, *(answer_key("m", "p1", ["a", "b"], "Hello world", c) for c in (helpful, unhelpful, as_user))}
    assert len(keys) == 4
