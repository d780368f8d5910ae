"""What the cascade is worth against a strong LLM, through the real path, with GPT-4's RECORDED answers.

    python -m bench.cascade_value [--features tfidf] [--out bench/out/cascade_value] [--delta 0.05]
        [--targets 0.86,...,0.93] [--seed 0] [--max-escalation 1.0] [--chain interval|gain] [--splits 100]
        [--limit N] [--redis-url redis://127.0.0.1:6379/13]

It starts, as subprocesses that it stops at the end, the recorded-answers LLM server (``bench.replay_llm``, GPT-4's
answers on Banking77's test split) and one real ``cascade worker --queues specialist,llm`` pointed at it (all 77
labels as candidates: the recorded answers saw them all), trains the specialist with ``cascade train`` on
Banking77's train split, and runs the labelled test split through Cascade as ``cascade evaluate`` does: one job,
every item escalated (threshold 1), so that both tiers' answers are known for every item.

From that one job: the test split is cut at random into two halves (``--seed``), the *calibration* half and the
*evaluation* half (the halves of ``cascade evaluate``). On the evaluation half: all-specialist, all-LLM, single
thresholds, and the certified policies of ``workers/calibration.py`` fitted on the calibration half at each
target: accuracy, LLM calls, LLM tokens and cost (the cost model), the certified lower bound, the share escalated,
and whether the bound held. Then the *price of the guarantee*: each certified policy against the best single
threshold chosen in hindsight on the evaluation half at the same or a lower share escalated, and against the
threshold with the best accuracy. Written to stdout and ``OUT/report.md``, ``OUT/report.json`` and ``OUT/report.png``
(``cascade evaluate``'s cost-accuracy plot of the same job).

Every LLM figure comes from RECORDED GPT-4 answers (OCaTS, MIT) on Banking77 (Casanueva et al., 2020, CC BY 4.0):
the specialist, the queues, the worker and the policy are real; only the LLM's answers are replayed. Tokens are
the replay server's estimate (4 characters a token), priced at ``CASCADE_LLM_USD_PER_MILLION_TOKENS``.
"""

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import IO, Any

import httpx2
import numpy as np
import redis
from numpy.typing import NDArray
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel

from cascade.broker import labelled
from cascade.broker.celery_app import app, configure, send_specialist_chunk
from cascade.broker.results import open_parts
from cascade.broker.settings import Settings
from cascade.broker.store import RedisJobStore
from cascade.workers.calibration import CalibrationData, Chain, FitOptions, Identity, fit_policy, min_items
from cascade.workers.errors import InputError, JobError
from cascade.workers.evaluation import CostModel, Point, calibration_data, plot, point, policy_mask, subset
from cascade.workers.manifest import read_manifest
from cascade.workers.policy import Policy

ROOT = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("CASCADE_DATASETS", ROOT.parent / "shared" / "datasets"))
CASCADE = str(Path(sys.executable).parent / "cascade")
MODEL_NAME = "gpt-4-recorded"
DEFAULT_REDIS = os.environ.get("CASCADE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")
DEFAULT_TARGETS = "0.86,0.87,0.88,0.89,0.9,0.91,0.92,0.93"
SHARES = (0.05, 0.10, 0.15, 0.20, 0.30)
"""Single thresholds shown in the table: the least confident share of the evaluation half escalated."""
GOAL_MAX_SHARE = 0.20
CAPTION = (
    "LLM: RECORDED GPT-4 answers (OCaTS, Stogiannidis et al., 2023, MIT), replayed by bench/replay_llm.py\n"
    "Data: Banking77 (Casanueva et al., 2020, CC BY 4.0)"
)
ATTRIBUTION = (
    "LLM figures from RECORDED GPT-4 answers (OCaTS, Stogiannidis et al., 2023, MIT) on Banking77 "
    "(Casanueva et al., 2020, CC BY 4.0), replayed by bench/replay_llm.py"
)


class Row(BaseModel):
    """One way of answering the evaluation half, measured on it."""

    name: str
    kind: str
    """specialist, llm, threshold, tuned, hindsight or certified."""
    accuracy: float
    llm_calls: int
    escalation_share: float
    llm_tokens: int
    """Total LLM tokens over the evaluation half."""
    llm_tokens_per_1000: float
    cost_per_1000: float
    """USD per 1,000 items: LLM tokens at the model's price plus the specialist's CPU time."""
    threshold: float | None = None
    target: float | None = None
    reachable: bool | None = None
    lower_bound: float | None = None
    certificate_n: int | None = None
    held: bool | None = None
    """The evaluation half's accuracy is at least the certified lower bound (hence at least the target)."""
    policy_version: str | None = None


