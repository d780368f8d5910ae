"""Labelled data files: a CSV with ``text`` and ``label`` columns (any path)."""

import csv
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

from cascade.workers.errors import InputError


@dataclass(frozen=True)
class Labelled:
    texts: list[str]
    labels: list[str]
    sha256: str
    """Checksum of the file's bytes."""


def read_labelled_csv(path: str | Path) -> Labelled:
    """Read a CSV with a header row holding ``text`` and ``label``; a bad row is an error naming its line."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    raw = path.read_bytes()
    try:
        content = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not valid UTF-8 ({e.reason} at byte {e.start})") from e
    reader = csv.DictReader(io.StringIO(content, newline=""))
    missing = {"text", "label"} - set(reader.fieldnames or [])
    if missing:
        raise InputError(f"{path}: line 1: the header has no {', '.join(sorted(missing))} column")
    texts: list[str] = []
    labels: list[str] = []
    for row in reader:
        line = reader.line_num
        text, label = (row.get("text") or "").strip(), (row.get("label") or "").strip()
        if not text:
            raise InputError(f"{path}: line {line}: field 'text' is empty")
        if not label:
            raise InputError(f"{path}: line {line}: field 'label' is empty")
        texts.append(text)
        labels.append(label)
    if not texts:
        raise InputError(f"{path}: no data rows")
    return Labelled(texts, labels, hashlib.sha256(raw).hexdigest())
