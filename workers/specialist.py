"""The specialist: a calibrated linear text classifier, and the only model files Cascade will load.

A model folder holds ``model.skops`` (skops' format: no pickle) and ``manifest.json`` (labels, held-out metrics,
the training data checksum, library versions and the model file's SHA-256). Loading checks, in this order, that
the manifest is Cascade's, that the model file's checksum matches it, that the library versions are the ones
running now, and that the file holds only the types in ``TRUSTED_TYPES``. Anything else is refused.

Features are TF-IDF (``tfidf``, the default, inside the pipeline) or sentence embeddings (``minilm``,
``workers/embedding.py``): then the pipeline is only the head, and the manifest also names the encoder folder,
its checksum (verified too) and the versions of torch and sentence-transformers. Either way ``Specialist.sha256``
is the manifest's ``identity``, what a job pins: the head's checksum, bound to the encoder's when there is one.
"""

import math
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sklearn.calibration import CalibratedClassifierCV
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.svm import LinearSVC

from cascade.workers.embedding import Encoder, build_head
from cascade.workers.errors import InputError, ModelError
from cascade.workers.manifest import (
    FORMATS,
    MANIFEST_FILE,
    EncoderManifest,
    Features,
    HoldoutMetrics,
    Lineage,
    Manifest,
    file_sha256,
    library_versions,
    read_manifest,
)
from cascade.workers.stacked_head import StackedHead

MODEL_FILE = "model.skops"
_WALKED_TORCH = "sklearn.externals.array_api_compat.torch"

# Types skops does not trust by default that a Cascade specialist holds. Nothing else is loaded.
TRUSTED_TYPES = [
    "sklearn.calibration._CalibratedClassifier",
    "sklearn.calibration._TemperatureScaling",
]


@cache
def _skops_io() -> ModuleType:
    """``skops.io``, imported without importing torch.

    skops lists its trusted types with scikit-learn's ``all_estimators()``, whose package walk imports
    ``sklearn.externals.array_api_compat.torch`` and with it torch, whenever torch is installed (the embeddings
    extra): 3-5 s and ~280 MB more in every process, TF-IDF ones included. A placeholder for that one package
    during the import keeps the walk out of it; the walk skips ``externals`` anyway, so the types are the same.
    """
    placed = _WALKED_TORCH not in sys.modules
    if placed:
        sys.modules[_WALKED_TORCH] = ModuleType(_WALKED_TORCH)
    try:
        import skops.io as sio
    finally:
        if placed:
            del sys.modules[_WALKED_TORCH]
    module: ModuleType = sio
    return module


def build_pipeline(seed: int = 0) -> Pipeline:
    """TF-IDF word 1-2-grams, a linear SVM, and temperature scaling (3-fold) for honest probabilities.

    On Banking77 temperature scaling gives an expected calibration error of 0.02 (isotonic 0.10, a plain
    logistic regression 0.16) and costs one softmax at prediction, where per-class isotonic calibrators cost
    a fixed ~40 ms per call (77 classes x 3 folds), which dominated chunks of a few hundred items.

    The three fold models are kept (``ensemble=True``): one model refitted on everything with the temperature of
    the folds' held-out scores (``ensemble=False``, as ``build_head`` does) predicts ~1.3x faster but is
    overconfident on Banking77 (test ECE 0.040 against 0.021, mean confidence 0.93 at accuracy 0.89); prediction
    time is mostly the TF-IDF transform either way (``python -m bench.specialist_calibration``).
    """
    return Pipeline(
        [
            ("features", TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1)),
            ("classifier", CalibratedClassifierCV(LinearSVC(C=1.0, random_state=seed), method="temperature", cv=3)),
        ]
    )


@dataclass(frozen=True)
class Specialist:
    """A loaded, verified specialist."""

    pipeline: Pipeline
    manifest: Manifest
    sha256: str
    """The manifest's ``identity``: the head's checksum, with the encoder's when there is one."""
    encoder: Encoder | None = None
    head: StackedHead | None = None
    """The head's stacked form (``stacked_head``), which predicts the same probabilities faster; None: predict
    through the pipeline."""

    @property
    def labels(self) -> list[str]:
        return list(self.manifest.labels)

    def embed(self, texts: list[str]) -> NDArray[np.float32] | None:
        """The texts' embeddings (unit length) with an encoder, None without one."""
        return None if self.encoder is None else self.encoder.encode(texts)

    def predict_proba(self, texts: list[str], vectors: NDArray[np.float32] | None = None) -> NDArray[np.float64]:
        """Class probabilities; ``vectors``: the texts' embeddings when already computed (``embed``)."""
        if self.encoder is None:
            features: list[str] | NDArray[np.float32] = texts
        else:
            features = self.encoder.encode(texts) if vectors is None else vectors
        if self.head is not None:
            return self.head.predict_pipeline(self.pipeline, features)
        proba: NDArray[np.float64] = self.pipeline.predict_proba(features)
        return proba


