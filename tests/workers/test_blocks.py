"""A chunk's specialist answers as columns: its part file reads back as its records, its groups count them."""

import json
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from cascade.workers import specialist
from cascade.workers.blocks import SpecialistAnswers, grouped, specialist_result
from cascade.workers.columns import ItemColumns
from cascade.workers.data import read_labelled_csv
from cascade.workers.items import Item, ItemResult, Route, Tier
from cascade.workers.jobs import JobSpec
from cascade.workers.pipeline import split_chunk
from tests.conftest import dataset

ANSWERS = SpecialistAnswers(
    custom_id=["plain", 'quote " and \\ backslash', "ünïcödé ☃", "tab\there", "x" * 300, "last"],
    line=[1, 3, 4, 8, 9, 12],
    gold=[None, "spam", "ham", None, "spam", "ham"],
    label=["ham", "spam", "spam", "spam", "ham", 'we"ird'],
    confidence=[0.5, 1.0, 1e-05, 0.3333333333333333, 0.9999999999999999, 0.75],
    route=[Route.ACCEPT, Route.ACCEPT, Route.ABSTAIN, Route.ACCEPT, Route.ACCEPT, Route.ABSTAIN],
    budget_limited=[False, True, False, False, True, False],
)


UNLABELLED = replace(ANSWERS, gold=[None] * len(ANSWERS), budget_limited=[False] * len(ANSWERS))


@pytest.mark.parametrize("answers", [ANSWERS, UNLABELLED])
def test_the_part_file_reads_back_as_the_records(answers: SpecialistAnswers) -> None:
    records = list(answers)
    assert [ItemResult.model_validate_json(line) for line in answers.jsonl().splitlines()] == records
    assert records[2].tier is Tier.ABSTAIN
    assert records[1].budget_limited is (answers is ANSWERS)
    assert records[4].correct is (False if answers is ANSWERS else None)
    # Fields at their defaults are left out, as the part files of records one by one leave them out.
    for line, record in zip(answers.jsonl().splitlines(), records, strict=True):
        assert set(json.loads(line)) == set(record.model_dump(exclude_defaults=True))


def test_a_record_is_the_specialists_answer_of_its_columns() -> None:
    assert ANSWERS[1] == specialist_result(
        'quote " and \\ backslash', 3, "spam", "spam", 1.0, Route.ACCEPT, budget_limited=True
    )
    assert list(ANSWERS[2:4]) == list(ANSWERS)[2:4]


def test_groups_count_every_record_once_with_records_that_count_alike() -> None:
    groups = list(grouped(ANSWERS))
    assert sum(n for _, n in groups) == len(ANSWERS)

    def kind(r: ItemResult) -> tuple[object, ...]:
        return r.tier, r.route, r.budget_limited, r.correct, r.specialist_label == r.gold

    assert Counter({kind(r): n for r, n in groups}) == Counter(kind(r) for r in ANSWERS)
    assert list(grouped(list(ANSWERS))) == [(r, 1) for r in ANSWERS]  # a plain list: every record alone


def test_a_chunk_without_escalations_comes_as_columns(sms_model: Path) -> None:
    model = specialist.load(sms_model)
    test = read_labelled_csv(dataset("sms_spam") / "test.csv")
    items = [
        Item(custom_id=f"i{n}", text=t, line=2 * n + 1, label=g)
        for n, (t, g) in enumerate(zip(test.texts[:300], test.labels[:300], strict=True))
    ]
    spec = JobSpec(model_path="m", model_sha256=model.sha256, threshold=0.0, top_k=1, llm_model="x")
    accepted, escalated = split_chunk(ItemColumns.of(items), model, spec)
    assert escalated == []
    assert isinstance(accepted, SpecialistAnswers)
    proba = model.predict_proba([i.text for i in items])
    expected = [
        specialist_result(i.custom_id, i.line, i.label, model.labels[int(p.argmax())], float(p.max()))
        for i, p in zip(items, proba, strict=True)
    ]
    assert list(accepted) == expected
