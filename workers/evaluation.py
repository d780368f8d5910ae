"""What a job's results say about the trade: calibration data, the cost model, and the evaluation report.

``cascade calibrate`` and ``cascade evaluate`` run the specialist and the LLM through a normal job, then read
its results here.
"""

import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel

from cascade.workers.calibration import CalibrationData, FitOptions, Identity, fit_policy
from cascade.workers.costs import Prices
from cascade.workers.errors import CascadeError, InputError
from cascade.workers.items import AnswerSource, ItemResult
from cascade.workers.policy import Policy, band_index

ECE_BINS = 15


def expected_calibration_error(
    proba: NDArray[np.float64], predicted_ok: NDArray[np.bool_], bins: int = ECE_BINS
) -> float:
    """Expected calibration error of the top-label confidence: ``bins`` equal-width bins of ``(0, 1]`` on each
    item's largest probability; the mean over items of |accuracy - mean confidence| of the item's bin.

    ``proba``: one row of class probabilities per item; ``predicted_ok``: whether each item's most probable label
    is its gold one.
    """
    confidence = np.max(proba, axis=1)
    ok = np.asarray(predicted_ok, dtype=np.float64)
    if len(confidence) == 0 or len(ok) != len(confidence):
        raise InputError(f"{len(confidence)} probability rows but {len(ok)} outcomes")
    index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    correct = np.bincount(index, weights=ok, minlength=bins)
    confident = np.bincount(index, weights=confidence, minlength=bins)
    return float(np.abs(correct - confident).sum() / len(confidence))


def labelled_rows(results: Iterable[ItemResult]) -> list[ItemResult]:
    """The results that carry a gold label, in input order: the rows of ``calibration_data``."""
    rows = sorted((r for r in results if r.gold is not None), key=lambda r: r.line)
    if not rows:
        raise InputError("no result carries a gold label")
    return rows


def calibration_data(results: Iterable[ItemResult]) -> CalibrationData:
    """One row per result that carries a gold label. Where the LLM failed, its answer counts as the specialist's
    (what a job keeps), so the measured gain of escalating is never overstated."""
    rows = labelled_rows(results)
    spec_ok = np.array([r.specialist_label == r.gold for r in rows])
    llm_ok = np.full(len(rows), np.nan)
    tokens = np.full(len(rows), np.nan)
    for i, r in enumerate(rows):
        if r.llm_label is not None:
            llm_ok[i] = float(r.llm_label == r.gold)
            if r.llm_source in {None, AnswerSource.LLM}:  # an answer not bought for the item says nothing of cost
                tokens[i] = float(r.llm_tokens)
        elif r.llm_error:
            llm_ok[i] = float(spec_ok[i])
            tokens[i] = 0.0
    return CalibrationData(
        confidence=np.array([r.specialist_confidence for r in rows]),
        predicted=[r.specialist_label for r in rows],
        specialist_ok=spec_ok,
        llm_ok=llm_ok,
        llm_tokens=tokens,
    )


@dataclass(frozen=True)
class CostModel:
    usd_per_token: float
    """A hosted LLM's price."""
    usd_per_specialist_item: float
    """CPU time of the specialist per item, at the CPU-hour price."""
    usd_per_llm_item_self_hosted: float
    """LLM worker time per escalated item (as measured by the evaluation job), at the GPU-hour price."""

    @classmethod
    def measured(cls, prices: Prices, specialist_seconds_per_item: float, llm_seconds_per_item: float) -> "CostModel":
        return cls(
            prices.usd_per_token,
            specialist_seconds_per_item * prices.usd_per_cpu_second,
            llm_seconds_per_item * prices.usd_per_gpu_second,
        )


class Point(BaseModel):
    name: str
    accuracy: float
    escalation_share: float
    llm_tokens: float
    """LLM tokens per 1,000 items."""
    cost_per_1000: float
    """USD per 1,000 items: LLM tokens at the model's price plus the specialist's CPU time."""
    cost_per_1000_self_hosted: float
    """USD per 1,000 items with a self-hosted vLLM: its measured time per item at the GPU-hour price."""
    target: float | None = None
    reachable: bool | None = None
    lower_bound: float | None = None


def point(name: str, data: CalibrationData, escalated: NDArray[np.bool_], cost: CostModel, **extra: Any) -> Point:
    correct = np.where(escalated, data.llm_ok == 1.0, data.specialist_ok)
    bought = data.llm_tokens[escalated & ~np.isnan(data.llm_tokens)]  # answers from the cache: tokens unknown
    per_request = float(bought.mean()) if bought.size else 0.0
    tokens = per_request * float(np.sum(escalated)) / len(correct) * 1000
    return Point(
        name=name,
        accuracy=float(np.mean(correct)),
        escalation_share=float(np.mean(escalated)),
        llm_tokens=tokens,
        cost_per_1000=tokens * cost.usd_per_token + 1000 * cost.usd_per_specialist_item,
        cost_per_1000_self_hosted=1000
        * (float(np.mean(escalated)) * cost.usd_per_llm_item_self_hosted + cost.usd_per_specialist_item),
        **extra,
    )


