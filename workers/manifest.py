"""A model folder's manifest: what was trained, on what data, with which libraries, and the model file's checksum.

Light on purpose (no scikit-learn): submitting a job reads the manifest without loading the model.
"""

import hashlib
import json
from importlib.metadata import version
from pathlib import Path

from pydantic import BaseModel, ValidationError

from cascade.workers.errors import ModelError

FORMAT = "cascade-specialist/1"
MANIFEST_FILE = "manifest.json"
VERSIONED = ("scikit-learn", "skops", "numpy", "scipy")
"""Libraries whose versions a model must be loaded with (the ones it was saved with)."""


class HoldoutMetrics(BaseModel):
    holdout_accuracy: float
    n_train: int
    n_holdout: int
    train_seconds: float


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


def library_versions() -> dict[str, str]:
    return {name: version(name) for name in VERSIONED}


def read_manifest(folder: str | Path) -> Manifest:
    folder = Path(folder)
    path = folder / MANIFEST_FILE
    if not path.is_file():
        raise ModelError(f"{folder}: no {MANIFEST_FILE}; not a model folder written by `cascade train`")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise ModelError(f"{path}: not a Cascade specialist manifest (format must be {FORMAT!r})")
    try:
        return Manifest.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        raise ModelError(f"{path}: field {'.'.join(map(str, first['loc']))}: {first['msg']}") from e


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
