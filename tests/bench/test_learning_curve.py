"""The learning-curve benchmark's pure parts: the seed it draws, and the figures it reports from its steps."""

import numpy as np

from bench.learning_curve import Config, PolicyRule, Report, Step, markdown, seed_rows


def step(i: int, calls: int, items: int = 100, cascade: float = 0.85) -> Step:
    return Step(
        step=i,
        items=items,
        llm_calls=calls,
        llm_source_llm=calls,
        cache_hits=0,
        memory_answers=0,
        escalated=calls,
        cascade_accuracy=cascade,
        specialist_accuracy=0.8,
        llm_accuracy=0.83,
        model="abc",
    )


def report(configs: list[Config], stream: int, policy: PolicyRule | None = None) -> Report:
    steps = len(configs[0].steps)
    return Report(
        seed=0,
        per_class=4,
        seed_items=308,
        holdout=10,
        stream=stream,
        steps=steps,
        threshold=0.8,
        policy=policy,
        memory=None,
        memory_note="none",
        configs=configs,
        repeated=None,
        seconds=1.0,
    )


def test_the_seed_draws_the_same_number_of_items_of_every_label() -> None:
    train = [{"text": f"{label} {i}", "label": label} for label in "abc" for i in range(20)]
    rows = seed_rows(train, 4, np.random.default_rng(0))
    assert sorted(label for _, label in rows) == sorted("abc" * 4)
    assert len({text for text, _ in rows}) == 12


def test_the_report_compares_each_config_with_plain_and_its_last_jobs_with_its_first() -> None:
    plain = Config(name="plain", steps=[step(i, 40) for i in range(1, 7)])
    calls = [40, 40, 40, 20, 20, 10]
    learning = Config(name="learning", steps=[step(i, n) for i, n in enumerate(calls, start=1)])
    assert learning.fall == 0.25
    assert abs(learning.fall_3 - 50 / 120) < 1e-12
    text = markdown(report([plain, learning], stream=600))
    assert "| learning | 170 (0.71) | 400 | 100 | 0.25 | 400 | 167 | 0.42 |" in text
    assert "RECORDED GPT-4" in text


def test_a_policy_run_says_how_it_routed_and_counts_calibration_calls_apart() -> None:
    steps = [step(1, 30), step(2, 20)]
    steps[0].calibration_calls, steps[0].policy = 7, "abc123"
    learning = Config(name="learning", steps=steps, seed_calibration_calls=5)
    assert learning.llm_calls == 50  # the stream's own
    assert learning.calibration_calls == 12
    rule = PolicyRule(
        llm_holdout_accuracy=0.85, margin=0.03, target=0.82, delta=0.05, max_escalation=0.5, llm_weight=None
    )
    text = markdown(report([learning], stream=200, policy=rule))
    assert "target accuracy 0.8200 (all-LLM's 0.8500 there, minus 0.03)" in text
    assert "| 1 | 100 | 30 | 300 | 0 | 0 | 0.850 | 0.800 | 0.830 | abc | abc123 | - | 7 |" in text
    assert text.count("| 12 |") == 1  # the config's calibration calls, in the summary
