"""Fitting an escalation policy to labelled data, with a finite-sample accuracy guarantee.

The guarantee: on new items from the calibration distribution, the cascade's accuracy (over the items it
answers, abstained ones excluded) is at least ``target`` with probability at least ``1 - delta``.

How it holds (Learn then Test, Angelopoulos et al. 2021, with fixed-sequence testing):
1. The calibration items are split at random into a *selection* part and a *certification* part (30% / 70% for
   a global policy, half and half per class: ``select_fraction``).
2. On the selection part only, nested candidate policies P_0 (escalate nothing) ⊂ P_1 ⊂ … ⊂ P_K are built,
   within ``max_escalation``:
   - global policies (``Chain.INTERVAL``, the default): over 20 confidence bands, P_K is the run of adjacent
     bands with the largest measured gain of escalating it (LLM correct minus specialist correct, summed), never
     crossing an abstain band; each smaller candidate drops the end band of the run with the smaller measured
     gain. The candidates are as fine as the bands, and a band's noise cannot break the run apart.
   - per class (``Chain.GAIN``): units (class, band) are ranked by their measured gain, one standard error below
     the estimate (shrunk towards the band's global gain); units where the LLM is no better are never escalated;
     each candidate adds the next best unit.
3. On the certification part, which played no part in building the chain, each P_k's accuracy is a binomial
   proportion over i.i.d. items; its one-sided Clopper-Pearson lower bound at level ``delta`` is exact (never
   optimistic) for any n. The hypotheses "accuracy(P_k) < target" are tested in the fixed order P_K, P_K-1, …,
   stopping at the first that cannot be rejected. Fixed-sequence testing controls the family-wise error at
   ``delta`` without a multiplicity correction, so the least-escalating certified policy is wrong (true accuracy
   below target) with probability at most ``delta``. Neither the chain's shape nor the split fraction enters the
   argument: any chain built on the selection part alone, and any fixed fraction, keep the guarantee.
The answer memory (``cascade.workers.recall``), when the data carry what it would answer (leave one out: each
item against the LLM's answers on all the other calibration items), joins in: on the selection part, the
smallest similarity (0.99 down to 0.50, by 0.01) at which the memory's answers are at least as accurate as the
LLM's on the same items is chosen, and the certification counts the memory's answer, not the LLM's, for every escalated
item it would answer. The certified bound therefore covers the memory's answers too.
Clopper-Pearson was chosen over a betting confidence sequence (as in BARGAIN) for its simplicity: the data are a
fixed batch, not a stream, and CP is exact for a binomial proportion.
"""

import hashlib
import math
import time
from dataclasses import dataclass
from enum import Enum

import numpy as np
from numpy.typing import NDArray
from scipy.stats import beta

from cascade.workers.errors import InputError
from cascade.workers.policy import GLOBAL, Band, Certificate, Policy, band_index
from cascade.workers.prompts import PROMPT_VERSION
from cascade.workers.recall import MemoryRule

SHRINK = 20.0
"""Pseudo-items pulling a class's band gain towards the band's global gain (per-class policies)."""


class Chain(str, Enum):
    """How the nested candidate policies are built on the selection part (see the module docstring)."""

    INTERVAL = "interval"
    GAIN = "gain"


GLOBAL_BANDS, PER_CLASS_BANDS = 20, 10
"""Default confidence bands below the LLM's cap: finer for a global run of bands than for per-class units."""
GLOBAL_SELECT, PER_CLASS_SELECT = 0.3, 0.5
"""Default share of the calibration items that builds the chain; the rest certifies. A global chain has few
degrees of freedom (where the run starts and ends), so more items go to the bound."""


class Bound(str, Enum):
    CLOPPER_PEARSON = "clopper-pearson"
    NONE = "none"
    """The point estimate, with no bound: no guarantee. For showing what the bound buys (simulation harness)."""


