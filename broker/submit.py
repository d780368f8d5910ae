"""Submission: stream an input file into a job, chunk by chunk, and enqueue each chunk as it is stored."""

import codecs
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from cascade.broker.claims import IdClaims
from cascade.broker.intake import Intake, duplicate
from cascade.broker.settings import Settings
from cascade.workers import lifecycle
from cascade.workers.errors import InputError, ModelError
from cascade.workers.items import Item, ItemError
from cascade.workers.jobs import JobSpec, OnLLMError, parse_window
from cascade.workers.lifecycle import Sweep
from cascade.workers.manifest import read_manifest
from cascade.workers.policy import load_policy
from cascade.workers.prompts import DEFAULT_PROMPT, Prompt, check_labels, load_prompt
from cascade.workers.storage import JobStore

log = logging.getLogger(__name__)
Enqueue = Callable[[str, int], None]
"""Sends chunk ``index`` of job ``job_id`` to the specialist queue."""


Opener = Callable[[], AbstractContextManager[IO[bytes]]]
"""Opens an input file to read (a local file, or an upload in the file store)."""


def parse_file(path: Path | Opener, intake: Intake) -> Iterator[Item | ItemError]:
    """Every non-blank line of a JSONL file, as an item or the error that refuses it. A UTF-8 byte order mark
    at the start of the file is dropped; a line over ``intake.max_line_bytes`` is refused without being held in
    memory."""
    limit = intake.max_line_bytes
    opened = path.open("rb") if isinstance(path, Path) else path()
    with opened as f:
        line_no = 0
        while raw := f.readline(limit + 1):
            line_no += 1
            if len(raw) > limit and not raw.endswith(b"\n"):
                yield intake.too_long(line_no, len(raw) + _skip_line(f))
                continue
            if line_no == 1:
                raw = raw.removeprefix(codecs.BOM_UTF8)
            if raw.strip():
                yield intake.parse(line_no, raw.rstrip(b"\r\n"))


def _skip_line(f: IO[bytes]) -> int:
    """Reads past the rest of a line, a MiB at a time; returns how many bytes it had."""
    size = 0
    while (rest := f.readline(1024 * 1024)) and not rest.endswith(b"\n"):
        size += len(rest)
    return size + len(rest)


