"""Specialist calibration against speed: the 3-fold temperature ensemble, one refitted classifier, and plain
TF-IDF + logistic regression, on Banking77.

    python -m bench.specialist_calibration [--items 100000] [--rounds 3] [--features tfidf|minilm]

Each model is fitted on the train split (10,003 texts) and measured on the test split (3,080): accuracy, expected
calibration error (15 equal-width bins of the top probability) and predict_proba items/s on the test texts repeated
to ``--items``, in batches of 2,000; the speeds are measured in interleaved rounds (the median is printed) so that
a busy machine slows every model alike, and each is divided by the plain model's, from the same run.

``tfidf``: ``build_pipeline()`` with ``ensemble=True`` (three fold models, their probabilities averaged) and with
``ensemble=False`` (one model refitted on everything, the calibrator fitted on 3-fold held-out scores), against
TF-IDF + logistic regression. ``minilm``: the same two for ``build_head()`` on MiniLM vectors (cached in bench/out),
against a plain logistic regression on the vectors; only the head is timed, the encoder is not. ``*`` marks the
variant the specialist uses; ``stacked`` rows are a variant as a loaded specialist predicts it (its head as one
matrix product, ``cascade.workers.stacked_head``: the same probabilities, faster).
"""

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from bench.common import OUT, banking, items_per_second, plain_tfidf_lr, repeated
from cascade.workers import embedding, specialist
from cascade.workers.evaluation import expected_calibration_error
from cascade.workers.stacked_head import StackedHead

PLAIN = "plain"
DEFAULT = " *"
"""Marks the variant that ``build_pipeline()`` / ``build_head()`` builds today."""


def candidates(features: str) -> dict[str, Pipeline]:
    build: Callable[[], Pipeline]
    if features == "tfidf":
        build, plain = specialist.build_pipeline, plain_tfidf_lr()
    else:
        build = embedding.build_head
        plain = Pipeline([("classifier", LogisticRegression(C=embedding.HEAD_C, max_iter=2000))])
    default = build().get_params()["classifier__ensemble"] is not False  # "auto" is True for an unfrozen model
    return {
        f"cv=3 ensemble{DEFAULT * default}": build().set_params(classifier__ensemble=True),
        f"ensemble=False (one model){DEFAULT * (not default)}": build().set_params(classifier__ensemble=False),
        PLAIN: plain,
    }


def minilm_vectors(texts: list[str], split: str) -> Any:
    encoder = embedding.Encoder.open()
    cache = OUT / f"minilm-{split}-{encoder.sha256[:12]}.npy"
    if not cache.exists():
        OUT.mkdir(parents=True, exist_ok=True)
        np.save(cache, encoder.encode(texts))
    return np.load(cache)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--features", choices=["tfidf", "minilm"], default="tfidf")
    args = parser.parse_args()

    train_x: Any
    test_x: Any
    train_x, train_y = banking("train")
    test_x, test_y = banking("test")
    if args.features == "minilm":
        train_x, test_x = minilm_vectors(train_x, "train"), minilm_vectors(test_x, "test")
        many: Any = test_x[np.arange(args.items) % len(test_x)]
    else:
        many = repeated(test_x, args.items)

    models = candidates(args.features)
    rows: dict[str, tuple[float, float, int, float]] = {}
    predictors: dict[str, Callable[[Any], Any]] = {}
    for name, model in models.items():
        start = time.perf_counter()
        model.fit(train_x, train_y)
        fit_seconds = time.perf_counter() - start
        folds = len(getattr(model[-1], "calibrated_classifiers_", []))
        ways = {name: model.predict_proba}
        head = StackedHead.of(model[-1])
        if head is not None:
            stacked = f"{name.removesuffix(DEFAULT)}, stacked{DEFAULT * name.endswith(DEFAULT)}"
            ways[stacked] = partial(head.predict_pipeline, model)  # as a loaded specialist predicts
        for way, predict in ways.items():
            proba = predict(test_x)
            ok = model.classes_[proba.argmax(axis=1)] == np.asarray(test_y)
            rows[way] = (float(ok.mean()), expected_calibration_error(proba, ok), folds, fit_seconds)
            predictors[way] = predict

    speeds: dict[str, list[float]] = {name: [] for name in predictors}
    for _ in range(args.rounds):
        for name, predict in predictors.items():
            speeds[name].append(items_per_second(predict, many))
    rate = {name: statistics.median(s) for name, s in speeds.items()}

    print(
        f"Banking77, features {args.features}: fit on {len(train_y)}, measured on {len(test_y)}; speed on "
        f"{args.items} items, median of {args.rounds} interleaved rounds"
    )
    print(f"{'model':40} {'accuracy':>8} {'ECE':>7} {'models':>6} {'fit s':>6} {'items/s':>9} {'/ plain':>7}  rounds")
    for name, (accuracy, ece, folds, fit_seconds) in rows.items():
        rounds = ", ".join(f"{s:,.0f}" for s in speeds[name])
        print(
            f"{name:40} {accuracy:8.4f} {ece:7.4f} {folds or '-':>6} {fit_seconds:6.1f} {rate[name]:9,.0f} "
            f"{rate[name] / rate[PLAIN]:7.2f}  {rounds}"
        )


if __name__ == "__main__":
    main()
