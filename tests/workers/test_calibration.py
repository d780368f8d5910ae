import itertools

import numpy as np
import pytest
from scipy.stats import binom

from cascade.workers.calibration import (
    Bound,
    CalibrationData,
    Chain,
    FitOptions,
    Identity,
    _interval_chain,
    fit_policy,
    lower_bound,
    min_items,
)
from cascade.workers.errors import InputError
from cascade.workers.items import Route
from cascade.workers.policy import GLOBAL, route_with_policy, sampled, within_budget

IDENT = Identity(specialist_sha256="s", llm_model="m", calibration_sha256="c")


@pytest.mark.parametrize(("k", "n", "delta"), [(90, 100, 0.05), (930, 1000, 0.1), (5, 10, 0.01)])
def test_clopper_pearson_lower_bound_is_exact(k: int, n: int, delta: float) -> None:
    lb = lower_bound(k, n, delta)
    # at p = lb, seeing k or more successes has probability delta: the defining property of the exact bound
    assert binom.sf(k - 1, n, lb) == pytest.approx(delta, rel=1e-6)
    assert lb < k / n
    assert lower_bound(k, n, delta, Bound.NONE) == k / n


def test_min_items_for_target_and_delta() -> None:
    n = min_items(0.93, 0.05)
    assert lower_bound(n, n, 0.05) >= 0.93 > lower_bound(n - 1, n - 1, 0.05)


def data_two_classes(n: int, seed: int = 0) -> CalibrationData:
    """Class 'a': the LLM is right, the specialist often wrong; class 'b': the reverse. All low confidence."""
    rng = np.random.default_rng(seed)
    predicted = ["a" if i % 2 == 0 else "b" for i in range(n)]
    is_a = np.array([p == "a" for p in predicted])
    conf = rng.uniform(0.2, 0.5, n)
    spec_ok = np.where(is_a, rng.random(n) < 0.5, rng.random(n) < 0.9)
    llm_ok = np.where(is_a, rng.random(n) < 0.95, rng.random(n) < 0.3).astype(float)
    return CalibrationData(conf, predicted, spec_ok, llm_ok, np.full(n, 50.0))


def test_per_class_policy_escalates_only_the_class_the_llm_is_better_at() -> None:
    policy = fit_policy(data_two_classes(4000), FitOptions(target=0.85, delta=0.05, per_class=True), IDENT)
    assert policy.reachable
    assert set(policy.escalate) == {"a"}
    assert route_with_policy(policy, "x", "a", 0.3) is Route.ESCALATE
    assert route_with_policy(policy, "x", "b", 0.3) is Route.ACCEPT


def test_global_policy_cannot_separate_classes_and_says_so_plainly() -> None:
    policy = fit_policy(data_two_classes(4000), FitOptions(target=0.85, delta=0.05), IDENT)
    assert not policy.reachable
    assert "no policy reaches accuracy 0.85" in policy.message
    assert "best reachable accuracy" in policy.message
    assert policy.escalate == {}


def test_llm_no_better_means_no_escalation() -> None:
    n = 2000
    rng = np.random.default_rng(1)
    conf = rng.uniform(0, 1, n)
    spec_ok = rng.random(n) < conf
    llm_ok = (rng.random(n) < conf * 0.5).astype(float)  # always worse
    data = CalibrationData(conf, ["a"] * n, spec_ok, llm_ok, np.full(n, 50.0))
    policy = fit_policy(data, FitOptions(target=0.4, delta=0.05), IDENT)
    assert policy.reachable
    assert policy.escalate == {}
    assert all(b.gain is None or b.gain <= 0.05 for b in policy.bands)


def test_abstain_band_for_hopeless_items() -> None:
    n = 3000
    rng = np.random.default_rng(2)
    conf = rng.uniform(0, 1, n)
    hopeless = conf < 0.2
    spec_ok = np.where(hopeless, rng.random(n) < 0.1, rng.random(n) < 0.95)
    llm_ok = np.where(hopeless, rng.random(n) < 0.1, rng.random(n) < 0.9).astype(float)
    data = CalibrationData(conf, ["a"] * n, spec_ok, llm_ok, np.full(n, 50.0))
    policy = fit_policy(data, FitOptions(target=0.9, delta=0.05, abstain_below=0.3), IDENT)
    assert policy.abstain
    assert route_with_policy(policy, "x", "a", 0.05) is Route.ABSTAIN
    assert route_with_policy(policy, "x", "a", 0.9) is Route.ACCEPT
    assert policy.certificate is not None
    assert policy.certificate.abstain_share == pytest.approx(0.2, abs=0.05)


def data_three_regions(n: int, seed: int = 0) -> CalibrationData:
    """Below 0.15 the LLM is worse (hopeless items), from 0.15 to 0.5 much better, above 0.5 worse again."""
    rng = np.random.default_rng(seed)
    conf = rng.uniform(0, 1, n)
    spec_p = np.select([conf < 0.15, conf < 0.5], [0.3, 0.5], 0.95)
    llm_p = np.select([conf < 0.15, conf < 0.5], [0.05, 0.95], 0.8)
    spec_ok = rng.random(n) < spec_p
    llm_ok = (rng.random(n) < llm_p).astype(float)
    return CalibrationData(conf, ["a"] * n, spec_ok, llm_ok, np.full(n, 50.0))


