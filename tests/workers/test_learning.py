"""Learning from the LLM (``cascade.workers.learning``): which answers are learned from, that their weight reaches
both pipelines, the lineage in the manifest, and McNemar's test against a hand count.

Small Banking77 subsets (Casanueva et al., 2020, CC BY 4.0): 6 intents, 30 training items each.
"""

import csv
import json
from collections import defaultdict
from functools import cache
from pathlib import Path

import numpy as np
import pytest

from cascade.workers import embedding, specialist
from cascade.workers.embedding import Encoder
from cascade.workers.errors import InputError
from cascade.workers.items import AnswerSource, ItemResult, Route, Tier
from cascade.workers.learning import (
    learned_data_sha256,
    lineage,
    llm_labels,
    mcnemar,
    train_with_llm_labels,
)
from cascade.workers.manifest import MANIFEST_FILE, read_manifest
from tests.conftest import dataset

N_LABELS, PER_LABEL = 6, 30


@cache
def by_label(split: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = defaultdict(list)
    with (dataset("banking77") / f"{split}.csv").open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            found[row["label"]].append(row["text"])
    return dict(found)


def intents() -> list[str]:
    return sorted(by_label("train"))[:N_LABELS]


def gold(per_label: int = PER_LABEL) -> tuple[list[str], list[str]]:
    pairs = [(t, lab) for lab in intents() for t in by_label("train")[lab][:per_label]]
    return [t for t, _ in pairs], [lab for _, lab in pairs]


def predicted(report: specialist.TrainReport, texts: list[str], encoder: Encoder | None = None) -> np.ndarray:
    features = texts if encoder is None else encoder.encode(texts)
    return np.asarray(report.labels)[report.pipeline.predict_proba(features).argmax(axis=1)]


def result(cid: str, llm_label: str | None, source: AnswerSource | None, route: Route = Route.ESCALATE) -> ItemResult:
    return ItemResult(
        custom_id=cid,
        line=1,
        label=llm_label or "a",
        confidence=0.9,
        tier=Tier.LLM if route is Route.ESCALATE else Tier.SPECIALIST,
        route=route,
        specialist_label="a",
        specialist_confidence=0.4,
        llm_label=llm_label,
        llm_source=source,
    )


def test_llm_labels_are_the_llm_s_and_the_cache_s_answers_never_the_memory_s() -> None:
    results = [
        result("asked", "b", AnswerSource.LLM),
        result("cached", "c", AnswerSource.CACHE),
        result("explored", "d", AnswerSource.LLM, route=Route.EXPLORE),
        result("remembered", "e", AnswerSource.MEMORY),
        result("failed", None, None),
        result("accepted", None, None, route=Route.ACCEPT),
    ]
    assert llm_labels(results) == [("asked", "b"), ("cached", "c"), ("explored", "d")]


def test_llm_labels_change_the_predictions_on_their_texts_in_proportion_to_their_weight() -> None:
    texts, labels = gold()
    first, second = intents()[:2]
    wrong = by_label("test")[first][:30]  # the first intent's texts, labelled with the second by the "LLM"
    parent = specialist.train(texts, labels)
    assert np.mean(predicted(parent, wrong) == first) > 0.8
    learned = train_with_llm_labels(texts, labels, wrong, [second] * len(wrong), weight=1.0)
    assert learned.used == len(wrong)
    assert np.mean(predicted(learned.report, wrong) == second) > 0.8
    # the weight reaches the classifier: weighed at 1% they barely count
    light = train_with_llm_labels(texts, labels, wrong, [second] * len(wrong), weight=0.01)
    assert np.mean(predicted(light.report, wrong) == second) < 0.2
    # held out on gold items only: the LLM items are in n_train, never in n_holdout
    assert learned.report.n_holdout == parent.n_holdout
    assert learned.report.n_train == parent.n_train + len(wrong)


@pytest.mark.skipif(not embedding.extra_installed(), reason="needs the embeddings extra")
def test_the_weight_reaches_the_minilm_head_too() -> None:
    encoder = Encoder.open()
    texts, labels = gold()
    first, second = intents()[:2]
    wrong = by_label("test")[first][:30]
    heavy = train_with_llm_labels(texts, labels, wrong, [second] * len(wrong), weight=3.0, encoder=encoder)
    light = train_with_llm_labels(texts, labels, wrong, [second] * len(wrong), weight=0.01, encoder=encoder)
    assert np.mean(predicted(heavy.report, wrong, encoder) == second) > 0.8
    assert np.mean(predicted(light.report, wrong, encoder) == second) < 0.2


def test_unknown_labels_gold_texts_and_repeats_are_dropped_and_counted() -> None:
    texts, labels = gold()
    new = by_label("test")[intents()[0]][:3]
    learned = train_with_llm_labels(
        texts,
        labels,
        [new[0], new[1], f"  {new[1]} ", texts[0], new[2]],
        [labels[0], labels[0], labels[1], labels[5], "not_an_intent"],
    )
    assert (learned.used, learned.unknown_label, learned.gold_duplicate, learned.repeated) == (2, 1, 1, 1)
    assert learned.texts == new[:2]
    assert learned.dropped == 3
    with pytest.raises(InputError, match="must be above 0"):
        train_with_llm_labels(texts, labels, new, [labels[0]] * 3, weight=0.0)


def test_lineage_round_trips_through_the_manifest_and_old_manifests_still_load(tmp_path: Path) -> None:
    texts, labels = gold(per_label=8)
    root = specialist.save(specialist.train(texts, labels), tmp_path / "root", "d" * 64)
    root_manifest = read_manifest(root)
    assert root_manifest.lineage is None
    assert root_manifest.line == [root_manifest.identity]
    extra = by_label("test")[intents()[0]][:2]
    learned = train_with_llm_labels(texts, labels, extra, [labels[0]] * 2)
    digest = learned_data_sha256("d" * 64, learned.texts, learned.labels, 1.0)
    child = specialist.save(
        learned.report, tmp_path / "child", digest, lineage(root_manifest, ["batch_1"], learned.used, 1.0)
    )
    manifest = read_manifest(child)
    assert manifest.lineage is not None
    assert manifest.lineage.parent == root_manifest.identity
    assert manifest.lineage.ancestors == [root_manifest.identity]
    assert (manifest.lineage.jobs, manifest.lineage.llm_labels, manifest.lineage.llm_weight) == (["batch_1"], 2, 1.0)
    assert manifest.lineage.data_sha256 == "d" * 64 == manifest.original_data_sha256
    assert manifest.data_sha256 == digest != "d" * 64
    assert specialist.load(child).manifest == manifest
    grandchild = lineage(manifest, ["batch_2"], 1, 0.5)
    assert grandchild.ancestors == [root_manifest.identity, manifest.identity]
    assert grandchild.data_sha256 == "d" * 64
    # a manifest written before lineages existed
    raw = json.loads((root / MANIFEST_FILE).read_text())
    del raw["lineage"]
    (root / MANIFEST_FILE).write_text(json.dumps(raw))
    assert read_manifest(root).lineage is None


def test_mcnemar_counts_the_discordant_pairs_and_gives_the_exact_binomial_p_values() -> None:
    current = [1, 1, 1, 0, 0, 1, 0, 1]
    candidate = [1, 0, 0, 1, 0, 0, 0, 1]
    # by hand: b (current right, candidate wrong) at 1, 2, 5; c (the reverse) at 3. Under H0 X ~ Binomial(4, 1/2):
    # P(X >= 3) = (4 + 1) / 16; two-sided, twice that.
    test = mcnemar(np.asarray(current, dtype=bool), np.asarray(candidate, dtype=bool))
    assert (test.n, test.b, test.c) == (8, 3, 1)
    assert (test.current_accuracy, test.candidate_accuracy) == (5 / 8, 3 / 8)
    assert test.p_worse == pytest.approx(5 / 16)
    assert test.p_value == pytest.approx(10 / 16)
    assert not test.refuses(0.05)  # lower, but not significantly: "not worse by a paired test" promotes it
    assert test.refuses(0.5)


def test_the_gate_refuses_only_a_candidate_significantly_worse() -> None:
    right = [True] * 20
    worse = mcnemar(right, [False] * 10 + [True] * 10)  # b = 10, c = 0: P(X >= 10) = 2^-10
    assert (worse.b, worse.c) == (10, 0)
    assert worse.p_worse == pytest.approx(2**-10)
    assert worse.p_value == pytest.approx(2 * 2**-10)
    assert worse.refuses(0.05)
    better = mcnemar([False] * 10 + [True] * 10, right)
    assert (better.b, better.c, better.p_worse) == (0, 10, 1.0)
    assert not better.refuses(0.05)
    same = mcnemar(right, right)
    assert (same.b, same.c, same.p_value, same.p_worse) == (0, 0, 1.0, 1.0)
    assert not same.refuses(0.05)
    with pytest.raises(InputError, match="same"):
        mcnemar(right, right[:-1])