class Price(BaseModel):
    """A certified policy against single thresholds chosen in hindsight on the evaluation half."""

    target: float
    accuracy: float
    escalation_share: float
    hindsight_at_share: float
    """Best accuracy of a single threshold escalating the same or a lower share."""
    hindsight_share: float
    hindsight_threshold: float
    price_at_share: float
    """hindsight_at_share - accuracy."""
    best_accuracy: float
    """The single threshold with the best accuracy, whatever its share."""
    best_share: float
    best_threshold: float
    price_vs_best: float


class Goals(BaseModel):
    better_tier: str
    better_tier_accuracy: float
    never_worse: bool
    """Every certified policy is at least as accurate as the better single tier (on the evaluation half)."""
    beats_within_share: bool
    """A certified policy is more accurate than the better single tier with at most 20% escalated."""
    bounds_held: bool
    """Every certified policy's lower bound held on the evaluation half."""


class SplitSummary(BaseModel):
    """One target over many random calibration/evaluation splits of the same job's results."""

    target: float
    splits: int
    certified: float
    """Share of the splits in which a policy was certified."""
    accuracy: float
    """Mean evaluation-half accuracy (nothing escalated where no policy was certified)."""
    escalation_share: float | None
    """Mean share escalated, over the splits with a certified policy."""
    price_at_share: float | None
    """Mean price against the best threshold in hindsight at the same or a lower share (certified splits)."""
    price_vs_best: float | None
    """Mean price against the threshold with the best accuracy in hindsight (certified splits)."""
    beats_better_tier: float
    """Share of all splits in which the certified policy beats the better single tier on the evaluation half."""
    met_target: float | None
    """Share of the certified splits whose evaluation-half accuracy is at least the target (the guarantee's
    statement; the halves are complements of one finite set, so a lucky calibration half means an unlucky
    evaluation half: a harsher check than new data would be)."""
    held: float | None
    """Share of the certified splits whose evaluation-half accuracy is at least the certified lower bound.
    This and the three above: None where nothing was certified."""


class Report(BaseModel):
    source: str = ATTRIBUTION
    dataset: str
    features: str
    seed: int
    delta: float
    max_escalation: float
    chain: str
    """How calibration built the candidate policies (``Chain``)."""
    items: int
    calibration_items: int
    evaluation_items: int
    specialist_holdout_accuracy: float
    job_id: str
    job_seconds: float
    total_seconds: float
    llm_errors: int
    replay_outcomes: dict[str, float]
    off_choice: int
    usd_per_million_tokens: float
    full_split: list[Row]
    """All-specialist and all-LLM over every item of the test split (the ballpark)."""
    rows: list[Row]
    """Measured on the evaluation half."""
    prices: list[Price]
    goals: Goals
    across_splits: list[SplitSummary]
    """The same, over many random splits of the job's results: how much of the seed's result is luck."""


# --- the analysis: pure functions of the job's calibration data ------------------------------------------------


