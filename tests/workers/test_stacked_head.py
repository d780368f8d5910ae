from pathlib import Path

import numpy as np
import pytest
from sklearn.calibration import CalibratedClassifierCV
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.svm import LinearSVC

from cascade.workers import embedding, specialist
from cascade.workers.data import read_labelled_csv
from cascade.workers.stacked_head import StackedHead
from tests.conftest import dataset

# The stacked head computes in single precision, scikit-learn in double (in single for float32 vectors).


def stacked_proba(pipeline: Pipeline, features: object) -> np.ndarray:
    head = StackedHead.of(pipeline.steps[-1][1])
    assert head is not None
    return head.predict_pipeline(pipeline, features)


@pytest.mark.parametrize("name", ["banking77", "sms_spam"])
@pytest.mark.parametrize("ensemble", [True, False])
def test_the_stacked_tfidf_head_gives_scikit_learns_probabilities(name: str, ensemble: bool) -> None:
    """Many classes and two (whose folds have one column each), three fold models and one."""
    train = read_labelled_csv(dataset(name) / "train.csv")
    test = read_labelled_csv(dataset(name) / "test.csv")
    pipeline = specialist.build_pipeline().set_params(classifier__ensemble=ensemble).fit(train.texts, train.labels)
    expected = pipeline.predict_proba(test.texts[:500])
    got = stacked_proba(pipeline, test.texts[:500])
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    assert (got.argmax(axis=1) == expected.argmax(axis=1)).all()


@pytest.mark.parametrize("classes", [2, 5])
def test_the_stacked_embedding_head_gives_scikit_learns_probabilities(classes: int) -> None:
    """``embedding.build_head``: a logistic regression on dense vectors, one refitted model. The vectors are
    float32, as the encoder's."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 16)).astype(np.float32)
    y = [f"c{i}" for i in rng.integers(0, classes, size=300)]
    pipeline = embedding.build_head().fit(x, y)
    np.testing.assert_allclose(stacked_proba(pipeline, x), pipeline.predict_proba(x), rtol=0, atol=1e-6)


def test_heads_without_a_stacked_form_are_left_to_scikit_learn() -> None:
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(120, 4)), [f"c{i}" for i in rng.integers(0, 3, size=120)]
    sigmoid = CalibratedClassifierCV(LinearSVC(), method="sigmoid", cv=3).fit(x, y)
    unfitted = CalibratedClassifierCV(LogisticRegression(), method="temperature", cv=3)
    assert StackedHead.of(sigmoid) is None
    assert StackedHead.of(unfitted) is None
    assert StackedHead.of(LogisticRegression().fit(x, y)) is None


def test_a_loaded_specialist_predicts_through_its_stacked_head(banking_model: Path) -> None:
    model = specialist.load(banking_model)
    assert model.head is not None
    assert model.head.folds == 3
    texts = read_labelled_csv(dataset("banking77") / "test.csv").texts[:300]
    np.testing.assert_allclose(model.predict_proba(texts), model.pipeline.predict_proba(texts), rtol=0, atol=1e-6)