def policy_mask(policy: Policy, data: CalibrationData) -> NDArray[np.bool_]:
    bands = band_index(policy.edges, data.confidence)
    return np.array([b in policy.escalated_bands(p) for b, p in zip(bands, data.predicted, strict=True)])


def subset(data: CalibrationData, idx: NDArray[np.int_]) -> CalibrationData:
    return CalibrationData(
        data.confidence[idx],
        [data.predicted[i] for i in idx],
        data.specialist_ok[idx],
        data.llm_ok[idx],
        data.llm_tokens[idx],
    )


class Report(BaseModel):
    items: int
    specialist: Point
    llm: Point
    curve: list[Point]
    """Single thresholds, from none escalated to all."""
    targets: list[Point]
    """The calibrated policy at several targets: fitted on one half, measured on the other."""
    policy: Point | None
    bands: list[dict[str, Any]]
    """Accuracy of each tier per confidence band, over all items: why escalation helps or not."""


def evaluate(
    data: CalibrationData,
    cost: CostModel,
    targets: list[float],
    delta: float,
    ident: Identity,
    policy: Policy | None = None,
    seed: int = 0,
) -> Report:
    """Every item must carry an LLM answer (the evaluation job escalates all of them)."""
    if np.isnan(data.llm_ok).any():
        raise InputError("evaluation needs an LLM answer for every item")
    n = len(data.confidence)
    curve = [
        point(f"threshold {t:.3f}", data, data.confidence < t, cost)
        for t in sorted({0.0, *np.quantile(data.confidence, np.linspace(0, 1, 21)).tolist(), 1.0001})
    ]
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    fit_idx, test_idx = order[: n // 2], order[n // 2 :]
    at_targets = []
    for target in targets:
        fitted = fit_policy(subset(data, fit_idx), FitOptions(target=target, delta=delta, seed=seed), ident)
        held_out = subset(data, test_idx)
        at_targets.append(
            point(
                f"target {target}",
                held_out,
                policy_mask(fitted, held_out),
                cost,
                target=target,
                reachable=fitted.reachable,
                lower_bound=fitted.certificate.lower_bound if fitted.certificate else None,
            )
        )
    edges = np.linspace(0, 1, 11)
    bands = []
    for lo, hi in itertools.pairwise(edges):
        m = (data.confidence >= lo) & (data.confidence < (hi if hi < 1 else 1.0001))
        if m.any():
            bands.append(
                {
                    "lo": float(lo),
                    "hi": float(hi),
                    "n": int(m.sum()),
                    "specialist_accuracy": float(np.mean(data.specialist_ok[m])),
                    "llm_accuracy": float(np.mean(data.llm_ok[m])),
                }
            )
    return Report(
        items=n,
        specialist=point("all specialist", data, np.zeros(n, dtype=bool), cost),
        llm=point("all LLM", data, np.ones(n, dtype=bool), cost),
        curve=curve,
        targets=at_targets,
        policy=point("given policy", data, policy_mask(policy, data), cost) if policy else None,
        bands=bands,
    )


def plot(report: Report, path: Path) -> None:
    try:
        import matplotlib
    except ModuleNotFoundError as e:  # an extra: the API's and workers' image has no use for it
        raise CascadeError("the cost-accuracy plot needs matplotlib: pip install 'cascade[plots]'") from e

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(
        [p.cost_per_1000 for p in report.curve],
        [p.accuracy for p in report.curve],
        "o-",
        ms=3,
        label="single threshold",
    )
    for p, marker in ((report.specialist, "s"), (report.llm, "^")):
        ax.plot(p.cost_per_1000, p.accuracy, marker, ms=9, label=p.name)
    reached = [p for p in report.targets if p.reachable]
    if reached:
        ax.plot(
            [p.cost_per_1000 for p in reached],
            [p.accuracy for p in reached],
            "D",
            ms=7,
            label="calibrated policy (held-out half)",
        )
    if report.policy:
        ax.plot(report.policy.cost_per_1000, report.policy.accuracy, "*", ms=14, label=report.policy.name)
    ax.set_xlabel("cost, USD per 1,000 items")
    ax.set_ylabel("accuracy")
    ax.set_title(f"Cost against accuracy ({report.items} items)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
