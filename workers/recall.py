"""The answer memory: the LLM's answers remembered with their texts' embeddings, so that a near-duplicate of an
item the LLM already answered takes that answer instead of a new LLM call (OCaTS' k-NN student, gated).

- What is remembered: for every item the LLM answered (escalated or explored), the ``minilm`` specialist's
  embedding of its text (unit length, float16) and the LLM's label. The LLM worker appends them as its answers
  arrive (``Remembered``); a shared store (``MemoryStore``: a Redis stream, ``cascade.broker.recall_store``)
  holds the last ``CASCADE_MEMORY_MAX`` of them.
- Whose memory: one per encoder, LLM model and prompt (``memory_name``). The vectors depend on the encoder only,
  the labels on the LLM and its prompt, so a specialist learned over the same encoder (``cascade learn``) keeps the
  memory, and a new encoder, LLM or prompt starts an empty one: another model's answers are never used.
- When it answers (``MemoryRule``): an item the rule escalates, whose ``k`` nearest remembered neighbours all carry
  the same label, each at cosine similarity at least ``similarity``, and that label is among the item's candidate
  labels. Calibration (``leave_one_out`` and ``cascade.workers.calibration``) measures the memory's accuracy on
  the calibration items and picks the similarity, and the policy's certificate counts the memory's answers.
- Ordering: each specialist chunk reads the memory once, at its start (``AnswerMemory.sync``): it sees every answer
  appended before that read and none after. Chunks of one job that run later see the answers of those before.
- Faults: an entry that cannot be decoded is skipped with a warning; a memory that was deleted or flushed is
  rebuilt from empty (the replica notices the stream went backwards). Neither can give a wrong answer, only fewer.
"""

import base64
import binascii
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger(__name__)

QUERY_BLOCK = 256
"""Items compared with the whole memory at once (a block of 256 x 50,000 similarities is 51 MB)."""


class MemoryRule(BaseModel):
    """When the memory answers instead of the LLM."""

    model_config = ConfigDict(frozen=True)

    k: int = Field(ge=1, le=50)
    similarity: float = Field(ge=-1.0, le=1.0)
    """Every one of the ``k`` nearest neighbours at least this similar (cosine), and all with the same label."""
    accuracy: float | None = None
    """The memory's accuracy where it answered, measured on the calibration's selection part (None: not
    calibrated, a similarity the job set)."""
    llm_accuracy: float | None = None
    """The LLM's accuracy on those same items."""
    n: int = 0
    """Calibration items the memory answered at this similarity (selection part)."""


@dataclass(frozen=True)
class Remembered:
    """One entry of the memory: an LLM label and the packed embedding of the text it was given for."""

    label: str
    vector: str


@dataclass(frozen=True)
class Recalled:
    label: str
    similarity: float
    """The smallest similarity among the agreeing neighbours."""


def memory_name(encoder_sha256: str, llm_model: str, prompt_version: str) -> str:
    """The memory of one encoder, LLM and prompt."""
    return hashlib.sha256(f"{encoder_sha256}\0{llm_model}\0{prompt_version}".encode()).hexdigest()[:24]


def normalised(vectors: NDArray[np.floating]) -> NDArray[np.float32]:
    v = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(v, axis=-1, keepdims=True)
    out: NDArray[np.float32] = (v / np.where(norms > 0, norms, 1.0)).astype(np.float32)
    return out


def pack(vector: NDArray[np.floating]) -> str:
    """An embedding as text for a message or a stream entry: unit length, float16, base64 (768 bytes at 384
    dimensions, 1,024 characters)."""
    return base64.b64encode(normalised(vector).astype("<f2").tobytes()).decode("ascii")


def unpack(text: str, dimension: int) -> NDArray[np.float32] | None:
    """The vector, or None when the text is no packed vector of this dimension."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        return None
    if len(raw) != 2 * dimension:
        return None
    vector: NDArray[np.float32] = np.frombuffer(raw, dtype="<f2").astype(np.float32)
    return vector if np.all(np.isfinite(vector)) else None


class MemoryStore(Protocol):
    """Where the memories live, shared by the workers (``cascade.broker.recall_store.RedisMemoryStore``)."""

    def append(self, name: str, entries: Sequence[Remembered]) -> None:
        """Add entries at the end; the oldest beyond the store's bound are dropped."""

    def read(self, name: str, after: str | None) -> tuple[list[Remembered], str | None, bool]:
        """The entries after position ``after`` (all when None), the position of the last one, and whether the
        memory went backwards (deleted, flushed, rebuilt: the reader must start again from what it is given)."""