def halves(n: int, seed: int) -> tuple[NDArray[np.int_], NDArray[np.int_]]:
    """The calibration half and the evaluation half: the split of ``cascade evaluate`` (``evaluation.evaluate``)."""
    order = np.random.default_rng(seed).permutation(n)
    return order[: n // 2], order[n // 2 :]


@dataclass(frozen=True)
class Curve:
    """Every single threshold on a set: escalating the items whose confidence is below ``thresholds[i]`` escalates
    ``counts[i]`` items and gives ``accuracy[i]``. Ties in confidence go together, as under a real threshold."""

    thresholds: NDArray[np.float64]
    counts: NDArray[np.int_]
    accuracy: NDArray[np.float64]
    n: int

    @property
    def shares(self) -> NDArray[np.float64]:
        return self.counts / self.n

    def best(self, max_share: float = 1.0) -> int:
        """Index of the most accurate threshold escalating at most ``max_share`` (the fewest escalated on ties)."""
        allowed = np.nonzero(self.counts <= max_share * self.n + 1e-9)[0]
        return int(allowed[np.argmax(self.accuracy[allowed])])

    def at_share(self, share: float) -> int:
        """Index of the threshold escalating closest to ``share`` of the items."""
        return int(np.argmin(np.abs(self.shares - share)))


def curve(data: CalibrationData) -> Curve:
    n = len(data.confidence)
    order = np.argsort(data.confidence, kind="stable")
    conf = data.confidence[order]
    gain = (data.llm_ok[order] == 1.0).astype(float) - data.specialist_ok[order].astype(float)
    cum = np.concatenate([[0.0], np.cumsum(gain)])
    # a threshold can stop before item k only where the confidence changes (or at either end)
    cuts = np.array([0, *[k for k in range(1, n) if conf[k] > conf[k - 1]], n])
    thresholds = np.array([conf[k] if k < n else 1.0001 for k in cuts])
    thresholds[0] = 0.0
    base = float(np.mean(data.specialist_ok))
    return Curve(thresholds, cuts, base + cum[cuts] / n, n)


def _row(
    name: str, kind: str, data: CalibrationData, escalated: NDArray[np.bool_], cost: CostModel, **extra: Any
) -> Row:
    p: Point = point(name, data, escalated, cost)
    tokens = float(np.nansum(np.where(escalated, data.llm_tokens, 0.0)))
    return Row(
        name=name,
        kind=kind,
        accuracy=p.accuracy,
        llm_calls=int(np.sum(escalated)),
        escalation_share=p.escalation_share,
        llm_tokens=round(tokens),
        llm_tokens_per_1000=p.llm_tokens,
        cost_per_1000=p.cost_per_1000,
        **extra,
    )


@dataclass(frozen=True)
class Fit:
    """What calibration certified on the calibration half, measured on the evaluation half."""

    policy: Policy | None
    """None: too few calibration items for the target."""
    mask: NDArray[np.bool_]
    """The evaluation items the policy escalates (none when nothing was certified)."""


def certify(cal: CalibrationData, ev: CalibrationData, target: float, settings: "Calibration", seed: int) -> Fit:
    opts = FitOptions(
        target=target,
        delta=settings.delta,
        max_escalation=settings.max_escalation,
        seed=seed,
        chain=settings.chain,
    )
    try:
        policy = fit_policy(cal, opts, settings.ident)
    except InputError:  # too few calibration items for this target
        return Fit(None, np.zeros(len(ev.confidence), dtype=bool))
    mask = policy_mask(policy, ev) if policy.reachable else np.zeros(len(ev.confidence), dtype=bool)
    return Fit(policy, mask)


@dataclass(frozen=True)
class Calibration:
    """The calibration settings of every certified policy of a report."""

    delta: float
    max_escalation: float
    chain: Chain | None
    ident: Identity


def price(target: float, accuracy: float, share: float, ev_curve: Curve) -> Price:
    at, best = ev_curve.best(share), ev_curve.best()
    return Price(
        target=target,
        accuracy=accuracy,
        escalation_share=share,
        hindsight_at_share=float(ev_curve.accuracy[at]),
        hindsight_share=float(ev_curve.shares[at]),
        hindsight_threshold=float(ev_curve.thresholds[at]),
        price_at_share=float(ev_curve.accuracy[at]) - accuracy,
        best_accuracy=float(ev_curve.accuracy[best]),
        best_share=float(ev_curve.shares[best]),
        best_threshold=float(ev_curve.thresholds[best]),
        price_vs_best=float(ev_curve.accuracy[best]) - accuracy,
    )


@dataclass(frozen=True)
class Analysis:
    full: list[Row]
    """All-specialist and all-LLM over every item."""
    rows: list[Row]
    """Over the evaluation half."""
    prices: list[Price]
    goals: Goals
    points: list[Point]
    """The certified policies as ``cascade evaluate``'s plot shows them."""


def _threshold_rows(cal: CalibrationData, ev: CalibrationData, cost: CostModel) -> list[Row]:
    ev_curve, cal_curve = curve(ev), curve(cal)
    rows = []
    for share in SHARES:
        t = float(ev_curve.thresholds[ev_curve.at_share(share)])
        rows.append(_row(f"threshold {t:.3f} (~{share:.0%})", "threshold", ev, ev.confidence < t, cost, threshold=t))
    tuned = float(cal_curve.thresholds[cal_curve.best()])
    name = f"threshold {tuned:.3f} tuned on the calibration half"
    rows.append(_row(name, "tuned", ev, ev.confidence < tuned, cost, threshold=tuned))
    hindsight = float(ev_curve.thresholds[ev_curve.best()])
    name = f"threshold {hindsight:.3f}, best in hindsight"
    rows.append(_row(name, "hindsight", ev, ev.confidence < hindsight, cost, threshold=hindsight))
    return rows


def _certified_row(target: float, fit: Fit, ev: CalibrationData, cost: CostModel, delta: float) -> Row:
    policy = fit.policy
    if policy is None:
        name = f"certified, target {target} (not possible: needs {min_items(target, delta)} certification items)"
        return _row(name, "certified", ev, fit.mask, cost, target=target, reachable=False)
    cert = policy.certificate if policy.reachable else None
    row = _row(
        f"certified, target {target}" + ("" if policy.reachable else " (not reachable: none certified)"),
        "certified",
        ev,
        fit.mask,
        cost,
        target=target,
        reachable=policy.reachable,
        lower_bound=cert.lower_bound if cert else None,
        certificate_n=cert.n if cert else None,
        policy_version=policy.version,
    )
    if cert is not None:
        row.held = row.accuracy >= cert.lower_bound
    return row


def analyse(
    data: CalibrationData, cost: CostModel, settings: Calibration, targets: Sequence[float], seed: int
) -> Analysis:
    n = len(data.confidence)
    full = [
        _row("all specialist", "specialist", data, np.zeros(n, dtype=bool), cost),
        _row("all LLM (recorded GPT-4)", "llm", data, np.ones(n, dtype=bool), cost),
    ]
    cal_idx, eval_idx = halves(n, seed)
    cal, ev = subset(data, cal_idx), subset(data, eval_idx)
    m = len(ev.confidence)
    rows = [
        _row("all specialist", "specialist", ev, np.zeros(m, dtype=bool), cost),
        _row("all LLM (recorded GPT-4)", "llm", ev, np.ones(m, dtype=bool), cost),
        *_threshold_rows(cal, ev, cost),
    ]
    ev_curve = curve(ev)
    prices: list[Price] = []
    points: list[Point] = []
    for target in targets:
        fit = certify(cal, ev, target, settings, seed)
        row = _certified_row(target, fit, ev, cost, settings.delta)
        rows.append(row)
        if row.lower_bound is not None:
            prices.append(price(target, row.accuracy, row.escalation_share, ev_curve))
            extra = {"target": target, "reachable": True, "lower_bound": row.lower_bound}
            points.append(point(f"target {target}", ev, fit.mask, cost, **extra))
    tier = max(rows[:2], key=lambda r: r.accuracy)
    certified = [r for r in rows if r.kind == "certified" and r.reachable]
    goals = Goals(
        better_tier=tier.name,
        better_tier_accuracy=tier.accuracy,
        never_worse=all(r.accuracy >= tier.accuracy for r in certified),
        beats_within_share=any(r.accuracy > tier.accuracy and r.escalation_share <= GOAL_MAX_SHARE for r in certified),
        bounds_held=all(bool(r.held) for r in certified),
    )
    return Analysis(full, rows, prices, goals, points)


@dataclass(frozen=True)
class _Outcome:
    accuracy: float
    paid: Price | None
    """None: nothing certified."""
    met: bool
    held: bool
    beats: bool


def _outcome(cal: CalibrationData, ev: CalibrationData, target: float, settings: Calibration, seed: int) -> _Outcome:
    fit = certify(cal, ev, target, settings, seed)
    accuracy = float(np.mean(np.where(fit.mask, ev.llm_ok == 1.0, ev.specialist_ok)))
    cert = fit.policy.certificate if fit.policy is not None and fit.policy.reachable else None
    if cert is None:
        return _Outcome(accuracy, None, False, False, False)
    tiers = max(float(np.mean(ev.specialist_ok)), float(np.mean(ev.llm_ok == 1.0)))
    paid = price(target, accuracy, float(np.mean(fit.mask)), curve(ev))
    return _Outcome(accuracy, paid, accuracy >= target, accuracy >= cert.lower_bound, accuracy > tiers)


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if len(values) else None


def across_splits(
    data: CalibrationData, settings: Calibration, targets: Sequence[float], seeds: Sequence[int]
) -> list[SplitSummary]:
    """Each target over many random calibration/evaluation splits (seed s: the split and calibration's own)."""
    found: dict[float, list[_Outcome]] = {t: [] for t in targets}
    for seed in seeds:
        cal_idx, eval_idx = halves(len(data.confidence), seed)
        cal, ev = subset(data, cal_idx), subset(data, eval_idx)
        for target in targets:
            found[target].append(_outcome(cal, ev, target, settings, seed))
    summaries = []
    for target, runs in found.items():
        paid = [r.paid for r in runs if r.paid is not None]
        summaries.append(
            SplitSummary(
                target=target,
                splits=len(runs),
                certified=len(paid) / max(len(runs), 1),
                accuracy=float(np.mean([r.accuracy for r in runs])),
                escalation_share=_mean([p.escalation_share for p in paid]),
                price_at_share=_mean([p.price_at_share for p in paid]),
                price_vs_best=_mean([p.price_vs_best for p in paid]),
                beats_better_tier=float(np.mean([r.beats for r in runs])),
                met_target=_mean([float(r.met) for r in runs if r.paid is not None]),
                held=_mean([float(r.held) for r in runs if r.paid is not None]),
            )
        )
    return summaries


# --- the report ---------------------------------------------------------------------------------------------------


def _pct(x: float | None) -> str:
    return "" if x is None else f"{x:.1%}"


def _signed(x: float | None) -> str:
    return "" if x is None else f"{x:+.4f}"


def _acc(x: float | None) -> str:
    return "" if x is None else f"{x:.4f}"


def _yes(x: bool | None) -> str:
    return "" if x is None else ("yes" if x else "**no**")


def markdown(report: Report) -> str:
    lines = [
        f"# Cascade's value against GPT-4 (RECORDED answers), Banking77, {report.features} specialist",
        "",
        f"*{report.source}.*",
        "",
        f"One job of {report.items} labelled test items through the real path (replay server, `cascade worker` "
        f"serving both queues, every item escalated, all 77 labels as candidates), {report.job_seconds:.1f} s; "
        f"benchmark {report.total_seconds:.0f} s in all. Specialist held-out accuracy (train split) "
        f"{report.specialist_holdout_accuracy:.3f}. Replay answers off-choice: {report.off_choice}; LLM errors: "
        f"{report.llm_errors}.",
        "",
        "Whole test split: " + "; ".join(f"{r.name} {r.accuracy:.4f}" for r in report.full_split) + ".",
        "",
        f"## Evaluation half ({report.evaluation_items} items; policies fitted on the calibration half of "
        f"{report.calibration_items}, seed {report.seed}, delta {report.delta}, max escalation "
        f"{report.max_escalation}, {report.chain} chain)",
        "",
        f"Cost: LLM tokens (the replay's estimate, 4 characters a token) at ${report.usd_per_million_tokens:.2f} per "
        "million, plus the specialist's CPU time.",
        "",
        "| policy | accuracy | LLM calls | escalated | LLM tokens | tokens /1k items | USD /1k items "
        "| certified lower bound | bound held |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report.rows:
        lines.append(
            f"| {r.name} | {r.accuracy:.4f} | {r.llm_calls} | {r.escalation_share:.1%} | {r.llm_tokens:,} | "
            f"{r.llm_tokens_per_1000:,.0f} | {r.cost_per_1000:.4f} | {_acc(r.lower_bound)} | {_yes(r.held)} |"
        )
    lines += [
        "",
        "## The price of the guarantee (evaluation half)",
        "",
        "Each certified policy against the best single threshold chosen in hindsight on the evaluation half at the "
        "same or a lower share escalated, and against the threshold with the best accuracy.",
        "",
        "| target | certified accuracy | escalated | hindsight, same or lower share | its share | price "
        "| best threshold | its share | price vs best |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for p in report.prices:
        lines.append(
            f"| {p.target} | {p.accuracy:.4f} | {p.escalation_share:.1%} | {p.hindsight_at_share:.4f} | "
            f"{p.hindsight_share:.1%} | {p.price_at_share:+.4f} | {p.best_accuracy:.4f} | {p.best_share:.1%} | "
            f"{p.price_vs_best:+.4f} |"
        )
    if not report.prices:
        lines.append("| (no target reachable) | | | | | | | | |")
    lines += [
        "",
        f"## Across {report.across_splits[0].splits if report.across_splits else 0} random splits of the same results",
        "",
        "Each split: a new random calibration half (the policy fitted on it, calibration's own split seeded alike) "
        "and evaluation half. Accuracy: mean over all splits on the evaluation half (nothing escalated where no "
        "policy was certified); escalated and prices: mean over the splits with a certified policy. The two halves "
        "are complements within one finite set, so a lucky calibration half means an unlucky evaluation half: "
        "'met target' and 'bound held' are harsher than the guarantee (which is about new items; see "
        "`python -m bench.policy_coverage` for its coverage).",
        "",
        "| target | certified | accuracy | escalated | price at same share | price vs best | beats better tier "
        "| met target | bound held |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for x in report.across_splits:
        lines.append(
            f"| {x.target} | {x.certified:.0%} | {x.accuracy:.4f} | {_pct(x.escalation_share)} | "
            f"{_signed(x.price_at_share)} | {_signed(x.price_vs_best)} | {x.beats_better_tier:.0%} | "
            f"{_pct(x.met_target)} | {_pct(x.held)} |"
        )
    g = report.goals
    lines += [
        "",
        "## Goals",
        "",
        f"- every certified policy at least as accurate as the better single tier ({g.better_tier}, "
        f"{g.better_tier_accuracy:.4f}): {_yes(g.never_worse)}",
        f"- a certified policy beats it with at most {GOAL_MAX_SHARE:.0%} escalated: {_yes(g.beats_within_share)}",
        f"- every certified lower bound held on the evaluation half: {_yes(g.bounds_held)}",
        "",
        f"*{report.source}.*",
        "",
    ]
    return "\n".join(lines)


def caption_png(path: Path, text: str) -> None:
    """Add a caption strip under ``cascade evaluate``'s plot: where its figures come from."""
    try:
        import matplotlib
    except ModuleNotFoundError as e:
        raise SystemExit("the plots need matplotlib: pip install 'cascade[plots]'") from e

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    image = plt.imread(path)
    height, width = image.shape[:2]
    dpi = 120
    strip = 50
    fig = plt.figure(figsize=(width / dpi, (height + strip) / dpi), dpi=dpi)
    ax = fig.add_axes((0.0, strip / (height + strip), 1.0, height / (height + strip)))
    ax.imshow(image)
    ax.axis("off")
    fig.text(0.5, 0.5 * strip / (height + strip), text, ha="center", va="center", fontsize=7)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


# --- the real path: processes, the job --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def check_redis_url(url: str) -> None:
    """The benchmark flushes its database: refuse a URL without one, and database 0."""
    db = url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    if not db.isdigit() or db == "0":
        raise SystemExit(f"{url}: give the benchmark a Redis database of its own (not 0), it flushes it")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""


@contextmanager
def process(command: list[str], log_path: Path, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """A subprocess in a session of its own (its children stop with it), logging to ``log_path``."""
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield proc
    finally:
        _stop(proc)


def wait_http(url: str, proc: subprocess.Popen[bytes], log_path: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: the process exited ({proc.returncode}): {_tail(log_path)}")
        try:
            if httpx2.get(url, timeout=1).status_code == 200:
                return
        except httpx2.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer within {timeout} s: {_tail(log_path)}")
        time.sleep(0.2)


def wait_worker(proc: subprocess.Popen[bytes], log_path: Path, timeout: float = 90) -> None:
    """Until the worker answers Celery's ping (after its check that the LLM server constrains its output)."""
    deadline = time.monotonic() + timeout
    while not app.control.ping(timeout=0.5):
        if proc.poll() is not None:
            raise RuntimeError(f"the worker exited ({proc.returncode}): {_tail(log_path)}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the worker did not answer within {timeout} s: {_tail(log_path)}")


def wait_job(
    store: RedisJobStore, job_id: str, worker: subprocess.Popen[bytes], log_path: Path, timeout: float = 3600
) -> None:
    deadline = time.monotonic() + timeout
    shown = -1
    while True:
        view = store.get(job_id)
        done = view.counts.completed + view.counts.failed
        if done != shown and (done - shown >= 500 or view.status.is_final):
            print(f"  {job_id}: {view.status.value} {done}/{view.counts.total}", file=sys.stderr)
            shown = done
        if view.status.is_final:
            return
        if worker.poll() is not None:
            raise RuntimeError(f"the worker exited ({worker.returncode}) during the job: {_tail(log_path)}")
        if time.monotonic() > deadline:
            raise JobError(f"{job_id} did not end within {timeout} s")
        time.sleep(0.2)


def replay_outcomes(base: str) -> dict[str, float]:
    """``replay_requests_total`` by outcome, from the replay server's /metrics."""
    text = httpx2.get(f"{base}/metrics", timeout=5).text
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "replay_requests_total":
                found[sample.labels["outcome"]] = sample.value
    return found


def train_command(train_csv: Path, model: Path, features: str) -> list[str]:
    """``cascade train``; ``--features`` passed on when the CLI has it (required for anything but tfidf)."""
    command = [CASCADE, "train", str(train_csv), "--out", str(model)]
    has_option = (
        "--features"
        in subprocess.run(
            [CASCADE, "train", "--help"],
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, "COLUMNS": "200"},
        ).stdout
    )
    if has_option:
        return [*command, "--features", features]
    if features != "tfidf":
        raise SystemExit(f"`cascade train` has no --features option here: cannot train a {features} specialist")
    return command


def _log(stream: IO[str], message: str) -> None:
    print(message, file=stream, flush=True)


def train_specialist(data_dir: Path, model: Path, features: str) -> None:
    shutil.rmtree(model, ignore_errors=True)
    _log(sys.stderr, f"training the {features} specialist on {data_dir / 'train.csv'}")
    trained = subprocess.run(
        train_command(data_dir / "train.csv", model, features), capture_output=True, text=True, check=False
    )
    if trained.returncode != 0:
        raise RuntimeError(f"cascade train failed: {trained.stdout[-2000:]}{trained.stderr[-2000:]}")
    _log(sys.stderr, trained.stdout.strip())


@dataclass(frozen=True)
class Run:
    """What the real path gave: the finished job, how long it took, and the replay server's counts."""

    job: labelled.LabelledJob
    seconds: float
    outcomes: dict[str, float]


def run_job(args: argparse.Namespace, settings: Settings, store: RedisJobStore, model: Path, port: int) -> Run:
    """Start the replay server and a worker, run the labelled test split through them (threshold 1), stop both."""
    out: Path = args.out
    base = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "CASCADE_REDIS_URL": settings.redis_url,
        "CASCADE_LLM_URL": settings.llm_url,
        "CASCADE_LLM_MODEL": MODEL_NAME,
        "CASCADE_METRICS_PORT": "0",
        "CASCADE_TOP_K": "0",
    }
    replay_cmd = [sys.executable, "-m", "bench.replay_llm", "--answers", str(args.answers), "--port", str(port)]
    worker_cmd = [CASCADE, "worker", "--queues", "specialist,llm", "--hostname", f"value{os.getpid()}@%h"]
    with ExitStack() as stack:
        replay = stack.enter_context(process([*replay_cmd, "--model", MODEL_NAME], out / "replay.log"))
        wait_http(f"{base}/health", replay, out / "replay.log")
        _log(sys.stderr, f"replay server (RECORDED GPT-4 answers) on {base}")
        worker = stack.enter_context(process([*worker_cmd, "--loglevel", "WARNING"], out / "worker.log", env))
        configure(app, settings)
        wait_worker(worker, out / "worker.log")
        _log(sys.stderr, "worker ready (specialist and llm queues)")
        start = time.perf_counter()
        job = labelled.submit_labelled(
            settings,
            store,
            partial(send_specialist_chunk, app),
            args.data / "test.csv",
            model,
            threshold=1.0,
            top_k=0,
            limit=args.limit,
        )
        wait_job(store, job.job_id, worker, out / "worker.log")
        seconds = time.perf_counter() - start
        outcomes = replay_outcomes(base)
    return Run(job, seconds, outcomes)


def run(args: argparse.Namespace) -> Report:
    start = time.perf_counter()
    check_redis_url(args.redis_url)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    model = out / f"model-{args.features}"
    train_specialist(args.data, model, args.features)
    port = free_port()
    settings = Settings(
        redis_url=args.redis_url, llm_url=f"http://127.0.0.1:{port}/v1", llm_model=MODEL_NAME, top_k=0, metrics_port=0
    )
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    client.flushdb()
    store = RedisJobStore(client, settings.job_ttl, open_parts(settings))
    done = run_job(args, settings, store, model, port)
    job = done.job
    results = list(store.iter_results(job.job_id))
    data = calibration_data(results)
    view = store.get(job.job_id)
    n_items = max(len(data.confidence), 1)
    cost = CostModel.measured(settings.prices(), view.specialist_seconds / n_items, view.llm_seconds / n_items)
    manifest = read_manifest(model)
    calibration = Calibration(
        args.delta, args.max_escalation, args.chain, Identity(manifest.model_sha256, MODEL_NAME, job.data_sha256)
    )
    analysis = analyse(data, cost, calibration, args.targets, args.seed)
    summaries = across_splits(data, calibration, args.targets, range(args.splits))
    # cascade evaluate's report and plot of the same job, with the certified policies measured here
    standard = labelled.evaluation(settings, store, job, [], args.delta)
    standard.targets = analysis.points
    standard.llm = standard.llm.model_copy(update={"name": "all LLM (RECORDED GPT-4)"})
    plot(standard, out / "report.png")
    caption_png(out / "report.png", CAPTION)
    (out / "cascade_evaluate.json").write_text(standard.model_dump_json(indent=2) + "\n")
    if not args.keep:
        client.flushdb()
    client.close()
    return Report(
        dataset=str(args.data),
        features=args.features,
        seed=args.seed,
        delta=args.delta,
        max_escalation=args.max_escalation,
        chain=FitOptions(target=0.5, chain=args.chain).resolved_chain.value,
        items=len(data.confidence),
        calibration_items=len(data.confidence) // 2,
        evaluation_items=len(data.confidence) - len(data.confidence) // 2,
        specialist_holdout_accuracy=manifest.metrics.holdout_accuracy,
        job_id=job.job_id,
        job_seconds=done.seconds,
        total_seconds=time.perf_counter() - start,
        llm_errors=sum(1 for r in results if r.llm_error),
        replay_outcomes=done.outcomes,
        off_choice=round(done.outcomes.get("off_choice", 0.0)),
        usd_per_million_tokens=settings.llm_usd_per_million_tokens,
        full_split=analysis.full,
        rows=analysis.rows,
        prices=analysis.prices,
        goals=analysis.goals,
        across_splits=summaries,
    )


def _targets(text: str) -> list[float]:
    return [float(t) for t in text.split(",") if t.strip()]


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.cascade_value", description=__doc__.split("\n\n")[0])
    parser.add_argument("--features", default="tfidf", help="the specialist's features (cascade train --features)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "cascade_value")
    parser.add_argument("--delta", type=float, default=0.05)
    parser.add_argument("--targets", type=_targets, default=_targets(DEFAULT_TARGETS), help="comma-separated")
    parser.add_argument("--seed", type=int, default=0, help="the split into calibration and evaluation halves")
    parser.add_argument("--max-escalation", type=float, default=1.0, help="most items a policy may escalate")
    parser.add_argument("--chain", type=Chain, default=None, help="interval or gain (default: calibration's)")
    parser.add_argument("--splits", type=int, default=100, help="random splits for the summary across splits")
    parser.add_argument("--limit", type=int, default=None, help="only the first N test items (smoke runs)")
    parser.add_argument("--data", type=Path, default=DATASETS / "banking77", help="train.csv and test.csv")
    parser.add_argument("--answers", type=Path, default=None, help="recorded answers (default DATA/llm_answers)")
    parser.add_argument("--redis-url", default=DEFAULT_REDIS, help="a database of the benchmark's own, flushed")
    parser.add_argument("--keep", action="store_true", help="keep the job in Redis")
    args = parser.parse_args(argv)
    if args.answers is None:
        args.answers = args.data / "llm_answers" / "test_gpt4.csv"
    return args


def main(argv: Sequence[str] | None = None) -> Report:
    args = parse(argv)
    report = run(args)
    text = markdown(report)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.md").write_text(text)
    (args.out / "report.json").write_text(report.model_dump_json(indent=2) + "\n")
    print(text)
    print(f"written: {args.out / 'report.md'}, report.json, report.png", file=sys.stderr)
    return report


if __name__ == "__main__":
    main()
