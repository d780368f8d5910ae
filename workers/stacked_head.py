"""The specialist's calibrated linear head as one matrix product: the same probabilities, computed faster.

Both of Cascade's heads are a ``CalibratedClassifierCV`` of linear models with temperature scaling
(``specialist.build_pipeline``: three fold models of a linear SVM; ``embedding.build_head``: one logistic
regression). scikit-learn predicts with each fold model in turn: it validates its input, computes the decision
function, converts it to logits and takes a softmax, fold after fold. Every fold's logits are linear in the
features, so the fold models' weights, each scaled by its fold's inverse temperature, stacked side by side give
every fold's logits from one product; a softmax per fold and their mean follow, as scikit-learn computes them.
The product runs in single precision; the probabilities equal scikit-learn's to ~1e-7
(``tests/workers/test_stacked_head.py`` compares them). On Banking77 the three-fold TF-IDF specialist predicts
~1.3x faster, as fast as a plain TF-IDF + logistic regression (``python -m bench.specialist_calibration``).

A head of any other shape has no stacked form (``StackedHead.of`` returns None) and scikit-learn predicts as usual.
"""

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sklearn.calibration import CalibratedClassifierCV, _TemperatureScaling
from sklearn.pipeline import Pipeline


@dataclass(frozen=True)
class StackedHead:
    """The fold models of a temperature-scaled linear ``CalibratedClassifierCV``, as one weight matrix."""

    weights: NDArray[np.float32]
    """(features, columns): each fold's weights times its inverse temperature, fold after fold; C-ordered, the
    layout a sparse matrix times a dense one reads fastest. Single precision, like the encoder's vectors: it halves
    the memory the product reads (probabilities agree with scikit-learn's double precision to ~1e-7)."""
    intercepts: NDArray[np.float32]
    folds: int
    binary: bool
    """Two classes: each fold has one column ``x`` and its logits are ``(-x, x)``, as scikit-learn makes them."""

    @classmethod
    def of(cls, classifier: object) -> "StackedHead | None":
        """The stacked form of ``classifier``, or None when it is not a fitted, temperature-scaled
        ``CalibratedClassifierCV`` of linear models over the same classes."""
        if not isinstance(classifier, CalibratedClassifierCV) or classifier.method != "temperature":
            return None
        classes = np.asarray(getattr(classifier, "classes_", []))
        folds = [_scaled(fold, classes) for fold in getattr(classifier, "calibrated_classifiers_", [])]
        scaled = [f for f in folds if f is not None]
        if not scaled or len(scaled) != len(folds):
            return None
        return cls(
            weights=np.ascontiguousarray(np.vstack([w for w, _ in scaled]).T, dtype=np.float32),
            intercepts=np.concatenate([b for _, b in scaled]).astype(np.float32),
            folds=len(scaled),
            binary=len(classes) == 2,
        )

    def predict_pipeline(self, pipeline: Pipeline, x: Any) -> NDArray[np.float64]:
        """What ``pipeline`` (whose last step this head stands for) predicts for ``x``: its earlier steps (the TF-IDF
        features, for a ``tfidf`` model) transform ``x``, then this head predicts."""
        for _, step in pipeline.steps[:-1]:
            x = step.transform(x)
        return self.predict_proba(x)

    def predict_proba(self, features: Any) -> NDArray[np.float64]:
        """Class probabilities of ``features`` (a sparse or dense matrix, as the head's input): the mean over folds
        of each fold's softmax."""
        logits = np.asarray(features.astype(np.float32, copy=False) @ self.weights)
        logits += self.intercepts
        # (items, folds, classes); with two classes each fold has one column x, and its logits are (-x, x)
        logits = np.stack([-logits, logits], axis=2) if self.binary else logits.reshape(len(logits), self.folds, -1)
        logits -= logits.max(axis=2, keepdims=True)
        np.exp(logits, out=logits)
        logits /= logits.sum(axis=2, keepdims=True)
        proba: NDArray[np.float64] = logits.mean(axis=1, dtype=np.float64)
        return proba


def _scaled(fold: Any, classes: NDArray[Any]) -> tuple[NDArray[np.float64], NDArray[np.float64]] | None:
    """One fold's weights (rows: its logits) and intercepts, times its inverse temperature; None when the fold is
    not a linear model with a decision function over ``classes`` and one temperature."""
    estimator, calibrators = fold.estimator, fold.calibrators
    coef, intercept = getattr(estimator, "coef_", None), getattr(estimator, "intercept_", None)
    if len(calibrators) != 1 or not isinstance(calibrators[0], _TemperatureScaling):
        return None
    if coef is None or intercept is None or not hasattr(estimator, "decision_function"):
        return None  # without a decision function, scikit-learn calibrates the model's probabilities
    fitted = np.asarray(estimator.classes_)  # scikit-learn fits the folds on the classes' indices
    if not np.array_equal(np.asarray(fold.classes), classes) or not np.array_equal(fitted, np.arange(len(classes))):
        return None
    rows = 1 if len(classes) == 2 else len(classes)
    coef, intercept = np.asarray(coef, dtype=np.float64), np.ravel(np.asarray(intercept, dtype=np.float64))
    if coef.ndim != 2 or coef.shape[0] != rows or intercept.shape != (rows,):
        return None
    beta = float(calibrators[0].beta_)
    return beta * coef, beta * intercept