@dataclass
class AnswerMemory:
    """A worker's replica of one memory: the vectors as one matrix, the labels beside them."""

    dimension: int
    bound: int
    vectors: NDArray[np.float32] = field(init=False)
    labels: list[str] = field(default_factory=list)
    position: str | None = None
    skipped: int = 0
    """Entries that could not be decoded (and were ignored)."""

    def __post_init__(self) -> None:
        self.vectors = np.empty((0, self.dimension), dtype=np.float32)

    def __len__(self) -> int:
        return len(self.labels)

    def clear(self) -> None:
        self.vectors = np.empty((0, self.dimension), dtype=np.float32)
        self.labels, self.position = [], None

    def extend(self, entries: Sequence[Remembered]) -> None:
        rows, labels = [], []
        for entry in entries:
            vector = unpack(entry.vector, self.dimension)
            if vector is None or not entry.label:
                self.skipped += 1
                continue
            rows.append(vector)
            labels.append(entry.label)
        if len(rows) < len(entries):
            log.warning("answer memory: %d entries could not be decoded and were ignored", len(entries) - len(rows))
        if rows:
            self.vectors = np.vstack([self.vectors, np.stack(rows)])[-self.bound :]
            self.labels = (self.labels + labels)[-self.bound :]

    def sync(self, store: MemoryStore, name: str) -> None:
        """Read what was appended since the last read: the memory as of now."""
        entries, position, backwards = store.read(name, self.position)
        if backwards:
            log.warning("answer memory %s was deleted or rebuilt: starting it again from the store", name)
            self.clear()
        self.extend(entries)
        if position is not None:
            self.position = position

    def lookup(self, vectors: NDArray[np.floating], rule: MemoryRule) -> list[Recalled | None]:
        """For each (unit) vector, the label its ``k`` nearest neighbours agree on, if all are similar enough."""
        if len(self) < rule.k:
            return [None] * len(vectors)
        found = _agreeing(normalised(vectors), self.vectors, np.asarray(self.labels), rule.k)
        return [r if r is not None and r.similarity >= rule.similarity else None for r in found]


def _agreeing(
    queries: NDArray[np.float32],
    memory: NDArray[np.float32],
    labels: NDArray[np.str_],
    k: int,
    own: NDArray[np.int_] | None = None,
) -> list[Recalled | None]:
    """For each query, the label its ``k`` most similar memory rows all carry, with the smallest of their
    similarities (None where they disagree). ``own``: each query's own row in the memory (-1: none), never counted.
    The one neighbour rule, for the workers' look-ups and calibration's leave-one-out alike."""
    found: list[Recalled | None] = [None] * len(queries)
    for start in range(0, len(queries), QUERY_BLOCK):
        sims = queries[start : start + QUERY_BLOCK] @ memory.T
        if own is not None:
            rows = np.flatnonzero(own[start : start + QUERY_BLOCK] >= 0)
            sims[rows, own[start + rows]] = -np.inf  # not its own answer
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        for row, idx in enumerate(top):
            chosen = labels[idx]
            if np.all(chosen == chosen[0]):
                found[start + row] = Recalled(str(chosen[0]), float(sims[row, idx].min()))
    return found


def leave_one_out(
    vectors: NDArray[np.floating], llm_labels: Sequence[str | None], k: int
) -> tuple[list[str | None], NDArray[np.float64]]:
    """What the memory would answer for each calibration item, remembering the LLM's answers on all the other
    calibration items it asked: the agreed label and the smallest similarity among its ``k`` nearest remembered
    neighbours (None and NaN where they disagree or fewer than ``k`` are remembered)."""
    queries = normalised(vectors)
    asked = np.array([label is not None for label in llm_labels], dtype=bool)
    if int(asked.sum()) <= k:
        return [None] * len(queries), np.full(len(queries), np.nan)
    own = np.full(len(queries), -1)
    own[asked] = np.arange(int(asked.sum()))
    memory_labels = np.asarray([label for label in llm_labels if label is not None])
    found = _agreeing(queries, queries[asked], memory_labels, k, own)
    similarity = np.array([np.nan if r is None else r.similarity for r in found])
    return [None if r is None else r.label for r in found], similarity
