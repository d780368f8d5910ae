"""Do label descriptions and retrieved examples make the LLM tier more accurate on the items it is sent? (issue #15)

    python -m bench.prompt_accuracy [--items 150] [--top-k 5] [--per-class 20] [--neighbours 3] [--seed 0]
        [--concurrency 8] [--prompt bench/data/banking77_prompt.json] [--out bench/results]

A ``minilm`` specialist is trained on ``--per-class`` items of each Banking77 intent (the train split, drawn with
``--seed``; a small seed makes it unsure often, as a real cascade's is). Of the 3,080 test items, the ``--items``
it is least confident about are the ones a cascade escalates; each is asked among the specialist's ``--top-k`` most
probable labels (Cascade's candidates), through the real ``LLMClient`` (vLLM's ``structured_outputs`` choice), in
four variants of the prompt (``workers/prompts.py`` renders each):

- ``a`` labels only: Cascade's default prompt;
- ``b`` descriptions: the prompt file's one-line description of each candidate (``bench/data/banking77_prompt.json``);
- ``c`` examples: for each candidate, the ``--neighbours`` items of that label from the specialist's training
  sample nearest to the text (cosine similarity of the MiniLM vectors): evidence for every candidate alike, where
  the k nearest items overall would mostly repeat the specialist's first choice;
- ``d`` descriptions + examples.

Per variant: accuracy on the escalated items, mean prompt tokens (vLLM's count), and McNemar's exact test against
``a`` on the same items; with the specialist's own accuracy on them and how often the gold label is among the
candidates (the ceiling of any variant). Written to ``OUT/prompt_accuracy.md`` and ``prompt_accuracy.json`` (per
item: test row, gold rank, candidates and answers; no texts).

The LLM is the one at ``CASCADE_LLM_URL`` / ``CASCADE_LLM_MODEL`` (SmolLM2-135M-Instruct served locally by vLLM's
CPU build): live answers, not recorded ones. Banking77: Casanueva et al., 2020, CC BY 4.0.
"""

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel

from bench.common import DATASETS, ROOT
from bench.learning_curve import read_rows, seed_rows
from cascade.broker.settings import Settings
from cascade.workers import specialist
from cascade.workers.embedding import Encoder
from cascade.workers.errors import LLMError
from cascade.workers.learning import mcnemar
from cascade.workers.llm import LLMAnswer, LLMClient
from cascade.workers.prompts import LabelPrompt, Prompt, load_prompt

PROMPT_FILE = ROOT / "bench" / "data" / "banking77_prompt.json"
RESULTS = ROOT / "bench" / "results"
LLM_NOTE = (
    "LLM = SmolLM2-135M-Instruct served locally by vLLM (CPU build), asked live through Cascade's LLMClient with "
    "the structured_outputs choice constraint: NOT recorded answers."
)
ATTRIBUTION = "Banking77: Casanueva et al., 2020, Efficient Intent Detection with Dual Sentence Encoders, CC BY 4.0."


@dataclass(frozen=True)
class Variant:
    key: str
    name: str
    descriptions: bool
    examples: bool


VARIANTS = (
    Variant("a", "labels only", descriptions=False, examples=False),
    Variant("b", "labels + descriptions", descriptions=True, examples=False),
    Variant("c", "labels + nearest examples", descriptions=False, examples=True),
    Variant("d", "descriptions + nearest examples", descriptions=True, examples=True),
)


@dataclass(frozen=True)
class Pool:
    """The labelled items examples are retrieved from: their unit-length vectors, texts and labels."""

    vectors: NDArray[np.float32]
    texts: list[str]
    labels: list[str]

    def nearest(
        self, vector: NDArray[np.float32], text: str, candidates: Sequence[str], per_label: int
    ) -> list[tuple[str, str]]:
        """For each candidate in order, the ``per_label`` items of that label most similar to ``vector``, most
        similar first, as (text, label) pairs; an item whose text is the query's (case and spaces aside) is skipped."""
        similarity = self.vectors @ vector
        query = " ".join(text.casefold().split())
        found: list[tuple[str, str]] = []
        for label in candidates:
            rows = [i for i, lab in enumerate(self.labels) if lab == label]
            rows = [i for i in rows if " ".join(self.texts[i].casefold().split()) != query]
            rows.sort(key=lambda i: -float(similarity[i]))
            found += [(self.texts[i], label) for i in rows[:per_label]]
        return found


@dataclass(frozen=True)
class Item:
    row: int
    """The item's row in the test split (0-based, header excluded)."""
    text: str
    gold: str
    candidates: list[str]
    gold_rank: int
    """The gold label's rank in the specialist's probabilities (1 = its answer)."""
    confidence: float
    examples: list[tuple[str, str]]


