"""The answer memory in a chunk's path: an escalated item whose remembered neighbours agree takes their answer
(``llm_source`` memory, no LLM call, no budget), the others go to the LLM carrying their embeddings.

A real ``minilm`` specialist (20 Banking77 intents x 8 items); skipped without the embeddings extra."""

from pathlib import Path

import numpy as np
import pytest

from cascade.workers import embedding, specialist
from cascade.workers.items import AnswerSource, Item, Route, Tier
from cascade.workers.jobs import JobSpec
from cascade.workers.pipeline import split_chunk
from cascade.workers.recall import AnswerMemory, Remembered, pack, unpack
from tests.workers.test_embedding import banking_subset

pytestmark = pytest.mark.skipif(not embedding.extra_installed(), reason="needs the embeddings extra")


@pytest.fixture(scope="module")
def minilm(tmp_path_factory: pytest.TempPathFactory) -> specialist.Specialist:
    texts, labels = banking_subset("train", 8)
    encoder = embedding.Encoder.open()
    folder = tmp_path_factory.mktemp("minilm")
    specialist.save(specialist.train(texts, labels, encoder=encoder), folder, "test")
    return specialist.load(folder)


def items() -> list[Item]:
    texts, labels = banking_subset("test", 2)
    pairs = enumerate(zip(texts, labels, strict=True))
    return [Item(custom_id=f"t{i}", text=t, line=i + 1, label=lab) for i, (t, lab) in pairs]


def job(model: specialist.Specialist, **extra: object) -> JobSpec:
    return JobSpec(
        model_path="m",
        model_sha256=model.sha256,
        threshold=1.0,
        top_k=0,
        llm_model="x",
        **extra,  # type: ignore[arg-type]
    )


def remembered(model: specialist.Specialist, chunk: list[Item], answers: list[str]) -> AnswerMemory:
    vectors = model.embed([i.text for i in chunk])
    assert vectors is not None
    memory = AnswerMemory(vectors.shape[1], 1000)
    memory.extend([Remembered(a, pack(v)) for a, v in zip(answers, vectors, strict=True)])
    return memory


def test_remembered_texts_are_answered_from_memory_and_the_rest_escalate_with_their_vectors(
    minilm: specialist.Specialist,
) -> None:
    chunk = items()
    known = chunk[: len(chunk) // 2]
    memory = remembered(minilm, known, [i.label or "" for i in known])
    spec = job(minilm, memory_similarity=0.98, memory_k=1)
    accepted, escalated = split_chunk(chunk, minilm, spec, memory=memory)
    from_memory = {r.custom_id: r for r in accepted if r.llm_source is AnswerSource.MEMORY}
    assert set(from_memory) == {i.custom_id for i in known}
    for r in from_memory.values():
        assert r.tier is Tier.LLM
        assert r.route is Route.ESCALATE
        assert r.llm_label == r.label == r.gold
        assert r.llm_tokens == 0
        assert r.confidence >= 0.98
    assert {e.custom_id for e in escalated} == {i.custom_id for i in chunk[len(known) :]}
    dimension = minilm.manifest.encoder.dimension if minilm.manifest.encoder else 0
    assert all(e.vector is not None and unpack(e.vector, dimension) is not None for e in escalated)


def test_without_a_rule_or_with_disagreeing_neighbours_nothing_comes_from_memory(minilm: specialist.Specialist) -> None:
    chunk = items()
    memory = remembered(minilm, chunk, [i.label or "" for i in chunk])
    accepted, escalated = split_chunk(chunk, minilm, job(minilm), memory=memory)  # the job set no similarity
    assert not accepted
    assert len(escalated) == len(chunk)
    # every text remembered twice, with two different answers: k=2 neighbours never agree
    twice = remembered(minilm, chunk + chunk, [i.label or "" for i in chunk] + ["other"] * len(chunk))
    accepted, _ = split_chunk(chunk, minilm, job(minilm, memory_similarity=0.5, memory_k=2), memory=twice)
    assert not accepted


def test_a_remembered_answer_outside_the_items_candidates_is_not_used(minilm: specialist.Specialist) -> None:
    chunk = items()
    proba = minilm.predict_proba([i.text for i in chunk])
    top = [minilm.labels[int(np.argmax(row))] for row in proba]
    wrong = [next(lab for lab in minilm.labels if lab != t) for t in top]  # never the specialist's top label
    memory = remembered(minilm, chunk, wrong)
    spec = job(minilm, memory_similarity=0.9, memory_k=1).model_copy(update={"top_k": 1})
    accepted, escalated = split_chunk(chunk, minilm, spec, memory=memory)
    assert not accepted
    assert len(escalated) == len(chunk)


def test_memory_answers_cost_no_budget(minilm: specialist.Specialist, tmp_path: Path) -> None:
    chunk = items()
    memory = remembered(minilm, chunk, [i.label or "" for i in chunk])
    spec = job(minilm, memory_similarity=0.98, memory_k=1, max_escalation=0.0)
    accepted, escalated = split_chunk(chunk, minilm, spec, memory=memory)
    assert not escalated
    assert all(r.llm_source is AnswerSource.MEMORY and not r.budget_limited for r in accepted)
