"""The escalation rule: small pure functions that decide, for one item, which tier answers it.

Two forms of rule:
- a fixed threshold: escalate when the specialist's confidence is below it (``route``);
- a calibrated ``Policy`` (written by ``cascade calibrate``): confidence bands, per class or global, escalated
  only where the LLM measured better than the specialist, an optional abstain band, and an exploration slice
  (``route_with_policy``).
Budgets rank a chunk's escalations by expected gain per unit of cost (``within_budget``).
"""

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike, NDArray
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cascade.workers.errors import InputError
from cascade.workers.items import Route
from cascade.workers.prompts import PROMPT_VERSION
from cascade.workers.recall import MemoryRule

POLICY_FORMAT = "cascade-policy/1"
GLOBAL = "*"
"""Key of the escalated bands that apply to every class (a global policy)."""


def routes(confidences: Sequence[float] | NDArray[np.float64], threshold: float) -> list[Route]:
    """Escalate the items whose specialist confidence is below ``threshold`` (0 escalates nothing, 1 all)."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be within [0, 1], not {threshold}")
    escalated = np.asarray(confidences, dtype=np.float64) < threshold
    if threshold == 1.0:
        escalated[:] = True
    return [Route.ESCALATE if e else Route.ACCEPT for e in escalated.tolist()]


def route(confidence: float, threshold: float) -> Route:
    """One item's ``routes``."""
    return routes([confidence], threshold)[0]


class Band(BaseModel):
    """What calibration measured in one confidence band (over the selection half)."""

    lo: float
    hi: float
    n: int
    specialist_accuracy: float | None
    n_llm: int
    llm_accuracy: float | None

    @property
    def gain(self) -> float | None:
        if self.specialist_accuracy is None or self.llm_accuracy is None:
            return None
        return self.llm_accuracy - self.specialist_accuracy


class Certificate(BaseModel):
    """The bound that backs a policy, computed on the certification half only."""

    method: str
    n: int
    accuracy: float
    """Point estimate of the cascade's accuracy on the certification half."""
    lower_bound: float
    """One-sided (1 - delta) lower confidence bound on the cascade's accuracy."""
    escalation_share: float
    abstain_share: float
    memory_share: float = 0.0
    """Share of the items the answer memory answered instead of the LLM (counted in ``accuracy``)."""


class Policy(BaseModel):
    model_config = ConfigDict(frozen=True)

    format: str = POLICY_FORMAT
    version: str
    created_at: float
    target_accuracy: float = Field(ge=0.0, le=1.0)
    delta: float = Field(gt=0.0, lt=1.0)
    reachable: bool
    message: str
    edges: list[float]
    """Band edges, ascending from 0 to 1: band i is [edges[i], edges[i+1])."""
    escalate: dict[str, list[int]]
    """Escalated band indices, by predicted class, or under ``GLOBAL``."""
    abstain: list[int] = []
    explore_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    bands: list[Band]
    gains: dict[str, float] = {}
    """Expected accuracy gain of escalating an item of a unit ('class|band' or '*|band'), for budget ranking."""
    certificate: Certificate | None
    memory: MemoryRule | None = None
    """The answer memory's calibrated rule (``cascade calibrate --memory``): escalated items it answers take its
    answer instead of the LLM's; the certificate counts them."""
    specialist_sha256: str
    llm_model: str
    prompt_version: str = PROMPT_VERSION
    """The prompt the LLM was calibrated under (``Prompt.version``); a policy file written before prompts were
    versioned was calibrated under Cascade's default prompt."""
    calibration_sha256: str
    calibration_items: int
    mean_llm_tokens: float
    """Measured prompt + completion tokens per LLM request, for the cost model."""

    def band(self, confidence: float) -> int:
        return int(band_index(self.edges, confidence))

    def escalated_bands(self, label: str) -> list[int]:
        return self.escalate.get(label, self.escalate.get(GLOBAL, []))

    def gain(self, label: str, confidence: float) -> float:
        b = self.band(confidence)
        return self.gains.get(f"{label}|{b}", self.gains.get(f"{GLOBAL}|{b}", 0.0))


def band_index(edges: Sequence[float], confidence: ArrayLike) -> NDArray[np.int_]:
    """The band of each confidence: band i is [edges[i], edges[i+1]), the last band closed at 1. The one lookup
    used by calibration (which measures the bands) and by routing (which applies them): they must agree for the
    guarantee to hold."""
    found = np.searchsorted(np.asarray(edges), np.asarray(confidence, dtype=float), side="right") - 1
    return np.clip(found, 0, len(edges) - 2)


def by_value(gains: Sequence[float], costs: Sequence[float]) -> list[int]:
    """Indices ordered by expected gain per unit of cost, best first (ties: input order). Budgets spend in it."""
    if len(gains) != len(costs):
        raise ValueError("gains and costs differ in length")
    return sorted(range(len(gains)), key=lambda i: (-gains[i] / max(costs[i], 1e-12), i))


def sampled(custom_id: str, rate: float) -> bool:
    """Deterministic Bernoulli(rate) draw keyed by ``custom_id``: a chunk that runs twice draws the same."""
    if rate <= 0.0:
        return False
    digest = hashlib.blake2b(custom_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < rate


def route_with_policy(policy: Policy, custom_id: str, label: str, confidence: float) -> Route:
    b = policy.band(confidence)
    if b in policy.abstain:
        return Route.ABSTAIN
    if b in policy.escalated_bands(label):
        return Route.ESCALATE
    if sampled(custom_id, policy.explore_rate):
        return Route.EXPLORE
    return Route.ACCEPT


def within_budget(gains: Sequence[float], costs: Sequence[float], max_items: int, max_cost: float) -> list[int]:
    """Indices of the escalations to keep: largest expected gain per unit of cost first, within both limits."""
    kept: list[int] = []
    spent = 0.0
    for i in by_value(gains, costs):
        if len(kept) >= max_items:
            break
        if spent + costs[i] > max_cost:
            continue
        kept.append(i)
        spent += costs[i]
    return sorted(kept)


def load_policy(path: str | Path) -> Policy:
    """Read a policy file written by ``cascade calibrate``; a clear error for anything else."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such policy file")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not JSON ({e})") from e
    if not isinstance(raw, dict) or raw.get("format") != POLICY_FORMAT:
        raise InputError(f"{path}: not a Cascade policy (format must be {POLICY_FORMAT!r})")
    try:
        return Policy.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        raise InputError(f"{path}: field {'.'.join(map(str, first['loc']))}: {first['msg']}") from e