@dataclass(frozen=True)
class CalibrationData:
    """One row per calibration item."""

    confidence: NDArray[np.float64]
    predicted: list[str]
    specialist_ok: NDArray[np.bool_]
    llm_ok: NDArray[np.float64]
    """1.0 or 0.0 where the LLM was asked, NaN where it was not."""
    llm_tokens: NDArray[np.float64]
    """Prompt + completion tokens where the LLM was asked, NaN where it was not."""
    memory_ok: NDArray[np.float64] | None = None
    """1.0 or 0.0 where the answer memory would answer (``recall.leave_one_out``), NaN where it would not; None:
    no answer memory."""
    memory_similarity: NDArray[np.float64] | None = None
    """The smallest similarity of the agreeing neighbours where the memory would answer, NaN elsewhere."""
    memory_k: int = 3

    def __post_init__(self) -> None:
        n = len(self.confidence)
        if not (len(self.predicted) == len(self.specialist_ok) == len(self.llm_ok) == len(self.llm_tokens) == n):
            raise ValueError("calibration arrays differ in length")
        if (self.memory_ok is None) != (self.memory_similarity is None):
            raise ValueError("the memory's answers and their similarities go together")
        if self.memory_ok is not None and self.memory_similarity is not None and len(self.memory_ok) != n:
            raise ValueError("calibration arrays differ in length")
        if self.memory_similarity is not None and len(self.memory_similarity) != n:
            raise ValueError("calibration arrays differ in length")

    def memory_hits(self, similarity: float | None) -> NDArray[np.bool_]:
        """Where the memory answers at this similarity (nowhere when None)."""
        if similarity is None or self.memory_similarity is None:
            return np.zeros(len(self.confidence), dtype=bool)
        found = self.memory_similarity >= similarity
        return np.asarray(found & ~np.isnan(self.memory_similarity), dtype=bool)


def lower_bound(correct: int, n: int, delta: float, bound: Bound = Bound.CLOPPER_PEARSON) -> float:
    """One-sided (1 - delta) lower confidence bound on a binomial proportion."""
    if n <= 0:
        return 0.0
    if bound is Bound.NONE:
        return correct / n
    if correct <= 0:
        return 0.0
    return float(beta.ppf(delta, correct, n - correct + 1))


def min_items(target: float, delta: float) -> int:
    """Fewest certification items with which even a perfect score can certify ``target`` at level ``delta``."""
    return math.ceil(math.log(delta) / math.log(target))


@dataclass(frozen=True)
class FitOptions:
    target: float
    delta: float = 0.05
    max_escalation: float = 1.0
    per_class: bool = False
    abstain_below: float | None = None
    n_bands: int | None = None
    """Confidence bands below the cap; None: 20 for a global policy, 10 per class."""
    select_fraction: float | None = None
    """Share of the items that builds the chain; None: 0.3 for a global policy, 0.5 per class."""
    explore_rate: float = 0.0
    seed: int = 0
    bound: Bound = Bound.CLOPPER_PEARSON
    chain: Chain | None = None
    """None: ``Chain.INTERVAL`` for a global policy, ``Chain.GAIN`` per class (the only one it can use)."""

    @property
    def resolved_chain(self) -> Chain:
        return self.chain or (Chain.GAIN if self.per_class else Chain.INTERVAL)

    @property
    def resolved_bands(self) -> int:
        if self.n_bands is not None:
            return self.n_bands
        return GLOBAL_BANDS if self.resolved_chain is Chain.INTERVAL else PER_CLASS_BANDS

    @property
    def resolved_select(self) -> float:
        if self.select_fraction is not None:
            return self.select_fraction
        return GLOBAL_SELECT if self.resolved_chain is Chain.INTERVAL else PER_CLASS_SELECT


@dataclass(frozen=True)
class Identity:
    """What a policy was calibrated with: it holds for this specialist, LLM and prompt only."""

    specialist_sha256: str
    llm_model: str
    calibration_sha256: str
    prompt_version: str = PROMPT_VERSION
    """The LLM's prompt (``Prompt.version``): Cascade's default unless the job had a prompt file."""


def _band_edges(conf: NDArray[np.float64], cap: float, n_bands: int) -> list[float]:
    below = conf[conf < cap]
    inner = np.quantile(below, np.linspace(0, 1, n_bands + 1)[1:-1]) if len(below) else np.array([])
    return sorted({0.0, *(float(x) for x in inner if 0.0 < x < cap), cap, 1.0})


def _mean(x: NDArray[np.float64]) -> float | None:
    return float(np.mean(x)) if len(x) else None


