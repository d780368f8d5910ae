"""Learning from the LLM, gated: a new specialist fitted on its parent's data and the LLM's answers, promoted only
when a paired test on held-out labelled items does not find it worse.

Pure functions (no Redis): which answers are learned from (``llm_labels``), how they are weighed
(``train_with_llm_labels``), the line a learned model belongs to (``lineage``), and the gate (``mcnemar``,
``McNemar.refuses``). ``cascade.broker.learn`` reads the jobs and writes and swaps the model folders.

**Weighting.** Every item of the original (gold) training data weighs 1; every LLM-labelled item weighs
``weight`` (``--llm-weight``, ``DEFAULT_LLM_WEIGHT`` = 0.25 by default: an LLM answer counts a quarter of a gold
label). The weights reach the pipeline's ``classifier`` step, so both the classifier (TF-IDF's linear SVM, or the
``minilm`` head's logistic regression) and its temperature scaling weigh them. Why a quarter: the LLM's answers are
not all right (GPT-4's recorded ones on Banking77: 0.83), and after a few jobs they outnumber the gold items; at
weight 1 a specialist seeded with 4 items per class learns the LLM's mistakes with its answers, and the share of
items it must escalate to stay within a point of the LLM (on held-out items) falls from 0.17 only to 0.09 over the
stream, against 0.03 at weight 0.25 (``python -m bench.learning_curve --policy``).

**The gate.** Parent ("current") and candidate answer the same held-out labelled items. ``b`` counts the items
the current model gets right and the candidate wrong, ``c`` the reverse; McNemar's exact test asks whether
``b`` and ``c`` differ more than chance (Binomial(b + c, 1/2)). The candidate is **refused** when its accuracy is
lower than the current model's **and** the one-sided p-value that it is worse, P(X ≥ b | X ~ Binomial(b + c, 1/2)),
is below ``alpha`` (0.05 by default). Otherwise it is promoted: the rule is "not worse by a paired test", so a
candidate whose accuracy is lower by a margin the test cannot tell from chance is promoted too.
"""

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy.stats import binomtest

from cascade.workers.embedding import Encoder
from cascade.workers.errors import InputError
from cascade.workers.items import AnswerSource, ItemResult
from cascade.workers.manifest import Lineage, Manifest
from cascade.workers.specialist import Specialist, TrainReport, train

LEARNED_SOURCES = frozenset({AnswerSource.LLM, AnswerSource.CACHE})
"""The LLM's own answers: asked now, or asked earlier on the same text (the cache). The answer memory's are not
the LLM's answer to that text (they are its neighbours'), so they are never learned from."""
DEFAULT_ALPHA = 0.05
DEFAULT_LLM_WEIGHT = 0.25
"""An LLM-labelled item's sample weight when none is given (**Weighting**, above)."""


def llm_labels(results: Iterable[ItemResult]) -> list[tuple[str, str]]:
    """``(custom_id, llm_label)`` of every result whose LLM answer came from the LLM or the cache, escalated and
    explored items alike, in the order given."""
    return [
        (r.custom_id, r.llm_label)
        for r in results
        if r.llm_label is not None and r.llm_source is not None and r.llm_source in LEARNED_SOURCES
    ]


@dataclass(frozen=True)
class Learned:
    """A specialist fitted on gold and LLM labels, and what happened to the LLM labels offered."""

    report: TrainReport
    texts: list[str]
    """The LLM-labelled texts fitted on."""
    labels: list[str]
    """Their LLM labels."""
    unknown_label: int
    """Dropped: the label is not one of the parent's (its training data's)."""
    gold_duplicate: int
    """Dropped: the text is one of the gold training texts (the gold label wins)."""
    repeated: int
    """Dropped: the text was already offered with an LLM label (the first one is kept)."""

    @property
    def used(self) -> int:
        """LLM-labelled items fitted on."""
        return len(self.texts)

    @property
    def dropped(self) -> int:
        return self.unknown_label + self.gold_duplicate + self.repeated