def test_global_policy_escalates_one_run_of_bands_where_the_llm_helps() -> None:
    n = 6000
    policy = fit_policy(data_three_regions(n), FitOptions(target=0.83, delta=0.05), IDENT)
    assert policy.reachable
    assert policy.certificate is not None
    assert policy.certificate.n == n - round(0.3 * n)  # a global chain: 30% select, 70% certify
    assert len(policy.edges) - 1 == 20
    escalated = policy.escalate[GLOBAL]
    assert escalated == list(range(escalated[0], escalated[-1] + 1))  # one run of adjacent bands
    assert 0.1 <= policy.edges[escalated[0]] <= 0.2
    assert 0.4 <= policy.edges[escalated[-1] + 1] <= 0.55
    for confidence, route in ((0.05, Route.ACCEPT), (0.3, Route.ESCALATE), (0.8, Route.ACCEPT)):
        assert route_with_policy(policy, "x", "a", confidence) is route


def test_interval_chain_is_nested_from_nothing_and_within_max_escalation() -> None:
    data = data_three_regions(3000, seed=4)
    sel = np.arange(1000)
    edges = [i / 20 for i in range(21)]
    band_of = np.minimum((data.confidence * 20).astype(int), 19)
    chain = _interval_chain(data, sel, band_of, edges, 1.0, [], max_escalation=1.0)
    assert chain[0] == ()
    bands = [[int(u.split("|")[1]) for u in units] for units in chain]
    for smaller, larger in itertools.pairwise(bands):
        assert set(smaller) < set(larger)
        assert len(larger) == len(smaller) + 1
        assert larger == list(range(larger[0], larger[-1] + 1))
    assert 2 <= bands[-1][0] <= 4
    assert 8 <= bands[-1][-1] <= 10
    capped = _interval_chain(data, sel, band_of, edges, 1.0, [], max_escalation=0.1)
    assert sum(int(np.sum(band_of[sel] == int(u.split("|")[1]))) for u in capped[-1]) <= 100
    assert _interval_chain(data, sel, band_of, edges, 1.0, list(range(20)), max_escalation=1.0) == [()]


def test_gain_chain_keeps_the_former_defaults_and_is_the_per_class_one() -> None:
    data = data_three_regions(4000)
    gain = fit_policy(data, FitOptions(target=0.8, chain=Chain.GAIN), IDENT)
    assert len(gain.edges) - 1 == 10
    assert gain.certificate is not None
    assert gain.certificate.n == 2000
    per_class = fit_policy(data_two_classes(4000), FitOptions(target=0.85, per_class=True), IDENT)
    assert per_class.certificate is not None
    assert per_class.certificate.n == 2000
    with pytest.raises(InputError, match="per-class"):
        fit_policy(data, FitOptions(target=0.8, per_class=True, chain=Chain.INTERVAL), IDENT)
    with pytest.raises(InputError, match="select fraction"):
        fit_policy(data, FitOptions(target=0.8, select_fraction=1.0), IDENT)


def test_too_few_items_for_delta_is_a_clear_error() -> None:
    with pytest.raises(InputError, match=r"too few calibration items.*needs at least 59"):
        fit_policy(data_two_classes(60), FitOptions(target=0.95, delta=0.05), IDENT)


@pytest.mark.parametrize("field", ["target", "delta", "max_escalation"])
def test_out_of_range_options_are_refused(field: str) -> None:
    opts = FitOptions(**{"target": 0.9, field: 1.5})  # type: ignore[arg-type]
    with pytest.raises(InputError, match=field.replace("_", " ").replace("target", "target accuracy")):
        fit_policy(data_two_classes(400), opts, IDENT)


def test_budget_keeps_largest_gain_per_cost_first() -> None:
    gains = [0.1, 0.5, 0.3, 0.4]
    costs = [1.0, 1.0, 0.5, 2.0]  # gain per cost: 0.1, 0.5, 0.6, 0.2
    assert within_budget(gains, costs, max_items=2, max_cost=10) == [1, 2]
    assert within_budget(gains, costs, max_items=10, max_cost=1.5) == [1, 2]
    assert within_budget(gains, costs, max_items=10, max_cost=100) == [0, 1, 2, 3]
    assert within_budget(gains, costs, max_items=0, max_cost=100) == []


def test_exploration_sampling_is_deterministic_and_near_its_rate() -> None:
    ids = [f"id-{i}" for i in range(20000)]
    draws = [sampled(i, 0.05) for i in ids]
    assert draws == [sampled(i, 0.05) for i in ids]
    assert 0.04 < np.mean(draws) < 0.06
    assert not any(sampled(i, 0.0) for i in ids[:100])


def test_global_key_is_star() -> None:
    assert GLOBAL == "*"