def fit_policy(data: CalibrationData, opts: FitOptions, ident: Identity) -> Policy:
    n = len(data.confidence)
    _check(data, opts)
    rng = np.random.default_rng(opts.seed)
    order = rng.permutation(n)
    n_sel = round(n * opts.resolved_select)
    sel, cert = order[:n_sel], order[n_sel:]
    if len(cert) < min_items(opts.target, opts.delta):
        raise InputError(
            f"too few calibration items: the certification part has {len(cert)}, and target "
            f"{opts.target} at delta {opts.delta} needs at least {min_items(opts.target, opts.delta)} "
            f"(so at least {math.ceil(min_items(opts.target, opts.delta) / (1 - opts.resolved_select))} items)"
        )

    asked = ~np.isnan(data.llm_ok)
    cap = float(data.confidence[~asked].min()) if (~asked).any() else 1.0
    edges = _band_edges(data.confidence[sel], cap, opts.resolved_bands)
    band_of = band_index(edges, data.confidence)
    labels = np.asarray(data.predicted)
    unit_key = np.array(
        [f"{lab}|{b}" if opts.per_class else f"{GLOBAL}|{b}" for lab, b in zip(labels, band_of, strict=True)]
    )

    bands = [_band_stats(data, sel, band_of, b, edges) for b in range(len(edges) - 1)]
    abstain = [b for b, band in enumerate(bands) if _hopeless(band, opts.abstain_below)]
    gains = _unit_gains(data, sel, band_of, unit_key, bands, opts.per_class)
    candidates = [
        u
        for u, g in sorted(gains.items(), key=lambda kv: (-kv[1], kv[0]))
        if g > 0 and int(u.rsplit("|", 1)[1]) not in abstain and edges[int(u.rsplit("|", 1)[1]) + 1] <= cap
    ]
    if opts.resolved_chain is Chain.INTERVAL:
        chain = _interval_chain(data, sel, band_of, edges, cap, abstain, opts.max_escalation)
    else:
        chain = _nested(candidates, unit_key, sel, opts.max_escalation)

    abstained = np.isin(band_of, abstain)
    memory = choose_memory_rule(data, sel)
    hits = data.memory_hits(memory.similarity if memory else None)
    chosen, certificate = _fixed_sequence(data, cert, chain, unit_key, abstained, hits, opts)
    reachable = chosen is not None
    if chosen is None:
        certificate = _certify(data, np.arange(n), np.isin(unit_key, list(chain[-1])), abstained, hits, opts)
        message = (
            f"no policy reaches accuracy {opts.target} with probability {1 - opts.delta}: the best reachable "
            f"accuracy is {certificate.accuracy:.3f} (lower bound {certificate.lower_bound:.3f}) at "
            f"{certificate.escalation_share:.1%} of items escalated to the LLM"
        )
        chosen = ()
    else:
        message = (
            f"accuracy >= {opts.target} with probability >= {1 - opts.delta}: certified lower bound "
            f"{certificate.lower_bound:.3f} on {certificate.n} items, {certificate.escalation_share:.1%} escalated"
        )
        if memory is not None and certificate.memory_share > 0:
            message += (
                f", of which {certificate.memory_share:.1%} answered by the answer memory "
                f"(k={memory.k}, similarity >= {memory.similarity})"
            )
    escalate: dict[str, list[int]] = {}
    for u in chosen:
        key, b = u.rsplit("|", 1)
        escalate.setdefault(key, []).append(int(b))
    body = {
        "target_accuracy": opts.target,
        "delta": opts.delta,
        "reachable": reachable,
        "message": message,
        "edges": edges,
        "escalate": {k: sorted(v) for k, v in sorted(escalate.items())},
        "abstain": abstain,
        "explore_rate": opts.explore_rate,
        "bands": bands,
        "gains": gains,
        "certificate": certificate,
        "memory": memory if chosen else None,
        "specialist_sha256": ident.specialist_sha256,
        "llm_model": ident.llm_model,
        "prompt_version": ident.prompt_version,
        "calibration_sha256": ident.calibration_sha256,
        "calibration_items": n,
        "mean_llm_tokens": _mean_tokens(data.llm_tokens),
    }
    digest = hashlib.sha256(repr(sorted((k, repr(v)) for k, v in body.items())).encode()).hexdigest()[:12]
    now = time.time()
    return Policy(version=f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime(now))}-{digest}", created_at=now, **body)


def _mean_tokens(tokens: NDArray[np.float64]) -> float:
    """Mean LLM tokens per request bought (NaN: not asked, or answered from the answer cache); 0 with none."""
    bought = tokens[~np.isnan(tokens)]
    return float(bought.mean()) if bought.size else 0.0


