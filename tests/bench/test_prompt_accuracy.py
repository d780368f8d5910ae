"""The prompt-accuracy benchmark's pure parts: its descriptions file, the retrieval of examples, the items it picks
and the paired comparison it reports (no vLLM)."""

import json

import numpy as np
import pytest
from scipy.stats import binomtest

from bench.prompt_accuracy import (
    LLM_NOTE,
    PROMPT_FILE,
    VARIANTS,
    Item,
    Pool,
    Report,
    gold_rank,
    least_confident,
    markdown,
    rank_counts,
    variant_prompt,
    variant_row,
)
from cascade.workers.errors import LLMError
from cascade.workers.llm import LLMAnswer
from cascade.workers.prompts import load_prompt, render
from tests.conftest import dataset


def test_the_descriptions_file_describes_exactly_the_77_banking_intents_with_no_examples() -> None:
    prompt = load_prompt(PROMPT_FILE)
    labels = json.loads((dataset("banking77") / "labels.json").read_text())
    assert sorted(prompt.labels) == sorted(labels)
    assert len(prompt.labels) == 77
    assert all(p.description and "\n" not in p.description and not p.examples for p in prompt.labels.values())
    assert len({p.description for p in prompt.labels.values()}) == 77
    user = render("where is my card?", ["card_arrival", "card_delivery_estimate"], prompt)[-1]["content"]
    assert f"- card_arrival: {prompt.labels['card_arrival'].description}" in user


def test_retrieval_gives_each_candidate_its_own_nearest_training_items_in_candidate_order() -> None:
    vectors = np.array([[1, 0], [0.8, 0.6], [0, 1], [0.6, 0.8], [0.99, 0.14], [1, 0]], dtype=np.float32)
    pool = Pool(vectors, ["x1", "x2", "y1", "y2", "y3", "The  query"], ["x", "x", "y", "y", "y", "y"])
    found = pool.nearest(np.array([1, 0], dtype=np.float32), "the query", ["y", "x", "z"], per_label=2)
    assert found == [("y3", "y"), ("y2", "y"), ("x1", "x"), ("x2", "x")]  # the query's own text is skipped


def test_each_variant_renders_what_render_would_with_the_descriptions_and_the_retrieved_examples() -> None:
    descriptions = load_prompt(PROMPT_FILE)
    examples = [  # in candidate order, as Pool.nearest gives them
        ("how long does shipping take", "card_delivery_estimate"),
        ("where's the card I ordered", "card_arrival"),
    ]
    item = Item(0, "my card?", "card_arrival", ["card_delivery_estimate", "card_arrival"], 2, 0.3, examples)
    expected = {
        "a": render(item.text, item.candidates),
        "b": render(item.text, item.candidates, descriptions),
        "c": render(item.text, item.candidates, examples=examples),
        "d": render(item.text, item.candidates, descriptions, examples=examples),
    }
    for variant in VARIANTS:
        assert render(item.text, item.candidates, variant_prompt(variant, descriptions, item)) == expected[variant.key]
    assert "- where's the card I ordered => card_arrival" in expected["c"][-1]["content"]
    assert descriptions.labels["card_arrival"].examples == []  # the file's prompt is left as it was


def test_the_least_confident_items_and_the_gold_ranks() -> None:
    proba = np.array([[0.9, 0.05, 0.05], [0.4, 0.35, 0.25], [0.2, 0.5, 0.3], [0.6, 0.3, 0.1]])
    assert least_confident(proba, 2) == [1, 2]
    labels = ["a", "b", "c"]
    assert [gold_rank(proba[2], labels, g) for g in "bca"] == [1, 2, 3]
    assert rank_counts([1, 2, 3, 1, 7], top_k=2) == {"1": 2, "2": 1, ">2": 2}


def answer(label: str, tokens: int = 100) -> LLMAnswer:
    return LLMAnswer(label=label, confidence=0.5, prompt_tokens=tokens, completion_tokens=3)


def test_a_variant_is_compared_with_labels_only_on_the_same_items_by_mcnemars_exact_test() -> None:
    gold = ["g"] * 20
    base = [answer("g") if i < 8 else answer("w") for i in range(20)]
    first = ["g"] * 5 + ["w"] * 15
    a = variant_row(VARIANTS[0], gold, first, base, None, 1.0)
    assert (a.correct, a.p_value) == (8, None)
    a_ok = [i < 8 for i in range(20)]
    # b: right on items 2..13 (12), wrong on 0, 1 where a was right; one request failed
    ours: list[LLMAnswer | LLMError] = [answer("g", 300) if 2 <= i < 14 else answer("w", 300) for i in range(20)]
    ours[19] = LLMError("timeout", kind="timeout")
    row = variant_row(VARIANTS[1], gold, first, ours, a_ok, 2.0, specialist_ok=[i < 5 for i in range(20)])
    assert (row.correct, row.errors, row.b, row.c) == (12, 1, 2, 6)
    assert row.first_candidate == pytest.approx(0.4)  # items 2..4 answer g, 14..18 w; 19 failed
    assert row.p_vs_specialist == pytest.approx(binomtest(2, 11, 0.5).pvalue)  # 0, 1 against 5..13
    assert row.accuracy == pytest.approx(0.6)
    assert row.mean_prompt_tokens == 300
    assert row.p_value == pytest.approx(binomtest(2, 8, 0.5).pvalue)


def test_the_report_says_the_answers_are_live_smollm2_and_shows_each_variant() -> None:
    first = ["g", "w"]
    a = variant_row(VARIANTS[0], ["g", "g"], first, [answer("g"), answer("w")], None, 1.0)
    b = variant_row(VARIANTS[1], ["g", "g"], first, [answer("g", 200), answer("g", 200)], [True, False], 1.0)
    report = Report(
        llm_model="SmolLM2-135M-Instruct",
        llm_url="http://127.0.0.1:8000/v1",
        items=2,
        top_k=5,
        per_class=20,
        neighbours=3,
        seed=0,
        train_items=1540,
        specialist_holdout_accuracy=0.8,
        specialist_test_accuracy=0.82,
        max_confidence=0.3,
        specialist_accuracy=0.5,
        gold_in_candidates=1.0,
        gold_ranks={"1": 1, "2": 1, "3": 0, "4": 0, "5": 0, ">5": 0},
        variants=[a, b],
        seconds=3.0,
        records=[],
    )
    text = markdown(report)
    assert LLM_NOTE in text
    assert "NOT recorded answers" in text
    assert "| a: labels only | 0.500 | 1/2 | 0.500 | 0 | 1.000 | 100 | - | - | - | - | 1 |" in text
    assert "| b: labels + descriptions | 1.000 | 2/2 | 1.000 | 0 | 0.500 | 200 | 0 | 1 | 1 | - | 1 |" in text
    assert "| specialist alone (its top label) | 0.500 | 1/2 |" in text