class ItemRecord(BaseModel):
    row: int
    gold: str
    gold_rank: int
    specialist_confidence: float
    candidates: list[str]
    answers: dict[str, str | None]
    """Per variant key: the LLM's label, None when the request failed."""
    prompt_tokens: dict[str, int]


class VariantRow(BaseModel):
    key: str
    name: str
    accuracy: float
    correct: int
    errors: int
    first_candidate: float
    """Share of the answers that are the first candidate (the specialist's own label)."""
    mean_prompt_tokens: float
    seconds: float
    b: int | None = None
    """Items ``a`` answers right and this variant wrong (None for ``a`` itself)."""
    c: int | None = None
    """Items this variant answers right and ``a`` wrong."""
    p_value: float | None = None
    """McNemar's exact two-sided p-value against ``a``."""
    p_vs_specialist: float | None = None
    """McNemar's exact two-sided p-value against the specialist's own answers on the same items."""


class Report(BaseModel):
    llm_model: str
    llm_url: str
    items: int
    top_k: int
    per_class: int
    neighbours: int
    seed: int
    train_items: int
    specialist_holdout_accuracy: float
    specialist_test_accuracy: float
    """The specialist on the whole test split."""
    max_confidence: float
    """The highest specialist confidence among the items: everything below it was escalated."""
    specialist_accuracy: float
    """The specialist's own answer on the escalated items."""
    gold_in_candidates: float
    gold_ranks: dict[str, int]
    """How many items have the gold label at rank 1, 2, …, or ``>k`` outside the candidates."""
    variants: list[VariantRow]
    seconds: float
    records: list[ItemRecord]


def least_confident(proba: NDArray[np.float64], n: int) -> list[int]:
    """The rows of the ``n`` lowest top probabilities, least confident first (ties in row order)."""
    return [int(i) for i in np.argsort(proba.max(axis=1), kind="stable")[:n]]


def gold_rank(proba: NDArray[np.float64], labels: Sequence[str], gold: str) -> int:
    """The 1-based rank of ``gold`` in one row of probabilities (ties in label order, as ``top_candidates``)."""
    order = np.argsort(-proba, kind="stable")
    return 1 + [labels[i] for i in order].index(gold)


def rank_counts(ranks: Sequence[int], top_k: int) -> dict[str, int]:
    counts = Counter(str(r) if r <= top_k else f">{top_k}" for r in ranks)
    return {key: counts.get(key, 0) for key in [*(str(r) for r in range(1, top_k + 1)), f">{top_k}"]}


def variant_row(
    variant: Variant,
    gold: Sequence[str],
    first: Sequence[str],
    answers: Sequence[LLMAnswer | LLMError],
    baseline_ok: Sequence[bool] | None,
    seconds: float,
    specialist_ok: Sequence[bool] | None = None,
) -> VariantRow:
    """A variant's figures; ``first``: each item's first candidate; ``baseline_ok``: per item, whether ``a``
    answered right (None for ``a``)."""
    ok = [isinstance(a, LLMAnswer) and a.label == g for a, g in zip(answers, gold, strict=True)]
    tokens = [a.prompt_tokens for a in answers if isinstance(a, LLMAnswer)]
    row = VariantRow(
        key=variant.key,
        name=variant.name,
        accuracy=sum(ok) / len(ok),
        correct=sum(ok),
        errors=sum(isinstance(a, LLMError) for a in answers),
        first_candidate=sum(_label(a) == f for a, f in zip(answers, first, strict=True)) / len(answers),
        mean_prompt_tokens=float(np.mean(tokens)) if tokens else float("nan"),
        seconds=seconds,
    )
    if baseline_ok is not None:
        test = mcnemar(baseline_ok, ok)
        row.b, row.c, row.p_value = test.b, test.c, test.p_value
    if specialist_ok is not None:
        row.p_vs_specialist = mcnemar(specialist_ok, ok).p_value
    return row