@dataclass
class Pace:
    """How far an intake may run ahead of the workers: at most ``ahead`` chunks stored and not yet done; waiting at
    most ``patience`` seconds for one more to be done, and not past ``until`` (``time.monotonic``), after which
    it stops waiting for good (a Celery task must end before its visibility timeout)."""

    ahead: int | None
    patience: float
    until: float
    poll: float = 0.05

    @classmethod
    def of(cls, settings: Settings, size: int) -> "Pace":
        ahead = max(1, settings.intake_ahead // size) if settings.intake_ahead else None
        return cls(ahead, settings.intake_patience, time.monotonic() + settings.visibility_timeout / 2)

    def wait(self, store: JobStore, job_id: str, stored: int) -> None:
        """Before storing chunk ``stored``: wait while ``ahead`` chunks or more wait for the workers."""
        if self.ahead is None:
            return
        done, since = store.chunks_done(job_id), time.monotonic()
        while stored - done >= self.ahead and store.status(job_id).accepts_work:
            now = time.monotonic()
            if now - since > self.patience or now > self.until:
                log.warning("job %s: its workers keep no pace with its intake; the rest of it is stored now", job_id)
                self.ahead = None
                return
            time.sleep(self.poll)
            if (now_done := store.chunks_done(job_id)) > done:
                done, since = now_done, time.monotonic()


class _Chunker:
    """Writes a job's chunks and refused lines as they come, and enqueues each chunk once."""

    def __init__(self, store: JobStore, enqueue: Enqueue, job_id: str, pace: Pace, claims: IdClaims) -> None:
        self.store, self.enqueue, self.job_id, self.pace, self.claims = store, enqueue, job_id, pace, claims
        self.sent = store.chunks_sent(job_id)  # an intake that runs again skips these
        self.chunks = 0
        self.refused: list[ItemError] = []

    def refuse(self, error: ItemError) -> None:
        self.refused.append(error)
        if len(self.refused) >= 1000:
            self.flush_refused()

    def flush_refused(self) -> None:
        self.store.put_invalid(self.job_id, self.refused)
        self.refused = []

    def add(self, items: list[Item]) -> None:
        owns = self.claims.claim(items)
        for item, own in zip(items, owns, strict=True):
            if not own:
                self.refuse(duplicate(item))
        kept = [item for item, own in zip(items, owns, strict=True) if own]
        if not kept:
            return
        if self.chunks >= self.sent:
            self.pace.wait(self.store, self.job_id, self.chunks)
            self.flush_refused()  # every line up to the chunk's last has its place once the chunk is stored
            self.store.put_chunk(self.job_id, self.chunks, kept)
            # A job asked to end meanwhile gets its chunks stored (its sweep reads them) but not enqueued.
            if self.store.status(self.job_id).accepts_work:
                self.enqueue(self.job_id, self.chunks)
            self.store.chunk_sent(self.job_id, self.chunks, kept[-1].line)
        self.chunks += 1


def create_job(store: JobStore, settings: Settings, spec: JobSpec) -> str:
    """A new job for a file the caller reads (the CLI), with the default completion window
    (``CASCADE_COMPLETION_WINDOW``): a job nobody finishes still ends."""
    return store.create(spec, window=parse_window(settings.completion_window, settings.job_ttl))


CHUNK_SIZES = range(500, 5001)
"""The sizes an unset ``CASCADE_CHUNK_SIZE`` chooses among: at least 500 (what every chunk was before, still the
size for a slow model: with MiniLM, 500 items take ~2 s), at most 5,000 (a chunk's escalations are one LLM task)."""


def chunk_size(settings: Settings, spec: JobSpec) -> int:
    """Items per specialist task of a job: ``CASCADE_CHUNK_SIZE`` when set; else as many as the job's specialist
    predicts in ``CASCADE_CHUNK_SECONDS``, by the speed its manifest recorded at training, within ``CHUNK_SIZES``
    (the smallest when the manifest recorded none or cannot be read). Fast models get larger chunks: each task's
    fixed costs then weigh less (``python -m bench.specialist_throughput``)."""
    if settings.chunk_size is not None:
        return settings.chunk_size
    try:
        per_item = read_manifest(spec.model_path).metrics.seconds_per_item
    except ModelError:
        per_item = None
    if not per_item or per_item <= 0:
        return CHUNK_SIZES.start
    return max(CHUNK_SIZES.start, min(CHUNK_SIZES.stop - 1, round(settings.chunk_seconds / per_item)))


def submit_file(
    store: JobStore,
    enqueue: Enqueue,
    settings: Settings,
    path: str | Path | Opener,
    spec: JobSpec,
    job_id: str | None = None,
    sweep: Sweep | None = None,
) -> str:
    """Create a job from a JSONL file (or fill ``job_id``, created already); refused lines go to the job's errors
    with their line number.

    Reading the same file into the same job again (a worker died during intake) writes the same chunks and
    records, and skips the chunks already enqueued. A job asked to end while its input is read enqueues no more
    chunks, and its sweep is sent when the whole input is stored."""
    if not callable(path):
        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: no such file")
    if job_id is None:
        job_id = create_job(store, settings, spec)
    elif store.status(job_id).is_final:  # an intake delivered again after its job ended
        return job_id
    size = chunk_size(settings, spec)
    chunk: list[Item] = []
    total = 0
    intake = Intake(settings.max_text_chars, settings.max_id_chars, models=settings.llm_models(spec.llm_model))
    with IdClaims() as claims:
        chunker = _Chunker(store, enqueue, job_id, Pace.of(settings, size), claims)
        for parsed in parse_file(path, intake):
            total += 1
            if isinstance(parsed, ItemError):
                chunker.refuse(parsed)
                continue
            chunk.append(parsed)
            if len(chunk) >= size:
                chunker.add(chunk)
                chunk = []
        chunker.add(chunk)
        chunker.flush_refused()
    lifecycle.intake_finished(store, sweep, job_id, total, chunker.chunks)
    return job_id


def build_spec(
    settings: Settings,
    model: Path,
    threshold: float = 0.5,
    top_k: int | None = None,
    on_llm_error: OnLLMError = OnLLMError.KEEP,
    policy_file: Path | None = None,
    max_escalation: float | None = None,
    max_llm_cost: float | None = None,
    explore: float | None = None,
    memory_similarity: float | None = None,
    memory_k: int = 3,
    answer_cache: bool = True,
    prompt_file: Path | None = None,
) -> JobSpec:
    """A job's spec from a model folder and the options of `cascade submit` (or of an API batch).

    The job pins the manifest's ``identity`` (the head's checksum, bound to the encoder folder's for a ``minilm``
    model): the workers load exactly what it names or fail the chunk; a policy must name the same. It also pins the
    folder: a link (``models/NAME``, swapped by ``cascade promote``) is resolved once, here, and the manifest read
    from the folder it points to now, so a job keeps its version whatever the link points to later.

    The job's prompt: ``prompt_file``, else the model folder's ``prompt.json`` when there is one, else Cascade's
    default; its labels must be the model's, and a policy must have been calibrated under it."""
    folder = model.resolve()
    manifest = read_manifest(folder)
    prompt = _prompt(folder, manifest.labels, prompt_file)
    policy = None
    if policy_file is not None:
        policy = load_policy(policy_file)
        if policy.specialist_sha256 != manifest.identity:
            raise InputError(f"{policy_file}: calibrated for another specialist than {model}; calibrate again")
        if policy.llm_model != settings.llm_model:
            raise InputError(
                f"{policy_file}: calibrated with LLM {policy.llm_model!r}, but CASCADE_LLM_MODEL is "
                f"{settings.llm_model!r}; its guarantee does not carry over; calibrate again"
            )
        if policy.prompt_version != (prompt or DEFAULT_PROMPT).version:
            raise InputError(
                f"{policy_file}: calibrated under prompt version {policy.prompt_version}, but the job's prompt is "
                f"version {(prompt or DEFAULT_PROMPT).version}; its guarantee does not carry over; calibrate again"
            )
        rate = explore if explore is not None else (settings.explore_rate or policy.explore_rate)
        policy = policy.model_copy(update={"explore_rate": rate})
    if (memory_similarity is not None or (policy and policy.memory)) and manifest.encoder is None:
        raise InputError(f"{model}: the answer memory needs a specialist trained with --features minilm")
    return JobSpec(
        model_path=str(folder),
        model_sha256=manifest.identity,
        threshold=threshold,
        top_k=settings.top_k if top_k is None else top_k,
        on_llm_error=on_llm_error,
        llm_model=settings.llm_model,
        policy=policy,
        max_escalation=max_escalation,
        max_llm_cost=max_llm_cost,
        usd_per_llm_token=settings.prices().usd_per_token,
        usd_per_cpu_second=settings.prices().usd_per_cpu_second,
        memory_similarity=memory_similarity,
        memory_k=memory_k,
        answer_cache=answer_cache,
        prompt=prompt,
    )


PROMPT_FILE = "prompt.json"
"""A model folder's default prompt file (``cascade-prompt/1``)."""


def _prompt(folder: Path, labels: list[str], prompt_file: Path | None) -> Prompt | None:
    """The job's prompt file, checked against the model's labels; None: Cascade's default prompt."""
    path = prompt_file if prompt_file is not None else folder / PROMPT_FILE
    if prompt_file is None and not path.is_file():
        return None
    prompt = load_prompt(path)
    check_labels(prompt, labels, source=f"prompt file {path}")
    return prompt