def _check(data: CalibrationData, opts: FitOptions) -> None:
    if not 0.0 < opts.target < 1.0:
        raise InputError(f"target accuracy must be within (0, 1), not {opts.target}")
    if not 0.0 < opts.delta < 1.0:
        raise InputError(f"delta must be within (0, 1), not {opts.delta}")
    if not 0.0 <= opts.max_escalation <= 1.0:
        raise InputError(f"max escalation must be within [0, 1], not {opts.max_escalation}")
    if opts.select_fraction is not None and not 0.0 < opts.select_fraction < 1.0:
        raise InputError(f"select fraction must be within (0, 1), not {opts.select_fraction}")
    if opts.n_bands is not None and opts.n_bands < 1:
        raise InputError(f"the number of bands must be at least 1, not {opts.n_bands}")
    if opts.per_class and opts.chain is Chain.INTERVAL:
        raise InputError("a per-class policy ranks (class, band) units: use Chain.GAIN, not a run of global bands")
    if len(data.confidence) == 0:
        raise InputError("no calibration items")


def _band_stats(
    data: CalibrationData, sel: NDArray[np.int_], band_of: NDArray[np.int_], b: int, edges: list[float]
) -> Band:
    idx = sel[band_of[sel] == b]
    llm = data.llm_ok[idx]
    llm = llm[~np.isnan(llm)]
    return Band(
        lo=edges[b],
        hi=edges[b + 1],
        n=len(idx),
        specialist_accuracy=_mean(data.specialist_ok[idx].astype(float)),
        n_llm=len(llm),
        llm_accuracy=_mean(llm),
    )


def _hopeless(band: Band, abstain_below: float | None) -> bool:
    if abstain_below is None or band.specialist_accuracy is None:
        return False
    return band.specialist_accuracy < abstain_below and (band.llm_accuracy or 0.0) < abstain_below


def _unit_gains(
    data: CalibrationData,
    sel: NDArray[np.int_],
    band_of: NDArray[np.int_],
    unit_key: NDArray[np.str_],
    bands: list[Band],
    per_class: bool,
) -> dict[str, float]:
    gains: dict[str, float] = {}
    asked_sel = sel[~np.isnan(data.llm_ok[sel])]
    for u in np.unique(unit_key[asked_sel]):
        idx = asked_sel[unit_key[asked_sel] == u]
        b = int(band_of[idx[0]])
        band_gain = bands[b].gain or 0.0
        diff = data.llm_ok[idx] - data.specialist_ok[idx]
        gain = float(np.mean(diff))
        if per_class:
            gain = (len(idx) * gain + SHRINK * band_gain) / (len(idx) + SHRINK)
        # Rank by a pessimistic gain (one standard error below the estimate), so that small units whose gain is
        # noise do not enter the chain ahead of well-measured ones.
        se = float(np.std(diff, ddof=1) / np.sqrt(len(idx))) if len(idx) > 1 else 1.0
        gains[str(u)] = gain - se
    return gains


def _nested(
    candidates: list[str], unit_key: NDArray[np.str_], sel: NDArray[np.int_], max_escalation: float
) -> list[tuple[str, ...]]:
    chain: list[tuple[str, ...]] = [()]
    count = 0
    for u in candidates:
        count += int(np.sum(unit_key[sel] == u))
        if count > max_escalation * len(sel):
            break
        chain.append((*chain[-1], u))
    return chain


def _interval_chain(
    data: CalibrationData,
    sel: NDArray[np.int_],
    band_of: NDArray[np.int_],
    edges: list[float],
    cap: float,
    abstain: list[int],
    max_escalation: float,
) -> list[tuple[str, ...]]:
    """Global candidates from the selection part only: P_K is the run of adjacent bands (below the cap, no abstain
    band inside, at most ``max_escalation`` of the selection items) whose escalation gains the most items on the
    selection part, counted one standard error below the measured gain (as the per-class units are), so that
    where the LLM is no better no run is found by noise and nothing is escalated (a chain led by a candidate that
    fails would stop the fixed sequence before the candidates that escalate less); each smaller candidate drops
    the end band of the run with the smaller gain (the upper one on ties, as a lower threshold would). Returns
    P_0 = () first, P_K last."""
    n_bands = len(edges) - 1
    asked = sel[~np.isnan(data.llm_ok[sel])]
    differences = data.llm_ok[asked] - data.specialist_ok[asked].astype(float)
    gain, squares = np.zeros(n_bands), np.zeros(n_bands)
    np.add.at(gain, band_of[asked], differences)
    np.add.at(squares, band_of[asked], differences**2)
    size = np.bincount(band_of[sel], minlength=n_bands)
    usable = [b not in abstain and edges[b + 1] <= cap for b in range(n_bands)]
    limit = max_escalation * len(sel)
    best, run = 0.0, (0, 0)
    for lo in range(n_bands):
        total, spread, count = 0.0, 0.0, 0
        for hi in range(lo, n_bands):
            count += int(size[hi])
            if not usable[hi] or count > limit:
                break
            total, spread = total + float(gain[hi]), spread + float(squares[hi])
            if total - math.sqrt(spread) > best + 1e-9:
                best, run = total - math.sqrt(spread), (lo, hi + 1)
    lo, hi = run
    shrinking: list[tuple[str, ...]] = []
    while hi > lo:
        shrinking.append(tuple(f"{GLOBAL}|{b}" for b in range(lo, hi)))
        if gain[lo] < gain[hi - 1]:
            lo += 1
        else:
            hi -= 1
    return [(), *reversed(shrinking)]