@dataclass(frozen=True)
class TrainReport:
    pipeline: Pipeline
    labels: list[str]
    holdout_accuracy: float
    n_train: int
    n_holdout: int
    seconds: float
    encoder: Encoder | None = None
    seconds_per_item: float | None = None
    """Prediction time per item on the held-out items, the encoder's share included (``HoldoutMetrics``)."""


def train(
    texts: list[str],
    labels: list[str],
    holdout: float = 0.2,
    seed: int = 0,
    encoder: Encoder | None = None,
    extra_texts: Sequence[str] = (),
    extra_labels: Sequence[str] = (),
    extra_weight: float = 1.0,
) -> TrainReport:
    """Fit on a stratified split, measure on the held-out part, then refit on everything.

    With an ``encoder`` (``--features minilm``) the texts are encoded once and the head is fitted on the vectors.
    ``extra_texts`` and ``extra_labels`` (labels that are not gold: the LLM's, ``cascade learn``) are fitted with
    the sample weight ``extra_weight``, the gold items with weight 1, through the pipeline's ``classifier`` step
    (its classifier and its temperature both weigh them); they are never held out, so the held-out accuracy is
    measured on gold labels only, and ``n_train`` counts them.
    """
    _check_labels(labels)
    if len(extra_texts) != len(extra_labels):
        raise InputError(f"{len(extra_texts)} extra texts but {len(extra_labels)} extra labels")
    unknown = sorted(set(extra_labels) - set(labels))
    if unknown:
        raise InputError(f"extra labels that the training data does not have: {', '.join(unknown[:10])}")
    if extra_texts and not extra_weight > 0:
        raise InputError(f"the extra items' weight must be above 0, not {extra_weight}")
    start = time.perf_counter()
    features = texts if encoder is None else encoder.encode(texts)
    encode_seconds = time.perf_counter() - start
    extra = list(extra_texts) if encoder is None else encoder.encode(extra_texts)

    def fit(x: Any, y: list[str]) -> Pipeline:
        if not extra_texts:
            return _build(seed, encoder).fit(x, y)
        x_all = [*x, *extra] if encoder is None else np.concatenate([x, extra])
        weight = np.concatenate([np.ones(len(y)), np.full(len(extra_labels), extra_weight)])
        return _build(seed, encoder).fit(x_all, [*y, *extra_labels], classifier__sample_weight=weight)

    x_fit, x_hold, y_fit, y_hold = train_test_split(
        features, labels, test_size=holdout_size(labels, holdout), random_state=seed, stratify=labels
    )
    probe = fit(x_fit, list(y_fit))
    predicting = time.perf_counter()
    accuracy = float(np.mean(probe.predict(x_hold) == np.asarray(y_hold)))
    per_item = (time.perf_counter() - predicting) / len(y_hold) + encode_seconds / len(labels)
    final = fit(features, labels)
    return TrainReport(
        pipeline=final,
        labels=[str(c) for c in final.classes_],
        holdout_accuracy=accuracy,
        n_train=len(x_fit) + len(extra_labels),
        n_holdout=len(x_hold),
        seconds=time.perf_counter() - start,
        encoder=encoder,
        seconds_per_item=per_item,
    )


def holdout_size(labels: list[str], share: float) -> int:
    """Items held out to measure the model: ``share`` of them, but at least one per label (a stratified split needs
    it), leaving at least 3 per label to fit (the 3-fold calibration needs them)."""
    classes = len(set(labels))
    size = max(math.ceil(share * len(labels)), classes)
    if len(labels) - size < 3 * classes:
        raise InputError(
            f"{len(labels)} training items for {classes} labels: too few to hold out one per label and fit on "
            "three per label; give at least 4 examples of each label"
        )
    return size


def _check_labels(labels: list[str]) -> None:
    if len(set(labels)) < 2:
        raise InputError("training data needs at least two distinct labels")
    counts = {lab: labels.count(lab) for lab in set(labels)}
    rare = sorted(lab for lab, n in counts.items() if n < 4)
    if rare:
        raise InputError(f"labels with fewer than 4 examples cannot be split and calibrated: {', '.join(rare)}")


def _build(seed: int, encoder: Encoder | None) -> Pipeline:
    return build_pipeline(seed) if encoder is None else build_head()


