"""The cascade-value benchmark (bench/cascade_value.py): its analysis on small made-up data, and a smoke run of the
real path (cascade train, the replay server and a worker as processes, one labelled job) on 240 test items.

Redis: the tests' database (``CASCADE_TEST_REDIS_URL``), which the benchmark flushes."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from bench.cascade_value import (
    ATTRIBUTION,
    Calibration,
    Report,
    across_splits,
    analyse,
    check_redis_url,
    curve,
    halves,
    main,
)
from cascade.workers.calibration import CalibrationData, Identity
from cascade.workers.evaluation import CostModel
from tests.conftest import TEST_REDIS_URL, _check_test_db, dataset

COST = CostModel(usd_per_token=2e-7, usd_per_specialist_item=1e-6, usd_per_llm_item_self_hosted=1e-4)
IDENT = Identity("spec", "gpt-4-recorded", "data")
CALIBRATION = Calibration(delta=0.05, max_escalation=1.0, chain=None, ident=IDENT)


def made_up(n: int, seed: int = 0) -> CalibrationData:
    """The specialist right with probability its confidence; an LLM at 0.8 everywhere: escalating the least
    confident items helps, the confident ones hurts."""
    rng = np.random.default_rng(seed)
    conf = np.round(rng.uniform(0.05, 1.0, n), 2)  # rounded: ties, as real confidences have
    spec_ok = rng.random(n) < conf
    llm_ok = (rng.random(n) < 0.8).astype(float)
    return CalibrationData(conf, ["a"] * n, spec_ok, llm_ok, np.full(n, 500.0))


def test_curve_moves_ties_together_and_finds_the_best_threshold() -> None:
    data = CalibrationData(
        np.array([0.2, 0.2, 0.5, 0.9]),
        ["a"] * 4,
        np.array([False, False, True, True]),
        np.array([1.0, 0.0, 0.0, 1.0]),
        np.full(4, 10.0),
    )
    c = curve(data)
    assert c.counts.tolist() == [0, 2, 3, 4]  # the two items at 0.2 go together
    assert c.thresholds.tolist() == [0.0, 0.5, 0.9, 1.0001]
    assert c.accuracy.tolist() == pytest.approx([0.5, 0.75, 0.5, 0.5])
    assert c.best() == 1
    assert c.best(max_share=0.25) == 0  # escalating one item is impossible: the tie
    assert c.at_share(0.7) == 2


def test_halves_are_those_of_cascade_evaluate() -> None:
    cal, ev = halves(11, seed=3)
    assert len(cal) == 5
    assert len(ev) == 6
    assert sorted([*cal, *ev]) == list(range(11))
    assert np.array_equal(np.concatenate([cal, ev]), np.random.default_rng(3).permutation(11))


def test_analysis_measures_everything_on_the_evaluation_half() -> None:
    data = made_up(3000)
    analysis = analyse(data, COST, CALIBRATION, [0.6, 0.99], seed=0)
    full, rows, prices, goals = analysis.full, analysis.rows, analysis.prices, analysis.goals
    assert [r.kind for r in full] == ["specialist", "llm"]
    kinds = [r.kind for r in rows]
    assert kinds[:2] == ["specialist", "llm"]
    assert kinds.count("threshold") == 5
    assert kinds.count("tuned") == kinds.count("hindsight") == 1
    assert kinds.count("certified") == 2
    assert all(r.llm_calls == round(r.escalation_share * 1500) for r in rows)
    assert all(r.llm_tokens == 500 * r.llm_calls for r in rows)
    hindsight = next(r for r in rows if r.kind == "hindsight")
    assert all(r.accuracy <= hindsight.accuracy + 1e-12 for r in rows)
    reachable, unreachable = (r for r in rows if r.kind == "certified")
    assert reachable.reachable
    assert reachable.held
    assert reachable.lower_bound is not None
    assert reachable.lower_bound >= 0.6
    assert not unreachable.reachable
    assert unreachable.llm_calls == 0
    assert unreachable.lower_bound is None
    (price,) = prices
    assert price.target == 0.6
    assert price.hindsight_share <= price.escalation_share
    assert price.price_at_share == pytest.approx(price.hindsight_at_share - price.accuracy)
    assert price.best_accuracy == pytest.approx(hindsight.accuracy)
    assert goals.bounds_held
    (plotted,) = analysis.points
    assert plotted.accuracy == reachable.accuracy
    assert plotted.lower_bound == reachable.lower_bound


def test_summary_across_splits() -> None:
    data = made_up(2000)
    low, high = across_splits(data, CALIBRATION, [0.6, 0.99], seeds=range(5))
    assert low.splits == high.splits == 5
    assert low.certified == 1.0
    assert high.certified == 0.0
    assert high.accuracy == pytest.approx(np.mean([np.mean(data.specialist_ok[halves(2000, s)[1]]) for s in range(5)]))
    assert low.held is not None
    assert 0.0 <= low.held <= 1.0
    assert low.price_vs_best is not None
    assert low.price_at_share is not None
    assert low.price_vs_best >= low.price_at_share - 1e-12
    assert high.held is None
    assert high.met_target is None
    assert low.met_target is not None
    assert high.escalation_share is None


def test_the_benchmark_refuses_redis_database_0() -> None:
    for url in ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379", "redis://127.0.0.1:6379/"):
        with pytest.raises(SystemExit):
            check_redis_url(url)
    check_redis_url("redis://127.0.0.1:6379/13")


def test_smoke_run_through_the_real_path(tmp_path: Path) -> None:
    _check_test_db(TEST_REDIS_URL)
    out = tmp_path / "out"
    args = [
        "--out",
        str(out),
        "--limit",
        "240",
        "--targets",
        "0.7,0.999",
        "--splits",
        "3",
        "--redis-url",
        TEST_REDIS_URL,
    ]
    report = main([*args, "--data", str(dataset("banking77"))])

    assert report.items == 240
    assert report.evaluation_items == 120
    assert report.llm_errors == 0
    assert report.off_choice == 0
    assert report.replay_outcomes["recorded"] == 240
    with (dataset("banking77") / "llm_answers" / "test_gpt4.csv").open(newline="") as f:
        recorded = list(csv.DictReader(f))[:240]
    gpt4 = np.mean([r["llm_label"] == r["label"] for r in recorded])
    assert report.full_split[1].accuracy == pytest.approx(gpt4)  # the job's LLM answers are the recordings
    certified = [r for r in report.rows if r.kind == "certified"]
    assert [r.target for r in certified] == [0.7, 0.999]
    assert certified[0].reachable
    assert not certified[1].reachable
    assert "not possible: needs 2995 certification items" in certified[1].name
    assert [x.splits for x in report.across_splits] == [3, 3]
    assert report.chain == "interval"

    assert Report.model_validate(json.loads((out / "report.json").read_text())) == report
    text = (out / "report.md").read_text()
    assert ATTRIBUTION in text
    assert "| certified, target 0.7 |" in text
    assert "price of the guarantee" in text
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    evaluate = json.loads((out / "cascade_evaluate.json").read_text())
    assert evaluate["items"] == 240
    assert evaluate["llm"]["accuracy"] == pytest.approx(gpt4)
    for name in ("replay.log", "worker.log"):
        assert (out / name).exists()
