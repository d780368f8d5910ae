"""Simulation harness (named as such): Banking77's real specialist outputs and a *simulated* LLM whose accuracy
by confidence band is set by the test. Used to check the calibrated policy's guarantee over many random splits."""

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from cascade.workers import specialist
from cascade.workers.calibration import Bound, CalibrationData, FitOptions, Identity, fit_policy
from cascade.workers.data import read_labelled_csv
from cascade.workers.policy import Policy

IDENTITY = Identity(specialist_sha256="sim", llm_model="simulated-llm", calibration_sha256="sim")


@dataclass(frozen=True)
class Population:
    """The specialist's real answers on a labelled pool, standing for the item distribution."""

    confidence: NDArray[np.float64]
    predicted: list[str]
    specialist_ok: NDArray[np.bool_]


def population(model_dir: str, csv: str) -> Population:
    model = specialist.load(model_dir)
    data = read_labelled_csv(csv)
    proba = model.predict_proba(data.texts)
    predicted = [model.labels[i] for i in proba.argmax(axis=1)]
    ok = np.array([p == g for p, g in zip(predicted, data.labels, strict=True)])
    return Population(proba.max(axis=1), predicted, ok)


@dataclass(frozen=True)
class SimulatedLLM:
    """A simulated LLM: right with probability ``accuracy(confidence)`` of the specialist on the item."""

    accuracy: Callable[[NDArray[np.float64]], NDArray[np.float64]]

    def answer(self, confidence: NDArray[np.float64], rng: np.random.Generator) -> NDArray[np.float64]:
        return (rng.random(len(confidence)) < self.accuracy(confidence)).astype(float)


@dataclass(frozen=True)
class Trial:
    policy: Policy
    true_accuracy: float
    """Expected accuracy of the policy over the whole population (exact for the simulated LLM)."""
    escalation_share: float


def run_trial(
    pop: Population, llm: SimulatedLLM, opts: FitOptions, n_cal: int, max_escalation: float, seed: int
) -> Trial:
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(pop.confidence), size=n_cal, replace=False)
    conf = pop.confidence[idx]
    cap = float(np.quantile(conf, max_escalation))  # as `cascade calibrate`: the LLM is asked below the cap
    llm_ok = np.where(conf < cap, llm.answer(conf, rng), np.nan)
    data = CalibrationData(
        conf, [pop.predicted[i] for i in idx], pop.specialist_ok[idx], llm_ok, np.where(conf < cap, 100.0, np.nan)
    )
    policy = fit_policy(data, FitOptions(**{**opts.__dict__, "seed": seed}), IDENTITY)
    escalated = escalated_mask(policy, pop)
    expected = np.where(escalated, llm.accuracy(pop.confidence), pop.specialist_ok.astype(float))
    return Trial(policy, float(np.mean(expected)), float(np.mean(escalated)))


def escalated_mask(policy: Policy, pop: Population) -> NDArray[np.bool_]:
    return np.array(
        [policy.band(c) in policy.escalated_bands(p) for c, p in zip(pop.confidence, pop.predicted, strict=True)]
    )


def best_single_threshold_share(pop: Population, llm: SimulatedLLM, accuracy: float) -> float | None:
    """The smallest share escalated by a single threshold reaching ``accuracy`` on the population (tuned by hand,
    with full knowledge of the simulated LLM); None when no threshold reaches it."""
    order = np.argsort(pop.confidence)
    gain = llm.accuracy(pop.confidence[order]) - pop.specialist_ok[order]
    base = float(np.mean(pop.specialist_ok))
    acc = base + np.cumsum(gain) / len(order)  # accuracy when the k+1 least confident items are escalated
    reach = np.nonzero(acc >= accuracy)[0]
    if base >= accuracy:
        return 0.0
    return float((reach[0] + 1) / len(order)) if len(reach) else None


__all__ = ["Bound", "Population", "SimulatedLLM", "Trial", "best_single_threshold_share", "population", "run_trial"]