def save(report: TrainReport, folder: str | Path, data_sha256: str, lineage: Lineage | None = None) -> Path:
    """Write ``model.skops`` and ``manifest.json``; ``lineage`` for a model learned from LLM answers."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sio = _skops_io()
    untrusted = set(sio.get_untrusted_types(data=sio.dumps(report.pipeline)))
    unexpected = untrusted - set(TRUSTED_TYPES)
    if unexpected:
        raise ModelError(f"the pipeline holds types Cascade would refuse to load: {sorted(unexpected)}")
    model_path = folder / MODEL_FILE
    sio.dump(report.pipeline, model_path)
    features = Features.TFIDF if report.encoder is None else Features.MINILM
    manifest = Manifest(
        format=FORMATS[features],
        created_at=time.time(),
        labels=report.labels,
        metrics=HoldoutMetrics(
            holdout_accuracy=report.holdout_accuracy,
            n_train=report.n_train,
            n_holdout=report.n_holdout,
            train_seconds=report.seconds,
            seconds_per_item=report.seconds_per_item,
        ),
        data_sha256=data_sha256,
        model_sha256=file_sha256(model_path),
        versions=library_versions(features),
        python=platform.python_version(),
        features=features,
        encoder=None if report.encoder is None else report.encoder.describe(),
        lineage=lineage,
    )
    (folder / MANIFEST_FILE).write_text(manifest.model_dump_json(indent=2) + "\n")
    return folder


def load(folder: str | Path, expected_sha256: str | None = None, threads: int | None = None) -> Specialist:
    """Load a model folder written by ``save``, after verifying it; raise ``ModelError`` otherwise.

    ``expected_sha256`` is the ``identity`` a job pinned; ``threads`` is torch's, for a ``minilm`` model
    (``CASCADE_ENCODER_THREADS``, 1, when None).
    """
    folder = Path(folder)
    manifest = read_manifest(folder)
    model_path = folder / MODEL_FILE
    if not model_path.is_file():
        raise ModelError(f"{folder}: no {MODEL_FILE}")
    digest = file_sha256(model_path)
    if digest != manifest.model_sha256:
        raise ModelError(f"{model_path}: checksum {digest[:12]}… does not match the manifest; the file was altered")
    if expected_sha256 is not None and manifest.identity != expected_sha256:
        raise ModelError(f"{folder}: identity {manifest.identity[:12]}… is not the model this job was submitted with")
    _check_versions(folder, manifest)
    pipeline = _load_head(model_path, manifest)
    encoder = None if manifest.encoder is None else _open_encoder(manifest.encoder, pipeline, threads)
    head = StackedHead.of(pipeline.steps[-1][1])
    return Specialist(pipeline=pipeline, manifest=manifest, sha256=manifest.identity, encoder=encoder, head=head)


def _check_versions(folder: Path, manifest: Manifest) -> None:
    running = library_versions(manifest.features)
    saved = manifest.versions
    mismatched = [f"{k} {saved.get(k)} (running {v})" for k, v in running.items() if saved.get(k) != v]
    if mismatched:
        raise ModelError(f"{folder}: saved with other library versions: {', '.join(mismatched)}; retrain it")


def _load_head(model_path: Path, manifest: Manifest) -> Pipeline:
    sio = _skops_io()
    untrusted = set(sio.get_untrusted_types(file=model_path))
    unexpected = untrusted - set(TRUSTED_TYPES)
    if unexpected:
        raise ModelError(f"{model_path}: holds types Cascade does not load: {sorted(unexpected)}")
    try:
        pipeline = sio.load(model_path, trusted=sorted(untrusted))
    except Exception as e:  # skops raises many kinds on a damaged file
        raise ModelError(f"{model_path}: cannot be loaded ({e})") from e
    if not isinstance(pipeline, Pipeline) or [str(c) for c in pipeline.classes_] != manifest.labels:
        raise ModelError(f"{model_path}: its labels do not match the manifest")
    if ("features" in pipeline.named_steps) != (manifest.features is Features.TFIDF):
        raise ModelError(f"{model_path}: not a head for features {manifest.features.value!r}, as the manifest says")
    return pipeline


def _open_encoder(entry: EncoderManifest, head: Pipeline, threads: int | None) -> Encoder:
    encoder = Encoder.from_manifest(entry, threads=threads)
    if encoder.dimension != entry.dimension or head.n_features_in_ != entry.dimension:
        raise ModelError(f"{encoder.path}: {encoder.dimension}-dimensional vectors; the head takes {entry.dimension}")
    return encoder


def top_candidates(proba: NDArray[np.float64], labels: list[str], k: int) -> list[str]:
    """The ``k`` most probable labels, most probable first; all labels when ``k`` is 0."""
    order = np.argsort(-proba, kind="stable")
    if k > 0:
        order = order[:k]
    return [labels[i] for i in order]
