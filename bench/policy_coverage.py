"""The guarantee's coverage table, by simulation (Banking77's real specialist, a *simulated* LLM).

    python -m bench.policy_coverage [--trials 500]

For each (target, delta) and each way of building the candidate chain (``interval``, the global default; ``gain``,
the former one): over many random calibration sets, the share of trials whose chosen policy meets the target on the
whole population (should be >= 1 - delta), the share escalated, and the same without the bound. The simulated LLM
is the one of tests/workers/test_calibration_simulation.py.
"""

import argparse

import numpy as np

from bench.common import DATASETS, bench_model
from cascade.workers.calibration import Chain, FitOptions
from tests.workers.simulation import Bound, best_single_threshold_share, population, run_trial
from tests.workers.test_calibration_simulation import MAX_ESCALATION, N_CAL, SIM_LLM


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=500)
    parser.add_argument(
        "--chains", type=lambda v: [Chain(c) for c in v.split(",")], default=[Chain.INTERVAL, Chain.GAIN]
    )
    args = parser.parse_args()
    model_dir, _ = bench_model()
    pop = population(str(model_dir), str(DATASETS / "banking77" / "test.csv"))
    print(
        f"population {len(pop.confidence)} items, specialist accuracy {pop.specialist_ok.mean():.4f}; "
        f"calibration sets of {N_CAL}, LLM asked below the {MAX_ESCALATION:.0%} confidence quantile"
    )
    print(
        "| target | delta | chain | bound | trials | certified | met target | escalated | true accuracy "
        "| single threshold, same accuracy |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    variants = [(c, b) for c in args.chains for b in (Bound.CLOPPER_PEARSON, Bound.NONE)]
    for target, delta in [(0.90, 0.05), (0.91, 0.1), (0.91, 0.05), (0.92, 0.05), (0.92, 0.1)]:
        for chain, bound in variants:
            opts = FitOptions(target=target, delta=delta, max_escalation=MAX_ESCALATION, bound=bound, chain=chain)
            trials = [run_trial(pop, SIM_LLM, opts, N_CAL, MAX_ESCALATION, s) for s in range(args.trials)]
            ok = [t for t in trials if t.policy.reachable]
            met = np.mean([t.true_accuracy >= target for t in ok]) if ok else float("nan")
            share = np.mean([t.escalation_share for t in ok]) if ok else float("nan")
            accuracy = np.mean([t.true_accuracy for t in ok]) if ok else float("nan")
            singles = [best_single_threshold_share(pop, SIM_LLM, t.true_accuracy) for t in ok]
            reached = [s for s in singles if s is not None]
            missed = len(singles) - len(reached)
            single = f"{np.mean(reached):.3f}" + (f" ({missed} not reachable)" if missed else "")
            print(
                f"| {target} | {delta} | {chain.value} | {bound.value} | {len(trials)} | {len(ok)} | {met:.3f} | "
                f"{share:.3f} | {accuracy:.4f} | {single} |"
            )


if __name__ == "__main__":
    main()