SIMILARITIES = tuple(round(0.99 - 0.01 * i, 2) for i in range(50))
"""The similarities tried for the answer memory, from the strictest down."""
MIN_MEMORY_ITEMS = 20
"""Selection items the memory must answer at a similarity before it is measured there."""


def choose_memory_rule(data: CalibrationData, sel: NDArray[np.int_]) -> MemoryRule | None:
    """On the selection part: the smallest similarity at which the memory's answers (all those at that similarity or
    above) are at least as accurate as the LLM's on the same items. Chosen on the selection part only, so the
    certification, which counts the memory's answers at it, stays valid whatever it is."""
    if data.memory_ok is None or data.memory_similarity is None:
        return None
    asked = sel[~np.isnan(data.llm_ok[sel]) & ~np.isnan(data.memory_similarity[sel])]
    rule = None
    for similarity in SIMILARITIES:
        hit = asked[data.memory_similarity[asked] >= similarity]
        if len(hit) < MIN_MEMORY_ITEMS:
            continue
        memory_accuracy, llm_accuracy = float(np.mean(data.memory_ok[hit])), float(np.mean(data.llm_ok[hit]))
        if memory_accuracy < llm_accuracy:
            continue
        rule = MemoryRule(
            k=data.memory_k, similarity=similarity, accuracy=memory_accuracy, llm_accuracy=llm_accuracy, n=len(hit)
        )
    return rule


def _fixed_sequence(
    data: CalibrationData,
    cert: NDArray[np.int_],
    chain: list[tuple[str, ...]],
    unit_key: NDArray[np.str_],
    abstained: NDArray[np.bool_],
    hits: NDArray[np.bool_],
    opts: FitOptions,
) -> tuple[tuple[str, ...] | None, Certificate]:
    """Test P_K, P_K-1, ... on the certification half; the last one certified before the first failure."""
    chosen: tuple[str, ...] | None = None
    certificate = _certify(data, cert, np.isin(unit_key, list(chain[-1])), abstained, hits, opts)
    for units in reversed(chain):
        result = _certify(data, cert, np.isin(unit_key, list(units)), abstained, hits, opts)
        if result.lower_bound < opts.target:
            break
        chosen, certificate = units, result
    return chosen, certificate


def _certify(
    data: CalibrationData,
    idx: NDArray[np.int_],
    escalated: NDArray[np.bool_],
    abstained: NDArray[np.bool_],
    hits: NDArray[np.bool_],
    opts: FitOptions,
) -> Certificate:
    """The escalated items take the memory's answer where it answers (``hits``), the LLM's elsewhere."""
    answered = idx[~abstained[idx]]
    remembered = hits & escalated
    asked_ok = data.llm_ok[answered] == 1.0
    if data.memory_ok is not None:
        asked_ok = np.where(remembered[answered], data.memory_ok[answered] == 1.0, asked_ok)
    correct = np.where(escalated[answered], asked_ok, data.specialist_ok[answered])
    k, n = int(np.sum(correct)), len(answered)
    return Certificate(
        method=f"{opts.bound.value}, fixed-sequence testing" if opts.bound is Bound.CLOPPER_PEARSON else "none",
        n=n,
        accuracy=k / n if n else 0.0,
        lower_bound=lower_bound(k, n, opts.delta, opts.bound),
        escalation_share=float(np.mean(escalated[idx])) if len(idx) else 0.0,
        abstain_share=float(np.mean(abstained[idx])) if len(idx) else 0.0,
        memory_share=float(np.mean(remembered[idx])) if len(idx) else 0.0,
    )