def train_with_llm_labels(
    texts: list[str],
    labels: list[str],
    llm_texts: Sequence[str],
    llm_labels: Sequence[str],
    weight: float = DEFAULT_LLM_WEIGHT,
    encoder: Encoder | None = None,
    seed: int = 0,
) -> Learned:
    """Train as ``specialist.train`` does on the gold ``texts``/``labels``, with the LLM-labelled items added at
    sample weight ``weight`` (gold items weigh 1). LLM labels that the gold data does not have (the parent's
    labels: it was trained on the same data) are dropped and counted; so are LLM texts equal to a gold text (gold
    wins) and texts offered twice (the first is kept). Texts are compared with their outer blanks stripped."""
    if len(llm_texts) != len(llm_labels):
        raise InputError(f"{len(llm_texts)} LLM-labelled texts but {len(llm_labels)} labels")
    known = set(labels)
    seen = {t.strip() for t in texts}
    gold = set(seen)
    kept_texts: list[str] = []
    kept_labels: list[str] = []
    unknown = duplicate = repeated = 0
    for text, label in zip(llm_texts, llm_labels, strict=True):
        key = text.strip()
        if label not in known:
            unknown += 1
        elif key in gold:
            duplicate += 1
        elif key in seen:
            repeated += 1
        else:
            seen.add(key)
            kept_texts.append(text)
            kept_labels.append(label)
    report = train(
        texts,
        labels,
        seed=seed,
        encoder=encoder,
        extra_texts=kept_texts,
        extra_labels=kept_labels,
        extra_weight=weight,
    )
    return Learned(report, kept_texts, kept_labels, unknown, duplicate, repeated)


def learned_data_sha256(
    original_sha256: str, llm_texts: Sequence[str], llm_labels: Sequence[str], weight: float
) -> str:
    """A checksum of what a learned model was fitted on: the original data's checksum, the LLM-labelled items
    (in order) and their weight."""
    h = hashlib.sha256(f"{original_sha256}\0{weight!r}\0".encode())
    for text, label in zip(llm_texts, llm_labels, strict=True):
        h.update(json.dumps([text, label]).encode() + b"\n")
    return h.hexdigest()


def lineage(parent: Manifest, jobs: Sequence[str], llm_labels: int, weight: float) -> Lineage:
    """The lineage of a model learned from ``parent``: its line (root first), the jobs and the labels added."""
    return Lineage(
        parent=parent.identity,
        ancestors=parent.line,
        jobs=list(jobs),
        llm_labels=llm_labels,
        llm_weight=weight,
        data_sha256=parent.original_data_sha256,
    )


def correct(model: Specialist, texts: list[str], labels: Sequence[str]) -> NDArray[np.bool_]:
    """Whether the model's most probable label is each item's gold label."""
    predicted = np.asarray(model.labels)[model.predict_proba(texts).argmax(axis=1)]
    return np.asarray(predicted == np.asarray(labels), dtype=bool)


@dataclass(frozen=True)
class McNemar:
    """A paired comparison of two models on the same labelled items (McNemar's exact test)."""

    n: int
    current_accuracy: float
    candidate_accuracy: float
    b: int
    """Items the current model gets right and the candidate wrong."""
    c: int
    """Items the candidate gets right and the current model wrong."""
    p_value: float
    """Two-sided exact p-value: b and c differ by chance (Binomial(b + c, 1/2)); 1 when b + c = 0."""
    p_worse: float
    """One-sided exact p-value that the candidate is worse: P(X ≥ b), X ~ Binomial(b + c, 1/2); 1 when b + c = 0."""

    def refuses(self, alpha: float = DEFAULT_ALPHA) -> bool:
        """The gate: the candidate is worse with significance (lower accuracy and ``p_worse`` below ``alpha``)."""
        return self.candidate_accuracy < self.current_accuracy and self.p_worse < alpha


Outcomes = Sequence[bool] | NDArray[np.bool_]
"""Per item, whether a model answered it right."""


def mcnemar(current_ok: Outcomes, candidate_ok: Outcomes) -> McNemar:
    """McNemar's exact (binomial) test on the discordant pairs of two models' per-item correctness."""
    current = np.asarray(current_ok, dtype=bool)
    candidate = np.asarray(candidate_ok, dtype=bool)
    if current.shape != candidate.shape or current.ndim != 1 or not current.size:
        raise InputError("the two models must be compared on the same, non-empty list of items")
    b = int(np.sum(current & ~candidate))
    c = int(np.sum(~current & candidate))
    discordant = b + c
    two_sided = binomtest(b, discordant, 0.5).pvalue if discordant else 1.0
    worse = binomtest(b, discordant, 0.5, alternative="greater").pvalue if discordant else 1.0
    return McNemar(
        n=int(current.size),
        current_accuracy=float(current.mean()),
        candidate_accuracy=float(candidate.mean()),
        b=b,
        c=c,
        p_value=float(two_sided),
        p_worse=float(worse),
    )