def _p(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def markdown(report: Report) -> str:
    n = report.items
    ranks = ", ".join(f"{k}: {v}" for k, v in report.gold_ranks.items())
    lines = [
        "# Prompt accuracy: label descriptions and retrieved examples (issue #15)",
        "",
        f"**{LLM_NOTE}** Served model name `{report.llm_model}` at `{report.llm_url}`.",
        "",
        f"Specialist: `minilm` (all-MiniLM-L6-v2 + logistic regression) trained on {report.per_class} items per "
        f"intent of Banking77's train split ({report.train_items} items, seed {report.seed}); held-out accuracy "
        f"{report.specialist_holdout_accuracy:.3f}, test accuracy {report.specialist_test_accuracy:.3f} (3,080 items).",
        f"Items: the {n} test items it is least confident about (confidence up to {report.max_confidence:.3f}), "
        f"each asked among its top {report.top_k} labels. Gold among the candidates: {report.gold_in_candidates:.3f} "
        f"(the ceiling of every variant); gold rank: {ranks}.",
        f"Examples (c, d): for each candidate, the {report.neighbours} items of that label nearest to the text "
        f"(MiniLM cosine) from the specialist's training sample, so {report.neighbours * report.top_k} per request.",
        "",
        "| variant | accuracy | correct | where gold is a candidate | errors | answers the 1st candidate "
        "| mean prompt tokens | a right, this wrong | this right, a wrong | McNemar p vs a | p vs specialist "
        "| seconds |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    reachable = round(report.gold_in_candidates * n)
    for v in report.variants:
        versus = "- | - | -" if v.p_value is None else f"{v.b} | {v.c} | {_p(v.p_value)}"
        lines.append(
            f"| {v.key}: {v.name} | {v.accuracy:.3f} | {v.correct}/{n} | {v.correct / max(reachable, 1):.3f} "
            f"| {v.errors} | {v.first_candidate:.3f} | {v.mean_prompt_tokens:.0f} | {versus} "
            f"| {_p(v.p_vs_specialist)} | {v.seconds:.0f} |"
        )
    specialist_correct = round(report.specialist_accuracy * n)
    lines += [
        f"| specialist alone (its top label) | {report.specialist_accuracy:.3f} | {specialist_correct}/{n} "
        f"| {specialist_correct / max(reachable, 1):.3f} | - | 1.000 | - | - | - | - | - | - |",
        "",
        f"McNemar: exact binomial test on the discordant items. Total {report.seconds:.0f} s. {ATTRIBUTION}",
        "",
    ]
    return "\n".join(lines)


def train_specialist(
    train: list[dict[str, str]], per_class: int, seed: int, encoder: Encoder
) -> tuple[specialist.TrainReport, list[tuple[str, str]]]:
    rows = seed_rows(train, per_class, np.random.default_rng(seed))
    texts, labels = [t for t, _ in rows], [lab for _, lab in rows]
    return specialist.train(texts, labels, seed=seed, encoder=encoder), rows


def with_examples(prompt: Prompt, examples: Sequence[tuple[str, str]]) -> Prompt:
    """``prompt`` with ``examples`` ((text, label) pairs) added to their labels' examples: rendered exactly as
    ``render``'s ``examples`` argument would render them, and sent through ``LLMClient.classify``'s ``prompt``."""
    texts: dict[str, list[str]] = {}
    for text, label in examples:
        texts.setdefault(label, []).append(text)
    labels = dict(prompt.labels)
    for label, added in texts.items():
        base = labels.get(label, LabelPrompt())
        labels[label] = base.model_copy(update={"examples": [*base.examples, *added]})
    return prompt.model_copy(update={"labels": labels})


def variant_prompt(variant: Variant, descriptions: Prompt, item: Item) -> Prompt | None:
    """The prompt one item is asked under: Cascade's default (None), the descriptions, and/or its examples."""
    base = descriptions if variant.descriptions else None
    if not variant.examples:
        return base
    return with_examples(base or Prompt(), item.examples)


async def ask(
    client: LLMClient, items: Sequence[Item], variant: Variant, descriptions: Prompt, concurrency: int
) -> list[LLMAnswer | LLMError]:
    gate = asyncio.Semaphore(concurrency)

    async def one(item: Item) -> LLMAnswer | LLMError:
        async with gate:
            try:
                return await client.classify(item.text, item.candidates, variant_prompt(variant, descriptions, item))
            except LLMError as e:
                return e

    return list(await asyncio.gather(*(one(item) for item in items)))


async def run_variants(
    settings: Settings, items: Sequence[Item], prompt: Prompt, concurrency: int
) -> tuple[list[VariantRow], dict[str, list[LLMAnswer | LLMError]]]:
    gold = [item.gold for item in items]
    first = [item.candidates[0] for item in items]
    rows: list[VariantRow] = []
    answers: dict[str, list[LLMAnswer | LLMError]] = {}
    baseline: list[bool] | None = None
    async with LLMClient(settings.llm_config()) as client:
        await client.check_constrained()
        for variant in VARIANTS:
            start = time.perf_counter()
            got = await ask(client, items, variant, prompt, concurrency)
            seconds = time.perf_counter() - start
            row = variant_row(variant, gold, first, got, baseline, seconds, [i.gold_rank == 1 for i in items])
            if baseline is None:
                baseline = [isinstance(a, LLMAnswer) and a.label == g for a, g in zip(got, gold, strict=True)]
            rows.append(row)
            answers[variant.key] = got
            print(
                f"  {variant.key} ({variant.name}): accuracy {row.accuracy:.3f}, {row.errors} errors, "
                f"{row.mean_prompt_tokens:.0f} prompt tokens, {row.seconds:.0f} s",
                file=sys.stderr,
                flush=True,
            )
    return rows, answers


def escalated_items(
    args: argparse.Namespace, encoder: Encoder
) -> tuple[list[Item], specialist.TrainReport, float, int]:
    """The trained specialist's least confident test items, with their candidates and retrieved examples."""
    report, rows = train_specialist(read_rows(DATASETS / "banking77" / "train.csv"), args.per_class, args.seed, encoder)
    print(f"specialist: {len(rows)} training items, held-out accuracy {report.holdout_accuracy:.3f}", file=sys.stderr)
    pool = Pool(encoder.encode([t for t, _ in rows]), [t for t, _ in rows], [lab for _, lab in rows])
    test = read_rows(DATASETS / "banking77" / "test.csv")
    vectors = encoder.encode([r["text"] for r in test])
    proba = np.asarray(report.pipeline.predict_proba(vectors), dtype=np.float64)
    labels = report.labels
    predicted = [labels[int(i)] for i in proba.argmax(axis=1)]
    test_accuracy = float(np.mean([p == r["label"] for p, r in zip(predicted, test, strict=True)]))
    items = []
    for i in least_confident(proba, args.items):
        candidates = specialist.top_candidates(proba[i], labels, args.top_k)
        items.append(
            Item(
                row=i,
                text=test[i]["text"],
                gold=test[i]["label"],
                candidates=candidates,
                gold_rank=gold_rank(proba[i], labels, test[i]["label"]),
                confidence=float(proba[i].max()),
                examples=pool.nearest(vectors[i], test[i]["text"], candidates, args.neighbours),
            )
        )
    return items, report, test_accuracy, len(rows)


def _label(answer: LLMAnswer | LLMError) -> str | None:
    return answer.label if isinstance(answer, LLMAnswer) else None


def _tokens(answer: LLMAnswer | LLMError) -> int:
    return answer.prompt_tokens if isinstance(answer, LLMAnswer) else 0


def run(args: argparse.Namespace) -> Report:
    start = time.perf_counter()
    prompt = load_prompt(args.prompt)
    settings = Settings()
    encoder = Encoder.open(threads=args.encoder_threads)
    items, trained, test_accuracy, n_train = escalated_items(args, encoder)
    rows, answers = asyncio.run(run_variants(settings, items, prompt, args.concurrency))
    records = [
        ItemRecord(
            row=item.row,
            gold=item.gold,
            gold_rank=item.gold_rank,
            specialist_confidence=item.confidence,
            candidates=item.candidates,
            answers={k: _label(a[j]) for k, a in answers.items()},
            prompt_tokens={k: _tokens(a[j]) for k, a in answers.items()},
        )
        for j, item in enumerate(items)
    ]
    ranks = [item.gold_rank for item in items]
    return Report(
        llm_model=settings.llm_model,
        llm_url=settings.llm_url,
        items=len(items),
        top_k=args.top_k,
        per_class=args.per_class,
        neighbours=args.neighbours,
        seed=args.seed,
        train_items=n_train,
        specialist_holdout_accuracy=trained.holdout_accuracy,
        specialist_test_accuracy=test_accuracy,
        max_confidence=max(item.confidence for item in items),
        specialist_accuracy=sum(r == 1 for r in ranks) / len(ranks),
        gold_in_candidates=sum(r <= args.top_k for r in ranks) / len(ranks),
        gold_ranks=rank_counts(ranks, args.top_k),
        variants=rows,
        seconds=time.perf_counter() - start,
        records=records,
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--items", type=int, default=150, help="the least confident test items asked")
    parser.add_argument("--top-k", type=int, default=5, help="candidates per item: the specialist's top labels")
    parser.add_argument("--per-class", type=int, default=20, help="training items per intent")
    parser.add_argument("--neighbours", type=int, default=3, help="retrieved examples per candidate (c, d)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    parser.add_argument("--encoder-threads", type=int, default=2)
    parser.add_argument("--prompt", type=Path, default=PROMPT_FILE)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.items < 1 or args.top_k < 1 or args.neighbours < 1:
        parser.error("--items, --top-k and --neighbours must be at least 1")
    report = run(args)
    text = markdown(report)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "prompt_accuracy.md").write_text(text)
    (out / "prompt_accuracy.json").write_text(json.dumps(report.model_dump(mode="json"), indent=1) + "\n")
    print(text)


if __name__ == "__main__":
    main()
